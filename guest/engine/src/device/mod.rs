//! The medium the engine lives on.
//!
//! A [`Device`] is a flat, byte-addressed store: a regular file (created sparse, growable), a
//! block device, or memory. The engine asks only for positional reads and writes, a barrier
//! ([`Device::sync`]) and the length.
//!
//! Contract, which the crash tests hold every implementation to:
//! - a write is durable once a later `sync` returns; before that it may be lost, wholly or in
//!   part, on power loss;
//! - space added by `grow` reads as zeros;
//! - reads and writes within `len()` never fail for reasons of range.

mod crash;
mod file;
mod mem;

pub use crash::{CrashDevice, CrashMode};
pub use file::{FileDevice, FileDeviceError};
pub use mem::MemDevice;

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A byte-addressed medium with a durability barrier.
#[allow(clippy::len_without_is_empty)] // a device is never empty: it holds at least a superblock
pub trait Device: Send + Sync + Debug {
    /// Fills `buf` from `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`. Writing past the end is an error.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write that returned before this call durable.
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Grows the device; new bytes read as zeros. Devices that cannot grow return `Unsupported`.
    fn grow(&self, len: u64) -> io::Result<()>;
    /// A name for messages: the path, or a description.
    fn name(&self) -> String;
    /// Writes a large transfer, bypassing the host's page cache where the device can (file
    /// data is cached once, by whoever reads it, not a second time here). Durable like
    /// `write_at`: after the next `sync`. The default is `write_at`.
    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }
    /// Makes `[offset, offset+len)` read as zeros cheaply (a hole punch or discard) and returns
    /// `true`, or returns `false` if the device cannot, leaving it unchanged.
    fn zero_range(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
}

impl<D: Device + ?Sized> Device for Arc<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        (**self).grow(len)
    }
    fn name(&self) -> String {
        (**self).name()
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        (**self).zero_range(offset, len)
    }
    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_direct(buf, offset)
    }
}

/// Counts the bytes written to and read from a device, and the syncs; used to measure write
/// amplification.
#[derive(Debug)]
pub struct CountingDevice<D> {
    inner: D,
    written: AtomicU64,
    read: AtomicU64,
    syncs: AtomicU64,
}

impl<D: Device> CountingDevice<D> {
    pub fn new(inner: D) -> Self {
        CountingDevice { inner, written: AtomicU64::new(0), read: AtomicU64::new(0), syncs: AtomicU64::new(0) }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl<D: Device> Device for CountingDevice<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        self.inner.grow(len)
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.inner.zero_range(offset, len)
    }
    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.inner.write_direct(buf, offset)
    }
}

pub(crate) fn out_of_range(offset: u64, len: usize, device_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("access of {len} bytes at {offset} is beyond the end of the device ({device_len} bytes)"),
    )
}
