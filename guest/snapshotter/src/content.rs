//! containerd's content store, as far as lcfs reads it: which digests can name a blob, and
//! where a blob lives under containerd's root (`io.containerd.content.v1.content/blobs/
//! <algorithm>/<hex>`). The one place that knows the layout.

use std::path::{Path, PathBuf};

/// Checks that `digest` is `<algorithm>:<lowercase hex>` of a known algorithm, so it can name
/// a file without climbing out of the store; the error says what was wrong.
pub fn check_digest(digest: &str) -> Result<(), String> {
    let bad = || format!("bad layer digest {digest:?}");
    let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(bad());
    }
    Ok(())
}

/// Where blob `digest` lives in the content store of the containerd whose root is `root`.
pub fn blob_path(root: &Path, digest: &str) -> Result<PathBuf, String> {
    check_digest(digest)?;
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| format!("bad layer digest {digest:?}"))?;
    Ok(root.join("io.containerd.content.v1.content/blobs").join(algorithm).join(hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_digests_name_a_blob() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in ["", "sha256", "sha256:abc", "md5:00", &format!("sha256:{}", "A".repeat(64))] {
            assert!(check_digest(bad).is_err(), "{bad:?}");
        }
        assert!(check_digest(&format!("sha256:../{}", "a".repeat(61))).is_err());
    }

    #[test]
    fn blobs_live_under_the_algorithm() {
        let digest = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            blob_path(Path::new("/var/lib/containerd"), &digest).expect("path"),
            Path::new("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256").join("b".repeat(64))
        );
        assert!(blob_path(Path::new("/r"), "sha256:../../etc/passwd").is_err());
    }
}
