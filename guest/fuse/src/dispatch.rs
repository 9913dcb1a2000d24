//! Decodes a request, runs the operation in `fs`, and encodes the answer over the request's
//! buffer: the one decoder of both transports (`dev_fuse` and `uring`).
//!
//! A request comes as its header, its fixed argument (`op_in`, see [`abi::fixed_arg_len`])
//! and the rest (names, written data) at the start of a payload buffer; the answer's
//! arguments go back through the payload buffer. The payload is read completely before the
//! answer is written over it.

use std::time::Duration;

use fuser::{Errno, FileAttr, FileHandle, FileType, INodeNo};
use lcfs_engine::{SetAttr, SetTime, Timestamp};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::abi::{self, fattr, opcode};
use crate::fs::{Caller, Entry, LcfsFs, MAX_IO, OPEN_FLAGS, XattrAnswer};

/// Generation of every inode: numbers are never reused (layer ids and inode numbers only
/// grow), so one generation is enough.
const GENERATION: u64 = 0;

/// A page-aligned piece of a request buffer: written data that arrives aligned goes to the
/// device with `O_DIRECT` without being copied first.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
pub(crate) struct Page([u8; 4096]);

impl Page {
    pub(crate) const ZERO: Page = Page([0; 4096]);
}

/// Runs one request as [`serve`] does, answering `EIO` if its handler panics: the request
/// fails, the serving thread goes on.
pub(crate) fn serve_caught(
    fs: &LcfsFs,
    header: &abi::InHeader,
    op_in: &[u8],
    payload: &mut [u8],
    payload_in: usize,
) -> Result<usize, Errno> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(fs, header, op_in, payload, payload_in)))
        .unwrap_or_else(|_| {
            tracing::error!(opcode = header.opcode, "a FUSE request handler panicked; answering EIO");
            Err(Errno::EIO)
        })
}

/// The header of the answer to request `unique`, and how many payload bytes follow it.
pub(crate) fn out_header(unique: u64, result: Result<usize, Errno>) -> (abi::OutHeader, usize) {
    let (error, len) = match result {
        Ok(len) => (0, len),
        Err(e) => (-e.code(), 0),
    };
    (abi::OutHeader { len: (size_of::<abi::OutHeader>() + len) as u32, error, unique }, len)
}

/// Runs one request. `payload` is the entry's payload buffer, of which the first `payload_in`
/// bytes came with the request; returns how many bytes of answer it now holds.
pub(crate) fn serve(
    fs: &LcfsFs,
    header: &abi::InHeader,
    op_in: &[u8],
    payload: &mut [u8],
    payload_in: usize,
) -> Result<usize, Errno> {
    let ino = INodeNo(header.nodeid);
    let caller = Caller { uid: header.uid, gid: header.gid };
    let args = payload.get(..payload_in).ok_or(Errno::EINVAL)?;
    match header.opcode {
        opcode::LOOKUP => {
            let e = fs.lookup(ino, name(args)?)?;
            put(payload, &entry_out(&e))
        }
        opcode::GETATTR => put(payload, &attr_out(&fs.getattr(ino)?)),
        opcode::SETATTR => {
            let set = set_attr(&arg::<abi::SetattrIn>(op_in)?);
            put(payload, &attr_out(&fs.setattr(caller, ino, &set)?))
        }
        opcode::READLINK => put_bytes(payload, &fs.readlink(ino)?),
        opcode::SYMLINK => {
            let (link_name, rest) = split_name(args)?;
            let attr = fs.symlink(caller, ino, link_name, name(rest)?)?;
            put(payload, &entry_out(&file_entry(attr)))
        }
        opcode::MKNOD => {
            let a = arg::<abi::MknodIn>(op_in)?;
            let attr = fs.mknod(caller, ino, name(args)?, a.mode, a.umask, a.rdev)?;
            put(payload, &entry_out(&file_entry(attr)))
        }
        opcode::MKDIR => {
            let a = arg::<abi::MkdirIn>(op_in)?;
            let attr = fs.mkdir(caller, ino, name(args)?, a.mode, a.umask)?;
            put(payload, &entry_out(&file_entry(attr)))
        }
        opcode::UNLINK => fs.unlink(ino, name(args)?).map(|()| 0),
        opcode::RMDIR => fs.rmdir(ino, name(args)?).map(|()| 0),
        opcode::RENAME | opcode::RENAME2 => {
            let (new_dir, flags) = if header.opcode == opcode::RENAME {
                (arg::<abi::RenameIn>(op_in)?.newdir, 0)
            } else {
                let a = arg::<abi::Rename2In>(op_in)?;
                (a.newdir, a.flags)
            };
            let (old_name, rest) = split_name(args)?;
            fs.rename(ino, old_name, INodeNo(new_dir), name(rest)?, flags).map(|()| 0)
        }
        opcode::LINK => {
            let a = arg::<abi::LinkIn>(op_in)?;
            let attr = fs.link(INodeNo(a.oldnodeid), ino, name(args)?)?;
            put(payload, &entry_out(&file_entry(attr)))
        }
        opcode::OPEN => {
            let a = arg::<abi::OpenIn>(op_in)?;
            let fh = fs.open(ino, a.flags as i32)?;
            put(payload, &abi::OpenOut { fh: fh.0, open_flags: OPEN_FLAGS.bits(), backing_id: 0 })
        }
        opcode::OPENDIR => {
            let fh = fs.opendir(ino)?;
            put(payload, &abi::OpenOut { fh: fh.0, open_flags: 0, backing_id: 0 })
        }
        opcode::READ => {
            let a = arg::<abi::ReadIn>(op_in)?;
            let size = (a.size.min(MAX_IO) as usize).min(payload.len());
            fs.read(ino, a.offset, &mut payload[..size])
        }
        opcode::WRITE => {
            let a = arg::<abi::WriteIn>(op_in)?;
            let data = args.get(..a.size as usize).ok_or(Errno::EINVAL)?;
            let written = fs.write(ino, a.offset, data, a.write_flags & abi::WRITE_KILL_SUIDGID != 0)?;
            put(payload, &abi::WriteOut { size: written, padding: 0 })
        }
        opcode::STATFS => {
            let s = fs.statfs()?;
            put(
                payload,
                &abi::StatfsOut {
                    blocks: s.blocks,
                    bfree: s.blocks_free,
                    bavail: s.blocks_free,
                    files: s.files,
                    ffree: s.files_free,
                    bsize: s.block_size,
                    namelen: s.name_max,
                    frsize: s.block_size,
                    ..Default::default()
                },
            )
        }
        opcode::RELEASE | opcode::RELEASEDIR => {
            fs.release(FileHandle(arg::<abi::ReleaseIn>(op_in)?.fh));
            Ok(0)
        }
        opcode::FSYNC | opcode::FSYNCDIR => fs.fsync(ino).map(|()| 0),
        opcode::SETXATTR => {
            let a = arg::<abi::SetxattrIn>(op_in)?;
            let (xattr_name, rest) = split_name(args)?;
            let value = rest.get(..a.size as usize).ok_or(Errno::EINVAL)?;
            fs.setxattr(ino, xattr_name, value, a.flags as i32, 0).map(|()| 0)
        }
        opcode::GETXATTR => {
            let a = arg::<abi::GetxattrIn>(op_in)?;
            let answer = fs.getxattr(ino, name(args)?, a.size)?;
            put_xattr(payload, answer)
        }
        opcode::LISTXATTR => {
            let a = arg::<abi::GetxattrIn>(op_in)?;
            let answer = fs.listxattr(ino, a.size)?;
            put_xattr(payload, answer)
        }
        opcode::REMOVEXATTR => fs.removexattr(ino, name(args)?).map(|()| 0),
        opcode::ACCESS => fs.access(ino, arg::<abi::AccessIn>(op_in)?.mask as i32).map(|()| 0),
        opcode::CREATE | opcode::TMPFILE => {
            let a = arg::<abi::CreateIn>(op_in)?;
            let (attr, fh) = if header.opcode == opcode::CREATE {
                fs.create(caller, ino, name(args)?, a.mode, a.umask, a.flags as i32)?
            } else {
                // The name the kernel sends for an unnamed file is a placeholder ("/").
                fs.tmpfile(caller, ino, a.mode, a.umask)?
            };
            let entry = entry_out(&file_entry(attr));
            let open = abi::OpenOut { fh: fh.0, open_flags: OPEN_FLAGS.bits(), backing_id: 0 };
            let n = put(payload, &entry)?;
            Ok(n + put(&mut payload[n..], &open)?)
        }
        opcode::FALLOCATE => {
            let a = arg::<abi::FallocateIn>(op_in)?;
            fs.fallocate(caller, ino, a.offset, a.length, a.mode as i32).map(|()| 0)
        }
        opcode::COPY_FILE_RANGE => {
            let a = arg::<abi::CopyFileRangeIn>(op_in)?;
            let n = fs.copy_file_range(caller, (ino, a.off_in), (INodeNo(a.nodeid_out), a.off_out), a.len)?;
            put(payload, &abi::WriteOut { size: n, padding: 0 })
        }
        opcode::READDIR | opcode::READDIRPLUS => {
            put_listing(fs, &arg::<abi::ReadIn>(op_in)?, payload, header.opcode == opcode::READDIRPLUS)
        }
        // Nothing is buffered here; ENOSYS tells the kernel never to send FLUSH again.
        opcode::FLUSH => Err(Errno::ENOSYS),
        // Every other operation lcfs does not serve (locks, ioctl, poll, lseek, statx...) gets
        // the same answer, as from fuser, and the kernel falls back or stops asking.
        _ => Err(Errno::ENOSYS),
    }
}

/// Writes the entries of an open directory listing from the request's offset on, as many as
/// the kernel's buffer holds; with `plus`, each with its attributes (`READDIRPLUS`).
fn put_listing(fs: &LcfsFs, a: &abi::ReadIn, payload: &mut [u8], plus: bool) -> Result<usize, Errno> {
    let listing = fs.listing(FileHandle(a.fh))?;
    let limit = (a.size as usize).min(payload.len());
    let mut used = 0;
    for (next, item) in listing.entries_after(a.offset) {
        let room = &mut payload[used..limit];
        let entry_len = if plus {
            // An entry removed since the snapshot is skipped; the kernel will not see it.
            let Ok(e) = fs.getattr(item.ino) else { continue };
            let Some(n) = put_sized(room, &entry_out(&e)) else { break };
            n
        } else {
            0
        };
        match put_dirent(&mut room[entry_len..], item.ino, next, item.kind, item.name.as_encoded_bytes()) {
            Some(n) => used += entry_len + n,
            None => break,
        }
    }
    Ok(used)
}

/// The operation's fixed argument.
fn arg<T: FromBytes>(op_in: &[u8]) -> Result<T, Errno> {
    T::read_from_prefix(op_in).map(|(t, _)| t).map_err(|_| Errno::EINVAL)
}

/// A NUL-terminated name at the start of `bytes`, and what follows it.
fn split_name(bytes: &[u8]) -> Result<(&[u8], &[u8]), Errno> {
    let end = bytes.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
    Ok((&bytes[..end], &bytes[end + 1..]))
}

fn name(bytes: &[u8]) -> Result<&[u8], Errno> {
    split_name(bytes).map(|(n, _)| n)
}

/// Writes `value` at the start of `out`; `None` if it does not fit.
fn put_sized<T: IntoBytes + Immutable>(out: &mut [u8], value: &T) -> Option<usize> {
    let bytes = value.as_bytes();
    out.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(bytes.len())
}

fn put<T: IntoBytes + Immutable>(out: &mut [u8], value: &T) -> Result<usize, Errno> {
    put_sized(out, value).ok_or(Errno::ERANGE)
}

fn put_bytes(out: &mut [u8], bytes: &[u8]) -> Result<usize, Errno> {
    out.get_mut(..bytes.len()).ok_or(Errno::ERANGE)?.copy_from_slice(bytes);
    Ok(bytes.len())
}

fn put_xattr(out: &mut [u8], answer: XattrAnswer) -> Result<usize, Errno> {
    match answer {
        XattrAnswer::Size(size) => put(out, &abi::GetxattrOut { size, padding: 0 }),
        XattrAnswer::Data(data) => put_bytes(out, &data),
    }
}

/// Writes one `fuse_dirent` (padded to 8 bytes); `None` if it does not fit.
fn put_dirent(out: &mut [u8], ino: INodeNo, next: u64, kind: FileType, name: &[u8]) -> Option<usize> {
    let header =
        abi::Dirent { ino: ino.0, off: next, namelen: u32::try_from(name.len()).ok()?, typ: mode_type(kind) >> 12 };
    let len = (size_of::<abi::Dirent>() + name.len()).next_multiple_of(8);
    let room = out.get_mut(..len)?;
    let (head, rest) = room.split_at_mut(size_of::<abi::Dirent>());
    head.copy_from_slice(header.as_bytes());
    rest[..name.len()].copy_from_slice(name);
    rest[name.len()..].fill(0);
    Some(len)
}

fn file_entry(attr: FileAttr) -> Entry {
    Entry { ttl: crate::attr::FILE_TTL, attr }
}

/// The `S_IFMT` bits of a file type (the engine keeps the one mapping).
fn mode_type(kind: FileType) -> u32 {
    crate::attr::file_kind(kind).mode_bits()
}

fn split_duration(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

fn attr(a: &FileAttr) -> abi::Attr {
    let time = |t| {
        let t = Timestamp::from(t);
        (t.secs as u64, t.nsecs)
    };
    let (atime, atimensec) = time(a.atime);
    let (mtime, mtimensec) = time(a.mtime);
    let (ctime, ctimensec) = time(a.ctime);
    abi::Attr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: mode_type(a.kind) | u32::from(a.perm),
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        // Linux's FUSE_ATTR_* bits (submount, DAX), not the BSD flags FileAttr carries.
        flags: 0,
    }
}

fn entry_out(e: &Entry) -> abi::EntryOut {
    let (valid, valid_nsec) = split_duration(e.ttl);
    abi::EntryOut {
        nodeid: e.attr.ino.0,
        generation: GENERATION,
        entry_valid: valid,
        attr_valid: valid,
        entry_valid_nsec: valid_nsec,
        attr_valid_nsec: valid_nsec,
        attr: attr(&e.attr),
    }
}

fn attr_out(e: &Entry) -> abi::AttrOut {
    let (valid, valid_nsec) = split_duration(e.ttl);
    abi::AttrOut { attr_valid: valid, attr_valid_nsec: valid_nsec, dummy: 0, attr: attr(&e.attr) }
}

/// The engine's attribute change for a `SETATTR` (fuser decodes it the same way).
fn set_attr(a: &abi::SetattrIn) -> SetAttr {
    let has = |bit| a.valid & bit != 0;
    let time = |set, now, secs: u64, nsecs: u32| {
        has(set).then(|| if has(now) { SetTime::Now } else { SetTime::At(Timestamp::new(secs as i64, nsecs)) })
    };
    SetAttr {
        perm: has(fattr::MODE).then_some((a.mode & 0o7777) as u16),
        uid: has(fattr::UID).then_some(a.uid),
        gid: has(fattr::GID).then_some(a.gid),
        size: has(fattr::SIZE).then_some(a.size),
        atime: time(fattr::ATIME, fattr::ATIME_NOW, a.atime, a.atimensec),
        mtime: time(fattr::MTIME, fattr::MTIME_NOW, a.mtime, a.mtimensec),
        ctime: has(fattr::CTIME).then(|| Timestamp::new(a.ctime as i64, a.ctimensec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_end_in_nul() {
        assert_eq!(split_name(b"a\0b\0"), Ok((&b"a"[..], &b"b\0"[..])));
        assert_eq!(name(b"abc"), Err(Errno::EINVAL));
    }

    #[test]
    fn dirents_are_padded_and_refused_when_they_do_not_fit() {
        let mut buf = [0xffu8; 40];
        assert_eq!(put_dirent(&mut buf, INodeNo(7), 3, FileType::Directory, b"abc"), Some(32));
        let (head, _) = abi::Dirent::read_from_prefix(&buf).expect("dirent");
        assert_eq!((head.ino, head.off, head.namelen, head.typ), (7, 3, 3, libc::DT_DIR.into()));
        assert_eq!(&buf[24..32], b"abc\0\0\0\0\0");
        assert_eq!(put_dirent(&mut buf[..31], INodeNo(7), 3, FileType::Directory, b"abc"), None);
    }

    #[test]
    fn setattr_decodes_times_and_now() {
        let a = abi::SetattrIn {
            valid: fattr::ATIME | fattr::ATIME_NOW | fattr::MTIME | fattr::MODE,
            mode: 0o104755,
            mtime: (-5i64) as u64,
            mtimensec: 7,
            ..Default::default()
        };
        let set = set_attr(&a);
        assert_eq!(set.perm, Some(0o4755));
        assert!(matches!(set.atime, Some(SetTime::Now)));
        assert!(matches!(set.mtime, Some(SetTime::At(Timestamp { secs: -5, nsecs: 7 }))));
        assert!(set.uid.is_none() && set.size.is_none() && set.ctime.is_none());
    }
}
