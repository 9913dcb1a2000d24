//! Names: lookup, create, link, unlink, rmdir, rename and directory listings.
//!
//! Each operation checks everything that can fail before it changes anything, so a refused
//! operation leaves no trace. Every name a layer adds, removes or replaces is recorded in
//! `dir_changes`, which is what lets a layer list its changes without walking its tree.

use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::records::{InodeRecord, Link};
use crate::store::{Dir, Table, keys};
use crate::types::{Attr, DirEntry, FileKind, Ino, LayerId, NewNode, ROOT_INO, RenameFlags, Timestamp};

use super::State;
use super::inode::Version;
use super::limits::{LINK_MAX, NAME_MAX, SYMLINK_MAX};

/// Checks a single path component.
pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidName("empty name"));
    }
    if name.len() > NAME_MAX {
        return Err(Error::NameTooLong(name.len()));
    }
    if name.contains(&b'/') {
        return Err(Error::InvalidName("contains '/'"));
    }
    if name.contains(&0) {
        return Err(Error::InvalidName("contains a NUL byte"));
    }
    if name == b"." || name == b".." {
        return Err(Error::InvalidName("'.' and '..' cannot be created or removed"));
    }
    Ok(())
}

/// A directory version as a layer sees it.
struct DirView {
    ino: Ino,
    v: Version,
}

impl State {
    fn dir(&self, l: &LayerRef, ino: Ino) -> Result<DirView> {
        let v = self.live(l, ino)?;
        if v.rec.kind != FileKind::Directory {
            return Err(Error::NotDirectory);
        }
        Ok(DirView { ino, v })
    }

    /// The entry `name` of a directory version.
    fn entry(&self, dir: &DirView, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        self.entry_of(dir.v.owner, dir.ino, name)
    }

    pub(crate) fn entry_of(&self, owner: LayerId, dir: Ino, name: &[u8]) -> Result<Option<(Ino, FileKind)>> {
        match self.store.get(Table::Dirents, &keys::dirent(owner, dir, name))? {
            None => Ok(None),
            Some(v) => keys::parse_dirent_value(&v)
                .map(Some)
                .ok_or_else(|| Error::Corrupt(format!("entry {:?} of directory {dir}", String::from_utf8_lossy(name)))),
        }
    }

    /// The live version an entry points at; a dangling entry is corruption.
    fn target(&self, l: &LayerRef, dir: Ino, name: &[u8], ino: Ino) -> Result<Version> {
        self.live(l, ino).map_err(|_| {
            Error::Corrupt(format!(
                "entry {:?} of directory {dir} points at inode {ino}, which layer {} does not have",
                String::from_utf8_lossy(name),
                l.id
            ))
        })
    }

    fn put_entry(&mut self, l: &LayerRef, dir: Ino, name: &[u8], ino: Ino, kind: FileKind) {
        self.store.put(Table::Dirents, keys::dirent(l.id, dir, name), keys::dirent_value(ino, kind));
        self.store.put(Table::DirChanges, keys::dirent(l.id, dir, name), Vec::new());
    }

    fn delete_entry(&mut self, l: &LayerRef, dir: Ino, name: &[u8]) {
        self.store.delete(Table::Dirents, keys::dirent(l.id, dir, name));
        self.store.put(Table::DirChanges, keys::dirent(l.id, dir, name), Vec::new());
    }

    pub(crate) fn lookup(&self, l: &LayerRef, parent: Ino, name: &[u8]) -> Result<Attr> {
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong(name.len()));
        }
        let dir = self.dir(l, parent)?;
        let (ino, _) = self.entry(&dir, name)?.ok_or(Error::NotFound)?;
        Ok(State::attr(ino, &self.target(l, parent, name, ino)?.rec))
    }

    /// The record of a new inode.
    pub(crate) fn new_record(node: &NewNode, now: Timestamp, links: Vec<Link>) -> Result<InodeRecord> {
        super::xattr::check_initial(&node.xattrs)?;
        let mut size = 0;
        match node.kind {
            FileKind::Symlink => {
                if node.target.is_empty() {
                    return Err(Error::InvalidArgument("empty symbolic link target"));
                }
                if node.target.len() > SYMLINK_MAX {
                    return Err(Error::NameTooLong(node.target.len()));
                }
                size = node.target.len() as u64;
            }
            _ if !node.target.is_empty() => {
                return Err(Error::InvalidArgument("only symbolic links have a target"));
            }
            _ => {}
        }
        Ok(InodeRecord {
            kind: node.kind,
            flags: 0,
            perm: node.perm & 0o7777,
            uid: node.uid,
            gid: node.gid,
            rdev: if matches!(node.kind, FileKind::CharDevice | FileKind::BlockDevice) { node.rdev } else { 0 },
            size,
            inherit_limit: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            subdirs: 0,
            links,
            target: node.target.clone(),
            xattrs: node.xattrs.clone(),
        })
    }

    /// Stores a new inode created by `l`.
    fn insert_new(&mut self, l: &LayerRef, rec: &InodeRecord) -> Ino {
        let ino = self.new_ino();
        self.put_inode(l, ino, rec);
        self.store.put(Table::LayerInodes, keys::layer_inode(l.id, ino), vec![keys::OWN_CREATED]);
        self.add_usage(l.id, 0, 1);
        ino
    }

    pub(crate) fn create(&mut self, l: &LayerRef, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        check_name(name)?;
        let dir = self.dir(l, parent)?;
        if self.entry(&dir, name)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Timestamp::now();
        let rec = Self::new_record(node, now, vec![Link { parent, name: name.to_vec() }])?;
        let mut prec = self.own(l, parent, dir.v)?;
        let ino = self.insert_new(l, &rec);
        self.put_entry(l, parent, name, ino, node.kind);
        if node.kind == FileKind::Directory {
            prec.subdirs += 1;
        }
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(l, parent, &prec);
        Ok(State::attr(ino, &rec))
    }

    pub(crate) fn create_unnamed(&mut self, l: &LayerRef, dir: Ino, node: &NewNode) -> Result<Attr> {
        self.dir(l, dir)?;
        if node.kind == FileKind::Directory {
            return Err(Error::InvalidArgument("an unnamed file cannot be a directory"));
        }
        let rec = Self::new_record(node, Timestamp::now(), Vec::new())?;
        let ino = self.insert_new(l, &rec);
        self.open.insert((l.id, ino), 1);
        self.store.put(Table::Orphans, keys::layer_inode(l.id, ino), Vec::new());
        Ok(State::attr(ino, &rec))
    }

    pub(crate) fn unlink(&mut self, l: &LayerRef, parent: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let dir = self.dir(l, parent)?;
        let (ino, kind) = self.entry(&dir, name)?.ok_or(Error::NotFound)?;
        if kind == FileKind::Directory {
            return Err(Error::IsDirectory);
        }
        let target = self.target(l, parent, name, ino)?;
        let now = Timestamp::now();
        let mut prec = self.own(l, parent, dir.v)?;
        self.delete_entry(l, parent, name);
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(l, parent, &prec);
        self.remove_link(l, ino, target, parent, name, now)
    }

    /// Removes one name from an inode's list; the inode goes with its last name.
    fn remove_link(
        &mut self,
        l: &LayerRef,
        ino: Ino,
        v: Version,
        parent: Ino,
        name: &[u8],
        now: Timestamp,
    ) -> Result<()> {
        let mut rec = self.own(l, ino, v)?;
        if let Some(i) = rec.links.iter().position(|k| k.parent == parent && k.name == name) {
            rec.links.remove(i);
        }
        rec.ctime = now;
        if rec.links.is_empty() {
            self.drop_inode(l, ino, rec)
        } else {
            self.put_inode(l, ino, &rec);
            Ok(())
        }
    }

    pub(crate) fn rmdir(&mut self, l: &LayerRef, parent: Ino, name: &[u8]) -> Result<()> {
        check_name(name)?;
        let dir = self.dir(l, parent)?;
        let (ino, kind) = self.entry(&dir, name)?.ok_or(Error::NotFound)?;
        if kind != FileKind::Directory {
            return Err(Error::NotDirectory);
        }
        let target = self.target(l, parent, name, ino)?;
        if self.store.any_prefix(Table::Dirents, &keys::pair(target.owner.0, ino.0))? {
            return Err(Error::NotEmpty);
        }
        let now = Timestamp::now();
        let mut prec = self.own(l, parent, dir.v)?;
        self.delete_entry(l, parent, name);
        prec.subdirs = prec.subdirs.saturating_sub(1);
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(l, parent, &prec);
        self.remove_link(l, ino, target, parent, name, now)
    }

    pub(crate) fn link(&mut self, l: &LayerRef, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        check_name(new_name)?;
        let v = self.live(l, ino)?;
        if v.rec.kind == FileKind::Directory {
            return Err(Error::NotPermitted("hard links to directories are not allowed"));
        }
        if v.rec.links.len() >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let dir = self.dir(l, new_parent)?;
        if self.entry(&dir, new_name)?.is_some() {
            return Err(Error::Exists);
        }
        let now = Timestamp::now();
        let was_orphan = v.rec.links.is_empty();
        let mut prec = self.own(l, new_parent, dir.v)?;
        self.put_entry(l, new_parent, new_name, ino, v.rec.kind);
        prec.mtime = now;
        prec.ctime = now;
        self.put_inode(l, new_parent, &prec);
        let mut rec = self.own(l, ino, v)?;
        rec.links.push(Link { parent: new_parent, name: new_name.to_vec() });
        rec.ctime = now;
        self.put_inode(l, ino, &rec);
        if was_orphan {
            // An O_TMPFILE file got its name.
            self.store.delete(Table::Orphans, keys::layer_inode(l.id, ino));
        }
        Ok(State::attr(ino, &rec))
    }

    /// Whether directory `ino` is `ancestor` or lies beneath it in layer `l`.
    fn is_within(&self, l: &LayerRef, mut ino: Ino, ancestor: Ino) -> Result<bool> {
        // Directory depth is bounded; the guard stops a corrupt parent cycle.
        for _ in 0..100_000 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            let v = self.live(l, ino)?;
            match v.rec.links.first() {
                Some(link) => ino = link.parent,
                None => return Ok(false),
            }
        }
        Err(Error::Corrupt(format!("directory {ino} has a cycle of parents in layer {}", l.id)))
    }

    pub(crate) fn rename(
        &mut self,
        l: &LayerRef,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        if flags.exchange && flags.no_replace {
            return Err(Error::InvalidArgument("RENAME_EXCHANGE and RENAME_NOREPLACE exclude each other"));
        }
        let src_dir = self.dir(l, parent)?;
        let dst_dir = self.dir(l, new_parent)?;
        let (src, src_kind) = self.entry(&src_dir, name)?.ok_or(Error::NotFound)?;
        let dst = self.entry(&dst_dir, new_name)?;
        if flags.exchange {
            let (dst, dst_kind) = dst.ok_or(Error::NotFound)?;
            return self.exchange(l, (parent, name, src, src_kind), (new_parent, new_name, dst, dst_kind));
        }
        if let Some((dst_ino, dst_kind)) = dst {
            if flags.no_replace {
                return Err(Error::Exists);
            }
            if dst_ino == src {
                // Two names of one file: rename does nothing.
                return Ok(());
            }
            match (src_kind == FileKind::Directory, dst_kind == FileKind::Directory) {
                (true, false) => return Err(Error::NotDirectory),
                (false, true) => return Err(Error::IsDirectory),
                (true, true) => {
                    let dv = self.target(l, new_parent, new_name, dst_ino)?;
                    if self.store.any_prefix(Table::Dirents, &keys::pair(dv.owner.0, dst_ino.0))? {
                        return Err(Error::NotEmpty);
                    }
                }
                (false, false) => {}
            }
        }
        if src_kind == FileKind::Directory && self.is_within(l, new_parent, src)? {
            return Err(Error::InvalidArgument("cannot move a directory beneath itself"));
        }
        let src_v = self.target(l, parent, name, src)?;
        let dst_v = match dst {
            Some((d, _)) => Some((d, self.target(l, new_parent, new_name, d)?)),
            None => None,
        };

        // Checks done; from here on only changes.
        let now = Timestamp::now();
        let same_dir = parent == new_parent;
        let mut src_prec = self.own(l, parent, src_dir.v)?;
        let mut dst_prec = if same_dir { None } else { Some(self.own(l, new_parent, dst_dir.v)?) };
        self.delete_entry(l, parent, name);
        self.put_entry(l, new_parent, new_name, src, src_kind);
        let is_dir = src_kind == FileKind::Directory;
        if let Some((dst_ino, dv)) = dst_v {
            if dv.rec.kind == FileKind::Directory {
                dst_prec.as_mut().unwrap_or(&mut src_prec).subdirs -= 1;
            }
            self.remove_link(l, dst_ino, dv, new_parent, new_name, now)?;
        }
        if is_dir && !same_dir {
            src_prec.subdirs = src_prec.subdirs.saturating_sub(1);
            if let Some(p) = dst_prec.as_mut() {
                p.subdirs += 1;
            }
        }
        let mut rec = self.own(l, src, src_v)?;
        match rec.links.iter_mut().find(|k| k.parent == parent && k.name == name) {
            Some(link) => {
                link.parent = new_parent;
                link.name = new_name.to_vec();
            }
            None => rec.links.push(Link { parent: new_parent, name: new_name.to_vec() }),
        }
        rec.ctime = now;
        self.put_inode(l, src, &rec);
        src_prec.mtime = now;
        src_prec.ctime = now;
        self.put_inode(l, parent, &src_prec);
        if let Some(mut p) = dst_prec {
            p.mtime = now;
            p.ctime = now;
            self.put_inode(l, new_parent, &p);
        }
        Ok(())
    }

    /// `RENAME_EXCHANGE`: swaps two names atomically.
    fn exchange(&mut self, l: &LayerRef, a: (Ino, &[u8], Ino, FileKind), b: (Ino, &[u8], Ino, FileKind)) -> Result<()> {
        let (pa, na, ia, ka) = a;
        let (pb, nb, ib, kb) = b;
        if ia == ib {
            return Ok(());
        }
        if ka == FileKind::Directory && self.is_within(l, pb, ia)? {
            return Err(Error::InvalidArgument("cannot move a directory beneath itself"));
        }
        if kb == FileKind::Directory && self.is_within(l, pa, ib)? {
            return Err(Error::InvalidArgument("cannot move a directory beneath itself"));
        }
        let va = self.target(l, pa, na, ia)?;
        let vb = self.target(l, pb, nb, ib)?;
        let now = Timestamp::now();
        let dir_a = self.dir(l, pa)?;
        let mut prec_a = self.own(l, pa, dir_a.v)?;
        let mut prec_b = if pa == pb {
            None
        } else {
            let dir_b = self.dir(l, pb)?;
            Some(self.own(l, pb, dir_b.v)?)
        };
        self.put_entry(l, pa, na, ib, kb);
        self.put_entry(l, pb, nb, ia, ka);
        if let Some(p) = prec_b.as_mut() {
            let dirs = |k: FileKind| u32::from(k == FileKind::Directory);
            prec_a.subdirs = prec_a.subdirs + dirs(kb) - dirs(ka);
            p.subdirs = p.subdirs + dirs(ka) - dirs(kb);
        }
        for (ino, v, from, to) in [(ia, va, (pa, na), (pb, nb)), (ib, vb, (pb, nb), (pa, na))] {
            let mut rec = self.own(l, ino, v)?;
            if let Some(link) = rec.links.iter_mut().find(|k| k.parent == from.0 && k.name == from.1) {
                link.parent = to.0;
                link.name = to.1.to_vec();
            }
            rec.ctime = now;
            self.put_inode(l, ino, &rec);
        }
        prec_a.mtime = now;
        prec_a.ctime = now;
        self.put_inode(l, pa, &prec_a);
        if let Some(mut p) = prec_b {
            p.mtime = now;
            p.ctime = now;
            self.put_inode(l, pb, &p);
        }
        Ok(())
    }

    pub(crate) fn read_dir(&self, l: &LayerRef, dir: Ino, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        let view = self.dir(l, dir)?;
        let prefix = keys::pair(view.v.owner.0, dir.0);
        let mut out = Vec::new();
        let visit = |k: &[u8], v: &[u8]| -> Result<bool> {
            if out.len() >= limit {
                return Ok(false);
            }
            let (ino, kind) =
                keys::parse_dirent_value(v).ok_or_else(|| Error::Corrupt(format!("an entry of directory {dir}")))?;
            out.push(DirEntry { name: k[16..].to_vec(), ino, kind });
            Ok(true)
        };
        match after {
            None => self.store.scan_prefix(Table::Dirents, &prefix, Dir::Forward, visit)?,
            Some(after) => {
                let from = keys::dirent(view.v.owner, dir, after);
                let (_, hi) = keys::prefix_range(&prefix);
                self.store.scan(
                    Table::Dirents,
                    (std::ops::Bound::Excluded(&from), hi.as_ref().map(Vec::as_slice)),
                    Dir::Forward,
                    visit,
                )?
            }
        }
        Ok(out)
    }

    pub(crate) fn read_link(&self, l: &LayerRef, ino: Ino) -> Result<Vec<u8>> {
        let v = self.live(l, ino)?;
        if v.rec.kind != FileKind::Symlink {
            return Err(Error::InvalidArgument("not a symbolic link"));
        }
        Ok(v.rec.target)
    }

    /// The path of directory `dir` in the layer with ancestry `path`, or `None` if it has no
    /// name there (deleted, or an orphan).
    pub(crate) fn dir_path(&self, path: &[LayerId], dir: Ino) -> Result<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut ino = dir;
        for _ in 0..100_000 {
            if ino == ROOT_INO {
                let mut p = Vec::new();
                for part in parts.iter().rev() {
                    p.push(b'/');
                    p.extend_from_slice(part);
                }
                if p.is_empty() {
                    p.push(b'/');
                }
                return Ok(Some(p));
            }
            let Some(v) = self.resolve_in(ino, path)? else {
                return Ok(None);
            };
            if v.rec.is_dead() {
                return Ok(None);
            }
            let Some(link) = v.rec.links.first() else {
                return Ok(None);
            };
            parts.push(link.name.clone());
            ino = link.parent;
        }
        Err(Error::Corrupt(format!("directory {dir} has a cycle of parents")))
    }
}
