//! Plain value types of the engine's public API: identifiers, attributes, layer descriptions.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inode number. Inode numbers are global to a device: a layer that changes an inherited
/// file keeps its number, and files created in sibling layers never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ino(pub u64);

/// The root directory of every layer.
pub const ROOT_INO: Ino = Ino(1);

impl fmt::Display for Ino {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The internal, never reused number of a layer. Names can change (commit renames a layer);
/// the id does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerId(pub u64);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The type of a file system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            FileKind::Regular => 1,
            FileKind::Directory => 2,
            FileKind::Symlink => 3,
            FileKind::CharDevice => 4,
            FileKind::BlockDevice => 5,
            FileKind::Fifo => 6,
            FileKind::Socket => 7,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<FileKind> {
        Some(match v {
            1 => FileKind::Regular,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::CharDevice,
            5 => FileKind::BlockDevice,
            6 => FileKind::Fifo,
            7 => FileKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time with nanosecond precision, before or after the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub secs: i64,
    /// Always below 1_000_000_000.
    pub nsecs: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    pub fn new(secs: i64, nsecs: u32) -> Timestamp {
        Timestamp { secs: secs + i64::from(nsecs / 1_000_000_000), nsecs: nsecs % 1_000_000_000 }
    }

    /// Nanoseconds since the epoch, saturating.
    pub fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nsecs)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Timestamp {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nsecs: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -secs, nsecs: 0 }
                } else {
                    Timestamp { secs: -secs - 1, nsecs: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> SystemTime {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs.unsigned_abs(), t.nsecs)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(u64::from(t.nsecs))
        }
    }
}

/// Attributes of a file as a layer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including set-uid, set-gid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// Number of 512-byte units the file occupies.
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
}

impl Attr {
    /// `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        self.kind.mode_bits() | u32::from(self.perm)
    }
}

/// A time to set: a given instant, or the current time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// Attribute changes; `None` fields are left alone. The change time is updated by any change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`mode & 0o7777`); the file type cannot change.
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub ctime: Option<Timestamp>,
}

impl SetAttr {
    /// Whether only times change (no permissions, owner or size).
    pub fn times_only(&self) -> bool {
        self.perm.is_none() && self.uid.is_none() && self.gid.is_none() && self.size.is_none()
    }
}

/// What a new file system object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewNode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Device number of character and block devices; zero otherwise.
    pub rdev: u64,
    /// Target of a symbolic link; empty otherwise.
    pub target: Vec<u8>,
    /// Extended attributes the object starts with (an inherited ACL, for instance).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl NewNode {
    pub fn file(perm: u16, uid: u32, gid: u32) -> NewNode {
        NewNode { kind: FileKind::Regular, perm, uid, gid, rdev: 0, target: Vec::new(), xattrs: BTreeMap::new() }
    }

    pub fn dir(perm: u16, uid: u32, gid: u32) -> NewNode {
        NewNode { kind: FileKind::Directory, perm, uid, gid, rdev: 0, target: Vec::new(), xattrs: BTreeMap::new() }
    }

    pub fn symlink(target: &[u8], uid: u32, gid: u32) -> NewNode {
        NewNode {
            kind: FileKind::Symlink,
            perm: 0o777,
            uid,
            gid,
            rdev: 0,
            target: target.to_vec(),
            xattrs: BTreeMap::new(),
        }
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Flags of `rename(2)` / `renameat2(2)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RenameFlags {
    /// Fail with `EEXIST` if the target exists.
    pub no_replace: bool,
    /// Swap source and target atomically; both must exist.
    pub exchange: bool,
}

/// How `set_xattr` treats an existing attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Upsert,
    /// Fail with `EEXIST` if it exists (`XATTR_CREATE`).
    Create,
    /// Fail with `ENODATA` if it does not exist (`XATTR_REPLACE`).
    Replace,
}

/// What `fallocate(2)` does to a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallocateMode {
    /// Reserve space for the range; holes in it read as zeros. Grows the file unless
    /// `keep_size`.
    Allocate { keep_size: bool },
    /// Deallocate the range; it reads as zeros; the size is kept (`PUNCH_HOLE|KEEP_SIZE`).
    PunchHole,
    /// The range reads as zeros afterwards; grows the file unless `keep_size`.
    ZeroRange { keep_size: bool },
}

/// What a layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// A leaf that accepts changes (a container's root file system, or a layer being unpacked).
    Writable,
    /// Immutable; may have children.
    Committed,
    /// A read-only leaf over a committed layer, with no changes of its own.
    View,
}

impl LayerKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            LayerKind::Writable => 1,
            LayerKind::Committed => 2,
            LayerKind::View => 3,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<LayerKind> {
        Some(match v {
            1 => LayerKind::Writable,
            2 => LayerKind::Committed,
            3 => LayerKind::View,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Writable => "writable",
            LayerKind::Committed => "committed",
            LayerKind::View => "a read-only view",
        }
    }
}

/// Space a layer owns itself (not what it inherits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of data blocks the layer owns.
    pub bytes: u64,
    /// Inodes the layer created or changed.
    pub inodes: u64,
}

/// A description of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    pub id: LayerId,
    pub name: String,
    pub parent: Option<String>,
    pub kind: LayerKind,
    pub depth: u32,
    pub labels: BTreeMap<String, String>,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub usage: Usage,
}

/// How a path changed in a layer relative to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One change a layer made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// Absolute path inside the layer, starting with `/`.
    pub path: Vec<u8>,
    pub kind: ChangeKind,
}

/// File system figures for `statfs(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_system_time_on_both_sides_of_the_epoch() {
        for t in [
            Timestamp::new(0, 0),
            Timestamp::new(1_700_000_000, 123_456_789),
            Timestamp::new(-1, 500_000_000),
            Timestamp::new(-100, 0),
        ] {
            assert_eq!(Timestamp::from(SystemTime::from(t)), t);
        }
    }

    #[test]
    fn kinds_round_trip_through_mode_bits_and_bytes() {
        for k in [
            FileKind::Regular,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::CharDevice,
            FileKind::BlockDevice,
            FileKind::Fifo,
            FileKind::Socket,
        ] {
            assert_eq!(FileKind::from_mode(k.mode_bits() | 0o644), Some(k));
            assert_eq!(FileKind::from_u8(k.to_u8()), Some(k));
        }
        assert_eq!(FileKind::from_u8(0), None);
    }
}
