//! Key layouts of the metadata tables.
//!
//! Keys are big-endian so that byte order equals tuple order: a range scan over a prefix
//! visits exactly one layer's, one inode's or one directory's rows, in order.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `meta` | name (UTF-8) | value bytes |
//! | `layers` | layer id (8) | `LayerRecord` |
//! | `inodes` | ino (8), depth of owning layer (4), layer id (8) | `InodeRecord` |
//! | `layer_inodes` | layer id (8), ino (8) | [`OWN_CREATED`] or [`OWN_COPIED`] |
//! | `dirents` | layer id (8), directory ino (8), name | ino (8), file type (1) |
//! | `extents` | layer id (8), ino (8), first file block (8) | first device block (8), block count (4) |
//! | `dir_changes` | layer id (8), directory ino (8), name | empty |
//! | `orphans` | layer id (8), ino (8) | empty |
//!
//! The inode key puts the depth before the layer so that "the newest version of inode N at or
//! above depth D" is one reverse range scan (see `fs::inode::resolve`).

use std::ops::Bound;

use crate::types::{FileKind, Ino, LayerId};

/// `meta` key of the next inode number to hand out.
pub(crate) const META_NEXT_INO: &[u8] = b"next_ino";
/// `meta` key of the next layer id to hand out.
pub(crate) const META_NEXT_LAYER: &[u8] = b"next_layer";

/// The layer created this inode.
pub(crate) const OWN_CREATED: u8 = 1;
/// The layer copied this inode up from an ancestor to change it.
pub(crate) const OWN_COPIED: u8 = 2;

pub(crate) fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_be_bytes(a))
}

pub(crate) fn layer(id: LayerId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

pub(crate) fn inode(ino: Ino, depth: u32, layer: LayerId) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(&ino.0.to_be_bytes());
    k.extend_from_slice(&depth.to_be_bytes());
    k.extend_from_slice(&layer.0.to_be_bytes());
    k
}

pub(crate) fn parse_inode(k: &[u8]) -> Option<(Ino, u32, LayerId)> {
    if k.len() != 20 {
        return None;
    }
    Some((Ino(be64(k, 0)?), be32(k, 8)?, LayerId(be64(k, 12)?)))
}

pub(crate) fn pair(a: u64, b: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.to_be_bytes());
    k.extend_from_slice(&b.to_be_bytes());
    k
}

pub(crate) fn parse_pair(k: &[u8]) -> Option<(u64, u64)> {
    if k.len() != 16 {
        return None;
    }
    Some((be64(k, 0)?, be64(k, 8)?))
}

pub(crate) fn layer_inode(layer: LayerId, ino: Ino) -> Vec<u8> {
    pair(layer.0, ino.0)
}

pub(crate) fn dirent(layer: LayerId, dir: Ino, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&layer.0.to_be_bytes());
    k.extend_from_slice(&dir.0.to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// (layer, directory, name) of a `dirents` or `dir_changes` key.
pub(crate) fn parse_dirent(k: &[u8]) -> Option<(LayerId, Ino, &[u8])> {
    if k.len() < 16 {
        return None;
    }
    Some((LayerId(be64(k, 0)?), Ino(be64(k, 8)?), &k[16..]))
}

pub(crate) fn dirent_value(ino: Ino, kind: FileKind) -> Vec<u8> {
    let mut v = ino.0.to_be_bytes().to_vec();
    v.push(kind.to_u8());
    v
}

pub(crate) fn parse_dirent_value(v: &[u8]) -> Option<(Ino, FileKind)> {
    if v.len() != 9 {
        return None;
    }
    Some((Ino(be64(v, 0)?), FileKind::from_u8(v[8])?))
}

pub(crate) fn extent(layer: LayerId, ino: Ino, file_block: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&layer.0.to_be_bytes());
    k.extend_from_slice(&ino.0.to_be_bytes());
    k.extend_from_slice(&file_block.to_be_bytes());
    k
}

pub(crate) fn parse_extent(k: &[u8]) -> Option<(LayerId, Ino, u64)> {
    if k.len() != 24 {
        return None;
    }
    Some((LayerId(be64(k, 0)?), Ino(be64(k, 8)?), be64(k, 16)?))
}

pub(crate) fn extent_value(device_block: u64, count: u32) -> Vec<u8> {
    let mut v = device_block.to_be_bytes().to_vec();
    v.extend_from_slice(&count.to_be_bytes());
    v
}

pub(crate) fn parse_extent_value(v: &[u8]) -> Option<(u64, u32)> {
    if v.len() != 12 {
        return None;
    }
    Some((be64(v, 0)?, be32(v, 8)?))
}

/// The key range holding every key that starts with `prefix`.
pub(crate) fn prefix_range(prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last == 0xff {
            end.pop();
        } else {
            *last += 1;
            return (Bound::Included(prefix.to_vec()), Bound::Excluded(end));
        }
    }
    (Bound::Included(prefix.to_vec()), Bound::Unbounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_order_is_tuple_order() {
        let a = inode(Ino(5), 1, LayerId(900));
        let b = inode(Ino(5), 2, LayerId(3));
        let c = inode(Ino(6), 0, LayerId(1));
        assert!(a < b && b < c);
        assert_eq!(parse_inode(&b), Some((Ino(5), 2, LayerId(3))));
        assert!(dirent(LayerId(1), Ino(2), b"zz") < dirent(LayerId(1), Ino(3), b""));
    }

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        let (lo, hi) = prefix_range(&[1, 0xff]);
        assert_eq!(lo, Bound::Included(vec![1, 0xff]));
        assert_eq!(hi, Bound::Excluded(vec![2]));
        assert_eq!(prefix_range(&[0xff]).1, Bound::Unbounded);
    }
}
