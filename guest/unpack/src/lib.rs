//! Applies OCI image layers to an engine layer in process.
//!
//! containerd normally unpacks a layer by extracting its tar into the snapshot's mount; through
//! FUSE that costs about eight round trips per file. This crate writes the entries straight
//! into the engine instead, with the semantics of containerd's own applier (the reference the
//! `native` snapshotter shows):
//!
//! - entry paths are cleaned and kept inside the layer (`../` stops at the root, absolute
//!   paths start at the root);
//! - symbolic links met on the way to an entry resolve inside the layer too, an absolute target
//!   starting again at the layer's root;
//! - missing parent directories are created (mode 0755, owned by root);
//! - `.wh.<name>` deletes `<name>` (a whole tree if it is a directory), `.wh..wh..opq` empties
//!   its directory of everything this layer did not add itself, other `.wh..wh.` names are
//!   ignored;
//! - an existing entry is replaced, except a directory that the tar also names as a directory,
//!   which keeps its contents and takes the new attributes;
//! - owners, modes (set-id bits included), device numbers, PAX times and `SCHILY.xattr.`
//!   extended attributes are kept; directory times are set after the last entry.
//!
//! [`apply`] also digests the uncompressed stream: containerd checks that digest against the
//! image's `diff_ids`.

#![forbid(unsafe_code)]

mod path;

use std::cell::Cell;
use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use lcfs_engine::{Attr, Engine, FileKind, Ino, LayerId, NewNode, ROOT_INO, SetAttr, SetTime, Timestamp};
use sha2::{Digest, Sha256};

use path::EntryPath;

/// Bytes handed to the engine per write while copying a file's data.
const COPY_CHUNK: usize = 1 << 20;
/// Symbolic links followed while resolving one path before giving up (Linux's limit).
const MAX_SYMLINKS: usize = 40;
/// Entries read per directory listing while deleting a tree.
const LIST_BATCH: usize = 1024;

/// What [`apply`] read: the digest and size of the uncompressed tar (containerd's diff id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed stream.
    pub digest: String,
    /// Bytes of the uncompressed stream.
    pub size: u64,
}

/// Why a layer could not be applied. Entries before the failing one stay applied: the caller
/// discards the layer, as containerd does with a failed unpack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The stream could not be read, decompressed or parsed as tar.
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    /// An entry that cannot be applied as it stands.
    #[error("tar entry {path:?}: {detail}")]
    BadEntry { path: String, detail: String },
    /// The engine refused an operation.
    #[error("tar entry {path:?}: {what}: {source}")]
    Engine {
        path: String,
        what: &'static str,
        #[source]
        source: Box<lcfs_engine::Error>,
    },
}

/// Whether [`apply`] understands layers of this OCI or Docker media type; anything else
/// (encrypted layers, other formats) is for another applier.
pub fn supported_media_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// Applies the layer tar read from `blob` (plain, gzip or zstd, told apart by their magic
/// numbers as containerd does) to the writable layer `layer`.
pub fn apply(engine: &Engine, layer: LayerId, blob: impl Read) -> Result<Applied, UnpackError> {
    let mut blob = BufReader::with_capacity(COPY_CHUNK, blob);
    let magic = blob.fill_buf().map_err(UnpackError::Read)?;
    let plain: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(blob))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(blob).map_err(UnpackError::Read)?)
    } else {
        Box::new(blob)
    };
    let between_entries = Rc::new(HeaderBudget::default());
    let mut digested =
        DigestingReader { inner: plain, hasher: Sha256::new(), bytes: 0, budget: between_entries.clone() };
    {
        let mut archive = tar::Archive::new(&mut digested);
        let mut unpacker = Unpacker { engine, layer, added: HashSet::new(), dir_times: Vec::new() };
        let mut entries = archive.entries().map_err(UnpackError::Read)?;
        loop {
            // What the tar crate reads to find the next entry (padding, PAX and GNU long-name
            // headers, which it holds in memory whole) is capped, as Go's reader caps them.
            between_entries.arm();
            let Some(entry) = entries.next() else { break };
            between_entries.disarm();
            let mut entry = entry.map_err(UnpackError::Read)?;
            unpacker.entry(&mut entry)?;
            // Whatever data the entry had and was not applied is read here, outside the cap.
            io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Read)?;
        }
        between_entries.disarm();
        unpacker.finish()?;
    }
    // The digest covers the whole stream, including the padding after the end-of-archive blocks.
    io::copy(&mut digested, &mut io::sink()).map_err(UnpackError::Read)?;
    let hex: String = digested.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Applied { digest: format!("sha256:{hex}"), size: digested.bytes })
}

/// Hashes and counts what passes through, and enforces [`HeaderBudget`].
struct DigestingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    budget: Rc<HeaderBudget>,
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.budget.spend(n)?;
        Ok(n)
    }
}

/// Bytes the tar reader may read between two entries: a GNU long name, a long link name and a
/// PAX header of up to 1 MiB each (Go's limit), plus headers and padding.
const HEADER_BUDGET: u64 = 3 * (1 << 20) + 8 * 512;

/// The bytes left to read before the next entry, while armed.
#[derive(Debug, Default)]
struct HeaderBudget {
    left: Cell<Option<u64>>,
}

impl HeaderBudget {
    fn arm(&self) {
        self.left.set(Some(HEADER_BUDGET));
    }

    fn disarm(&self) {
        self.left.set(None);
    }

    fn spend(&self, n: usize) -> io::Result<()> {
        let Some(left) = self.left.get() else { return Ok(()) };
        match left.checked_sub(n as u64) {
            Some(left) => {
                self.left.set(Some(left));
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tar extension headers (PAX or GNU long names) larger than 1 MiB each",
            )),
        }
    }
}

/// The attributes a tar header gives an entry.
struct Meta {
    perm: u16,
    uid: u32,
    gid: u32,
    atime: Timestamp,
    mtime: Timestamp,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// The header's owner and mode, for an object that already exists.
    fn owner_and_mode(&self) -> SetAttr {
        SetAttr { perm: Some(self.perm), uid: Some(self.uid), gid: Some(self.gid), ..SetAttr::default() }
    }
}

/// The state of one [`apply`].
struct Unpacker<'e> {
    engine: &'e Engine,
    layer: LayerId,
    /// Names this layer added or kept, as (directory, name): an opaque marker spares them.
    added: HashSet<(Ino, Vec<u8>)>,
    /// Directories whose times are set once every entry is in.
    dir_times: Vec<(Ino, Timestamp, Timestamp)>,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let path = EntryPath::parse(&raw);
        let Some(name) = path.name() else {
            // The root itself ("./"): containerd leaves the root's attributes alone.
            return Ok(());
        };
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let dir = self.resolve_dir(path.parent(), true, &shown)?;

        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                return self.make_opaque(dir, &shown);
            }
            if hidden.starts_with(b".wh.") {
                // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
                return Ok(());
            }
            return match self.lookup(dir, hidden, &shown)? {
                Some(existing) => self.remove_tree(dir, hidden, existing.kind, existing.ino, &shown),
                None => Ok(()),
            };
        }

        let meta = self.meta(entry, &shown)?;
        let existing = self.lookup(dir, name, &shown)?;
        let keep_dir = matches!(&existing, Some(a) if a.kind == FileKind::Directory) && kind.is_dir();
        if let Some(existing) = existing.as_ref().filter(|_| !keep_dir) {
            self.remove_tree(dir, name, existing.kind, existing.ino, &shown)?;
        }
        let engine = self.engine;
        let layer = self.layer;
        let fail = |what, source| UnpackError::Engine { path: shown.clone(), what, source: Box::new(source) };
        let node = |kind: FileKind, rdev: u64, target: Vec<u8>| NewNode {
            kind,
            perm: meta.perm,
            uid: meta.uid,
            gid: meta.gid,
            rdev,
            target,
            xattrs: meta.xattrs.iter().cloned().collect(),
        };

        let ino = match kind {
            tar::EntryType::Directory => {
                let ino = match existing.filter(|_| keep_dir) {
                    Some(existing) => {
                        engine
                            .setattr(layer, existing.ino, &meta.owner_and_mode())
                            .map_err(|e| fail("setting attributes", e))?;
                        self.set_xattrs(existing.ino, &meta.xattrs, &shown)?;
                        existing.ino
                    }
                    None => {
                        let node = node(FileKind::Directory, 0, Vec::new());
                        engine.create(layer, dir, name, &node).map_err(|e| fail("creating directory", e))?.ino
                    }
                };
                self.dir_times.push((ino, meta.atime, meta.mtime));
                self.added.insert((dir, name.to_vec()));
                return Ok(());
            }
            // As in containerd, sparse and contiguous entries are refused (below).
            tar::EntryType::Regular => {
                let node = node(FileKind::Regular, 0, Vec::new());
                let ino = engine.create(layer, dir, name, &node).map_err(|e| fail("creating file", e))?.ino;
                self.copy_data(entry, ino, &shown)?;
                ino
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                if target.is_empty() {
                    return Err(UnpackError::BadEntry { path: shown, detail: "symbolic link without a target".into() });
                }
                let mut node = node(FileKind::Symlink, 0, target);
                node.perm = 0o777;
                engine.create(layer, dir, name, &node).map_err(|e| fail("creating symbolic link", e))?.ino
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
                let target_path = EntryPath::parse(&target);
                let Some(target_name) = target_path.name() else {
                    return Err(UnpackError::BadEntry { path: shown, detail: "hard link to the layer's root".into() });
                };
                let target_dir = self.resolve_dir(target_path.parent(), false, &shown)?;
                let Some(target_attr) = self.lookup(target_dir, target_name, &shown)? else {
                    let detail = format!("hard link target {:?} does not exist", String::from_utf8_lossy(&target));
                    return Err(UnpackError::BadEntry { path: shown, detail });
                };
                if target_attr.kind == FileKind::Directory {
                    return Err(UnpackError::BadEntry { path: shown, detail: "hard link to a directory".into() });
                }
                engine.link(layer, target_attr.ino, dir, name).map_err(|e| fail("creating hard link", e))?;
                // Like containerd, the link's header sets owner and mode of the shared file,
                // unless it is a symbolic link.
                if target_attr.kind != FileKind::Symlink {
                    engine
                        .setattr(layer, target_attr.ino, &meta.owner_and_mode())
                        .map_err(|e| fail("setting attributes", e))?;
                }
                target_attr.ino
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let header = entry.header();
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let kind = match kind {
                    tar::EntryType::Char => FileKind::CharDevice,
                    tar::EntryType::Block => FileKind::BlockDevice,
                    _ => FileKind::Fifo,
                };
                let rdev = if kind == FileKind::Fifo { 0 } else { libc::makedev(major, minor) };
                engine
                    .create(layer, dir, name, &node(kind, rdev, Vec::new()))
                    .map_err(|e| fail("creating node", e))?
                    .ino
            }
            other => {
                let detail = format!("unsupported tar entry type {:?}", other.as_byte() as char);
                return Err(UnpackError::BadEntry { path: shown, detail });
            }
        };
        let times = SetAttr {
            atime: Some(SetTime::At(meta.atime)),
            mtime: Some(SetTime::At(meta.mtime)),
            ..SetAttr::default()
        };
        engine.setattr(layer, ino, &times).map_err(|e| fail("setting times", e))?;
        self.added.insert((dir, name.to_vec()));
        Ok(())
    }

    /// Sets directory times last: adding entries to a directory changes its modification time.
    fn finish(self) -> Result<(), UnpackError> {
        // In tar order, so the last header naming a directory sets its times, as in containerd.
        for (ino, atime, mtime) in self.dir_times {
            let set =
                SetAttr { atime: Some(SetTime::At(atime)), mtime: Some(SetTime::At(mtime)), ..SetAttr::default() };
            // A directory removed by a later whiteout is gone; that is not an error.
            match self.engine.setattr(self.layer, ino, &set) {
                Ok(_) | Err(lcfs_engine::Error::NotFound | lcfs_engine::Error::Stale(_)) => {}
                Err(source) => {
                    return Err(UnpackError::Engine {
                        path: format!("inode {ino}"),
                        what: "setting times",
                        source: Box::new(source),
                    });
                }
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta, UnpackError> {
        let bad = |detail: String| UnpackError::BadEntry { path: shown.to_string(), detail };
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(&old.mode, header.mode().map(u64::from)).map_err(|e| bad(format!("bad mode: {e}")))?;
        let perm = (mode & 0o7777) as u16;
        let mut uid = numeric(&old.uid, header.uid()).map_err(|e| bad(format!("bad uid: {e}")))?;
        let mut gid = numeric(&old.gid, header.gid()).map_err(|e| bad(format!("bad gid: {e}")))?;
        let mtime = numeric(&old.mtime, header.mtime()).map_err(|e| bad(format!("bad mtime: {e}")))?;
        let mut mtime = Timestamp::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(UnpackError::Read)? {
            for record in pax {
                let record = record.map_err(UnpackError::Read)?;
                let key = record.key_bytes();
                let value = record.value_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((name.to_vec(), value.to_vec()));
                    continue;
                }
                let text = std::str::from_utf8(value).unwrap_or("");
                match key {
                    b"uid" => uid = text.parse().map_err(|_| bad(format!("bad PAX uid {text:?}")))?,
                    b"gid" => gid = text.parse().map_err(|_| bad(format!("bad PAX gid {text:?}")))?,
                    b"mtime" => mtime = pax_time(text).ok_or_else(|| bad(format!("bad PAX mtime {text:?}")))?,
                    b"atime" => atime = Some(pax_time(text).ok_or_else(|| bad(format!("bad PAX atime {text:?}")))?),
                    _ => {}
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad(format!("uid {uid} does not fit 32 bits")))?;
        let gid = u32::try_from(gid).map_err(|_| bad(format!("gid {gid} does not fit 32 bits")))?;
        Ok(Meta { perm, uid, gid, atime: atime.unwrap_or(mtime), mtime, xattrs })
    }

    fn copy_data<R: Read>(&self, entry: &mut tar::Entry<'_, R>, ino: Ino, shown: &str) -> Result<(), UnpackError> {
        let mut buf = vec![0u8; COPY_CHUNK.min(usize::try_from(entry.size()).unwrap_or(COPY_CHUNK)).max(1)];
        let mut offset = 0u64;
        loop {
            let n = read_full(entry, &mut buf).map_err(UnpackError::Read)?;
            if n == 0 {
                return Ok(());
            }
            self.engine.write(self.layer, ino, offset, &buf[..n]).map_err(|source| UnpackError::Engine {
                path: shown.to_string(),
                what: "writing data",
                source: Box::new(source),
            })?;
            offset += n as u64;
        }
    }

    fn set_xattrs(&self, ino: Ino, xattrs: &[(Vec<u8>, Vec<u8>)], shown: &str) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            self.engine.set_xattr(self.layer, ino, name, value, lcfs_engine::XattrMode::Upsert).map_err(|source| {
                UnpackError::Engine {
                    path: shown.to_string(),
                    what: "setting an extended attribute",
                    source: Box::new(source),
                }
            })?;
        }
        Ok(())
    }

    fn lookup(&self, dir: Ino, name: &[u8], shown: &str) -> Result<Option<Attr>, UnpackError> {
        match self.engine.lookup(self.layer, dir, name) {
            Ok(attr) => Ok(Some(attr)),
            Err(lcfs_engine::Error::NotFound) => Ok(None),
            Err(source) => {
                Err(UnpackError::Engine { path: shown.to_string(), what: "looking up", source: Box::new(source) })
            }
        }
    }

    /// The directory `components` name, symbolic links followed inside the layer. Missing
    /// directories are created when `create` is set (mode 0755, owned by root, as containerd
    /// does), and are an error otherwise.
    fn resolve_dir(&mut self, components: &[Vec<u8>], create: bool, shown: &str) -> Result<Ino, UnpackError> {
        let bad = |detail: &str| UnpackError::BadEntry { path: shown.to_string(), detail: detail.to_string() };
        let mut stack = vec![ROOT_INO];
        let mut pending: std::collections::VecDeque<Vec<u8>> = components.iter().cloned().collect();
        let mut links = 0;
        while let Some(component) = pending.pop_front() {
            if component == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            if component.is_empty() || component == b"." {
                continue;
            }
            let dir = *stack.last().unwrap_or(&ROOT_INO);
            match self.lookup(dir, &component, shown)? {
                Some(attr) if attr.kind == FileKind::Directory => stack.push(attr.ino),
                Some(attr) if attr.kind == FileKind::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(bad("too many levels of symbolic links"));
                    }
                    let target = self.engine.read_link(self.layer, attr.ino).map_err(|source| UnpackError::Engine {
                        path: shown.to_string(),
                        what: "reading a symbolic link",
                        source: Box::new(source),
                    })?;
                    if target.starts_with(b"/") {
                        // Absolute targets start again at the layer's root, never the host's.
                        stack.truncate(1);
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        pending.push_front(part.to_vec());
                    }
                }
                Some(_) => return Err(bad("a parent is not a directory")),
                None if create => {
                    let node = NewNode::dir(0o755, 0, 0);
                    let attr = self.engine.create(self.layer, dir, &component, &node).map_err(|source| {
                        UnpackError::Engine {
                            path: shown.to_string(),
                            what: "creating a parent directory",
                            source: Box::new(source),
                        }
                    })?;
                    // Not recorded as added: containerd's opaque markers remove implicit
                    // parents too.
                    stack.push(attr.ino);
                }
                None => return Err(bad("a parent directory does not exist")),
            }
        }
        Ok(*stack.last().unwrap_or(&ROOT_INO))
    }

    /// Removes everything below `dir` this layer did not add (`.wh..wh..opq`). As containerd
    /// does, directories this layer kept are searched too, so what a lower layer put in them
    /// goes as well.
    fn make_opaque(&mut self, dir: Ino, shown: &str) -> Result<(), UnpackError> {
        let mut dirs = vec![dir];
        while let Some(dir) = dirs.pop() {
            for entry in self.list(dir, shown)? {
                if !self.added.contains(&(dir, entry.name.clone())) {
                    self.remove_tree(dir, &entry.name, entry.kind, entry.ino, shown)?;
                } else if entry.kind == FileKind::Directory {
                    dirs.push(entry.ino);
                }
            }
        }
        Ok(())
    }

    /// Removes `name` from `dir`, with everything below it if it is a directory. The walk
    /// keeps its own stack: a tar can make a tree deeper than the thread's stack.
    fn remove_tree(&mut self, dir: Ino, name: &[u8], kind: FileKind, ino: Ino, shown: &str) -> Result<(), UnpackError> {
        let fail = |what, source| UnpackError::Engine { path: shown.to_string(), what, source: Box::new(source) };
        // (directory, name, inode if it is a directory, whether its children were queued)
        let mut stack = vec![(dir, name.to_vec(), (kind == FileKind::Directory).then_some(ino), false)];
        while let Some((parent, name, dir_ino, expanded)) = stack.pop() {
            match dir_ino {
                Some(ino) if !expanded => {
                    let children = self.list(ino, shown)?;
                    stack.push((parent, name, dir_ino, true));
                    for entry in children {
                        let is_dir = entry.kind == FileKind::Directory;
                        stack.push((ino, entry.name, is_dir.then_some(entry.ino), false));
                    }
                    continue;
                }
                Some(_) => self.engine.rmdir(self.layer, parent, &name).map_err(|e| fail("removing a directory", e))?,
                None => self.engine.unlink(self.layer, parent, &name).map_err(|e| fail("removing", e))?,
            }
            self.added.remove(&(parent, name));
        }
        Ok(())
    }

    fn list(&self, dir: Ino, shown: &str) -> Result<Vec<lcfs_engine::DirEntry>, UnpackError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|e: &lcfs_engine::DirEntry| e.name.clone());
            let batch = self.engine.read_dir(self.layer, dir, after.as_deref(), LIST_BATCH).map_err(|source| {
                UnpackError::Engine { path: shown.to_string(), what: "listing a directory", source: Box::new(source) }
            })?;
            let done = batch.len() < LIST_BATCH;
            all.extend(batch.into_iter().filter(|e| e.name != b"." && e.name != b".."));
            if done {
                return Ok(all);
            }
        }
    }
}

/// A numeric header field; an empty one (all NULs or spaces) is zero, as Go's archive/tar
/// (containerd's reader) takes it.
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    if raw.iter().all(|&b| b == 0 || b == b' ') { Ok(0) } else { parsed }
}

/// Reads until `buf` is full or the entry ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A PAX time: seconds since the epoch with an optional fraction ("1700000000.123456789").
fn pax_time(text: &str) -> Option<Timestamp> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    Some(match (negative, nanos) {
        (false, _) => Timestamp::new(secs, nanos),
        (true, 0) => Timestamp::new(secs.checked_neg()?, 0),
        (true, _) => Timestamp::new(secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_their_fraction() {
        assert_eq!(pax_time("1700000000"), Some(Timestamp::new(1_700_000_000, 0)));
        assert_eq!(pax_time("1700000000.5"), Some(Timestamp::new(1_700_000_000, 500_000_000)));
        assert_eq!(pax_time("1.000000001"), Some(Timestamp::new(1, 1)));
        assert_eq!(pax_time("-1.5"), Some(Timestamp::new(-2, 500_000_000)));
        assert_eq!(pax_time("12x"), None);
        assert_eq!(pax_time("1.2x"), None);
        assert_eq!(pax_time("--9223372036854775808"), None);
        assert_eq!(pax_time("-9223372036854775808.5"), None);
    }

    #[test]
    fn media_types_outside_the_list_are_left_to_others() {
        assert!(supported_media_type("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(supported_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"));
        assert!(!supported_media_type("application/vnd.oci.image.layer.v1.tar+gzip+encrypted"));
        assert!(!supported_media_type("application/vnd.oci.image.config.v1+json"));
    }
}
