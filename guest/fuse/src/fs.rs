//! The file system's operations, one per FUSE request, free of any transport: the requests
//! read from `/dev/fuse` (`dev_fuse`) and those the kernel hands over io_uring (`uring`) are
//! decoded by `dispatch` and land here.
//!
//! The mount root lists one directory per layer (`<mountpoint>/<layer name>`); below it each
//! request names a (layer, inode) pair through its FUSE number (see `inode`). Permission checks
//! are the kernel's (`default_permissions`); what only the file system knows — that committed
//! layers and views are read-only, that a link or rename cannot cross layers, who owns a new
//! file in a set-group-id directory — is checked here.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{Errno, FileAttr, FileHandle, FileType, FopenFlags, INodeNo};
use lcfs_engine::{
    Attr, Engine, FallocateMode, FileKind, Ino, LayerId, LayerKind, NewNode, ROOT_INO, SetAttr, StatFs, XattrMode,
};
use tracing::warn;

use crate::acl;
use crate::attr::{FILE_TTL, ROOT_TTL, errno, file_attr, file_type, mount_root_attr, negative_entry};
use crate::inode::Node;

/// How files are opened: layer files change only through this mount, so the page cache stays
/// valid across opens (`KEEP_CACHE`); nothing is buffered here, so `close` need not wait for a
/// `FLUSH` round trip (`NOFLUSH`).
pub(crate) const OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// Largest read or write the kernel may send in one request.
pub(crate) const MAX_IO: u32 = 1 << 20;

/// The answer to most requests: a result or the errno the kernel gets.
pub(crate) type Reply<T> = Result<T, Errno>;

/// Who made a request (from the request's header).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// A name's attributes and how long the kernel may keep them (and the name).
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) ttl: Duration,
    pub(crate) attr: FileAttr,
}

/// An entry of a directory snapshot.
#[derive(Debug)]
pub(crate) struct DirItem {
    pub(crate) ino: INodeNo,
    pub(crate) kind: FileType,
    pub(crate) name: OsString,
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

/// A directory listing opened by `opendir`. Offsets are positions in the snapshot: the entry
/// at index `i` is followed by offset `i + 1`.
#[derive(Debug)]
pub(crate) struct Listing(Arc<Handle>);

impl Listing {
    /// The entries from `offset` on, each with the offset that follows it.
    pub(crate) fn entries_after(&self, offset: u64) -> impl Iterator<Item = (u64, &DirItem)> {
        let items: &[DirItem] = match &*self.0 {
            Handle::Dir { items } => items,
            Handle::File { .. } => &[],
        };
        items.iter().enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)).map(|(i, d)| (i as u64 + 1, d))
    }
}

/// The answer to `getxattr` and `listxattr`: the kernel asks for the size first (buffer size 0).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrAnswer {
    Size(u32),
    Data(Vec<u8>),
}

impl XattrAnswer {
    /// `data` for a caller whose buffer holds `size` bytes (0: it asks only for the size).
    fn for_buffer(size: u32, data: Vec<u8>) -> Reply<XattrAnswer> {
        if size == 0 {
            Ok(XattrAnswer::Size(u32::try_from(data.len()).map_err(|_| Errno::E2BIG)?))
        } else if data.len() > size as usize {
            Err(Errno::ERANGE)
        } else {
            Ok(XattrAnswer::Data(data))
        }
    }
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

/// The file system the kernel talks to; see the module documentation.
#[derive(Debug)]
pub struct LcfsFs {
    engine: Engine,
    handles: Handles,
    mounted_at: SystemTime,
    writeback_cache: bool,
}

fn engine_errno(e: lcfs_engine::Error) -> Errno {
    errno(&e)
}

impl LcfsFs {
    /// A file system over `engine`. With `writeback_cache` the kernel keeps written data in
    /// its page cache and sends it in large writes later (and on fsync), as local file systems
    /// do.
    pub fn new(engine: Engine, writeback_cache: bool) -> LcfsFs {
        LcfsFs { engine, handles: Handles::default(), mounted_at: SystemTime::now(), writeback_cache }
    }

    /// Whether the kernel keeps written data and times in its cache (FUSE writeback cache).
    pub(crate) fn writeback_cache(&self) -> bool {
        self.writeback_cache
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

    fn writable(&self, layer: LayerId) -> Reply<bool> {
        Ok(self.engine.layer_by_id(layer).map_err(engine_errno)?.kind == LayerKind::Writable)
    }

    /// Who owns a new file, its permission bits and its ACL, as Linux decides for local file
    /// systems: the caller owns it, except that in a set-group-id directory it takes the
    /// directory's group (and a new subdirectory the bit); the permission bits are the mode
    /// narrowed by the directory's default ACL if it has one, by the umask otherwise.
    fn new_node(
        &self,
        caller: Caller,
        layer: LayerId,
        parent: Ino,
        kind: FileKind,
        mode: u32,
        umask: u32,
    ) -> Reply<NewNode> {
        let dir = self.engine.getattr(layer, parent).map_err(engine_errno)?;
        let mut node = NewNode {
            kind,
            perm: (mode & 0o7777 & !umask) as u16,
            uid: caller.uid,
            gid: caller.gid,
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
            && node.gid != caller.gid
            && caller.uid != 0
        {
            node.perm &= !(libc::S_ISGID as u16);
        }
        Ok(node)
    }

    fn make(&self, layer: LayerId, dir: Ino, name: &[u8], node: &NewNode) -> Reply<FileAttr> {
        let a = self.engine.create(layer, dir, name, node).map_err(engine_errno)?;
        self.attr_of(layer, &a)
    }

    /// `LOOKUP`. A name missing in a layer stays missing until a change through this mount
    /// adds it (which the kernel sees), so the miss is answered as a negative entry (inode 0)
    /// the kernel may remember. Layer names at the mount root change through the API instead,
    /// so a missing layer is `ENOENT`.
    pub(crate) fn lookup(&self, parent: INodeNo, name: &[u8]) -> Reply<Entry> {
        let found = match self.node(parent)? {
            Node::MountRoot => {
                let name = std::str::from_utf8(name).map_err(|_| Errno::ENOENT)?;
                let layer = self.engine.layer(name).map_err(engine_errno)?;
                let a = self.engine.getattr(layer.id, ROOT_INO).map_err(engine_errno)?;
                return Ok(Entry { ttl: ROOT_TTL, attr: self.attr_of(layer.id, &a)? });
            }
            Node::File(layer, dir) => self.engine.lookup(layer, dir, name).map(|a| (layer, a)),
        };
        match found {
            Ok((layer, a)) => Ok(Entry { ttl: FILE_TTL, attr: self.attr_of(layer, &a)? }),
            Err(e) if errno(&e) == Errno::ENOENT => Ok(Entry { ttl: FILE_TTL, attr: negative_entry() }),
            Err(e) => Err(errno(&e)),
        }
    }

    /// `GETATTR`.
    pub(crate) fn getattr(&self, ino: INodeNo) -> Reply<Entry> {
        match self.node(ino)? {
            Node::MountRoot => {
                let layers = self.engine.layers().map_err(engine_errno)?.len();
                Ok(Entry { ttl: ROOT_TTL, attr: mount_root_attr(layers, self.mounted_at) })
            }
            Node::File(layer, ino) => {
                let a = self.engine.getattr(layer, ino).map_err(engine_errno)?;
                Ok(Entry { ttl: FILE_TTL, attr: self.attr_of(layer, &a)? })
            }
        }
    }

    /// `SETATTR`: changes attributes, dropping privileges as Linux does: a change of owner drops
    /// file capabilities and the set-id bits of non-directories; a truncation drops
    /// capabilities, and the set-id bits too unless root truncates.
    pub(crate) fn setattr(&self, caller: Caller, ino: INodeNo, set: &SetAttr) -> Reply<Entry> {
        let changed = self.file(ino, Errno::EPERM).and_then(|(layer, ino)| {
            let mut a = self.engine.setattr(layer, ino, set).map_err(engine_errno)?;
            let chown = (set.uid.is_some() || set.gid.is_some()) && set.perm.is_none();
            if chown || set.size.is_some() {
                let setid = chown || caller.uid != 0;
                self.engine.drop_privileges(layer, ino, setid).map_err(engine_errno)?;
                a = self.engine.getattr(layer, ino).map_err(engine_errno)?;
            }
            self.attr_of(layer, &a)
        });
        match changed {
            Ok(attr) => Ok(Entry { ttl: FILE_TTL, attr }),
            // With the writeback cache the kernel keeps a regular file's times itself and
            // sends them later, also for a file that was deleted in between (unlink marks the
            // inode's ctime dirty). Refusing would surface as a write-back error of the whole
            // mount at the next syncfs; the times of a file that is gone do not matter.
            Err(e) if e == Errno::ESTALE && self.writeback_cache && set.times_only() => {
                Ok(Entry { ttl: Duration::ZERO, attr: crate::attr::deleted_file(ino) })
            }
            Err(e) => Err(e),
        }
    }

    /// `READLINK`.
    pub(crate) fn readlink(&self, ino: INodeNo) -> Reply<Vec<u8>> {
        let (layer, ino) = self.file(ino, Errno::EINVAL)?;
        self.engine.read_link(layer, ino).map_err(engine_errno)
    }

    /// `MKNOD`: regular files, devices, FIFOs and sockets.
    pub(crate) fn mknod(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Reply<FileAttr> {
        let kind = if mode & libc::S_IFMT == 0 {
            FileKind::Regular
        } else {
            FileKind::from_mode(mode).ok_or(Errno::EINVAL)?
        };
        if kind == FileKind::Directory || kind == FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let mut node = self.new_node(caller, layer, dir, kind, mode, umask)?;
        node.rdev = u64::from(rdev);
        self.make(layer, dir, name, &node)
    }

    /// `MKDIR`.
    pub(crate) fn mkdir(&self, caller: Caller, parent: INodeNo, name: &[u8], mode: u32, umask: u32) -> Reply<FileAttr> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let node = self.new_node(caller, layer, dir, FileKind::Directory, mode, umask)?;
        self.make(layer, dir, name, &node)
    }

    /// `UNLINK`.
    pub(crate) fn unlink(&self, parent: INodeNo, name: &[u8]) -> Reply<()> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        self.engine.unlink(layer, dir, name).map_err(engine_errno)
    }

    /// `RMDIR`.
    pub(crate) fn rmdir(&self, parent: INodeNo, name: &[u8]) -> Reply<()> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        self.engine.rmdir(layer, dir, name).map_err(engine_errno)
    }

    /// `SYMLINK`.
    pub(crate) fn symlink(&self, caller: Caller, parent: INodeNo, name: &[u8], target: &[u8]) -> Reply<FileAttr> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let mut node = self.new_node(caller, layer, dir, FileKind::Symlink, 0o777, 0)?;
        node.perm = 0o777;
        node.target = target.to_vec();
        self.make(layer, dir, name, &node)
    }

    /// `RENAME` and `RENAME2`; `flags` are renameat2's.
    pub(crate) fn rename(
        &self,
        parent: INodeNo,
        name: &[u8],
        new_parent: INodeNo,
        new_name: &[u8],
        flags: u32,
    ) -> Reply<()> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let (new_layer, new_dir) = self.file(new_parent, Errno::EPERM)?;
        if layer != new_layer {
            return Err(Errno::EXDEV);
        }
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            // RENAME_WHITEOUT is overlayfs's; nothing here stacks on lcfs.
            return Err(Errno::EINVAL);
        }
        let flags = lcfs_engine::RenameFlags {
            no_replace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        self.engine.rename(layer, dir, name, new_dir, new_name, flags).map_err(engine_errno)
    }

    /// `LINK`.
    pub(crate) fn link(&self, ino: INodeNo, new_parent: INodeNo, new_name: &[u8]) -> Reply<FileAttr> {
        let (layer, ino) = self.file(ino, Errno::EPERM)?;
        let (new_layer, dir) = self.file(new_parent, Errno::EPERM)?;
        if layer != new_layer {
            return Err(Errno::EXDEV);
        }
        let a = self.engine.link(layer, ino, dir, new_name).map_err(engine_errno)?;
        self.attr_of(layer, &a)
    }

    /// `OPEN`; `flags` are open(2)'s. The handle opens with [`OPEN_FLAGS`].
    pub(crate) fn open(&self, ino: INodeNo, flags: i32) -> Reply<FileHandle> {
        let (layer, ino) = self.file(ino, Errno::EISDIR)?;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes && !self.writable(layer)? {
            return Err(Errno::EROFS);
        }
        self.engine.open_file(layer, ino).map_err(engine_errno)?;
        Ok(self.handles.insert(Handle::File { layer, ino }))
    }

    /// `READ` into `buf`; returns how many bytes were read (short only at the end of the file).
    pub(crate) fn read(&self, ino: INodeNo, offset: u64, buf: &mut [u8]) -> Reply<usize> {
        let (layer, ino) = self.file(ino, Errno::EISDIR)?;
        self.engine.read_into(layer, ino, offset, buf).map_err(engine_errno)
    }

    /// `WRITE`. The kernel flags writers without `CAP_FSETID` (`kill_suidgid`); file
    /// capabilities go on any write.
    pub(crate) fn write(&self, ino: INodeNo, offset: u64, data: &[u8], kill_suidgid: bool) -> Reply<u32> {
        let (layer, ino) = self.file(ino, Errno::EISDIR)?;
        let n = self.engine.write(layer, ino, offset, data).map_err(engine_errno)?;
        self.engine.drop_privileges(layer, ino, kill_suidgid).map_err(engine_errno)?;
        Ok(n as u32)
    }

    /// `RELEASE` and `RELEASEDIR`: forgets the handle. Never fails: the kernel does not wait.
    pub(crate) fn release(&self, fh: FileHandle) {
        if let Some(h) = self.handles.remove(fh)
            && let Handle::File { layer, ino } = *h
            && let Err(e) = self.engine.release_file(layer, ino)
        {
            warn!(layer = %layer, ino = %ino, error = %e, "releasing a file failed");
        }
    }

    /// `FSYNC` and `FSYNCDIR`: makes the file's layer durable.
    pub(crate) fn fsync(&self, ino: INodeNo) -> Reply<()> {
        let (layer, _) = self.file(ino, Errno::EINVAL)?;
        self.engine.sync_layer(layer).map_err(engine_errno)
    }

    /// `OPENDIR`: takes a snapshot of the directory, so offsets stay stable.
    pub(crate) fn opendir(&self, ino: INodeNo) -> Reply<FileHandle> {
        let mut items = Vec::new();
        let dot = |name: &str, ino| DirItem { ino, kind: FileType::Directory, name: OsString::from(name) };
        match self.node(ino)? {
            Node::MountRoot => {
                items.push(dot(".", INodeNo::ROOT));
                items.push(dot("..", INodeNo::ROOT));
                for layer in self.engine.layers().map_err(engine_errno)? {
                    if let Some(root) = Node::layer_root(layer.id) {
                        items.push(DirItem { ino: root, kind: FileType::Directory, name: layer.name.into() });
                    }
                }
            }
            Node::File(layer, dir) => {
                let entries = self.engine.read_dir(layer, dir, None, usize::MAX).map_err(engine_errno)?;
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

    /// The listing `opendir` took for `fh` (`READDIR`, `READDIRPLUS`).
    pub(crate) fn listing(&self, fh: FileHandle) -> Reply<Listing> {
        match self.handles.get(fh) {
            Some(h) if matches!(*h, Handle::Dir { .. }) => Ok(Listing(h)),
            _ => Err(Errno::EBADF),
        }
    }

    /// `STATFS`.
    pub(crate) fn statfs(&self) -> Reply<StatFs> {
        self.engine.statfs().map_err(engine_errno)
    }

    /// `SETXATTR`; `flags` are setxattr(2)'s.
    pub(crate) fn setxattr(&self, ino: INodeNo, name: &[u8], value: &[u8], flags: i32, position: u32) -> Reply<()> {
        let (layer, ino) = self.file(ino, Errno::EPERM)?;
        if position != 0 {
            return Err(Errno::EINVAL);
        }
        if (name == acl::ACCESS || name == acl::DEFAULT) && !acl::is_valid(value) {
            return Err(Errno::EINVAL);
        }
        let mode = match flags {
            0 => XattrMode::Upsert,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return Err(Errno::EINVAL),
        };
        self.engine.set_xattr(layer, ino, name, value, mode).map_err(engine_errno)
    }

    /// `GETXATTR` for a caller whose buffer holds `size` bytes.
    pub(crate) fn getxattr(&self, ino: INodeNo, name: &[u8], size: u32) -> Reply<XattrAnswer> {
        let (layer, ino) = self.file(ino, Errno::ENODATA)?;
        XattrAnswer::for_buffer(size, self.engine.get_xattr(layer, ino, name).map_err(engine_errno)?)
    }

    /// `LISTXATTR` for a caller whose buffer holds `size` bytes: names, each ended by a NUL.
    pub(crate) fn listxattr(&self, ino: INodeNo, size: u32) -> Reply<XattrAnswer> {
        let names = match self.node(ino)? {
            Node::MountRoot => Vec::new(),
            Node::File(layer, ino) => self.engine.list_xattr(layer, ino).map_err(engine_errno)?,
        };
        let mut list = Vec::new();
        for n in names {
            list.extend_from_slice(&n);
            list.push(0);
        }
        XattrAnswer::for_buffer(size, list)
    }

    /// `REMOVEXATTR`.
    pub(crate) fn removexattr(&self, ino: INodeNo, name: &[u8]) -> Reply<()> {
        let (layer, ino) = self.file(ino, Errno::EPERM)?;
        self.engine.remove_xattr(layer, ino, name).map_err(engine_errno)
    }

    /// `ACCESS`: mode bits are the kernel's to check; what it cannot know is which layers are
    /// read-only.
    pub(crate) fn access(&self, ino: INodeNo, mask: i32) -> Reply<()> {
        let wants_write = mask & libc::W_OK != 0;
        match self.node(ino)? {
            Node::File(layer, ino) if wants_write => {
                self.engine.getattr(layer, ino).map_err(engine_errno)?;
                if self.writable(layer)? { Ok(()) } else { Err(Errno::EROFS) }
            }
            Node::MountRoot if wants_write => Err(Errno::EROFS),
            _ => Ok(()),
        }
    }

    /// `CREATE`: makes a regular file and opens it.
    pub(crate) fn create(
        &self,
        caller: Caller,
        parent: INodeNo,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Reply<(FileAttr, FileHandle)> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let node = self.new_node(caller, layer, dir, FileKind::Regular, mode, umask)?;
        let attr = self.make(layer, dir, name, &node)?;
        let fh = self.open(attr.ino, flags)?;
        Ok((attr, fh))
    }

    /// `TMPFILE` (`O_TMPFILE`): a regular file without a name, already open; it goes away at
    /// its release unless `LINK` names it first.
    pub(crate) fn tmpfile(
        &self,
        caller: Caller,
        parent: INodeNo,
        mode: u32,
        umask: u32,
    ) -> Reply<(FileAttr, FileHandle)> {
        let (layer, dir) = self.file(parent, Errno::EPERM)?;
        let node = self.new_node(caller, layer, dir, FileKind::Regular, mode, umask)?;
        let a = self.engine.create_unnamed(layer, dir, &node).map_err(engine_errno)?;
        let attr = self.attr_of(layer, &a)?;
        Ok((attr, self.handles.insert(Handle::File { layer, ino: a.ino })))
    }

    /// `FALLOCATE`; `mode` is fallocate(2)'s. The kernel does not say whether the caller holds
    /// `CAP_FSETID` here, so set-id bits go for every caller but root.
    pub(crate) fn fallocate(&self, caller: Caller, ino: INodeNo, offset: u64, length: u64, mode: i32) -> Reply<()> {
        let (layer, ino) = self.file(ino, Errno::EISDIR)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let mode = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => FallocateMode::Allocate { keep_size },
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => FallocateMode::PunchHole,
            libc::FALLOC_FL_ZERO_RANGE => FallocateMode::ZeroRange { keep_size },
            _ => return Err(Errno::EOPNOTSUPP),
        };
        self.engine.fallocate(layer, ino, offset, length, mode).map_err(engine_errno)?;
        self.engine.drop_privileges(layer, ino, caller.uid != 0).map_err(engine_errno)
    }

    /// `COPY_FILE_RANGE`: copies up to `len` bytes from `(file, offset)` to `(file, offset)`.
    pub(crate) fn copy_file_range(
        &self,
        caller: Caller,
        from: (INodeNo, u64),
        to: (INodeNo, u64),
        len: u64,
    ) -> Reply<u32> {
        let (src_layer, src) = self.file(from.0, Errno::EISDIR)?;
        let (dst_layer, dst) = self.file(to.0, Errno::EISDIR)?;
        let len = len.min(u64::from(u32::MAX));
        let mut buf = vec![0u8; len.min(u64::from(MAX_IO)) as usize];
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let n = self.engine.read_into(src_layer, src, from.1 + done, &mut buf[..want]).map_err(engine_errno)?;
            if n == 0 {
                break;
            }
            self.engine.write(dst_layer, dst, to.1 + done, &buf[..n]).map_err(engine_errno)?;
            done += n as u64;
        }
        self.engine.drop_privileges(dst_layer, dst, caller.uid != 0).map_err(engine_errno)?;
        Ok(done as u32)
    }
}

#[cfg(test)]
mod tests {
    //! The operations over an engine on a memory device: no root, no `/dev/fuse` needed. The
    //! end-to-end tests under `tests/` run the same behaviour through a real mount.

    use std::collections::BTreeMap;

    use lcfs_engine::device::{Device, MemDevice};
    use lcfs_engine::{FormatOptions, OpenOptions};

    use super::*;

    const ROOT_CALLER: Caller = Caller { uid: 0, gid: 0 };

    fn fs() -> LcfsFs {
        let device: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
        Engine::format(&device, &FormatOptions::default()).expect("format");
        let options = OpenOptions { checkpoint_interval: None, ..OpenOptions::default() };
        LcfsFs::new(Engine::open(device, &options).expect("open"), true)
    }

    /// Creates writable layer `name` (on `parent`) and returns its directory's number.
    fn layer(fs: &LcfsFs, name: &str, parent: Option<&str>) -> INodeNo {
        fs.engine.create_layer(name, parent, LayerKind::Writable, BTreeMap::new()).expect("layer");
        fs.lookup(INodeNo::ROOT, name.as_bytes()).expect("layer directory").attr.ino
    }

    fn write_file(fs: &LcfsFs, dir: INodeNo, name: &str, data: &[u8]) -> INodeNo {
        let (attr, fh) = fs.create(ROOT_CALLER, dir, name.as_bytes(), 0o644, 0o022, libc::O_RDWR).expect("create");
        assert_eq!(fs.write(attr.ino, 0, data, false).expect("write") as usize, data.len());
        fs.release(fh);
        attr.ino
    }

    fn read_all(fs: &LcfsFs, ino: INodeNo) -> Vec<u8> {
        let size = fs.getattr(ino).expect("getattr").attr.size as usize;
        let mut buf = vec![0u8; size + 10];
        let n = fs.read(ino, 0, &mut buf).expect("read");
        buf.truncate(n);
        buf
    }

    #[test]
    fn the_mount_root_shows_layers_and_a_missing_file_is_a_negative_entry() {
        let fs = fs();
        let dir = layer(&fs, "base", None);
        assert_eq!(fs.getattr(INodeNo::ROOT).expect("root").attr.kind, FileType::Directory);
        assert_eq!(fs.lookup(INodeNo::ROOT, b"missing-layer").map(|_| ()), Err(Errno::ENOENT));
        let miss = fs.lookup(dir, b"missing-file").expect("a miss is an answer");
        assert_eq!((miss.attr.ino, miss.ttl), (INodeNo(0), FILE_TTL), "a negative entry the kernel may keep");
        let fh = fs.opendir(INodeNo::ROOT).expect("opendir");
        let names: Vec<_> = fs.listing(fh).expect("listing").entries_after(0).map(|(_, d)| d.name.clone()).collect();
        assert!(names.iter().any(|n| n == "base"), "{names:?}");
        fs.release(fh);
    }

    #[test]
    fn data_written_reads_back_and_a_child_layer_sees_its_parent() {
        let fs = fs();
        let base = layer(&fs, "base", None);
        let f = write_file(&fs, base, "f", b"hello lcfs");
        assert_eq!(read_all(&fs, f), b"hello lcfs");
        fs.engine.commit_layer("base", "base@1", None).expect("commit");
        let child = layer(&fs, "child", Some("base@1"));
        let inherited = fs.lookup(child, b"f").expect("lookup").attr.ino;
        assert_eq!(read_all(&fs, inherited), b"hello lcfs");
        assert_eq!(fs.write(inherited, 0, b"HELLO", false).expect("copy on write"), 5);
        assert_eq!(read_all(&fs, inherited), b"HELLO lcfs");
        let committed = fs.lookup(INodeNo::ROOT, b"base@1").expect("committed layer").attr.ino;
        let original = fs.lookup(committed, b"f").expect("lookup").attr.ino;
        assert_eq!(read_all(&fs, original), b"hello lcfs", "the parent does not change");
    }

    #[test]
    fn committed_layers_are_read_only_and_nothing_crosses_layers() {
        let fs = fs();
        let a = layer(&fs, "a", None);
        let f = write_file(&fs, a, "f", b"x");
        let b = layer(&fs, "b", None);
        assert_eq!(fs.link(f, b, b"g").map(|_| ()), Err(Errno::EXDEV));
        assert_eq!(fs.rename(a, b"f", b, b"g", 0), Err(Errno::EXDEV));
        fs.engine.commit_layer("a", "a@1", None).expect("commit");
        let committed = fs.lookup(INodeNo::ROOT, b"a@1").expect("layer").attr.ino;
        let created = fs.create(ROOT_CALLER, committed, b"new", 0o644, 0, libc::O_RDWR);
        assert_eq!(created.map(|_| ()), Err(Errno::EROFS));
        let f = fs.lookup(committed, b"f").expect("lookup").attr.ino;
        assert_eq!(fs.write(f, 0, b"y", false), Err(Errno::EROFS));
        assert_eq!(fs.unlink(committed, b"f"), Err(Errno::EROFS));
    }

    #[test]
    fn a_set_group_id_directory_hands_its_group_down() {
        let fs = fs();
        let l = layer(&fs, "l", None);
        let dir = fs.mkdir(ROOT_CALLER, l, b"shared", 0o2775, 0).expect("mkdir");
        let set = SetAttr { gid: Some(50), ..SetAttr::default() };
        fs.setattr(ROOT_CALLER, dir.ino, &set).expect("chgrp");
        fs.setattr(ROOT_CALLER, dir.ino, &SetAttr { perm: Some(0o2775), ..SetAttr::default() }).expect("chmod");
        let user = Caller { uid: 1000, gid: 1000 };
        let (file, fh) = fs.create(user, dir.ino, b"f", 0o644, 0o022, libc::O_RDWR).expect("create");
        fs.release(fh);
        assert_eq!((file.uid, file.gid), (1000, 50), "the file takes the directory's group");
        let sub = fs.mkdir(user, dir.ino, b"sub", 0o755, 0o022).expect("mkdir");
        assert_eq!(sub.gid, 50);
        assert_ne!(u32::from(sub.perm) & libc::S_ISGID, 0, "a subdirectory inherits the bit");
    }

    #[test]
    fn xattrs_answer_size_first_and_refuse_a_short_buffer() {
        let fs = fs();
        let l = layer(&fs, "l", None);
        let f = write_file(&fs, l, "f", b"");
        fs.setxattr(f, b"user.k", b"value", 0, 0).expect("setxattr");
        assert_eq!(fs.getxattr(f, b"user.k", 0), Ok(XattrAnswer::Size(5)));
        assert_eq!(fs.getxattr(f, b"user.k", 5), Ok(XattrAnswer::Data(b"value".to_vec())));
        assert_eq!(fs.getxattr(f, b"user.k", 2), Err(Errno::ERANGE));
        assert_eq!(fs.listxattr(f, 0), Ok(XattrAnswer::Size(7)), "\"user.k\\0\"");
        assert!(fs.getxattr(f, b"user.missing", 0).is_err());
    }

    #[test]
    fn a_listing_keeps_its_offsets_while_the_directory_changes() {
        let fs = fs();
        let l = layer(&fs, "l", None);
        for name in ["a", "b", "c"] {
            write_file(&fs, l, name, b"");
        }
        let fh = fs.opendir(l).expect("opendir");
        fs.unlink(l, b"a").expect("unlink");
        write_file(&fs, l, "d", b"");
        let listing = fs.listing(fh).expect("listing");
        let all: Vec<_> = listing.entries_after(0).map(|(next, d)| (next, d.name.clone())).collect();
        let names: Vec<_> = all.iter().map(|(_, n)| n.to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"a".to_string()) && !names.contains(&"d".to_string()), "{names:?}");
        // Resuming after the first entry gives the rest, in the same order.
        let rest: Vec<_> = listing.entries_after(all[0].0).map(|(_, d)| d.name.clone()).collect();
        assert_eq!(rest, all[1..].iter().map(|(_, n)| n.clone()).collect::<Vec<_>>());
        fs.release(fh);
    }

    #[test]
    fn an_unlinked_open_file_reads_until_its_release() {
        let fs = fs();
        let l = layer(&fs, "l", None);
        let f = write_file(&fs, l, "f", b"still here");
        let fh = fs.open(f, libc::O_RDONLY).expect("open");
        fs.unlink(l, b"f").expect("unlink");
        assert_eq!(read_all(&fs, f), b"still here");
        fs.release(fh);
        assert_eq!(fs.getattr(f).map(|_| ()), Err(Errno::ESTALE), "gone with its last handle");
    }

    #[test]
    fn statfs_counts_the_devices_blocks() {
        let fs = fs();
        let before = fs.statfs().expect("statfs");
        assert!(before.blocks > 0 && before.blocks_free <= before.blocks);
        let l = layer(&fs, "l", None);
        write_file(&fs, l, "f", &vec![7u8; 1 << 20]);
        let after = fs.statfs().expect("statfs");
        assert!(after.blocks_free + 256 <= before.blocks_free, "{before:?} then {after:?}");
    }

    #[test]
    fn xattr_answers_follow_the_callers_buffer() {
        assert_eq!(XattrAnswer::for_buffer(0, b"abc".to_vec()), Ok(XattrAnswer::Size(3)));
        assert_eq!(XattrAnswer::for_buffer(2, b"abc".to_vec()), Err(Errno::ERANGE));
        assert_eq!(XattrAnswer::for_buffer(3, b"abc".to_vec()), Ok(XattrAnswer::Data(b"abc".to_vec())));
    }
}
