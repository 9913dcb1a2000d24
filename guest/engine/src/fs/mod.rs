//! The engine: layers and their files on one device.
//!
//! [`Engine`] is a cheap, clonable handle. Its state sits behind one reader-writer lock:
//! lookups, attribute reads, directory listings and data reads share it; changes take it
//! exclusively for the few map updates they make. File data moves outside the lock where that
//! is safe: a write allocates blocks under the lock, copies the data to the device without it,
//! then publishes the new extents under the lock again (an inode-striped mutex keeps writes to
//! one file in order, and `in_flight` keeps commits and removes of the layer out of the gap).
//!
//! Durability: layer create, commit and remove flush the metadata overlay durably before they
//! return; file changes become durable on [`Engine::sync`] and at the periodic checkpoint.
//!
//! This module holds the `Engine` API; `options`, `open` (format and open), `checkpoint` (the
//! checkpoint thread and the final flush) and `state` (loading and flushing the state) hold
//! the rest of its life cycle, and `data`, `inode`, `namespace`, `xattr` and `layer_ops` the
//! operations on the state.

mod checkpoint;
mod data;
mod in_flight;
mod inode;
mod layer_ops;
mod limits;
mod namespace;
mod open;
mod options;
mod state;
mod xattr;

pub use options::{FormatOptions, OpenOptions};

pub(crate) use namespace::check_name;

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::{error, info};

use crate::alloc::Allocator;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::layers::{LayerRef, Layers};
use crate::stats::{FileCounters, FileStats, LayerStats, Op};
use crate::store::{SharedSuperblock, Store, lock_superblock};
use crate::superblock::BLOCK_SIZE;
use crate::types::{
    Attr, Change, DirEntry, FallocateMode, Ino, LayerId, LayerInfo, LayerKind, NewNode, RenameFlags, SetAttr, StatFs,
    Usage, XattrMode,
};
use checkpoint::Checkpointer;
use in_flight::{WriteInFlight, WritesInFlight};

/// An open device; see the module documentation.
#[derive(Clone, Debug)]
pub struct Engine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    device: Arc<dyn Device>,
    device_name: String,
    state: RwLock<State>,
    inode_locks: Vec<Mutex<()>>,
    writes: WritesInFlight,
    failed: AtomicBool,
    /// File data was written to the device since the last device sync.
    data_dirty: AtomicBool,
    files: FileCounters,
    /// [`OpenOptions::counters`].
    counting: bool,
    max_dirty_bytes: usize,
    checkpointer: Mutex<Option<Checkpointer>>,
}

/// Everything behind the engine lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) layers: Layers,
    pub(crate) alloc: Allocator,
    pub(crate) superblock: SharedSuperblock,
    pub(crate) device: Arc<dyn Device>,
    next_ino: u64,
    next_ino_stored: u64,
    next_layer: u64,
    next_layer_stored: u64,
    /// Open handles per (layer, inode): an unlinked file lives on until its last close.
    open: HashMap<(LayerId, Ino), u32>,
    /// Layer versions of inodes freed since the engine last dropped their file counters, which
    /// live outside this lock ([`Engine::forget_finished`]).
    finished: Vec<(LayerId, Ino)>,
}

const INODE_LOCK_STRIPES: usize = 64;

impl Engine {
    /// Makes everything durable and closes the device. Dropping the last handle does the same
    /// but can only log a failure.
    pub fn close(self) -> Result<()> {
        self.shared.stop_checkpointer();
        self.sync()
    }

    /// Grows the device (a regular file) to `size` bytes while it is in use; the new space is
    /// free for data at once. Never shrinks.
    pub fn grow(&self, size: u64) -> Result<()> {
        let size = size / BLOCK_SIZE * BLOCK_SIZE;
        let mut st = self.write_state()?;
        let r = (|| {
            let current = lock_superblock(&st.superblock).device_size;
            if size <= current {
                return Ok(());
            }
            self.shared.device.grow(size)?;
            {
                let mut sb = lock_superblock(&st.superblock);
                sb.device_size = size;
                sb.write_next(self.shared.device.as_ref())?;
            }
            self.shared.device.sync()?;
            st.alloc.grow(size / BLOCK_SIZE);
            info!(device = %self.shared.device_name, bytes = size, "grew the device");
            Ok(())
        })();
        drop(st);
        self.check_fatal(r)
    }

    /// The device's name (its path).
    pub fn device_name(&self) -> &str {
        &self.shared.device_name
    }

    // ---- locking ----

    fn read_state(&self) -> Result<RwLockReadGuard<'_, State>> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::Failed);
        }
        Ok(self.shared.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, State>> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::Failed);
        }
        Ok(self.shared.state.write().unwrap_or_else(|e| e.into_inner()))
    }

    fn inode_lock(&self, layer: LayerId, ino: Ino) -> MutexGuard<'_, ()> {
        let i = (ino.0 ^ layer.0.rotate_left(32)) as usize % INODE_LOCK_STRIPES;
        self.shared.inode_locks[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops all further changes after an error that leaves memory and device out of step.
    fn check_fatal<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e @ (Error::Io(_) | Error::Metadata(_) | Error::Corrupt(_))) = &r {
            error!(device = %self.shared.device_name, error = %e, "refusing further changes after this error");
            self.shared.failed.store(true, Ordering::Release);
        }
        r
    }

    /// Runs a read-only operation on a layer.
    fn query<T>(&self, layer: LayerId, op: Op, f: impl FnOnce(&State, &LayerRef) -> Result<T>) -> Result<T> {
        let st = self.read_state()?;
        let l = st.layer(layer)?;
        self.count_op(&l, op);
        let r = f(&st, &l);
        drop(st);
        self.check_fatal(r)
    }

    /// Runs a change on a writable layer.
    fn change<T>(&self, layer: LayerId, op: Op, f: impl FnOnce(&mut State, &LayerRef) -> Result<T>) -> Result<T> {
        let mut st = self.write_state()?;
        let l = st.writable(layer)?;
        self.count_op(&l, op);
        let r = st.ensure_metadata_room(op).and_then(|()| f(&mut st, &l));
        let r = r.and_then(|v| st.bound_overlay(self.shared.max_dirty_bytes).map(|()| v));
        self.forget_finished(st);
        self.check_fatal(r)
    }

    /// Counts one operation on a layer, if the engine counts.
    fn count_op(&self, l: &LayerRef, op: Op) {
        if self.shared.counting {
            l.counters.op(op);
        }
    }

    /// Updates the counters of one file, if the engine counts.
    fn count_file(&self, layer: LayerId, ino: Ino, f: impl FnOnce(&mut FileStats)) {
        if self.shared.counting {
            self.shared.files.update(layer, ino, f);
        }
    }

    /// Releases the state lock, then drops the file counters of the inodes freed under it, so
    /// a daemon that sees millions of short-lived files does not keep a counter for each.
    fn forget_finished(&self, mut st: RwLockWriteGuard<'_, State>) {
        let finished = std::mem::take(&mut st.finished);
        drop(st);
        for (layer, ino) in finished {
            self.shared.files.forget(layer, ino);
        }
    }

    // ---- durability ----

    /// Makes every change so far durable (fsync, fdatasync and syncfs all land here).
    pub fn sync(&self) -> Result<()> {
        self.sync_data()?;
        let mut st = self.write_state()?;
        let r = st.flush(true);
        drop(st);
        self.check_fatal(r)
    }

    /// Pushes file data written since the last device sync to the medium, outside the engine
    /// lock, so that the durable commit that follows (which syncs again) has little left to
    /// write and holds the lock briefly. Does nothing when no data is pending.
    fn sync_data(&self) -> Result<()> {
        if self.shared.data_dirty.swap(false, Ordering::AcqRel) {
            let r = self.shared.device.sync().map_err(Error::Io);
            if r.is_err() {
                self.shared.data_dirty.store(true, Ordering::Release);
            }
            self.check_fatal(r)?;
        }
        Ok(())
    }

    /// Syncs a layer's changes: the same as [`Engine::sync`], counted against the layer.
    pub fn sync_layer(&self, layer: LayerId) -> Result<()> {
        self.query(layer, Op::Sync, |_, _| Ok(()))?;
        self.sync()
    }

    /// Whether there are changes that are not yet durable.
    pub fn is_dirty(&self) -> bool {
        let st = self.shared.state.read().unwrap_or_else(|e| e.into_inner());
        st.store.is_dirty() || st.layers.iter().any(|l| l.dirty) || st.alloc.pending_blocks() > 0
    }

    // ---- layers ----

    /// Creates a writable layer or a read-only view, empty or on a committed parent. Constant
    /// time whatever the parent holds; durable on return.
    pub fn create_layer(
        &self,
        name: &str,
        parent: Option<&str>,
        kind: LayerKind,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        let mut st = self.write_state()?;
        let r = st.create_layer(name, parent, kind, labels).and_then(|id| {
            st.flush(true)?;
            st.info(id)
        });
        drop(st);
        self.check_fatal(r)
    }

    /// Turns the writable layer `key` into the committed layer `name` (which may be `key`
    /// itself). Constant time whatever the layer holds; durable on return (including the
    /// layer's data).
    pub fn commit_layer(
        &self,
        key: &str,
        name: &str,
        labels: Option<std::collections::BTreeMap<String, String>>,
    ) -> Result<LayerInfo> {
        loop {
            // Refuse before anything is written; wait for the writes in flight on the layer and
            // keep new ones out (`in_flight`); then push the layer's data to the medium outside
            // the lock so the commit under the lock has little left to sync.
            let id = self.read_state()?.check_commit(key, name)?;
            let _closed = self.shared.writes.close(id);
            self.sync_data()?;
            let mut st = self.write_state()?;
            if st.check_commit(key, name)? != id {
                // `key` was removed and made anew while this waited: close the new layer.
                continue;
            }
            let r = st.commit_layer(key, name, labels).and_then(|id| {
                st.flush(true)?;
                st.info(id)
            });
            drop(st);
            return self.check_fatal(r);
        }
    }

    /// Removes a layer without children, freeing exactly what it owns. Durable on return.
    pub fn remove_layer(&self, name: &str) -> Result<()> {
        let id = loop {
            // Writes in flight on the layer end first (`in_flight`): their blocks are freed
            // here and may be given to another file at once.
            let id = self.read_state()?.id_of(name)?;
            let _closed = self.shared.writes.close(id);
            let mut st = self.write_state()?;
            if st.id_of(name)? != id {
                continue;
            }
            let r = st.remove_layer(name).and_then(|id| {
                st.flush(true)?;
                Ok(id)
            });
            drop(st);
            break self.check_fatal(r)?;
        };
        self.shared.files.forget_layer(id);
        Ok(())
    }

    /// Replaces a layer's labels. Durable on return.
    pub fn set_layer_labels(
        &self,
        name: &str,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        let mut st = self.write_state()?;
        let r = st.set_labels(name, labels).and_then(|id| {
            st.flush(true)?;
            st.info(id)
        });
        drop(st);
        self.check_fatal(r)
    }

    /// Describes a layer.
    pub fn layer(&self, name: &str) -> Result<LayerInfo> {
        let st = self.read_state()?;
        let id = st.layers.id_of(name).ok_or_else(|| Error::LayerNotFound(name.to_string()))?;
        st.info(id)
    }

    /// Describes the layer with this id.
    pub fn layer_by_id(&self, id: LayerId) -> Result<LayerInfo> {
        self.read_state()?.info(id)
    }

    /// Every layer, parents before children.
    pub fn layers(&self) -> Result<Vec<LayerInfo>> {
        let st = self.read_state()?;
        let mut all: Vec<LayerInfo> = st.layers.iter().map(|l| st.layers.info(l)).collect();
        all.sort_by_key(|l| (l.depth, l.id));
        Ok(all)
    }

    /// What a layer changed relative to its parent (everything, for a layer without parent),
    /// in time proportional to the changes.
    pub fn layer_changes(&self, name: &str) -> Result<Vec<Change>> {
        let st = self.read_state()?;
        let id = st.layers.id_of(name).ok_or_else(|| Error::LayerNotFound(name.to_string()))?;
        let r = st.changes(id);
        drop(st);
        self.check_fatal(r)
    }

    /// Space the layer owns.
    pub fn layer_usage(&self, name: &str) -> Result<Usage> {
        Ok(self.layer(name)?.usage)
    }

    /// The layer's activity counters.
    pub fn layer_stats(&self, layer: LayerId) -> Result<LayerStats> {
        Ok(self.read_state()?.layer(layer)?.counters.snapshot())
    }

    /// The most accessed files of a layer (of all layers with `None`).
    pub fn hot_files(&self, layer: Option<LayerId>, limit: usize) -> Vec<(LayerId, Ino, FileStats)> {
        self.shared.files.top(layer, limit)
    }

    // ---- files ----

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, layer: LayerId, parent: Ino, name: &[u8]) -> Result<Attr> {
        self.query(layer, Op::Lookup, |st, l| st.lookup(l, parent, name))
    }

    /// Attributes of an inode.
    pub fn getattr(&self, layer: LayerId, ino: Ino) -> Result<Attr> {
        self.query(layer, Op::GetAttr, |st, l| Ok(State::attr(ino, &st.live(l, ino)?.rec)))
    }

    /// Changes attributes; a size change truncates or extends the file.
    pub fn setattr(&self, layer: LayerId, ino: Ino, set: &SetAttr) -> Result<Attr> {
        let _guard = set.size.is_some().then(|| self.inode_lock(layer, ino));
        if set.size.is_some() {
            // Truncation zeroes the tail of the last block in place.
            self.shared.data_dirty.store(true, Ordering::Release);
        }
        self.change(layer, Op::SetAttr, |st, l| st.setattr(l, ino, set))
    }

    /// Creates a file, directory, symbolic link, device node, fifo or socket.
    pub fn create(&self, layer: LayerId, parent: Ino, name: &[u8], node: &NewNode) -> Result<Attr> {
        self.change(layer, Op::Create, |st, l| st.create(l, parent, name, node))
    }

    /// Creates a file without a name (`O_TMPFILE`), already open once: it disappears at its
    /// last [`Engine::release_file`] unless [`Engine::link`] gives it a name first.
    pub fn create_unnamed(&self, layer: LayerId, dir: Ino, node: &NewNode) -> Result<Attr> {
        self.change(layer, Op::Create, |st, l| st.create_unnamed(l, dir, node))
    }

    /// Removes a non-directory name.
    pub fn unlink(&self, layer: LayerId, parent: Ino, name: &[u8]) -> Result<()> {
        self.change(layer, Op::Remove, |st, l| st.unlink(l, parent, name))
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, layer: LayerId, parent: Ino, name: &[u8]) -> Result<()> {
        self.change(layer, Op::Remove, |st, l| st.rmdir(l, parent, name))
    }

    /// Adds a name for an existing non-directory.
    pub fn link(&self, layer: LayerId, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.change(layer, Op::Link, |st, l| st.link(l, ino, new_parent, new_name))
    }

    /// Renames, replacing or exchanging with the target as `flags` say.
    pub fn rename(
        &self,
        layer: LayerId,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: RenameFlags,
    ) -> Result<()> {
        self.change(layer, Op::Rename, |st, l| st.rename(l, parent, name, new_parent, new_name, flags))
    }

    /// Entries of a directory after `after` (from the start with `None`), at most `limit`.
    pub fn read_dir(&self, layer: LayerId, dir: Ino, after: Option<&[u8]>, limit: usize) -> Result<Vec<DirEntry>> {
        self.query(layer, Op::ReadDir, |st, l| st.read_dir(l, dir, after, limit))
    }

    /// Target of a symbolic link.
    pub fn read_link(&self, layer: LayerId, ino: Ino) -> Result<Vec<u8>> {
        self.query(layer, Op::ReadLink, |st, l| st.read_link(l, ino))
    }

    /// Notes an open handle: an unlinked file stays until its last handle is released.
    pub fn open_file(&self, layer: LayerId, ino: Ino) -> Result<Attr> {
        let attr = {
            let mut st = self.write_state()?;
            let l = st.layer(layer)?;
            self.count_op(&l, Op::Open);
            let attr = State::attr(ino, &st.live(&l, ino)?.rec);
            st.take_handle(layer, ino);
            attr
        };
        self.count_file(layer, ino, |f| f.opens += 1);
        Ok(attr)
    }

    /// Releases a handle taken by [`Engine::open_file`] or [`Engine::create_unnamed`].
    pub fn release_file(&self, layer: LayerId, ino: Ino) -> Result<()> {
        let mut st = self.write_state()?;
        let r = st.release_handle(layer, ino);
        self.forget_finished(st);
        self.check_fatal(r)
    }

    /// Reads up to `size` bytes at `offset`; fewer at the end of the file.
    pub fn read(&self, layer: LayerId, ino: Ino, offset: u64, size: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; size];
        let n = self.read_into(layer, ino, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads into `buf` (so callers can reuse buffers); returns the bytes read, fewer at the end
    /// of the file.
    pub fn read_into(&self, layer: LayerId, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let n = self.query(layer, Op::Read, |st, l| {
            let n = st.read_into(l, ino, offset, buf)?;
            if self.shared.counting {
                l.counters.read(n as u64);
            }
            Ok(n)
        })?;
        self.count_file(layer, ino, |f| {
            f.reads += 1;
            f.bytes_read += n as u64;
        });
        Ok(n)
    }

    /// Writes `data` at `offset`. Blocks the layer inherited are copied on write; blocks it
    /// owns are overwritten in place.
    pub fn write(&self, layer: LayerId, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            // Nothing to write changes nothing, not even times; only errors are reported.
            return self.query(layer, Op::Write, |st, l| st.check_writable_file(l, ino)).map(|()| 0);
        }
        let (plan, _in_flight, _guard) = loop {
            let guard = self.inode_lock(layer, ino);
            let planned = self.change(layer, Op::Write, |st, l| {
                if !self.shared.writes.begin(layer) {
                    return Ok(None);
                }
                let in_flight = WriteInFlight { writes: &self.shared.writes, layer };
                let plan = st.plan_write(l, ino, offset, data)?;
                // A handle, as an open file has: a file unlinked meanwhile keeps its blocks.
                st.take_handle(layer, ino);
                Ok(Some((plan, in_flight)))
            })?;
            if let Some((plan, in_flight)) = planned {
                break (plan, in_flight, guard);
            }
            // A commit or remove is closing the layer: plan again once it is done, without
            // holding the inode lock meanwhile.
            drop(guard);
            self.shared.writes.wait_until_open(layer);
        };
        let io = plan.perform(self.shared.device.as_ref(), data);
        self.shared.data_dirty.store(true, Ordering::Release);
        let mut st = self.write_state()?;
        let r = match io {
            Ok(()) => st.publish_write(layer, ino, plan),
            Err(e) => {
                st.abandon_write(plan);
                Err(Error::Io(e))
            }
        };
        let released = st.release_handle(layer, ino);
        let r = r.and(released);
        if r.is_ok()
            && self.shared.counting
            && let Ok(l) = st.layer(layer)
        {
            l.counters.written(data.len() as u64);
        }
        self.forget_finished(st);
        self.check_fatal(r)?;
        self.count_file(layer, ino, |f| {
            f.writes += 1;
            f.bytes_written += data.len() as u64;
        });
        Ok(data.len())
    }

    /// Allocates, punches or zeroes a range (`fallocate(2)`).
    pub fn fallocate(&self, layer: LayerId, ino: Ino, offset: u64, len: u64, mode: FallocateMode) -> Result<()> {
        let _guard = self.inode_lock(layer, ino);
        self.shared.data_dirty.store(true, Ordering::Release);
        self.change(layer, Op::Write, |st, l| st.fallocate(l, ino, offset, len, mode))
    }

    /// Drops file capabilities and, with `setid`, the set-user-id bit and an effective
    /// set-group-id bit — what Linux does when a file is written to, truncated or changes owner.
    /// Cheap and changes nothing when there is nothing to drop.
    pub fn drop_privileges(&self, layer: LayerId, ino: Ino, setid: bool) -> Result<()> {
        // Checked under the shared lock first: nearly always there is nothing to drop.
        let needs = self
            .query(layer, Op::GetAttr, |st, l| Ok(xattr::privileges_to_drop(&st.live(l, ino)?.rec, setid).is_some()))?;
        if !needs {
            return Ok(());
        }
        self.change(layer, Op::SetAttr, |st, l| st.drop_privileges(l, ino, setid))
    }

    /// Value of an extended attribute.
    pub fn get_xattr(&self, layer: LayerId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.query(layer, Op::Xattr, |st, l| st.get_xattr(l, ino, name))
    }

    /// Names of the extended attributes.
    pub fn list_xattr(&self, layer: LayerId, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.query(layer, Op::Xattr, |st, l| st.list_xattr(l, ino))
    }

    /// Sets an extended attribute.
    pub fn set_xattr(&self, layer: LayerId, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        self.change(layer, Op::Xattr, |st, l| st.set_xattr(l, ino, name, value, mode))
    }

    /// Removes an extended attribute.
    pub fn remove_xattr(&self, layer: LayerId, ino: Ino, name: &[u8]) -> Result<()> {
        self.change(layer, Op::Xattr, |st, l| st.remove_xattr(l, ino, name))
    }

    /// File system figures.
    pub fn statfs(&self) -> Result<StatFs> {
        let st = self.read_state()?;
        let sb = lock_superblock(&st.superblock);
        // Inodes are bounded by metadata space; about 512 bytes each is a fair estimate.
        let files_free = sb.meta_capacity.saturating_sub(sb.meta_len) / 512;
        Ok(StatFs {
            block_size: BLOCK_SIZE as u32,
            blocks: st.alloc.total_blocks(),
            blocks_free: st.alloc.free_blocks() + st.alloc.pending_blocks(),
            files: st.next_ino + files_free,
            files_free,
            name_max: limits::NAME_MAX as u32,
        })
    }
}
