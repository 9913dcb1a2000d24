//! The superblock: the first thing on a device, saying what the device is and where things are.
//!
//! Two copies live at byte 0 and byte 4096. Each write goes to the copy that is not current
//! (chosen by the sequence number), so a torn write can destroy at most the copy being written
//! while the other still describes a consistent device. Since format version 2 every write also
//! goes to a backup copy in the first block of the data region, at least 17 MiB into the
//! device, which no file data uses: one stray write over the first megabyte (a partitioning
//! tool, a `dd` to the wrong device, a torn write at the start of a virtual disk) no longer
//! loses the device. When both copies at the start are zeroed or damaged (but not when they
//! hold another format's or a newer version's signature), [`Superblock::read`] looks for the
//! backup at each whole MiB from 17 MiB on (the data region starts at one), trying the default
//! geometry first. Layout of one copy (little-endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `LCFS\0DEV` |
//! | 8 | 4 | format version |
//! | 12 | 4 | block size (4096) |
//! | 16 | 16 | device uuid |
//! | 32 | 8 | sequence number (the higher valid copy is current) |
//! | 40 | 8 | device size in bytes |
//! | 48 | 8 | metadata region offset |
//! | 56 | 8 | metadata region capacity |
//! | 64 | 8 | metadata store length (bytes of the region in use) |
//! | 72 | 8 | metadata high-water mark (bytes ever used; beyond it the region is known zero) |
//! | 80 | 8 | data region offset |
//! | 88 | 8 | creation time, ns since the epoch |
//! | 96 | 3992 | zero |
//! | 4092 | 4 | CRC-32 of bytes 0..4092 |

use std::io::Read;

use crate::device::Device;
use crate::error::OpenError;

pub(crate) const MAGIC: [u8; 8] = *b"LCFS\0DEV";
/// Version 2 added the backup copy at the start of the data region.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest format this build opens (version 1: no backup copy; data from the first block of
/// the data region).
const OLDEST_VERSION: u32 = 1;
pub(crate) const BLOCK_SIZE: u64 = 4096;
pub(crate) const SUPERBLOCK_SIZE: usize = 4096;
/// Both superblock copies fit in the first 8 KiB; the metadata region starts at 1 MiB.
pub(crate) const METADATA_OFFSET: u64 = 1 << 20;
const CRC_AT: usize = SUPERBLOCK_SIZE - 4;

/// Smallest metadata region a device is formatted with.
const MIN_METADATA_BYTES: u64 = 16 << 20;
/// Smallest offset of the data region.
const MIN_DATA_OFFSET: u64 = METADATA_OFFSET + MIN_METADATA_BYTES;
/// Bytes at the start of the metadata region that are never zero once the store was created
/// (the store's header).
const METADATA_HEAD: usize = 64 << 10;

/// Decoded superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Superblock {
    /// Format version the device was made with (kept: a version 1 device stays version 1).
    pub version: u32,
    pub uuid: [u8; 16],
    pub sequence: u64,
    pub device_size: u64,
    pub meta_offset: u64,
    pub meta_capacity: u64,
    pub meta_len: u64,
    pub meta_high_water: u64,
    pub data_offset: u64,
    pub created_ns: u64,
}

impl Superblock {
    /// Geometry of a new device of `device_size` bytes with a metadata region of
    /// `meta_capacity` bytes (rounded up to whole MiB).
    pub fn new(device_size: u64, meta_capacity: u64) -> Superblock {
        let meta_capacity = meta_capacity.div_ceil(1 << 20) << 20;
        Superblock {
            version: FORMAT_VERSION,
            uuid: random_uuid(),
            sequence: 0,
            device_size,
            meta_offset: METADATA_OFFSET,
            meta_capacity,
            meta_len: 0,
            meta_high_water: 0,
            data_offset: METADATA_OFFSET + meta_capacity,
            created_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
        }
    }

    /// The metadata region a device of `len` bytes gets unless told otherwise: an eighth of
    /// the device, between 16 MiB and 64 GiB, in whole MiB.
    pub fn default_metadata_bytes(len: u64) -> u64 {
        (len / 8).clamp(MIN_METADATA_BYTES, 64 << 30).div_ceil(1 << 20) << 20
    }

    /// First and one-past-last data block (since version 2 the first block of the region holds
    /// the backup copy).
    pub fn data_blocks(&self) -> (u64, u64) {
        let first = self.data_offset / BLOCK_SIZE + u64::from(self.backup_offset().is_some());
        (first, self.device_size / BLOCK_SIZE)
    }

    /// Where the backup copy lives, if this format has one.
    pub fn backup_offset(&self) -> Option<u64> {
        (self.version >= 2).then_some(self.data_offset)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        for (at, v) in [
            (32, self.sequence),
            (40, self.device_size),
            (48, self.meta_offset),
            (56, self.meta_capacity),
            (64, self.meta_len),
            (72, self.meta_high_water),
            (80, self.data_offset),
            (88, self.created_ns),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one copy. `Ok(None)` means the copy is blank (all zeros).
    fn decode(b: &[u8]) -> Result<Option<Superblock>, CopyProblem> {
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..8] != MAGIC {
            return Err(CopyProblem::NoMagic);
        }
        // The checksum first: a flipped bit in the version field is damage, not a newer format.
        // Every version keeps the magic, the version and this checksum where they are.
        let crc = u32::from_le_bytes(le4(&b[CRC_AT..]));
        if crc != crc32fast::hash(&b[..CRC_AT]) {
            return Err(CopyProblem::Checksum);
        }
        let version = u32::from_le_bytes(le4(&b[8..12]));
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(CopyProblem::Version(version));
        }
        let block_size = u32::from_le_bytes(le4(&b[12..16]));
        if u64::from(block_size) != BLOCK_SIZE {
            return Err(CopyProblem::Inconsistent(format!("block size {block_size}, expected {BLOCK_SIZE}")));
        }
        let u = |at: usize| u64::from_le_bytes(le8(&b[at..at + 8]));
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let sb = Superblock {
            version,
            uuid,
            sequence: u(32),
            device_size: u(40),
            meta_offset: u(48),
            meta_capacity: u(56),
            meta_len: u(64),
            meta_high_water: u(72),
            data_offset: u(80),
            created_ns: u(88),
        };
        sb.check().map_err(CopyProblem::Inconsistent)?;
        Ok(Some(sb))
    }

    /// Internal consistency of the geometry.
    fn check(&self) -> Result<(), String> {
        if self.meta_offset < 2 * SUPERBLOCK_SIZE as u64 || !self.meta_offset.is_multiple_of(BLOCK_SIZE) {
            return Err(format!("metadata region offset {} is invalid", self.meta_offset));
        }
        if self.meta_len > self.meta_capacity || self.meta_high_water > self.meta_capacity {
            return Err(format!(
                "metadata length {} (high water {}) exceeds its capacity {}",
                self.meta_len, self.meta_high_water, self.meta_capacity
            ));
        }
        if self.meta_offset.checked_add(self.meta_capacity) != Some(self.data_offset) {
            return Err("data region does not follow the metadata region".to_string());
        }
        if !self.data_offset.is_multiple_of(BLOCK_SIZE) || self.data_offset > self.device_size {
            return Err(format!("data region offset {} is invalid", self.data_offset));
        }
        Ok(())
    }

    /// Reads and validates the current superblock of `device`. Never writes.
    pub fn read(device: &dyn Device) -> Result<Superblock, OpenError> {
        Self::read_checked(device).map(|(sb, _)| sb)
    }

    /// [`Superblock::read`], and what was wrong with the two copies at the start of the device
    /// when the superblock came from the backup copy (`None` when it came from them).
    pub fn read_checked(device: &dyn Device) -> Result<(Superblock, Option<String>), OpenError> {
        let name = device.name();
        let io = |what| {
            let device = name.clone();
            move |source| OpenError::Io { device, what, source }
        };
        let len = device.len().map_err(io("reading the device size"))?;
        if len < 2 * SUPERBLOCK_SIZE as u64 {
            let mut head = vec![0u8; len as usize];
            device.read_at(&mut head, 0).map_err(io("reading the superblock"))?;
            return Err(if head.iter().all(|&b| b == 0) {
                OpenError::Blank { device: name }
            } else if head.len() >= 8 && head[..8] == MAGIC {
                OpenError::Truncated { device: name, expected: 2 * SUPERBLOCK_SIZE as u64, found: len }
            } else {
                OpenError::NotLcfs { device: name }
            });
        }
        let mut both = vec![0u8; 2 * SUPERBLOCK_SIZE];
        device.read_at(&mut both, 0).map_err(io("reading the superblock"))?;
        let copies = [Self::decode(&both[..SUPERBLOCK_SIZE]), Self::decode(&both[SUPERBLOCK_SIZE..])];
        let (current, damage) = match Self::current_of(&copies, &name) {
            Ok(current) => (current, None),
            // A copy of a newer format, or foreign data at the start (another file system
            // made over this device, say): never overridden by a backup.
            Err(problem @ (OpenError::UnsupportedVersion { .. } | OpenError::NotLcfs { .. })) => return Err(problem),
            Err(problem) => {
                let damage =
                    format!("superblock copy 1 {}, copy 2 {}", describe_copy(&copies[0]), describe_copy(&copies[1]));
                match Self::find_backup(device, len)? {
                    Some(backup) => {
                        let at = backup.data_offset;
                        (backup, Some(format!("{damage}; used the backup copy at byte {at}")))
                    }
                    None if matches!(problem, OpenError::Blank { .. }) && !Self::holds_metadata(device, len)? => {
                        return Err(problem);
                    }
                    None if matches!(problem, OpenError::Blank { .. }) => {
                        return Err(OpenError::Damaged {
                            device: name,
                            detail: format!(
                                "{damage}, no backup copy was found, but lcfs metadata follows at byte {METADATA_OFFSET}"
                            ),
                        });
                    }
                    None => return Err(problem),
                }
            }
        };
        if len < current.device_size {
            return Err(OpenError::Truncated { device: name, expected: current.device_size, found: len });
        }
        Ok((current, damage))
    }

    /// The current superblock of the two copies at the start, or why there is none.
    fn current_of(copies: &[Result<Option<Superblock>, CopyProblem>; 2], name: &str) -> Result<Superblock, OpenError> {
        let name = name.to_string();
        match (&copies[0], &copies[1]) {
            (Ok(Some(a)), Ok(Some(b))) => {
                if a.uuid != b.uuid {
                    // Copies from two different formats: someone wrote over one of them.
                    return Err(OpenError::CorruptSuperblock {
                        device: name,
                        detail: "the two superblock copies belong to different file systems".to_string(),
                    });
                }
                Ok(if a.sequence >= b.sequence { a.clone() } else { b.clone() })
            }
            (Ok(Some(a)), _) => Ok(a.clone()),
            (_, Ok(Some(b))) => Ok(b.clone()),
            (Ok(None), Ok(None)) => Err(OpenError::Blank { device: name }),
            (a, b) => {
                let problems = [a, b];
                if let Some(v) = problems.iter().find_map(|p| match p {
                    Err(CopyProblem::Version(v)) => Some(*v),
                    _ => None,
                }) {
                    return Err(OpenError::UnsupportedVersion { device: name, found: v, supported: FORMAT_VERSION });
                }
                if problems.iter().all(|p| matches!(p, Err(CopyProblem::NoMagic) | Ok(None))) {
                    return Err(OpenError::NotLcfs { device: name });
                }
                let detail = problems
                    .iter()
                    .enumerate()
                    .map(|(i, p)| format!("copy {}: {}", i + 1, describe(p)))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(OpenError::CorruptSuperblock { device: name, detail })
            }
        }
    }

    /// The backup copy, looked for at each whole MiB where a data region can start, the
    /// default geometry's first. Only a copy that says it lives where it was found counts.
    fn find_backup(device: &dyn Device, len: u64) -> Result<Option<Superblock>, OpenError> {
        let guess = METADATA_OFFSET + Self::default_metadata_bytes(len);
        let candidates = std::iter::once(guess)
            .chain((MIN_DATA_OFFSET..len).step_by(1 << 20).filter(|&at| at != guess))
            .filter(|&at| at + SUPERBLOCK_SIZE as u64 <= len);
        let mut buf = vec![0u8; SUPERBLOCK_SIZE];
        for at in candidates {
            device.read_at(&mut buf, at).map_err(|source| OpenError::Io {
                device: device.name(),
                what: "looking for the backup superblock",
                source,
            })?;
            if let Ok(Some(sb)) = Self::decode(&buf)
                && sb.backup_offset() == Some(at)
            {
                return Ok(Some(sb));
            }
        }
        Ok(None)
    }

    /// Whether lcfs metadata was ever written past the superblocks: the head of the metadata
    /// region (where the store keeps its header) or a block at any whole MiB of the smallest
    /// metadata region is other than zeros. A new sparse file, a zero-filled image and a new
    /// disk hold none.
    fn holds_metadata(device: &dyn Device, len: u64) -> Result<bool, OpenError> {
        let io = |source| OpenError::Io { device: device.name(), what: "checking whether the device is blank", source };
        let head = (METADATA_OFFSET, METADATA_HEAD);
        let samples = (METADATA_OFFSET..MIN_DATA_OFFSET).step_by(1 << 20).skip(1).map(|at| (at, SUPERBLOCK_SIZE));
        let mut buf = vec![0u8; METADATA_HEAD];
        for (at, size) in std::iter::once(head).chain(samples).take_while(|&(at, _)| at < len) {
            let size = size.min((len - at) as usize);
            device.read_at(&mut buf[..size], at).map_err(io)?;
            if buf[..size].iter().any(|&b| b != 0) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the next version of the superblock over the older copy. Durable after the next
    /// device sync.
    pub fn write_next(&mut self, device: &dyn Device) -> std::io::Result<()> {
        self.sequence += 1;
        let slot = self.sequence % 2;
        let bytes = self.encode();
        device.write_at(&bytes, slot * SUPERBLOCK_SIZE as u64)?;
        match self.backup_offset() {
            Some(at) => device.write_at(&bytes, at),
            None => Ok(()),
        }
    }

    /// Problems with the copy that is not current, for fsck: `None` when both copies are fine.
    pub fn other_copy_problem(device: &dyn Device, current: &Superblock) -> Option<String> {
        let mut buf = vec![0u8; SUPERBLOCK_SIZE];
        let other = (current.sequence + 1) % 2;
        if device.read_at(&mut buf, other * SUPERBLOCK_SIZE as u64).is_err() {
            return Some("cannot be read".to_string());
        }
        match Self::decode(&buf) {
            Ok(Some(sb)) if sb.uuid == current.uuid => None,
            Ok(Some(_)) => Some("belongs to another file system".to_string()),
            // Formatting writes both copies; a blank one means it was never written, which
            // only happens on a device formatted by an interrupted format.
            Ok(None) => Some("is blank".to_string()),
            Err(p) => Some(describe(&Err(p)).to_string()),
        }
    }
}

#[derive(Debug)]
enum CopyProblem {
    NoMagic,
    Version(u32),
    Checksum,
    Inconsistent(String),
}

/// One copy's state, in words for a damage report.
fn describe_copy(p: &Result<Option<Superblock>, CopyProblem>) -> String {
    match p {
        Ok(Some(_)) => "is valid".to_string(),
        Ok(None) => "is zeroed".to_string(),
        other => format!("has {}", describe(other)),
    }
}

fn describe(p: &Result<Option<Superblock>, CopyProblem>) -> String {
    match p {
        Ok(Some(_)) => "valid".to_string(),
        Ok(None) => "blank".to_string(),
        Err(CopyProblem::NoMagic) => "no lcfs signature".to_string(),
        Err(CopyProblem::Version(v)) => format!("unsupported version {v}"),
        Err(CopyProblem::Checksum) => "checksum mismatch".to_string(),
        Err(CopyProblem::Inconsistent(s)) => s.clone(),
    }
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

fn random_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    let from_urandom = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut uuid));
    if from_urandom.is_err() {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        uuid.copy_from_slice(&(nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    uuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn formatted() -> (MemDevice, Superblock) {
        let dev = MemDevice::new(64 << 20);
        let mut sb = Superblock::new(64 << 20, 8 << 20);
        sb.write_next(&dev).expect("write");
        sb.write_next(&dev).expect("write");
        (dev, sb)
    }

    #[test]
    fn reads_back_the_newest_copy() {
        let (dev, mut sb) = formatted();
        sb.meta_len = 12345;
        sb.write_next(&dev).expect("write");
        assert_eq!(Superblock::read(&dev).expect("read"), sb);
        assert_eq!(Superblock::other_copy_problem(&dev, &sb), None);
    }

    #[test]
    fn survives_one_torn_copy_and_names_two() {
        let (dev, sb) = formatted();
        let current_at = (sb.sequence % 2) * SUPERBLOCK_SIZE as u64;
        let other_at = SUPERBLOCK_SIZE as u64 - current_at;
        dev.write_at(&[0xff; 100], other_at + 40).expect("corrupt");
        assert_eq!(Superblock::read(&dev).expect("still readable"), sb);
        assert!(Superblock::other_copy_problem(&dev, &sb).is_some());
        dev.write_at(&[0xff; 1], current_at + 45).expect("corrupt");
        let err = Superblock::read(&dev).expect_err("both copies bad");
        assert!(matches!(err, OpenError::CorruptSuperblock { .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn tells_blank_foreign_and_future_devices_apart() {
        let dev = MemDevice::new(1 << 20);
        assert!(matches!(Superblock::read(&dev), Err(OpenError::Blank { .. })));
        dev.write_at(b"\x7fELF", 0).expect("write");
        assert!(matches!(Superblock::read(&dev), Err(OpenError::NotLcfs { .. })));
        let (dev, sb) = formatted();
        let future = Superblock { version: 7, ..sb };
        for slot in 0..2u64 {
            dev.write_at(&future.encode(), slot * SUPERBLOCK_SIZE as u64).expect("write");
        }
        assert!(matches!(Superblock::read(&dev), Err(OpenError::UnsupportedVersion { found: 7, .. })));
    }

    #[test]
    fn detects_truncation() {
        let (dev, _) = formatted();
        let bytes = dev.to_bytes();
        let short = MemDevice::from_bytes(bytes[..32 << 20].to_vec());
        assert!(matches!(Superblock::read(&short), Err(OpenError::Truncated { .. })));
    }
}
