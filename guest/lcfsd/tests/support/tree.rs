//! A file tree described entry by entry (type, mode, owner, size, link count, device,
//! content digest, link target, extended attributes), so two trees can be compared.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// What is compared of one entry.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub rdev: u64,
    /// Modification time; directories are left out (containerd sets theirs last, per layer).
    pub mtime: Option<i64>,
    pub content: Option<String>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry under `root` (not following symlinks), by path relative to `root`.
pub fn describe(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    children.sort();
    for path in children {
        let m = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        let ft = m.file_type();
        let content = ft.is_file().then(|| super::oci::sha256(&std::fs::read(&path).expect("read file")));
        let target = ft.is_symlink().then(|| std::fs::read_link(&path).expect("readlink").display().to_string());
        let xattrs = xattr::list(&path)
            .map(|names| {
                names
                    .filter_map(|n| {
                        let value = xattr::get(&path, &n).ok().flatten()?;
                        Some((n.to_string_lossy().into_owned(), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let rel = path.strip_prefix(root).expect("under root").display().to_string();
        out.insert(
            rel,
            Entry {
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_dir() { 0 } else { m.size() },
                nlink: m.nlink(),
                rdev: if ft.is_char_device() || ft.is_block_device() { m.rdev() } else { 0 },
                mtime: (!ft.is_dir()).then(|| m.mtime()),
                content,
                target,
                xattrs,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// The differences between two descriptions, one line each.
pub fn differences(left: &BTreeMap<String, Entry>, right: &BTreeMap<String, Entry>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, l) in left {
        match right.get(path) {
            None => diffs.push(format!("{path}: only on the left")),
            Some(r) if r != l => diffs.push(format!("{path}: {l:?} != {r:?}")),
            Some(_) => {}
        }
    }
    for path in right.keys().filter(|p| !left.contains_key(*p)) {
        diffs.push(format!("{path}: only on the right"));
    }
    diffs
}
