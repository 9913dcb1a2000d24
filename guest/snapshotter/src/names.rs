//! How a containerd snapshot key becomes an LCFS layer name, and back.
//!
//! containerd keys are free-form strings (`default/12/sha256:…`, `extract-… sha256:…`) while a
//! layer name is also the layer's directory in the mount, so it must be a file name. Bytes
//! outside a safe set are percent-encoded, which keeps names readable and reversible; a key
//! whose encoding would be too long is named by its SHA-256 instead. Either way the key itself
//! is kept in the layer's labels under [`KEY_LABEL`], which also marks the layers this service
//! owns (layers made with `lcfsd layer create` are not containerd snapshots and stay hidden).

use sha2::{Digest, Sha256};

/// Label holding the containerd key of the snapshot a layer stores; never shown to containerd.
pub const KEY_LABEL: &str = "lcfs.snapshot.key";

/// Longest encoded key used as a name as it is; longer ones are hashed. Below the 255-byte
/// file name limit with room to spare.
const MAX_ENCODED: usize = 200;

/// Bytes kept as they are in a layer name.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.:+=@,~".contains(&b)
}

/// The layer name for snapshot `key` (which must not be empty).
pub fn layer_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for (i, &b) in key.as_bytes().iter().enumerate() {
        // A leading dot would make "." and ".." possible, and hidden directories.
        if is_plain(b) && !(i == 0 && b == b'.') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
        if name.len() > MAX_ENCODED {
            return hashed(key);
        }
    }
    name
}

fn hashed(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut name = String::from("sha256-");
    for b in digest {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_readable_file_names() {
        assert_eq!(layer_name("default/3/sha256:ab12"), "default%2F3%2Fsha256:ab12");
        assert_eq!(layer_name("extract-1 sha256:x"), "extract-1%20sha256:x");
        assert_eq!(layer_name("."), "%2E");
        assert_eq!(layer_name(".."), "%2E.");
        assert_eq!(layer_name("a%b"), "a%25b");
    }

    #[test]
    fn distinct_keys_get_distinct_names() {
        let keys = ["a/b", "a%2Fb", "a b", "a%20b", "ab", "é", "%C3%A9"];
        let names: std::collections::BTreeSet<String> = keys.iter().map(|k| layer_name(k)).collect();
        assert_eq!(names.len(), keys.len());
    }

    #[test]
    fn long_keys_are_hashed_into_a_valid_name() {
        let long = "k/".repeat(200);
        let name = layer_name(&long);
        assert!(name.starts_with("sha256-") && name.len() == 71, "{name}");
        assert_ne!(name, layer_name(&"k/".repeat(201)));
        assert!(!name.contains('/'));
    }
}
