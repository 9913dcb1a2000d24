//! Formatting and opening a device: nothing is written to a device before its superblock and
//! (with `verify`) every metadata page have been checked.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use tracing::{info, warn};

use super::checkpoint::start_checkpointer;
use super::in_flight::WritesInFlight;
use super::{Engine, FormatOptions, INODE_LOCK_STRIPES, OpenOptions, Shared, State};
use crate::device::Device;
use crate::error::OpenError;
use crate::stats::FileCounters;
use crate::store::{RegionBackend, ScratchBackend, Store, Table, keys};
use crate::superblock::{BLOCK_SIZE, METADATA_OFFSET, Superblock};

/// Smallest data region a device may have.
const MIN_DATA_BYTES: u64 = 16 << 20;

pub(super) fn io_error(device: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> OpenError {
    let device = device.to_string();
    move |source| OpenError::Io { device, what, source }
}

pub(super) fn corrupt_metadata(device: &str, e: impl std::fmt::Display) -> OpenError {
    OpenError::CorruptMetadata { device: device.to_string(), detail: e.to_string() }
}

/// Maps a failure of redb while opening to what it means for the user.
pub(super) fn open_store_error(device: &str, e: redb::Error) -> OpenError {
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
        let meta = options
            .metadata_bytes
            .map_or_else(|| Superblock::default_metadata_bytes(len), |bytes| bytes.div_ceil(1 << 20) << 20);
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
}

/// Checks every metadata page without writing: redb opens (and if needed repairs) the store
/// on a backend that keeps its writes in memory.
pub(super) fn verify_metadata(device: &Arc<dyn Device>, sb: &Superblock) -> Result<(), OpenError> {
    let name = device.name();
    let scratch = ScratchBackend::new(device.clone(), sb);
    let store = Store::open(scratch, 16 << 20, true).map_err(|e| open_store_error(&name, e))?;
    drop(store);
    Ok(())
}
