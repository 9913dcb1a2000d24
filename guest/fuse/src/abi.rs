//! The kernel's FUSE structures (from `include/uapi/linux/fuse.h`) that lcfs reads and writes
//! on both transports: request and reply headers, the per-operation arguments of the
//! operations lcfs serves, and for io_uring (protocol 7.42 and later) the ring entry's header
//! buffer and the command in the SQE.
//!
//! INIT is left to fuser, which negotiates the connection. Every structure is plain old data,
//! read and written with zerocopy; the tests pin the sizes the kernel expects.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the area for `fuse_in_header` (request) or `fuse_out_header` (reply).
pub(crate) const IN_OUT_HEADER_SIZE: usize = 128;
/// Size of the area for the operation's first argument.
pub(crate) const OP_IN_SIZE: usize = 128;

/// `FUSE_IO_URING_CMD_REGISTER`: hand an entry's buffers to the kernel and wait for a request.
pub(crate) const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: answer the entry's request and wait for the next.
pub(crate) const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Operation codes (`enum fuse_opcode`).
pub(crate) mod opcode {
    pub(crate) const LOOKUP: u32 = 1;
    pub(crate) const FORGET: u32 = 2;
    pub(crate) const GETATTR: u32 = 3;
    pub(crate) const SETATTR: u32 = 4;
    pub(crate) const READLINK: u32 = 5;
    pub(crate) const SYMLINK: u32 = 6;
    pub(crate) const MKNOD: u32 = 8;
    pub(crate) const MKDIR: u32 = 9;
    pub(crate) const UNLINK: u32 = 10;
    pub(crate) const RMDIR: u32 = 11;
    pub(crate) const RENAME: u32 = 12;
    pub(crate) const LINK: u32 = 13;
    pub(crate) const OPEN: u32 = 14;
    pub(crate) const READ: u32 = 15;
    pub(crate) const WRITE: u32 = 16;
    pub(crate) const STATFS: u32 = 17;
    pub(crate) const RELEASE: u32 = 18;
    pub(crate) const FSYNC: u32 = 20;
    pub(crate) const SETXATTR: u32 = 21;
    pub(crate) const GETXATTR: u32 = 22;
    pub(crate) const LISTXATTR: u32 = 23;
    pub(crate) const REMOVEXATTR: u32 = 24;
    pub(crate) const FLUSH: u32 = 25;
    pub(crate) const OPENDIR: u32 = 27;
    pub(crate) const READDIR: u32 = 28;
    pub(crate) const RELEASEDIR: u32 = 29;
    pub(crate) const FSYNCDIR: u32 = 30;
    pub(crate) const ACCESS: u32 = 34;
    pub(crate) const CREATE: u32 = 35;
    pub(crate) const INTERRUPT: u32 = 36;
    pub(crate) const DESTROY: u32 = 38;
    pub(crate) const NOTIFY_REPLY: u32 = 41;
    pub(crate) const BATCH_FORGET: u32 = 42;
    pub(crate) const FALLOCATE: u32 = 43;
    pub(crate) const READDIRPLUS: u32 = 44;
    pub(crate) const RENAME2: u32 = 45;
    pub(crate) const COPY_FILE_RANGE: u32 = 47;
    pub(crate) const TMPFILE: u32 = 51;
}

/// Size of an operation's fixed argument, the first of its arguments (`struct fuse_*_in`),
/// which names, paths and written data follow. Over `/dev/fuse` a request's arguments arrive
/// back to back after its header; over io_uring the kernel puts this one in the entry's
/// `op_in` area and the rest in the payload buffer. Zero for operations without one (the
/// kernel sends an empty first argument for them since Linux 6.14).
pub(crate) fn fixed_arg_len(opcode: u32) -> usize {
    use opcode::*;
    match opcode {
        SETATTR => size_of::<SetattrIn>(),
        MKNOD => size_of::<MknodIn>(),
        MKDIR => size_of::<MkdirIn>(),
        RENAME => size_of::<RenameIn>(),
        RENAME2 => size_of::<Rename2In>(),
        LINK => size_of::<LinkIn>(),
        OPEN | OPENDIR => size_of::<OpenIn>(),
        READ | READDIR | READDIRPLUS => size_of::<ReadIn>(),
        WRITE => size_of::<WriteIn>(),
        RELEASE | RELEASEDIR => size_of::<ReleaseIn>(),
        SETXATTR => size_of::<SetxattrIn>(),
        GETXATTR | LISTXATTR => size_of::<GetxattrIn>(),
        ACCESS => size_of::<AccessIn>(),
        CREATE | TMPFILE => size_of::<CreateIn>(),
        FALLOCATE => size_of::<FallocateIn>(),
        COPY_FILE_RANGE => size_of::<CopyFileRangeIn>(),
        INTERRUPT => size_of::<InterruptIn>(),
        // `fuse_getattr_in`, `fuse_fsync_in`, `fuse_flush_in`, `fuse_forget_in` and
        // `fuse_batch_forget_in`: lcfs reads none of their fields.
        GETATTR | FSYNC | FSYNCDIR => 16,
        FLUSH => 24,
        FORGET | BATCH_FORGET => 8,
        _ => 0,
    }
}

/// `SETATTR` validity bits (`FATTR_*`).
pub(crate) mod fattr {
    pub(crate) const MODE: u32 = 1 << 0;
    pub(crate) const UID: u32 = 1 << 1;
    pub(crate) const GID: u32 = 1 << 2;
    pub(crate) const SIZE: u32 = 1 << 3;
    pub(crate) const ATIME: u32 = 1 << 4;
    pub(crate) const MTIME: u32 = 1 << 5;
    pub(crate) const ATIME_NOW: u32 = 1 << 7;
    pub(crate) const MTIME_NOW: u32 = 1 << 8;
    pub(crate) const CTIME: u32 = 1 << 10;
}

/// `WRITE` flag: the writer lacks `CAP_FSETID`, so set-id bits must go.
pub(crate) const WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// `struct fuse_uring_ent_in_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct RingEntInOut {
    pub(crate) flags: u64,
    /// The request's id, to be quoted in the commit.
    pub(crate) commit_id: u64,
    /// Bytes of payload, in either direction.
    pub(crate) payload_sz: u32,
    pub(crate) padding: u32,
    pub(crate) reserved: u64,
}

/// `struct fuse_uring_req_header`: the first buffer of a ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct RingHeaders {
    /// `fuse_in_header` of a request, `fuse_out_header` of its reply.
    pub(crate) in_out: [u8; IN_OUT_HEADER_SIZE],
    /// The operation's first argument (zero-sized for operations without one).
    pub(crate) op_in: [u8; OP_IN_SIZE],
    pub(crate) ring_ent_in_out: RingEntInOut,
}

/// `struct fuse_uring_cmd_req`, in the SQE's command area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct UringCmdReq {
    pub(crate) flags: u64,
    pub(crate) commit_id: u64,
    pub(crate) qid: u16,
    pub(crate) padding: [u8; 6],
}

/// `struct fuse_in_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct InHeader {
    pub(crate) len: u32,
    pub(crate) opcode: u32,
    pub(crate) unique: u64,
    pub(crate) nodeid: u64,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) pid: u32,
    pub(crate) total_extlen: u16,
    pub(crate) padding: u16,
}

/// `struct fuse_interrupt_in`: the `unique` of the interrupted request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct InterruptIn {
    pub(crate) unique: u64,
}

/// `struct fuse_out_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct OutHeader {
    pub(crate) len: u32,
    /// Zero or a negated errno.
    pub(crate) error: i32,
    pub(crate) unique: u64,
}

/// `struct fuse_attr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct Attr {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) blocks: u64,
    pub(crate) atime: u64,
    pub(crate) mtime: u64,
    pub(crate) ctime: u64,
    pub(crate) atimensec: u32,
    pub(crate) mtimensec: u32,
    pub(crate) ctimensec: u32,
    pub(crate) mode: u32,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) rdev: u32,
    pub(crate) blksize: u32,
    pub(crate) flags: u32,
}

/// `struct fuse_entry_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct EntryOut {
    pub(crate) nodeid: u64,
    pub(crate) generation: u64,
    pub(crate) entry_valid: u64,
    pub(crate) attr_valid: u64,
    pub(crate) entry_valid_nsec: u32,
    pub(crate) attr_valid_nsec: u32,
    pub(crate) attr: Attr,
}

/// `struct fuse_attr_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct AttrOut {
    pub(crate) attr_valid: u64,
    pub(crate) attr_valid_nsec: u32,
    pub(crate) dummy: u32,
    pub(crate) attr: Attr,
}

/// `struct fuse_open_out`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct OpenOut {
    pub(crate) fh: u64,
    pub(crate) open_flags: u32,
    pub(crate) backing_id: i32,
}

/// `struct fuse_write_out`, also the answer to `COPY_FILE_RANGE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct WriteOut {
    pub(crate) size: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_getxattr_out`: the size of a value or list, when asked for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GetxattrOut {
    pub(crate) size: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_statfs_out` (a `struct fuse_kstatfs`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct StatfsOut {
    pub(crate) blocks: u64,
    pub(crate) bfree: u64,
    pub(crate) bavail: u64,
    pub(crate) files: u64,
    pub(crate) ffree: u64,
    pub(crate) bsize: u32,
    pub(crate) namelen: u32,
    pub(crate) frsize: u32,
    pub(crate) padding: u32,
    pub(crate) spare: [u32; 6],
}

/// `struct fuse_dirent` without its name (which follows, padded to 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct Dirent {
    pub(crate) ino: u64,
    pub(crate) off: u64,
    pub(crate) namelen: u32,
    pub(crate) typ: u32,
}

/// `struct fuse_setattr_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct SetattrIn {
    pub(crate) valid: u32,
    pub(crate) padding: u32,
    pub(crate) fh: u64,
    pub(crate) size: u64,
    pub(crate) lock_owner: u64,
    pub(crate) atime: u64,
    pub(crate) mtime: u64,
    pub(crate) ctime: u64,
    pub(crate) atimensec: u32,
    pub(crate) mtimensec: u32,
    pub(crate) ctimensec: u32,
    pub(crate) mode: u32,
    pub(crate) unused4: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) unused5: u32,
}

/// `struct fuse_mknod_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct MknodIn {
    pub(crate) mode: u32,
    pub(crate) rdev: u32,
    pub(crate) umask: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_mkdir_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct MkdirIn {
    pub(crate) mode: u32,
    pub(crate) umask: u32,
}

/// `struct fuse_rename_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct RenameIn {
    pub(crate) newdir: u64,
}

/// `struct fuse_rename2_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct Rename2In {
    pub(crate) newdir: u64,
    pub(crate) flags: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_link_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct LinkIn {
    pub(crate) oldnodeid: u64,
}

/// `struct fuse_open_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct OpenIn {
    pub(crate) flags: u32,
    pub(crate) open_flags: u32,
}

/// `struct fuse_create_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct CreateIn {
    pub(crate) flags: u32,
    pub(crate) mode: u32,
    pub(crate) umask: u32,
    pub(crate) open_flags: u32,
}

/// `struct fuse_read_in` (also `READDIR` and `READDIRPLUS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct ReadIn {
    pub(crate) fh: u64,
    pub(crate) offset: u64,
    pub(crate) size: u32,
    pub(crate) read_flags: u32,
    pub(crate) lock_owner: u64,
    pub(crate) flags: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_write_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct WriteIn {
    pub(crate) fh: u64,
    pub(crate) offset: u64,
    pub(crate) size: u32,
    pub(crate) write_flags: u32,
    pub(crate) lock_owner: u64,
    pub(crate) flags: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_release_in` (also `RELEASEDIR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct ReleaseIn {
    pub(crate) fh: u64,
    pub(crate) flags: u32,
    pub(crate) release_flags: u32,
    pub(crate) lock_owner: u64,
}

/// `struct fuse_setxattr_in` as sent without `FUSE_SETXATTR_EXT`, which lcfs does not ask for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct SetxattrIn {
    pub(crate) size: u32,
    pub(crate) flags: u32,
}

/// `struct fuse_getxattr_in` (also `LISTXATTR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct GetxattrIn {
    pub(crate) size: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_access_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct AccessIn {
    pub(crate) mask: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_fallocate_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct FallocateIn {
    pub(crate) fh: u64,
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) mode: u32,
    pub(crate) padding: u32,
}

/// `struct fuse_copy_file_range_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(crate) struct CopyFileRangeIn {
    pub(crate) fh_in: u64,
    pub(crate) off_in: u64,
    pub(crate) nodeid_out: u64,
    pub(crate) fh_out: u64,
    pub(crate) off_out: u64,
    pub(crate) len: u64,
    pub(crate) flags: u64,
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;

    #[test]
    fn structures_have_the_kernels_sizes() {
        assert_eq!(size_of::<RingEntInOut>(), 32);
        assert_eq!(size_of::<RingHeaders>(), 288);
        assert_eq!(size_of::<UringCmdReq>(), 24);
        assert_eq!(size_of::<InHeader>(), 40);
        assert_eq!(size_of::<OutHeader>(), 16);
        assert_eq!(size_of::<Attr>(), 88);
        assert_eq!(size_of::<EntryOut>(), 128);
        assert_eq!(size_of::<AttrOut>(), 104);
        assert_eq!(size_of::<OpenOut>(), 16);
        assert_eq!(size_of::<StatfsOut>(), 80);
        assert_eq!(size_of::<Dirent>(), 24);
        assert_eq!(size_of::<SetattrIn>(), 88);
        assert_eq!(size_of::<ReadIn>(), 40);
        assert_eq!(size_of::<WriteIn>(), 40);
        assert_eq!(size_of::<ReleaseIn>(), 24);
        assert_eq!(size_of::<CreateIn>(), 16);
        assert_eq!(size_of::<FallocateIn>(), 32);
        assert_eq!(size_of::<CopyFileRangeIn>(), 56);
        assert_eq!(size_of::<InterruptIn>(), 8);
    }

    #[test]
    fn fixed_arguments_have_the_sizes_the_kernel_sends() {
        // From fs/fuse: the size of each operation's `in_args[0]`.
        for (op, len) in [
            (opcode::LOOKUP, 0),
            (opcode::GETATTR, 16),
            (opcode::SETATTR, 88),
            (opcode::SYMLINK, 0),
            (opcode::MKNOD, 16),
            (opcode::MKDIR, 8),
            (opcode::RENAME2, 16),
            (opcode::OPEN, 8),
            (opcode::READ, 40),
            (opcode::WRITE, 40),
            (opcode::RELEASE, 24),
            (opcode::SETXATTR, 8),
            (opcode::CREATE, 16),
            (opcode::FLUSH, 24),
            (opcode::COPY_FILE_RANGE, 56),
            (opcode::INTERRUPT, 8),
        ] {
            assert_eq!(fixed_arg_len(op), len, "opcode {op}");
        }
    }
}
