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

mod data;
mod in_flight;
mod inode;
mod layer_ops;
mod limits;
mod namespace;
mod xattr;

pub(crate) use namespace::check_name;

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::alloc::Allocator;
use crate::device::Device;
use crate::error::{Error, OpenError, Result};
use crate::layers::{LayerRef, Layers};
use crate::records::LayerRecord;
use crate::stats::{FileCounters, FileStats, LayerStats, Op};
use crate::store::{RegionBackend, ScratchBackend, SharedSuperblock, Store, Table, keys, lock_superblock};
use crate::superblock::{BLOCK_SIZE, METADATA_OFFSET, Superblock};
use crate::types::{
    Attr, Change, DirEntry, FallocateMode, Ino, LayerId, LayerInfo, LayerKind, NewNode, RenameFlags, SetAttr, StatFs,
    Usage, XattrMode,
};
use in_flight::{WriteInFlight, WritesInFlight};

/// Smallest data region a device may have.
const MIN_DATA_BYTES: u64 = 16 << 20;

/// How to format a device.
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// Grow the device (a regular file) to this many bytes first.
    pub size: Option<u64>,
    /// Bytes reserved for metadata; by default an eighth of the device, between 16 MiB and
    /// 64 GiB. On a sparse file the unused part costs nothing.
    pub metadata_bytes: Option<u64>,
    /// Format over an existing lcfs device or foreign data.
    pub force: bool,
}

/// How to open a device.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Make file changes durable at this interval; `None` only on sync and layer operations.
    pub checkpoint_interval: Option<Duration>,
    /// Memory for cached metadata pages.
    pub cache_bytes: usize,
    /// Changes held in memory before they are moved to the store (not yet durably).
    pub max_dirty_bytes: usize,
    /// Verify the checksum of every metadata page before the first write.
    pub verify: bool,
    /// Grow the device to this size (regular files only).
    pub grow_to: Option<u64>,
    /// Count activity per layer and per file (the source of stats). On by default; off only
    /// to measure what counting costs (`lcfs-engine-bench counters`).
    pub counters: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            checkpoint_interval: Some(Duration::from_secs(5)),
            cache_bytes: 256 << 20,
            max_dirty_bytes: 64 << 20,
            verify: true,
            grow_to: None,
            counters: true,
        }
    }
}

/// An open device; see the module documentation.
#[derive(Clone, Debug)]
pub struct Engine {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
struct Checkpointer {
    handle: thread::JoinHandle<()>,
    stop: Arc<StopSignal>,
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

fn io_error(device: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    let device = device.to_string();
    move |source| OpenError::Io { device, what, source }
}

fn corrupt_metadata(device: &str, e: impl std::fmt::Display) -> OpenError {
    OpenError::CorruptMetadata { device: device.to_string(), detail: e.to_string() }
}

/// Maps a failure of redb while opening to what it means for the user.
fn open_store_error(device: &str, e: redb::Error) -> OpenError {
    match e {
        redb::Error::DatabaseAlreadyOpen => OpenError::InUse { device: device.to_string() },
        // redb reports a malformed header as invalid data; that is corruption, not a failing disk.
        redb::Error::Io(source)
            if matches!(source.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            corrupt_metadata(device, source)
        }
        redb::Error::Io(source) => OpenError::Io { device: device.to_string(), what: "reading metadata", source },
        other => corrupt_metadata(device, other),
    }
}

impl Engine {
    /// Formats `device` as an empty lcfs device (no layers).
    pub fn format(device: &Arc<dyn Device>, options: &FormatOptions) -> Result<(), OpenError> {
        let name = device.name();
        if !options.force {
            match Superblock::read(device.as_ref()) {
                Ok(_) => return Err(OpenError::AlreadyFormatted { device: name }),
                Err(OpenError::Blank { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(size) = options.size {
            device.grow(size).map_err(io_error(&name, "growing the device"))?;
        }
        let len = device.len().map_err(io_error(&name, "reading the device size"))?;
        let len = len / BLOCK_SIZE * BLOCK_SIZE;
        let meta = options.metadata_bytes.unwrap_or((len / 8).clamp(16 << 20, 64 << 30));
        let meta = meta.div_ceil(1 << 20) << 20;
        if len < METADATA_OFFSET + meta + MIN_DATA_BYTES {
            return Err(OpenError::BadGeometry {
                device: name,
                detail: format!(
                    "{len} bytes is too small: {meta} bytes of metadata and at least {MIN_DATA_BYTES} bytes of data need {} bytes",
                    METADATA_OFFSET + meta + MIN_DATA_BYTES
                ),
            });
        }
        let mut sb = Superblock::new(len, meta);
        // The region may hold old bytes (a reused device). If it can be zeroed cheaply now, the
        // store's growth needs no zeroing; otherwise zero whatever the store grows into.
        let zeroed = device
            .zero_range(sb.meta_offset, sb.meta_capacity)
            .map_err(io_error(&name, "zeroing the metadata region"))?;
        sb.meta_high_water = if zeroed { 0 } else { sb.meta_capacity };
        sb.write_next(device.as_ref()).map_err(io_error(&name, "writing the superblock"))?;
        sb.write_next(device.as_ref()).map_err(io_error(&name, "writing the superblock"))?;
        device.sync().map_err(io_error(&name, "syncing the device"))?;
        let sb = Arc::new(Mutex::new(sb));
        let mut store =
            Store::create(RegionBackend::new(device.clone(), sb), 8 << 20).map_err(|e| open_store_error(&name, e))?;
        store.put(Table::Meta, keys::META_NEXT_INO.to_vec(), 2u64.to_be_bytes().to_vec());
        store.put(Table::Meta, keys::META_NEXT_LAYER.to_vec(), 1u64.to_be_bytes().to_vec());
        store.flush(true).map_err(|e| corrupt_metadata(&name, e))?;
        info!(device = %name, bytes = len, metadata_bytes = meta, "formatted");
        Ok(())
    }

    /// Opens a formatted device. Nothing is written before the superblock and (with
    /// `verify`) every metadata page have been checked.
    pub fn open(device: Arc<dyn Device>, options: &OpenOptions) -> Result<Engine, OpenError> {
        let name = device.name();
        let (mut sb, damage) = Superblock::read_checked(device.as_ref())?;
        if options.verify {
            verify_metadata(&device, &sb)?;
        }
        if let Some(damage) = damage {
            // Both copies at the start are rewritten from the backup before anything else.
            warn!(device = %name, %damage, "the superblocks at the start of the device were damaged; restoring them from the backup copy");
            for _ in 0..2 {
                sb.write_next(device.as_ref()).map_err(io_error(&name, "restoring the superblock"))?;
            }
            device.sync().map_err(io_error(&name, "syncing the device"))?;
        }
        if let Some(size) = options.grow_to {
            let size = size / BLOCK_SIZE * BLOCK_SIZE;
            if size > sb.device_size {
                device.grow(size).map_err(io_error(&name, "growing the device"))?;
                sb.device_size = size;
                sb.write_next(device.as_ref()).map_err(io_error(&name, "writing the superblock"))?;
                device.sync().map_err(io_error(&name, "syncing the device"))?;
                info!(device = %name, bytes = size, "grew the device");
            }
        }
        let superblock = Arc::new(Mutex::new(sb));
        let store = Store::open(RegionBackend::new(device.clone(), superblock.clone()), options.cache_bytes, false)
            .map_err(|e| open_store_error(&name, e))?;
        let mut state = State::load(store, device.clone(), superblock).map_err(|e| corrupt_metadata(&name, e))?;
        state.finish_orphans().map_err(|e| corrupt_metadata(&name, e))?;
        let shared = Arc::new(Shared {
            device,
            device_name: name,
            state: RwLock::new(state),
            inode_locks: (0..INODE_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            writes: WritesInFlight::default(),
            failed: AtomicBool::new(false),
            data_dirty: AtomicBool::new(false),
            files: FileCounters::default(),
            counting: options.counters,
            max_dirty_bytes: options.max_dirty_bytes,
            checkpointer: Mutex::new(None),
        });
        if let Some(interval) = options.checkpoint_interval {
            start_checkpointer(&shared, interval);
        }
        Ok(Engine { shared })
    }

    /// Opens `device`, formatting it first if it is blank.
    pub fn open_or_format(
        device: Arc<dyn Device>,
        format: &FormatOptions,
        options: &OpenOptions,
    ) -> Result<Engine, OpenError> {
        match Superblock::read(device.as_ref()) {
            Err(OpenError::Blank { .. }) => Engine::format(&device, format)?,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        Engine::open(device, options)
    }

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
            self.shared.writes.wait_until_open(layer);
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
            // None: a commit or remove is closing the layer; plan again once it is done.
            if let Some((plan, in_flight)) = planned {
                break (plan, in_flight, guard);
            }
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

impl Shared {
    fn stop_checkpointer(&self) {
        let taken = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = taken {
            *c.stop.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            c.stop.wake.notify_all();
            if c.handle.thread().id() != thread::current().id() {
                let _ = c.handle.join();
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_checkpointer();
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.device.sync().map_err(Error::Io).and_then(|()| state.flush(true)) {
            error!(device = %self.device_name, error = %e, "final flush failed; changes since the last durable point are lost");
        }
    }
}

fn start_checkpointer(shared: &Arc<Shared>, interval: Duration) {
    let stop = Arc::new(StopSignal { stopped: Mutex::new(false), wake: Condvar::new() });
    let weak = Arc::downgrade(shared);
    let thread_stop = stop.clone();
    let spawned = thread::Builder::new().name("lcfs-checkpoint".into()).spawn(move || {
        loop {
            let stopped = thread_stop.stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = thread_stop.wake.wait_timeout(stopped, interval).unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            let Some(shared) = weak.upgrade() else { return };
            let engine = Engine { shared };
            if engine.is_dirty()
                && let Err(e) = engine.sync()
            {
                warn!(error = %e, "checkpoint failed");
            }
        }
    });
    match spawned {
        Ok(handle) => {
            *shared.checkpointer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Checkpointer { handle, stop });
        }
        Err(e) => {
            error!(error = %e, "cannot start the checkpoint thread; changes become durable on sync only")
        }
    }
}

/// Checks every metadata page without writing: redb opens (and if needed repairs) the store
/// on a backend that keeps its writes in memory.
fn verify_metadata(device: &Arc<dyn Device>, sb: &Superblock) -> Result<(), OpenError> {
    let name = device.name();
    let scratch = ScratchBackend::new(device.clone(), sb);
    let store = Store::open(scratch, 16 << 20, true).map_err(|e| open_store_error(&name, e))?;
    drop(store);
    Ok(())
}

impl State {
    /// Loads layers and derives free space from the extents.
    pub(crate) fn load(store: Store, device: Arc<dyn Device>, superblock: SharedSuperblock) -> Result<State> {
        let read_counter = |key: &[u8]| -> Result<u64> {
            let v = store
                .get(Table::Meta, key)?
                .ok_or_else(|| Error::Corrupt(format!("the meta table lacks {:?}", String::from_utf8_lossy(key))))?;
            keys::be64(&v, 0).filter(|_| v.len() == 8).ok_or_else(|| Error::Corrupt("malformed counter".into()))
        };
        let next_ino = read_counter(keys::META_NEXT_INO)?;
        let next_layer = read_counter(keys::META_NEXT_LAYER)?;
        let mut records = Vec::new();
        store.scan(Table::Layers, (Bound::Unbounded, Bound::Unbounded), crate::store::Dir::Forward, |k, v| {
            let id = keys::be64(k, 0)
                .filter(|_| k.len() == 8)
                .ok_or_else(|| Error::Corrupt("malformed layer key".into()))?;
            let rec = LayerRecord::decode(v).map_err(|e| Error::Corrupt(format!("layer {id}: {e}")))?;
            records.push((LayerId(id), rec));
            Ok(true)
        })?;
        let layers = Layers::load(records).map_err(|e| Error::Corrupt(e.to_string()))?;
        let (start, end) = lock_superblock(&superblock).data_blocks();
        let mut alloc = Allocator::new(start, end);
        store.scan(Table::Extents, (Bound::Unbounded, Bound::Unbounded), crate::store::Dir::Forward, |k, v| {
            let (layer, ino, fb) = keys::parse_extent(k).ok_or_else(|| Error::Corrupt("malformed extent key".into()))?;
            let (phys, n) =
                keys::parse_extent_value(v).ok_or_else(|| Error::Corrupt("malformed extent value".into()))?;
            if phys != 0 {
                alloc.mark_used(phys, u64::from(n)).map_err(|c| {
                    Error::Corrupt(format!(
                        "blocks {}..{} of inode {ino} (file block {fb}) in layer {layer} are outside the data area or claimed twice",
                        c.start,
                        c.start + c.len
                    ))
                })?;
            }
            Ok(true)
        })?;
        Ok(State {
            store,
            layers,
            alloc,
            superblock,
            device,
            next_ino,
            next_ino_stored: next_ino,
            next_layer,
            next_layer_stored: next_layer,
            open: HashMap::new(),
            finished: Vec::new(),
        })
    }

    /// The layer with this id.
    pub(crate) fn layer(&self, id: LayerId) -> Result<LayerRef> {
        self.layers.layer_ref(id).ok_or_else(|| Error::LayerNotFound(format!("#{id}")))
    }

    /// The layer with this id, which must accept changes.
    fn writable(&self, id: LayerId) -> Result<LayerRef> {
        let l = self.layer(id)?;
        if l.kind != LayerKind::Writable {
            let name = self.layers.get(id).map(|x| x.record.name.clone()).unwrap_or_default();
            return Err(Error::LayerKind { name, kind: l.kind.as_str(), needed: "it cannot be changed" });
        }
        Ok(l)
    }

    fn info(&self, id: LayerId) -> Result<LayerInfo> {
        let layer = self.layers.get(id).ok_or_else(|| Error::LayerNotFound(format!("#{id}")))?;
        Ok(self.layers.info(layer))
    }

    /// Writes what only lives in memory into the overlay, then the overlay into the store.
    pub(crate) fn flush(&mut self, durable: bool) -> Result<()> {
        let dirty: Vec<LayerId> = self.layers.iter().filter(|l| l.dirty).map(|l| l.id).collect();
        for id in dirty {
            if let Some(layer) = self.layers.get_mut(id) {
                layer.dirty = false;
                let bytes = layer.record.encode();
                self.store.put(Table::Layers, keys::layer(id), bytes);
            }
        }
        if self.next_ino != self.next_ino_stored {
            self.store.put(Table::Meta, keys::META_NEXT_INO.to_vec(), self.next_ino.to_be_bytes().to_vec());
            self.next_ino_stored = self.next_ino;
        }
        if self.next_layer != self.next_layer_stored {
            self.store.put(Table::Meta, keys::META_NEXT_LAYER.to_vec(), self.next_layer.to_be_bytes().to_vec());
            self.next_layer_stored = self.next_layer;
        }
        if let Err(e) = self.store.flush(durable) {
            self.store.discard_overlay();
            return Err(e);
        }
        if durable {
            self.discard_pending();
            self.alloc.release_pending();
        }
        Ok(())
    }

    /// Gives the space of blocks whose freeing is now durable back to the medium (a hole in a
    /// device file, so deleted data stops occupying the host's disk). Done before the blocks
    /// can be reused, so it never races a new write; a failure only costs host space.
    fn discard_pending(&self) {
        for (start, len) in self.alloc.pending_runs() {
            if let Err(e) = self.device.zero_range(start * BLOCK_SIZE, len * BLOCK_SIZE) {
                warn!(error = %e, "could not give freed space back to the device");
                return;
            }
        }
    }

    /// Moves the overlay into the store when it holds more than `max` bytes.
    fn bound_overlay(&mut self, max: usize) -> Result<()> {
        if self.store.overlay_bytes() > max { self.flush(false) } else { Ok(()) }
    }

    /// Refuses operations that add metadata when the metadata region is nearly full.
    fn ensure_metadata_room(&mut self, op: Op) -> Result<()> {
        if matches!(op, Op::Remove | Op::SetAttr) {
            return Ok(());
        }
        let (capacity, used) = {
            let sb = lock_superblock(&self.superblock);
            (sb.meta_capacity, sb.meta_len)
        };
        let reserve = (capacity / 16).max(4 << 20);
        let pending = 4 * self.store.overlay_bytes() as u64;
        if used + pending + reserve <= capacity {
            return Ok(());
        }
        // The store may have free pages inside; a durable flush lets it reuse them.
        self.flush(true)?;
        let used = lock_superblock(&self.superblock).meta_len;
        if used + reserve > capacity { Err(Error::NoMetadataSpace) } else { Ok(()) }
    }

    pub(crate) fn new_ino(&mut self) -> Ino {
        let ino = Ino(self.next_ino);
        self.next_ino += 1;
        ino
    }

    pub(crate) fn add_usage(&mut self, layer: LayerId, blocks: i64, inodes: i64) {
        if let Some(l) = self.layers.get_mut(layer) {
            let u = &mut l.record.usage;
            u.bytes = u.bytes.saturating_add_signed(blocks * BLOCK_SIZE as i64);
            u.inodes = u.inodes.saturating_add_signed(inodes);
            l.dirty = true;
        }
    }
}
