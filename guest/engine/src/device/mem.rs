//! A device in memory, for tests and benchmarks of the engine alone.

use std::io;
use std::sync::RwLock;

use super::{Device, out_of_range};

/// A device held in a `Vec<u8>`. `sync` does nothing: everything written is "durable" until the
/// value is dropped.
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
}

impl MemDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: u64) -> MemDevice {
        MemDevice::from_bytes(vec![0; usize::try_from(len).expect("device fits in memory")])
    }

    /// A device holding exactly `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> MemDevice {
        MemDevice { bytes: RwLock::new(bytes) }
    }

    /// A copy of the current contents.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        let range = span(offset, buf.len(), bytes.len())?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let range = span(offset, buf.len(), bytes.len())?;
        bytes[range].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large for memory"))?;
        if len > bytes.len() {
            bytes.resize(len, 0);
        }
        Ok(())
    }

    fn name(&self) -> String {
        "memory device".to_string()
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let range = span(offset, usize::try_from(len).map_err(|_| io::Error::other("too large"))?, bytes.len())?;
        bytes[range].fill(0);
        Ok(true)
    }
}

/// The in-bounds index range of an access, or the error for an out-of-range one.
pub(crate) fn span(offset: u64, len: usize, device_len: usize) -> io::Result<std::ops::Range<usize>> {
    let start = usize::try_from(offset).map_err(|_| out_of_range(offset, len, device_len as u64))?;
    match start.checked_add(len) {
        Some(end) if end <= device_len => Ok(start..end),
        _ => Err(out_of_range(offset, len, device_len as u64)),
    }
}
