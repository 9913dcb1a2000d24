//! A device that simulates power loss, for crash tests.
//!
//! It keeps two images: the live one that reads see, and the durable one that survives a
//! crash. A write goes to the live image and to a list of pending writes; `sync` applies the
//! pending writes to the durable image. [`CrashDevice::power_cut`] makes every further access
//! fail (as a dead disk would) and [`CrashDevice::image_after_crash`] returns what a reboot
//! would find: the durable image, plus — in [`CrashMode::Torn`] — an arbitrary subset of the
//! pending writes, some of them only partly (at 512-byte sector granularity), because disks
//! reorder and tear unsynced writes.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::mem::span;
use super::{Device, MemDevice};

const SECTOR: usize = 512;

/// What survives of unsynced writes in a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every write not yet synced is lost.
    DropUnsynced,
    /// A pseudo-random subset of the unsynced sectors survives, chosen by the seed.
    Torn { seed: u64 },
}

#[derive(Debug, Default)]
struct Images {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

/// A device that can lose power; see the module documentation.
#[derive(Debug)]
pub struct CrashDevice {
    images: Mutex<Images>,
    /// Writes left before the power fails by itself; `u64::MAX` for never.
    writes_left: AtomicU64,
    dead: AtomicBool,
}

impl CrashDevice {
    /// A zero-filled device of `len` bytes.
    pub fn new(len: u64) -> CrashDevice {
        CrashDevice::from_bytes(vec![0; usize::try_from(len).expect("device fits in memory")])
    }

    /// A device whose live and durable images both hold `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> CrashDevice {
        CrashDevice {
            images: Mutex::new(Images { live: bytes.clone(), durable: bytes, pending: Vec::new() }),
            writes_left: AtomicU64::new(u64::MAX),
            dead: AtomicBool::new(false),
        }
    }

    /// Cuts the power after `n` more writes: the `n+1`-th write and everything after fail.
    pub fn cut_power_after_writes(&self, n: u64) {
        self.writes_left.store(n, Ordering::SeqCst);
    }

    /// Cuts the power now.
    pub fn power_cut(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// Whether the power has been cut.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// What the device holds after a reboot, as a fresh device.
    pub fn image_after_crash(&self, mode: CrashMode) -> CrashDevice {
        let images = self.lock();
        let mut bytes = images.durable.clone();
        if let CrashMode::Torn { seed } = mode {
            let mut rng = SplitMix64(seed);
            for (offset, data) in &images.pending {
                for (i, sector) in data.chunks(SECTOR).enumerate() {
                    if rng.next().is_multiple_of(2) {
                        let at = *offset as usize + i * SECTOR;
                        bytes[at..at + sector.len()].copy_from_slice(sector);
                    }
                }
            }
        }
        CrashDevice::from_bytes(bytes)
    }

    /// The durable image as a plain memory device.
    pub fn durable_image(&self) -> MemDevice {
        MemDevice::from_bytes(self.lock().durable.clone())
    }

    /// Number of writes issued since the last sync.
    pub fn unsynced_writes(&self) -> usize {
        self.lock().pending.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Images> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_power(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) { Err(io::Error::other("simulated power loss")) } else { Ok(()) }
    }
}

impl Device for CrashDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_power()?;
        let images = self.lock();
        let range = span(offset, buf.len(), images.live.len())?;
        buf.copy_from_slice(&images.live[range]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_power()?;
        let left = self.writes_left.load(Ordering::SeqCst);
        if left == 0 {
            self.power_cut();
            return self.check_power();
        }
        if left != u64::MAX {
            self.writes_left.store(left - 1, Ordering::SeqCst);
        }
        let mut images = self.lock();
        let range = span(offset, buf.len(), images.live.len())?;
        images.live[range].copy_from_slice(buf);
        images.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.check_power()?;
        let mut images = self.lock();
        let pending = std::mem::take(&mut images.pending);
        for (offset, data) in pending {
            let at = offset as usize;
            images.durable[at..at + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.check_power()?;
        Ok(self.lock().live.len() as u64)
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        self.check_power()?;
        let mut images = self.lock();
        let len = usize::try_from(len).map_err(|_| io::Error::other("too large for memory"))?;
        if len > images.live.len() {
            images.live.resize(len, 0);
            images.durable.resize(len, 0);
        }
        Ok(())
    }

    fn name(&self) -> String {
        "crash-test device".to_string()
    }
}

/// A tiny deterministic generator, so crash images depend only on the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_kept() {
        let dev = CrashDevice::new(4096);
        dev.write_at(&[1; 100], 0).expect("write");
        dev.sync().expect("sync");
        dev.write_at(&[2; 100], 200).expect("write");
        let after = dev.image_after_crash(CrashMode::DropUnsynced);
        let mut buf = [0u8; 300];
        after.read_at(&mut buf, 0).expect("read");
        assert_eq!(&buf[..100], &[1; 100]);
        assert_eq!(&buf[200..300], &[0; 100]);
    }

    #[test]
    fn power_cut_after_n_writes_fails_everything_after() {
        let dev = CrashDevice::new(4096);
        dev.cut_power_after_writes(2);
        dev.write_at(&[1], 0).expect("first");
        dev.write_at(&[1], 1).expect("second");
        assert!(dev.write_at(&[1], 2).is_err());
        assert!(dev.sync().is_err());
        assert!(dev.is_dead());
    }
}
