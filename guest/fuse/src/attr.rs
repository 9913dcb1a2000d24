//! Conversions between the engine's types and fuser's, and the cache lifetimes the kernel gets.
//!
//! Every change to a layer's files goes through this mount, so the kernel's caches stay
//! coherent by themselves (it invalidates what its own operations change). Entries and
//! attributes of layer files can therefore be cached for a long time. Only the mount root,
//! whose entries (the layers) change through the API, gets a short lifetime plus explicit
//! invalidation when a layer appears, is renamed or goes away.

use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileType, INodeNo};
use lcfs_engine::{Attr, FileKind};

/// Lifetime of entries and attributes of files inside layers.
pub(crate) const FILE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the mount root's entries (the layer directories).
pub(crate) const ROOT_TTL: Duration = Duration::from_secs(1);

pub(crate) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// The engine's kind for a fuser file type (the inverse of [`file_type`]).
pub(crate) fn file_kind(kind: FileType) -> FileKind {
    match kind {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::CharDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::NamedPipe => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
    }
}

/// The kernel's view of an engine attribute record, numbered `ino` in the mount.
pub(crate) fn file_attr(ino: INodeNo, a: &Attr) -> FileAttr {
    FileAttr {
        ino,
        size: a.size,
        blocks: a.blocks,
        atime: a.atime.into(),
        mtime: a.mtime.into(),
        ctime: a.ctime.into(),
        crtime: a.crtime.into(),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // The kernel's fuse_attr carries a 32-bit device number (new_encode_dev form).
        rdev: a.rdev as u32,
        blksize: lcfs_engine::BLOCK_SIZE as u32,
        flags: 0,
    }
}

/// Attributes of the mount root: a directory owned by root listing `layers` layers.
pub(crate) fn mount_root_attr(layers: usize, mounted_at: SystemTime) -> FileAttr {
    FileAttr {
        ino: INodeNo::ROOT,
        size: 0,
        blocks: 0,
        atime: mounted_at,
        mtime: mounted_at,
        ctime: mounted_at,
        crtime: mounted_at,
        kind: FileType::Directory,
        perm: 0o755,
        nlink: 2 + layers as u32,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: lcfs_engine::BLOCK_SIZE as u32,
        flags: 0,
    }
}

/// The errno the kernel gets for an engine error.
pub(crate) fn errno(e: &lcfs_engine::Error) -> Errno {
    Errno::from_i32(e.errno())
}

/// The attributes reported for a regular file that no longer exists (no links, no data).
pub(crate) fn deleted_file(ino: INodeNo) -> FileAttr {
    FileAttr { ino, nlink: 0, ..negative_entry() }
}

/// The attributes of a negative entry: inode 0 tells the kernel the name does not exist.
pub(crate) fn negative_entry() -> FileAttr {
    let epoch = SystemTime::UNIX_EPOCH;
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: epoch,
        mtime: epoch,
        ctime: epoch,
        crtime: epoch,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
