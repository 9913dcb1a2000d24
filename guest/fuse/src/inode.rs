//! FUSE inode numbers: one number space for the whole mount, derived from (layer, inode).
//!
//! The same engine inode is a different file in every layer that sees it, so the kernel must
//! see a different number for each (layer, inode) pair. The number is computed, not looked up:
//! `layer << 40 | inode`, with 1 (layer 0, which never exists) the mount root. Being stateless,
//! the mapping needs no table, survives daemon restarts, and makes `forget` a no-op. Layer ids
//! are never reused, so a number of a removed layer stays stale (ESTALE) instead of naming
//! something else. Limits: 2^24 layers over the device's life, 2^40 inodes.

use fuser::INodeNo;
use lcfs_engine::{Ino, LayerId, ROOT_INO};

const INODE_BITS: u32 = 40;
const INODE_MASK: u64 = (1 << INODE_BITS) - 1;

/// What a FUSE inode number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// The mount root, which lists the layers.
    MountRoot,
    /// An inode as a layer sees it.
    File(LayerId, Ino),
}

impl Node {
    pub(crate) fn decode(ino: INodeNo) -> Option<Node> {
        if ino == INodeNo::ROOT {
            return Some(Node::MountRoot);
        }
        let layer = ino.0 >> INODE_BITS;
        let inode = ino.0 & INODE_MASK;
        if layer == 0 || inode == 0 {
            return None;
        }
        Some(Node::File(LayerId(layer), Ino(inode)))
    }

    /// The FUSE number of an inode of a layer; `None` beyond the encodable range.
    pub(crate) fn encode(layer: LayerId, ino: Ino) -> Option<INodeNo> {
        if layer.0 == 0 || layer.0 >= 1 << (64 - INODE_BITS) || ino.0 == 0 || ino.0 > INODE_MASK {
            return None;
        }
        Some(INodeNo(layer.0 << INODE_BITS | ino.0))
    }

    /// The FUSE number of a layer's root directory.
    pub(crate) fn layer_root(layer: LayerId) -> Option<INodeNo> {
        Self::encode(layer, ROOT_INO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_reject_what_cannot_exist() {
        let n = Node::encode(LayerId(7), Ino(12345)).expect("encodable");
        assert_eq!(Node::decode(n), Some(Node::File(LayerId(7), Ino(12345))));
        assert_eq!(Node::decode(INodeNo::ROOT), Some(Node::MountRoot));
        assert_ne!(Node::layer_root(LayerId(1)), Some(INodeNo::ROOT));
        assert_eq!(Node::decode(INodeNo(5)), None, "layer 0 holds only the mount root");
        assert_eq!(Node::decode(INodeNo(3 << 40)), None, "inode 0 never exists");
        assert_eq!(Node::encode(LayerId(1 << 24), Ino(1)), None);
        assert_eq!(Node::encode(LayerId(1), Ino(1 << 40)), None);
    }
}
