//! Builds OCI image archives (image layout in a tar) that `ctr images import` takes, from
//! layer tars built entry by entry, so tests control every whiteout, link and xattr.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Modification time of every entry, so two unpacks of one image agree.
pub const MTIME: u64 = 1_700_000_000;

/// One uncompressed layer tar, built entry by entry.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        LayerTar { builder: tar::Builder::new(Vec::new()) }
    }
}

impl LayerTar {
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn append(&mut self, mut h: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        h.set_path(path).expect("a valid tar path");
        h.set_cksum();
        self.builder.append(&h, data).expect("append to a tar in memory");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.append(Self::header(tar::EntryType::Directory, mode, 0), path, &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.append(Self::header(tar::EntryType::Regular, mode, data.len() as u64), path, data)
    }

    pub fn file_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, path, data)
    }

    /// A regular file with extended attributes (PAX `SCHILY.xattr.*` records).
    pub fn file_with_xattrs(&mut self, path: &str, mode: u32, data: &[u8], xattrs: &[(&str, &str)]) -> &mut Self {
        let records: Vec<(String, &[u8])> =
            xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_bytes())).collect();
        self.builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v))).expect("append pax records");
        self.file(path, mode, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name(target).expect("a valid link name");
        self.append(h, path, &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        h.set_link_name(target).expect("a valid link name");
        self.append(h, path, &[])
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, path, &[])
    }

    /// Deletes `dir/name` of the layers below.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh.{name}"), 0o644, &[])
    }

    /// Hides everything the layers below have in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, &[])
    }

    /// A regular file whose name is written as given, unchecked (`../` and all).
    pub fn raw_file(&mut self, name: &[u8], data: &[u8]) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        self.builder.append(&h, data).expect("append to a tar in memory");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish the tar")
    }
}

pub fn sha256(data: &[u8]) -> String {
    let mut s = String::from("sha256:");
    for b in Sha256::digest(data) {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The chain ids of a stack of layers with these diff ids: the names containerd gives the
/// committed snapshots.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for d in diff_ids {
        let id = match ids.last() {
            None => d.clone(),
            Some(below) => sha256(format!("{below} {d}").as_bytes()),
        };
        ids.push(id);
    }
    ids
}

/// An image archive for `ctr images import`: OCI layout, named `name` by the annotation
/// containerd reads verbatim. Returns the archive and the layers' diff ids.
pub fn image_archive(name: &str, layers: &[Vec<u8>], cmd: &[&str]) -> (Vec<u8>, Vec<String>) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string()
    .into_bytes();
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(l),
                "size": l.len(),
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": layer_descriptors,
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest),
            "size": manifest.len(),
            "annotations": { "io.containerd.image.name": name },
        }],
    })
    .to_string()
    .into_bytes();

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for blob in layers.iter().chain([&config, &manifest]) {
        files.insert(format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]), blob.clone());
    }
    files.insert("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    files.insert("index.json".into(), index);
    let mut archive = LayerTar::default();
    archive.dir("blobs", 0o755).dir("blobs/sha256", 0o755);
    for (path, data) in &files {
        archive.file(path, 0o644, data);
    }
    (archive.finish(), diff_ids)
}
