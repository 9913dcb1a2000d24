//! Inode versions: finding the one a layer sees, copying it up on first change, attributes.
//!
//! A layer holds its own version of an inode once it creates or changes it; otherwise it sees
//! the version of its nearest ancestor that has one. Versions are keyed (inode, depth, layer),
//! so the candidates for layer L at depth D are found by one reverse range scan from
//! (inode, D): the first hit is taken if it is L's ancestor at that depth; if it belongs to
//! another branch, one point lookup asks for L's own ancestor at that depth, then the scan
//! resumes below it. The cost depends on how many *branches* changed the inode, never on how
//! deep L is — a chain of 200 layers resolves like a chain of one.

use std::ops::Bound;

use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::records::{INODE_DEAD, InodeRecord};
use crate::store::{Table, keys};
use crate::superblock::BLOCK_SIZE;
use crate::types::{Attr, FileKind, Ino, LayerId, ROOT_INO, SetAttr, SetTime, Timestamp};

use super::State;
use super::limits::MAX_FILE_SIZE;

/// The version of an inode a layer sees.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    /// Layer holding the version: the layer itself or an ancestor.
    pub owner: LayerId,
    pub depth: u32,
    pub rec: InodeRecord,
}

fn decode(ino: Ino, owner: LayerId, bytes: &[u8]) -> Result<InodeRecord> {
    InodeRecord::decode(bytes).map_err(|e| Error::Corrupt(format!("inode {ino} in layer {owner}: {e}")))
}

impl State {
    /// The version of `ino` visible to the layer whose ancestry is `path` (`path.last()` is the
    /// layer itself). Dead versions (deletions) are returned too.
    pub(crate) fn resolve_in(&self, ino: Ino, path: &[LayerId]) -> Result<Option<Version>> {
        let Some(top) = path.len().checked_sub(1) else {
            return Ok(None);
        };
        let mut top = top as u32;
        let lo = keys::inode(ino, 0, LayerId(0));
        loop {
            let hi = keys::inode(ino, top, LayerId(u64::MAX));
            let Some((key, value)) = self.store.last(Table::Inodes, (Bound::Included(&lo), Bound::Included(&hi)))?
            else {
                return Ok(None);
            };
            let (_, depth, layer) =
                keys::parse_inode(&key).ok_or_else(|| Error::Corrupt("malformed inode key".into()))?;
            let ancestor = path[depth as usize];
            let found = if layer == ancestor {
                Some(value)
            } else {
                self.store.get(Table::Inodes, &keys::inode(ino, depth, ancestor))?
            };
            if let Some(bytes) = found {
                return Ok(Some(Version { owner: ancestor, depth, rec: decode(ino, ancestor, &bytes)? }));
            }
            if depth == 0 {
                return Ok(None);
            }
            top = depth - 1;
        }
    }

    /// The live version of `ino` in layer `l`; `Stale` if there is none.
    pub(crate) fn live(&self, l: &LayerRef, ino: Ino) -> Result<Version> {
        match self.resolve_in(ino, &l.path)? {
            Some(v) if !v.rec.is_dead() => Ok(v),
            _ => Err(Error::Stale(ino.0)),
        }
    }

    /// The record `l` may change: its own version, copying the visible one up first.
    /// Copying a directory copies its entries, so each directory version is complete and a
    /// lookup never needs more than one probe.
    pub(crate) fn own(&mut self, l: &LayerRef, ino: Ino, v: Version) -> Result<InodeRecord> {
        if v.owner == l.id {
            return Ok(v.rec);
        }
        let mut rec = v.rec;
        // Data below the old size stays where it is until overwritten.
        rec.inherit_limit = if rec.kind == FileKind::Regular { rec.size } else { 0 };
        if rec.kind == FileKind::Directory {
            let entries = self.store.collect_prefix(Table::Dirents, &keys::pair(v.owner.0, ino.0))?;
            for (k, value) in entries {
                let name = &k[16..];
                self.store.put(Table::Dirents, keys::dirent(l.id, ino, name), value);
            }
        }
        self.store.put(Table::Inodes, keys::inode(ino, l.depth, l.id), rec.encode());
        self.store.put(Table::LayerInodes, keys::layer_inode(l.id, ino), vec![keys::OWN_COPIED]);
        self.add_usage(l.id, 0, 1);
        Ok(rec)
    }

    /// Stores `l`'s version of `ino`.
    pub(crate) fn put_inode(&mut self, l: &LayerRef, ino: Ino, rec: &InodeRecord) {
        self.store.put(Table::Inodes, keys::inode(ino, l.depth, l.id), rec.encode());
    }

    /// Attributes of a record as the world sees them.
    pub(crate) fn attr(ino: Ino, rec: &InodeRecord) -> Attr {
        let nlink = if rec.kind == FileKind::Directory && rec.links.is_empty() && ino != ROOT_INO {
            0 // a removed directory still open somewhere
        } else {
            rec.nlink()
        };
        let blocks = match rec.kind {
            FileKind::Regular | FileKind::Symlink => rec.size.div_ceil(BLOCK_SIZE) * (BLOCK_SIZE / 512),
            FileKind::Directory => BLOCK_SIZE / 512,
            _ => 0,
        };
        Attr {
            ino,
            kind: rec.kind,
            perm: rec.perm,
            nlink,
            uid: rec.uid,
            gid: rec.gid,
            rdev: rec.rdev,
            size: rec.size,
            blocks,
            atime: rec.atime,
            mtime: rec.mtime,
            ctime: rec.ctime,
            crtime: rec.crtime,
        }
    }

    pub(crate) fn setattr(&mut self, l: &LayerRef, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let v = self.live(l, ino)?;
        if set.size.is_some() {
            match v.rec.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(Error::IsDirectory),
                _ => {
                    return Err(Error::InvalidArgument("only regular files can be truncated"));
                }
            }
        }
        if let Some(size) = set.size
            && size > MAX_FILE_SIZE
        {
            return Err(Error::FileTooLarge);
        }
        let now = Timestamp::now();
        let mut rec = self.own(l, ino, v)?;
        if let Some(size) = set.size
            && size != rec.size
        {
            self.truncate(l, ino, &mut rec, size)?;
            rec.mtime = now;
        }
        if let Some(perm) = set.perm {
            rec.perm = perm & 0o7777;
        }
        if let Some(uid) = set.uid {
            rec.uid = uid;
        }
        if let Some(gid) = set.gid {
            rec.gid = gid;
        }
        let resolve = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        if let Some(t) = set.atime {
            rec.atime = resolve(t);
        }
        if let Some(t) = set.mtime {
            rec.mtime = resolve(t);
        }
        rec.ctime = set.ctime.unwrap_or(now);
        self.put_inode(l, ino, &rec);
        Ok(State::attr(ino, &rec))
    }

    /// Called when the last name of `l`'s version `rec` of `ino` is gone: removes it, or keeps
    /// it as an orphan while it is open.
    pub(crate) fn drop_inode(&mut self, l: &LayerRef, ino: Ino, mut rec: InodeRecord) -> Result<()> {
        rec.links.clear();
        if self.open.get(&(l.id, ino)).copied().unwrap_or(0) > 0 {
            self.put_inode(l, ino, &rec);
            self.store.put(Table::Orphans, keys::layer_inode(l.id, ino), Vec::new());
            return Ok(());
        }
        self.finish_inode(l, ino, rec)
    }

    /// Frees `l`'s version of a nameless, closed inode. If an ancestor has a version, a
    /// tombstone stays so the layer does not see it again.
    fn finish_inode(&mut self, l: &LayerRef, ino: Ino, mut rec: InodeRecord) -> Result<()> {
        self.drop_extents(l.id, ino)?;
        if rec.kind == FileKind::Directory {
            for table in [Table::Dirents, Table::DirChanges] {
                let rows = self.store.collect_prefix(table, &keys::pair(l.id.0, ino.0))?;
                for (k, _) in rows {
                    self.store.delete(table, k);
                }
            }
        }
        self.store.delete(Table::Orphans, keys::layer_inode(l.id, ino));
        self.finished.push((l.id, ino));
        let created_here =
            self.store.get(Table::LayerInodes, &keys::layer_inode(l.id, ino))?.as_deref() == Some(&[keys::OWN_CREATED]);
        if created_here {
            self.store.delete(Table::Inodes, keys::inode(ino, l.depth, l.id));
            self.store.delete(Table::LayerInodes, keys::layer_inode(l.id, ino));
            self.add_usage(l.id, 0, -1);
        } else {
            rec.flags |= INODE_DEAD;
            rec.size = 0;
            rec.inherit_limit = 0;
            rec.xattrs.clear();
            rec.target.clear();
            self.put_inode(l, ino, &rec);
        }
        Ok(())
    }

    /// Takes one handle on a file (an open file, or a write in flight): while any is held, an
    /// unlinked file keeps its blocks.
    pub(crate) fn take_handle(&mut self, layer: LayerId, ino: Ino) {
        *self.open.entry((layer, ino)).or_insert(0) += 1;
    }

    /// Drops one open handle; finishes an orphan at its last close.
    pub(crate) fn release_handle(&mut self, layer: LayerId, ino: Ino) -> Result<()> {
        let Some(count) = self.open.get_mut(&(layer, ino)) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        self.open.remove(&(layer, ino));
        let Some(l) = self.layers.layer_ref(layer) else {
            return Ok(());
        };
        if self.store.get(Table::Orphans, &keys::layer_inode(layer, ino))?.is_none() {
            return Ok(());
        }
        let v = self.live(&l, ino)?;
        if v.owner == layer && v.rec.links.is_empty() {
            self.finish_inode(&l, ino, v.rec)?;
        }
        Ok(())
    }

    /// Finishes inodes left nameless by a crash while they were open.
    pub(crate) fn finish_orphans(&mut self) -> Result<()> {
        let orphans = self.store.collect(Table::Orphans, (Bound::Unbounded, Bound::Unbounded))?;
        if orphans.is_empty() {
            return Ok(());
        }
        for (k, _) in orphans {
            let (layer, ino) = keys::parse_pair(&k).ok_or_else(|| Error::Corrupt("malformed orphan key".into()))?;
            let Some(l) = self.layers.layer_ref(LayerId(layer)) else {
                self.store.delete(Table::Orphans, k);
                continue;
            };
            match self.resolve_in(Ino(ino), &l.path)? {
                Some(v) if v.owner == l.id && !v.rec.is_dead() && v.rec.links.is_empty() => {
                    self.finish_inode(&l, Ino(ino), v.rec)?;
                }
                _ => self.store.delete(Table::Orphans, k),
            }
        }
        self.flush(true)
    }
}
