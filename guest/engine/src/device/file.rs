//! A device backed by a regular file or a block device.
//!
//! Regular files are created sparse with `set_len` and can grow. The file is locked exclusively
//! (`flock`) while open so that two engines never share a device.
//!
//! Large writes of file data go through a second descriptor opened with `O_DIRECT`, so the data
//! is not cached twice (once by the kernel for the lcfs file, once here for the device file).
//! Small writes and all reads stay buffered (reads gain from the host's readahead and cache);
//! Linux keeps buffered and direct access to one file coherent (direct I/O writes back and
//! invalidates the cached pages it overlaps).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Device, out_of_range};

/// A regular file or block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    is_block: bool,
    /// Length, read once at open and changed only by `grow`.
    len: AtomicU64,
    /// The same file opened with `O_DIRECT`, if the file system allows it.
    direct: Option<File>,
}

/// Alignment `O_DIRECT` needs for offsets, lengths and memory (the largest logical block size
/// of common devices).
const DIRECT_ALIGN: usize = 4096;
/// Largest piece moved through the bounce buffer at once.
const DIRECT_CHUNK: usize = 1 << 20;

thread_local! {
    /// An aligned buffer for direct transfers, kept per thread.
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with an aligned buffer of `len` bytes (at most `DIRECT_CHUNK`).
fn with_bounce<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    BOUNCE.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < DIRECT_CHUNK + DIRECT_ALIGN {
            b.resize(DIRECT_CHUNK + DIRECT_ALIGN, 0);
        }
        let start = b.as_ptr().align_offset(DIRECT_ALIGN);
        f(&mut b[start..start + len])
    })
}

fn aligned(x: u64) -> bool {
    x.is_multiple_of(DIRECT_ALIGN as u64)
}

/// Why a file device could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileDeviceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: device is in use by another process")]
    Locked { path: String },
    #[error("{path}: not a regular file or block device")]
    NotAFileOrBlockDevice { path: String },
}

impl FileDevice {
    /// Opens an existing file or block device for reading and writing and locks it.
    pub fn open(path: &Path) -> Result<FileDevice, FileDeviceError> {
        Self::open_inner(path, None)
    }

    /// Opens `path`, creating it as a sparse file of `size` bytes if it does not exist. An
    /// existing regular file shorter than `size` is left as it is (growing is the engine's
    /// decision).
    pub fn open_or_create(path: &Path, size: u64) -> Result<FileDevice, FileDeviceError> {
        Self::open_inner(path, Some(size))
    }

    fn open_inner(path: &Path, create_size: Option<u64>) -> Result<FileDevice, FileDeviceError> {
        let io_err = |source| FileDeviceError::Io { path: path.display().to_string(), source };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if create_size.is_some() {
            options.create(true);
        }
        let file = options.open(path).map_err(io_err)?;
        let file_type = file.metadata().map_err(io_err)?.file_type();
        let is_block = file_type.is_block_device();
        if !is_block && !file_type.is_file() {
            return Err(FileDeviceError::NotAFileOrBlockDevice { path: path.display().to_string() });
        }
        locked(path, file.try_lock())?;
        if let Some(size) = create_size
            && !is_block
            && file.metadata().map_err(io_err)?.len() == 0
        {
            file.set_len(size).map_err(io_err)?;
        }
        FileDevice::new(file, path, is_block)
    }

    fn new(file: File, path: &Path, is_block: bool) -> Result<FileDevice, FileDeviceError> {
        let len = if is_block { (&file).seek(SeekFrom::End(0)) } else { file.metadata().map(|m| m.len()) }
            .map_err(|source| FileDeviceError::Io { path: path.display().to_string(), source })?;
        // File systems without direct I/O (tmpfs) refuse the flag; everything stays buffered.
        let direct = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .or_else(|_| OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path))
            .ok();
        Ok(FileDevice { file, path: path.to_path_buf(), is_block, len: AtomicU64::new(len), direct })
    }

    /// Opens a device for reading only, with a shared lock: several checkers may read it at
    /// once, but not while an engine has it open (fsck).
    pub fn open_shared(path: &Path) -> Result<FileDevice, FileDeviceError> {
        let io_err = |source| FileDeviceError::Io { path: path.display().to_string(), source };
        let file = OpenOptions::new().read(true).open(path).map_err(io_err)?;
        let file_type = file.metadata().map_err(io_err)?.file_type();
        let is_block = file_type.is_block_device();
        if !is_block && !file_type.is_file() {
            return Err(FileDeviceError::NotAFileOrBlockDevice { path: path.display().to_string() });
        }
        locked(path, file.try_lock_shared())?;
        FileDevice::new(file, path, is_block)
    }

    /// Path the device was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The outcome of taking a lock on the device file.
fn locked(path: &Path, r: Result<(), std::fs::TryLockError>) -> Result<(), FileDeviceError> {
    match r {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(FileDeviceError::Locked { path: path.display().to_string() }),
        Err(std::fs::TryLockError::Error(source)) => {
            Err(FileDeviceError::Io { path: path.display().to_string(), source })
        }
    }
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                out_of_range(offset, buf.len(), self.len().unwrap_or(0))
            } else {
                e
            }
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let len = self.len()?;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(out_of_range(offset, buf.len(), len));
        }
        self.file.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.len.load(Ordering::Acquire))
    }

    fn grow(&self, len: u64) -> io::Result<()> {
        if self.is_block {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a block device cannot grow"));
        }
        if len > self.len()? {
            self.file.set_len(len)?;
            // The new length must survive a crash before the superblock claims it.
            self.file.sync_all()?;
            self.len.store(len, Ordering::Release);
        }
        Ok(())
    }

    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Some(direct) = &self.direct else { return self.write_at(buf, offset) };
        if !aligned(offset) || !aligned(buf.len() as u64) {
            return self.write_at(buf, offset);
        }
        let len = self.len()?;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > len) {
            return Err(out_of_range(offset, buf.len(), len));
        }
        // Memory already aligned (FUSE over io_uring hands written data over in page-aligned
        // buffers) goes straight to the device; anything else is copied to an aligned buffer.
        if buf.as_ptr().addr().is_multiple_of(DIRECT_ALIGN) {
            return direct.write_all_at(buf, offset);
        }
        for (i, chunk) in buf.chunks(DIRECT_CHUNK).enumerate() {
            with_bounce(chunk.len(), |b| {
                b.copy_from_slice(chunk);
                direct.write_all_at(b, offset + (i * DIRECT_CHUNK) as u64)
            })?;
        }
        Ok(())
    }

    fn zero_range(&self, offset: u64, len: u64) -> io::Result<bool> {
        if self.is_block {
            return Ok(false);
        }
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Ok(false);
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor is owned by
        // `self.file` and open for writing.
        let r = unsafe {
            libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, n)
        };
        if r == 0 {
            Ok(true)
        } else {
            let e = io::Error::last_os_error();
            // File systems without hole punching: the caller zeroes lazily instead.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) { Ok(false) } else { Err(e) }
        }
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_sparse_file_and_refuses_a_second_opener() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        let dev = FileDevice::open_or_create(&path, 1 << 30).expect("create");
        assert_eq!(dev.len().expect("len"), 1 << 30);
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).expect("stat"));
        assert!(blocks < 64, "file should be sparse, has {blocks} blocks");
        assert!(matches!(FileDevice::open(&path), Err(FileDeviceError::Locked { .. })));
        drop(dev);
        FileDevice::open(&path).expect("reopen after the first closed");
    }

    #[test]
    fn direct_writes_are_seen_by_buffered_reads_at_any_alignment() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("dev.img");
        let dev = FileDevice::open_or_create(&path, 8 << 20).expect("create");
        let data: Vec<u8> = (0..(3 << 20)).map(|i| (i % 253) as u8).collect();
        let mut cached = vec![0u8; 4096];
        dev.read_at(&mut cached, 4096).expect("read into the page cache first");
        dev.write_direct(&data, 4096).expect("aligned direct write");
        dev.write_direct(&data[..5000], 7).expect("unaligned falls back to buffered");
        let mut buffered = vec![0u8; 3 << 20];
        dev.read_at(&mut buffered, 4096).expect("read");
        assert!(buffered[4096..] == data[4096..], "direct write seen by buffered read");
        let mut head = vec![0u8; 5000];
        dev.read_at(&mut head, 7).expect("read");
        assert!(head == data[..5000]);

        // Memory that is already aligned skips the bounce buffer.
        #[repr(C, align(4096))]
        struct Pages([u8; 3 * 4096]);
        let mut pages = Box::new(Pages([0; 3 * 4096]));
        pages.0.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8);
        dev.write_direct(&pages.0, 6 << 20).expect("direct write from aligned memory");
        let mut back = vec![0u8; 3 * 4096];
        dev.read_at(&mut back, 6 << 20).expect("read");
        assert!(back[..] == pages.0[..], "aligned direct write seen by buffered read");
    }

    #[test]
    fn writes_past_the_end_fail_and_grow_adds_zeros() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        let dev = FileDevice::open_or_create(&path, 8192).expect("create");
        assert!(dev.write_at(&[1; 10], 8190).is_err());
        dev.grow(16384).expect("grow");
        dev.write_at(&[1; 10], 8190).expect("write after grow");
        let mut buf = [9u8; 4];
        dev.read_at(&mut buf, 16380).expect("read");
        assert_eq!(buf, [0; 4]);
    }
}
