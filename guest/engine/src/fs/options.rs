//! How to format and how to open a device.

use std::time::Duration;

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
