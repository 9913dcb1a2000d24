//! The FUSE request handlers: each request is decoded, handed to the engine, and answered
//! exactly once.
//!
//! The mount root lists one directory per layer (`<mountpoint>/<layer name>`); below it each
//! request names a (layer, inode) pair through its FUSE number (see `inode`). Permission checks
//! are the kernel's (`default_permissions`); what only the file system knows — that committed
//! layers and views are read-only, that a link or rename cannot cross layers, who owns a new
//! file in a set-group-id directory — is checked here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use lcfs_engine::{
    Attr, Engine, FallocateMode, FileKind, Ino, LayerId, LayerKind, NewNode, ROOT_INO, SetAttr, SetTime, Timestamp,
    XattrMode,
};
use tracing::{debug, warn};

use crate::acl;
use crate::attr::{FILE_TTL, ROOT_TTL, errno, file_attr, file_type, mount_root_attr, negative_entry};
use crate::inode::Node;

/// Generation of every inode: numbers are never reused (layer ids and inode numbers only
/// grow), so one generation is enough.
const GENERATION: Generation = Generation(0);
/// How files are opened: layer files change only through this mount, so the page cache stays
/// valid across opens (`KEEP_CACHE`); nothing is buffered here, so `close` need not wait for a
/// `FLUSH` round trip (`NOFLUSH`).
const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Largest read or write the kernel may send in one request.
pub(crate) const MAX_IO: u32 = 1 << 20;

/// An entry of a directory snapshot.
#[derive(Debug)]
struct DirItem {
    ino: INodeNo,
    kind: FileType,
    name: OsString,
}

/// What an open file handle refers to.
#[derive(Debug)]
enum Handle {
    File {
        layer: LayerId,
        ino: Ino,
    },
    /// A directory listing taken at opendir: offsets stay stable however the directory changes.
    Dir {
        items: Vec<DirItem>,
    },
}

/// Open handles.
#[derive(Debug, Default)]
struct Handles {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<Handle>>>,
}

impl Handles {
    fn insert(&self, h: Handle) -> FileHandle {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.lock().unwrap_or_else(|e| e.into_inner()).insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn get(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&fh.0).cloned()
    }

    fn remove(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&fh.0)
    }
}

thread_local! {
    /// Read buffer reused by each request thread (a fresh 1 MiB buffer per read costs page
    /// faults).
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The file system the kernel talks to; see the module documentation.
#[derive(Debug)]
pub struct LcfsFs {
    engine: Engine,
    handles: Handles,
    mounted_at: SystemTime,
    writeback_cache: bool,
}

type Reply<T> = Result<T, Errno>;

fn bytes(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp(t)),
    }
}

impl LcfsFs {
    /// A file system over `engine`. With `writeback_cache` the kernel keeps written data in
    /// its page cache and sends it in large writes later (and on fsync), as local file systems
    /// do.
    pub fn new(engine: Engine, writeback_cache: bool) -> LcfsFs {
        LcfsFs { engine, handles: Handles::default(), mounted_at: SystemTime::now(), writeback_cache }
    }

    fn node(&self, ino: INodeNo) -> Reply<Node> {
        Node::decode(ino).ok_or(Errno::ESTALE)
    }

    /// The (layer, inode) of a number below the mount root; the mount root itself is `root_errno`.
    fn file(&self, ino: INodeNo, root_errno: Errno) -> Reply<(LayerId, Ino)> {
        match self.node(ino)? {
            Node::MountRoot => Err(root_errno),
            Node::File(layer, ino) => Ok((layer, ino)),
        }
    }

    fn encode(&self, layer: LayerId, ino: Ino) -> Reply<INodeNo> {
        Node::encode(layer, ino).ok_or(Errno::EOVERFLOW)
    }

    fn attr_of(&self, layer: LayerId, a: &Attr) -> Reply<FileAttr> {
        Ok(file_attr(self.encode(layer, a.ino)?, a))
    }

    fn getattr_of(&self, node: Node) -> Reply<(Duration, FileAttr)> {
        match node {
            Node::MountRoot => {
                let layers = self.engine.layers().map_err(|e| errno(&e))?.len();
                Ok((ROOT_TTL, mount_root_attr(layers, self.mounted_at)))
            }
            Node::File(layer, ino) => {
                let a = self.engine.getattr(layer, ino).map_err(|e| errno(&e))?;
                Ok((FILE_TTL, self.attr_of(layer, &a)?))
            }
        }
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Reply<(Duration, FileAttr)> {
        match self.node(parent)? {
            Node::MountRoot => {
                let name = name.to_str().ok_or(Errno::ENOENT)?;
                let layer = self.engine.layer(name).map_err(|e| errno(&e))?;
                let a = self.engine.getattr(layer.id, ROOT_INO).map_err(|e| errno(&e))?;
                Ok((ROOT_TTL, self.attr_of(layer.id, &a)?))
            }
            Node::File(layer, dir) => {
                let a = self.engine.lookup(layer, dir, bytes(name)).map_err(|e| errno(&e))?;
                Ok((FILE_TTL, self.attr_of(layer, &a)?))
            }
        }
    }

    /// Who owns a new file, its permission bits and its ACL, as Linux decides for local file
    /// systems: the caller owns it, except that in a set-group-id directory it takes the
    /// directory's group (and a new subdirectory the bit); the permission bits are the mode
    /// narrowed by the directory's default ACL if it has one, by the umask otherwise.
    fn new_node(
        &self,
        req: &Request,
        layer: LayerId,
        parent: Ino,
        kind: FileKind,
        mode: u32,
        umask: u32,
    ) -> Reply<NewNode> {
        let dir = self.engine.getattr(layer, parent).map_err(|e| errno(&e))?;
        let mut node = NewNode {
            kind,
            perm: (mode & 0o7777 & !umask) as u16,
            uid: req.uid(),
            gid: req.gid(),
            ..NewNode::file(0, 0, 0)
        };
        if u32::from(dir.perm) & libc::S_ISGID != 0 {
            node.gid = dir.gid;
            if kind == FileKind::Directory {
                node.perm |= libc::S_ISGID as u16;
            }
        }
        if kind != FileKind::Symlink
            && let Ok(default) = self.engine.get_xattr(layer, parent, acl::DEFAULT)
            && let Some(inherited) = acl::inherit(&default, mode & 0o7777)
        {
            node.perm = inherited.perm | (node.perm & libc::S_ISGID as u16);
            if let Some(access) = inherited.access {
                node.xattrs.insert(acl::ACCESS.to_vec(), access);
            }
            if kind == FileKind::Directory {
                node.xattrs.insert(acl::DEFAULT.to_vec(), default);
            }
        }
        if kind != FileKind::Directory
            && u32::from(node.perm) & (libc::S_ISGID | libc::S_IXGRP) == (libc::S_ISGID | libc::S_IXGRP)
            && node.gid != req.gid()
            && req.uid() != 0
        {
            node.perm &= !(libc::S_ISGID as u16);
        }
        Ok(node)
    }

    fn make(&self, parent: INodeNo, name: &OsStr, node: &NewNode) -> Reply<FileAttr> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let a = self.engine.create(layer, dir, bytes(name), node).map_err(|e| errno(&e))?;
        self.attr_of(layer, &a)
    }

    fn writable(&self, layer: LayerId) -> Reply<bool> {
        Ok(self.engine.layer_by_id(layer).map_err(|e| errno(&e))?.kind == LayerKind::Writable)
    }

    /// Changes attributes, dropping privileges as Linux does: a change of owner drops file
    /// capabilities and the set-id bits of non-directories; a truncation drops capabilities, and
    /// the set-id bits too unless root truncates.
    fn do_setattr(&self, req: &Request, ino: INodeNo, set: &SetAttr) -> Reply<FileAttr> {
        let (layer, ino) = self.file(ino, Errno::EPERM)?;
        let mut a = self.engine.setattr(layer, ino, set).map_err(|e| errno(&e))?;
        let chown = (set.uid.is_some() || set.gid.is_some()) && set.perm.is_none();
        if chown || set.size.is_some() {
            let setid = chown || req.uid() != 0;
            self.engine.drop_privileges(layer, ino, setid).map_err(|e| errno(&e))?;
            a = self.engine.getattr(layer, ino).map_err(|e| errno(&e))?;
        }
        self.attr_of(layer, &a)
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Reply<FileHandle> {
        let (layer, ino) = self.file(ino, Errno::EISDIR)?;
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes && !self.writable(layer)? {
            return Err(Errno::EROFS);
        }
        self.engine.open_file(layer, ino).map_err(|e| errno(&e))?;
        Ok(self.handles.insert(Handle::File { layer, ino }))
    }

    fn do_opendir(&self, ino: INodeNo) -> Reply<FileHandle> {
        let mut items = Vec::new();
        let dot = |name: &str, ino| DirItem { ino, kind: FileType::Directory, name: OsString::from(name) };
        match self.node(ino)? {
            Node::MountRoot => {
                items.push(dot(".", INodeNo::ROOT));
                items.push(dot("..", INodeNo::ROOT));
                for layer in self.engine.layers().map_err(|e| errno(&e))? {
                    if let Some(root) = Node::layer_root(layer.id) {
                        items.push(DirItem { ino: root, kind: FileType::Directory, name: layer.name.into() });
                    }
                }
            }
            Node::File(layer, dir) => {
                let entries = self.engine.read_dir(layer, dir, None, usize::MAX).map_err(|e| errno(&e))?;
                items.reserve(entries.len() + 2);
                items.push(dot(".", ino));
                items.push(dot("..", if dir == ROOT_INO { INodeNo::ROOT } else { ino }));
                for e in entries {
                    items.push(DirItem {
                        ino: self.encode(layer, e.ino)?,
                        kind: file_type(e.kind),
                        name: OsString::from_vec(e.name),
                    });
                }
            }
        }
        Ok(self.handles.insert(Handle::Dir { items }))
    }

    fn dir_items(&self, fh: FileHandle) -> Reply<Arc<Handle>> {
        match self.handles.get(fh) {
            Some(h) if matches!(*h, Handle::Dir { .. }) => Ok(h),
            _ => Err(Errno::EBADF),
        }
    }

    fn xattr_reply(size: u32, data: &[u8], reply: ReplyXattr) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(data);
        }
    }

    fn copy_range(&self, from: (INodeNo, u64), to: (INodeNo, u64), len: u64, setid: bool) -> Reply<u32> {
        let (src_layer, src) = self.file(from.0, Errno::EISDIR)?;
        let (dst_layer, dst) = self.file(to.0, Errno::EISDIR)?;
        let len = len.min(u64::from(u32::MAX));
        let mut buf = vec![0u8; len.min(u64::from(MAX_IO)) as usize];
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let n = self.engine.read_into(src_layer, src, from.1 + done, &mut buf[..want]).map_err(|e| errno(&e))?;
            if n == 0 {
                break;
            }
            self.engine.write(dst_layer, dst, to.1 + done, &buf[..n]).map_err(|e| errno(&e))?;
            done += n as u64;
        }
        self.engine.drop_privileges(dst_layer, dst, setid).map_err(|e| errno(&e))?;
        Ok(done as u32)
    }
}

impl Filesystem for LcfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            // The kernel enforces ACLs kept in system.posix_acl_* xattrs.
            InitFlags::FUSE_POSIX_ACL,
            // Privileges are dropped here on modification (see `drop_privileges`), which lets
            // the kernel mark inodes as having no security xattrs to check instead of asking
            // for security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        let writeback = self.writeback_cache.then_some(InitFlags::FUSE_WRITEBACK_CACHE);
        for flag in wanted.into_iter().chain(writeback) {
            if let Err(missing) = config.add_capabilities(flag) {
                debug!(?missing, "the kernel lacks a FUSE capability");
            }
        }
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent, name) {
            Ok((ttl, attr)) => reply.entry(&ttl, &attr, GENERATION),
            // A name missing in a layer stays missing until a change through this mount adds
            // it (which the kernel sees), so the kernel may remember the miss: inode 0 is a
            // negative entry. Layer names at the mount root change through the API instead.
            Err(e) if e == Errno::ENOENT && parent != INodeNo::ROOT => {
                reply.entry(&FILE_TTL, &negative_entry(), GENERATION)
            }
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.getattr_of(n)) {
            Ok((ttl, attr)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(timestamp),
        };
        match self.do_setattr(req, ino, &set) {
            Ok(attr) => reply.attr(&FILE_TTL, &attr),
            // With the writeback cache the kernel keeps a regular file's times itself and
            // sends them later, also for a file that was deleted in between (unlink marks the
            // inode's ctime dirty). Refusing would surface as a write-back error of the whole
            // mount at the next syncfs; the times of a file that is gone do not matter.
            Err(e) if e == Errno::ESTALE && self.writeback_cache && set.times_only() => {
                reply.attr(&Duration::ZERO, &crate::attr::deleted_file(ino))
            }
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.file(ino, Errno::EINVAL).and_then(|(l, i)| self.engine.read_link(l, i).map_err(|e| errno(&e))) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let r = (|| {
            let kind = if mode & libc::S_IFMT == 0 {
                FileKind::Regular
            } else {
                FileKind::from_mode(mode).ok_or(Errno::EINVAL)?
            };
            if kind == FileKind::Directory || kind == FileKind::Symlink {
                return Err(Errno::EINVAL);
            }
            let (layer, dir) = self.file(parent, Errno::EPERM)?;
            let mut node = self.new_node(req, layer, dir, kind, mode, umask)?;
            node.rdev = u64::from(rdev);
            self.make(parent, name, &node)
        })();
        match r {
            Ok(attr) => reply.entry(&FILE_TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = (|| {
            let (layer, dir) = self.file(parent, Errno::EPERM)?;
            let node = self.new_node(req, layer, dir, FileKind::Directory, mode, umask)?;
            self.make(parent, name, &node)
        })();
        match r {
            Ok(attr) => reply.entry(&FILE_TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .file(parent, Errno::EPERM)
            .and_then(|(l, d)| self.engine.unlink(l, d, bytes(name)).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .file(parent, Errno::EPERM)
            .and_then(|(l, d)| self.engine.rmdir(l, d, bytes(name)).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = (|| {
            let (layer, dir) = self.file(parent, Errno::EPERM)?;
            let mut node = self.new_node(req, layer, dir, FileKind::Symlink, 0o777, 0)?;
            node.perm = 0o777;
            node.target = target.as_os_str().as_bytes().to_vec();
            self.make(parent, link_name, &node)
        })();
        match r {
            Ok(attr) => reply.entry(&FILE_TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let (layer, dir) = self.file(parent, Errno::EPERM)?;
            let (new_layer, new_dir) = self.file(newparent, Errno::EPERM)?;
            if layer != new_layer {
                return Err(Errno::EXDEV);
            }
            if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return Err(Errno::EINVAL);
            }
            let flags = lcfs_engine::RenameFlags {
                no_replace: flags.contains(RenameFlags::RENAME_NOREPLACE),
                exchange: flags.contains(RenameFlags::RENAME_EXCHANGE),
            };
            self.engine.rename(layer, dir, bytes(name), new_dir, bytes(newname), flags).map_err(|e| errno(&e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = (|| {
            let (layer, ino) = self.file(ino, Errno::EPERM)?;
            let (new_layer, dir) = self.file(newparent, Errno::EPERM)?;
            if layer != new_layer {
                return Err(Errno::EXDEV);
            }
            let a = self.engine.link(layer, ino, dir, bytes(newname)).map_err(|e| errno(&e))?;
            self.attr_of(layer, &a)
        })();
        match r {
            Ok(attr) => reply.entry(&FILE_TTL, &attr, GENERATION),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            // Layer files change only through this mount, so the page cache stays valid
            // across opens.
            Ok(fh) => reply.opened(fh, OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (layer, ino) = match self.file(ino, Errno::EISDIR) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let size = size.min(MAX_IO) as usize;
            if buf.len() < size {
                buf.resize(size, 0);
            }
            match self.engine.read_into(layer, ino, offset, &mut buf[..size]) {
                Ok(n) => reply.data(&buf[..n]),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.file(ino, Errno::EISDIR).and_then(|(l, i)| {
            let n = self.engine.write(l, i, offset, data).map_err(|e| errno(&e))?;
            // The kernel flags writers without CAP_FSETID; capabilities go on any write.
            let setid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
            self.engine.drop_privileges(l, i, setid).map_err(|e| errno(&e))?;
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is buffered here; ENOSYS tells the kernel never to send FLUSH again.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(h) = self.handles.remove(fh)
            && let Handle::File { layer, ino } = *h
            && let Err(e) = self.engine.release_file(layer, ino)
        {
            warn!(layer = %layer, ino = %ino, error = %e, "releasing a file failed");
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.file(ino, Errno::EINVAL).and_then(|(l, _)| self.engine.sync_layer(l).map_err(|e| errno(&e))) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let handle = match self.dir_items(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if let Handle::Dir { items } = &*handle {
            for (i, item) in items.iter().enumerate().skip(offset as usize) {
                if reply.add(item.ino, i as u64 + 1, item.kind, &item.name) {
                    break;
                }
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let handle = match self.dir_items(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if let Handle::Dir { items } = &*handle {
            for (i, item) in items.iter().enumerate().skip(offset as usize) {
                // An entry removed since the snapshot is skipped; the kernel will not see it.
                let Ok((ttl, attr)) = self.node(item.ino).and_then(|n| self.getattr_of(n)) else { continue };
                if reply.add(item.ino, i as u64 + 1, &item.name, &ttl, &attr, GENERATION) {
                    break;
                }
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.handles.remove(fh);
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.fsync(req, ino, fh, datasync, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.engine.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_free,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let (layer, ino) = self.file(ino, Errno::EPERM)?;
            if position != 0 {
                return Err(Errno::EINVAL);
            }
            if (bytes(name) == acl::ACCESS || bytes(name) == acl::DEFAULT) && !acl::is_valid(value) {
                return Err(Errno::EINVAL);
            }
            let mode = match flags {
                0 => XattrMode::Upsert,
                libc::XATTR_CREATE => XattrMode::Create,
                libc::XATTR_REPLACE => XattrMode::Replace,
                _ => return Err(Errno::EINVAL),
            };
            self.engine.set_xattr(layer, ino, bytes(name), value, mode).map_err(|e| errno(&e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self
            .file(ino, Errno::ENODATA)
            .and_then(|(l, i)| self.engine.get_xattr(l, i, bytes(name)).map_err(|e| errno(&e)))
        {
            Ok(value) => Self::xattr_reply(size, &value, reply),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let names = match self.node(ino) {
            Ok(Node::MountRoot) => Ok(Vec::new()),
            Ok(Node::File(l, i)) => self.engine.list_xattr(l, i).map_err(|e| errno(&e)),
            Err(e) => Err(e),
        };
        match names {
            Ok(names) => {
                let mut list = Vec::new();
                for n in names {
                    list.extend_from_slice(&n);
                    list.push(0);
                }
                Self::xattr_reply(size, &list, reply);
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self
            .file(ino, Errno::EPERM)
            .and_then(|(l, i)| self.engine.remove_xattr(l, i, bytes(name)).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Mode bits are the kernel's to check; what it cannot know is which layers are
        // read-only.
        let r = match self.node(ino) {
            Ok(Node::File(layer, ino)) if mask.contains(AccessFlags::W_OK) => {
                match self.engine.getattr(layer, ino).map_err(|e| errno(&e)).and_then(|_| self.writable(layer)) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Errno::EROFS),
                    Err(e) => Err(e),
                }
            }
            Ok(Node::MountRoot) if mask.contains(AccessFlags::W_OK) => Err(Errno::EROFS),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = (|| {
            let (layer, dir) = self.file(parent, Errno::EPERM)?;
            let node = self.new_node(req, layer, dir, FileKind::Regular, mode, umask)?;
            let attr = self.make(parent, name, &node)?;
            let fh = self.do_open(attr.ino, OpenFlags(flags))?;
            Ok((attr, fh))
        })();
        match r {
            Ok((attr, fh)) => reply.created(&FILE_TTL, &attr, GENERATION, fh, OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = (|| {
            let (layer, ino) = self.file(ino, Errno::EISDIR)?;
            let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
            let mode = match mode & !libc::FALLOC_FL_KEEP_SIZE {
                0 => FallocateMode::Allocate { keep_size },
                libc::FALLOC_FL_PUNCH_HOLE if keep_size => FallocateMode::PunchHole,
                libc::FALLOC_FL_ZERO_RANGE => FallocateMode::ZeroRange { keep_size },
                _ => return Err(Errno::EOPNOTSUPP),
            };
            self.engine.fallocate(layer, ino, offset, length, mode).map_err(|e| errno(&e))?;
            self.engine.drop_privileges(layer, ino, req.uid() != 0).map_err(|e| errno(&e))
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self.copy_range((ino_in, offset_in), (ino_out, offset_out), len, req.uid() != 0) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }
}
