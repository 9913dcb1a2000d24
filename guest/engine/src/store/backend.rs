//! Storage backends that give redb a region of the device instead of a file of its own.
//!
//! [`RegionBackend`] maps redb's byte range onto the metadata region and records the length in
//! use in the superblock. [`ScratchBackend`] reads the same region but keeps every write in
//! memory: opening redb on it lets us verify (and even let redb repair) the metadata without
//! writing a byte to the device, which is how a device is checked before it is trusted and how
//! fsck works.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use crate::device::Device;
use crate::superblock::Superblock;

const PAGE: u64 = 4096;
const ZERO_CHUNK: usize = 1 << 20;

/// The superblock shared between the metadata backend (which changes the metadata length) and
/// the engine (which changes the device size when it grows).
pub(crate) type SharedSuperblock = Arc<Mutex<Superblock>>;

pub(crate) fn lock_superblock(sb: &SharedSuperblock) -> MutexGuard<'_, Superblock> {
    sb.lock().unwrap_or_else(|e| e.into_inner())
}

fn beyond(offset: u64, len: usize, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("metadata access of {len} bytes at {offset} is beyond the metadata length {limit}"),
    )
}

/// redb's storage: the metadata region of the device.
#[derive(Debug)]
pub(crate) struct RegionBackend {
    device: Arc<dyn Device>,
    superblock: SharedSuperblock,
}

impl RegionBackend {
    pub fn new(device: Arc<dyn Device>, superblock: SharedSuperblock) -> Self {
        RegionBackend { device, superblock }
    }

    /// The device offset of an access of `len` bytes at store offset `offset`, which must lie
    /// within the store's length.
    fn device_offset(&self, offset: u64, len: usize) -> io::Result<u64> {
        let sb = lock_superblock(&self.superblock);
        if offset.checked_add(len as u64).is_none_or(|end| end > sb.meta_len) {
            return Err(beyond(offset, len, sb.meta_len));
        }
        Ok(sb.meta_offset + offset)
    }
}

impl StorageBackend for RegionBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(lock_superblock(&self.superblock).meta_len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.device.read_at(out, self.device_offset(offset, out.len())?)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut sb = lock_superblock(&self.superblock);
        if len > sb.meta_capacity {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("metadata region is full ({} bytes; {len} requested)", sb.meta_capacity),
            ));
        }
        if len > sb.meta_len {
            // Space between the old length and the high-water mark may hold bytes of an earlier,
            // longer store; redb requires new space to read as zeros.
            let dirty_end = len.min(sb.meta_high_water);
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut at = sb.meta_len;
            while at < dirty_end {
                let n = (dirty_end - at).min(ZERO_CHUNK as u64) as usize;
                self.device.write_at(&zeros[..n], sb.meta_offset + at)?;
                at += n as u64;
            }
        }
        sb.meta_len = len;
        sb.meta_high_water = sb.meta_high_water.max(len);
        sb.write_next(self.device.as_ref())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.device.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.device.write_at(data, self.device_offset(offset, data.len())?)
    }
}

#[derive(Debug, Default)]
struct Scratch {
    len: u64,
    /// Device bytes below this offset are what the store holds; beyond it, zeros.
    device_valid: u64,
    pages: HashMap<u64, Box<[u8]>>,
}

/// Reads the metadata region of a device; keeps writes in memory. See the module docs.
#[derive(Debug)]
pub(crate) struct ScratchBackend {
    device: Arc<dyn Device>,
    base: u64,
    scratch: Mutex<Scratch>,
}

impl ScratchBackend {
    pub fn new(device: Arc<dyn Device>, superblock: &Superblock) -> Self {
        ScratchBackend {
            device,
            base: superblock.meta_offset,
            scratch: Mutex::new(Scratch {
                len: superblock.meta_len,
                device_valid: superblock.meta_len,
                pages: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Scratch> {
        self.scratch.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_page(&self, s: &Scratch, page: u64, out: &mut [u8; PAGE as usize]) -> io::Result<()> {
        if let Some(p) = s.pages.get(&page) {
            out.copy_from_slice(p);
            return Ok(());
        }
        out.fill(0);
        let start = page * PAGE;
        if start < s.device_valid {
            let n = (s.device_valid - start).min(PAGE) as usize;
            self.device.read_at(&mut out[..n], self.base + start)?;
        }
        Ok(())
    }
}

impl StorageBackend for ScratchBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        if offset.checked_add(out.len() as u64).is_none_or(|end| end > s.len) {
            return Err(beyond(offset, out.len(), s.len));
        }
        let mut page_buf = [0u8; PAGE as usize];
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let page = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(out.len() - done);
            self.read_page(&s, page, &mut page_buf)?;
            out[done..done + n].copy_from_slice(&page_buf[in_page..in_page + n]);
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        if len < s.len {
            s.pages.retain(|&p, _| p * PAGE < len);
            s.device_valid = s.device_valid.min(len);
            // A page straddling the new end must read zeros past it if the store grows again.
            let tail_page = len / PAGE;
            if !len.is_multiple_of(PAGE) {
                let mut buf = [0u8; PAGE as usize];
                self.read_page(&s, tail_page, &mut buf)?;
                buf[(len % PAGE) as usize..].fill(0);
                s.pages.insert(tail_page, Box::new(buf));
            }
        }
        s.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > s.len) {
            return Err(beyond(offset, data.len(), s.len));
        }
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let page = at / PAGE;
            let in_page = (at % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - done);
            let mut buf = [0u8; PAGE as usize];
            self.read_page(&s, page, &mut buf)?;
            buf[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
            s.pages.insert(page, Box::new(buf));
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn scratch_writes_never_reach_the_device() {
        let dev: Arc<dyn Device> = Arc::new(MemDevice::new(8 << 20));
        dev.write_at(&[5u8; 100], (1 << 20) + 10).expect("seed");
        let mut sb = Superblock::new(8 << 20, 4 << 20);
        sb.meta_len = 8192;
        let before = {
            let mut b = vec![0u8; 8 << 20];
            dev.read_at(&mut b, 0).expect("read");
            b
        };
        let scratch = ScratchBackend::new(dev.clone(), &sb);
        scratch.write(4000, &[9u8; 200]).expect("write");
        scratch.set_len(20000).expect("grow");
        scratch.write(19000, &[7u8; 1000]).expect("write");
        let mut out = vec![0u8; 300];
        scratch.read(0, &mut out).expect("read");
        assert_eq!(&out[10..110], &[5u8; 100]);
        let mut out = vec![0u8; 200];
        scratch.read(4000, &mut out).expect("read");
        assert_eq!(out, vec![9u8; 200]);
        let mut after = vec![0u8; 8 << 20];
        dev.read_at(&mut after, 0).expect("read");
        assert!(before == after, "scratch backend wrote to the device");
    }

    #[test]
    fn region_backend_zeroes_space_it_used_before_when_growing_again() {
        let dev: Arc<dyn Device> = Arc::new(MemDevice::new(8 << 20));
        let sb = Arc::new(Mutex::new(Superblock::new(8 << 20, 4 << 20)));
        let region = RegionBackend::new(dev, sb.clone());
        region.set_len(8192).expect("grow");
        region.write(5000, &[3u8; 100]).expect("write");
        region.set_len(4096).expect("shrink");
        region.set_len(8192).expect("grow again");
        let mut out = vec![1u8; 100];
        region.read(5000, &mut out).expect("read");
        assert_eq!(out, vec![0u8; 100]);
        assert!(region.set_len(5 << 20).is_err(), "growth past capacity must fail");
        assert_eq!(lock_superblock(&sb).meta_high_water, 8192);
    }
}
