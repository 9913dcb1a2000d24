//! Error types of the engine.
//!
//! Two families: [`OpenError`] for everything that can go wrong while formatting, opening or
//! checking a device (each names the device and the problem in words a person understands),
//! and [`Error`] for file and layer operations on an open engine. Every [`Error`] maps to the
//! errno a POSIX file system would return (see [`Error::errno`]) so frontends can answer the
//! kernel without a table of their own.

use std::io;

/// A problem with a device: formatting it, opening it, or its metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Reading from or writing to the device failed.
    #[error("{device}: {what}: {source}")]
    Io {
        device: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The device holds something, but not an lcfs file system.
    #[error("{device}: not an lcfs device (no lcfs signature at the start; refusing to touch it)")]
    NotLcfs { device: String },
    /// The device is blank (all zeros where the superblock should be) and was not formatted.
    #[error("{device}: device is blank; format it first (lcfsd format)")]
    Blank { device: String },
    /// The device was formatted by a version of lcfs this build does not understand.
    #[error("{device}: unsupported lcfs format version {found} (this build reads version {supported})")]
    UnsupportedVersion { device: String, found: u32, supported: u32 },
    /// The superblocks are gone and no backup copy was found, but the device holds data: it is
    /// damaged, not blank, and is not formatted over.
    #[error("{device}: the device is damaged, not blank: {detail}; refusing to format over it (format --force does)")]
    Damaged { device: String, detail: String },
    /// Both superblock copies fail their checksum or are inconsistent.
    #[error("{device}: superblock is corrupt: {detail}")]
    CorruptSuperblock { device: String, detail: String },
    /// The device is shorter than its superblock says it is.
    #[error("{device}: device is truncated: the superblock records {expected} bytes but the device has {found}")]
    Truncated { device: String, expected: u64, found: u64 },
    /// The metadata store failed its integrity check.
    #[error("{device}: metadata is corrupt: {detail}")]
    CorruptMetadata { device: String, detail: String },
    /// Another process holds the device open.
    #[error("{device}: device is in use by another lcfs process")]
    InUse { device: String },
    /// The requested geometry cannot be formatted.
    #[error("{device}: cannot format: {detail}")]
    BadGeometry { device: String, detail: String },
    /// The device is already formatted and formatting was not forced.
    #[error("{device}: already holds an lcfs file system; refusing to format over it")]
    AlreadyFormatted { device: String },
}

/// A failed file or layer operation on an open engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDirectory,
    #[error("is a directory")]
    IsDirectory,
    #[error("directory not empty")]
    NotEmpty,
    #[error("file name too long ({0} bytes; the limit is 255)")]
    NameTooLong(usize),
    #[error("invalid file name: {0}")]
    InvalidName(&'static str),
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("too many links")]
    TooManyLinks,
    #[error("no such extended attribute")]
    NoAttribute,
    #[error("extended attribute too large ({0} bytes)")]
    AttributeTooLarge(usize),
    #[error("result does not fit the buffer")]
    Range,
    #[error("file too large")]
    FileTooLarge,
    #[error("no space left on the device")]
    NoSpace,
    #[error("no space left for metadata on the device")]
    NoMetadataSpace,
    #[error("inode {0} is stale")]
    Stale(u64),
    #[error("layer {0:?} not found")]
    LayerNotFound(String),
    #[error("layer {0:?} already exists")]
    LayerExists(String),
    #[error("layer {0:?} has child layers; remove them first")]
    LayerHasChildren(String),
    #[error("layer {name:?} is {kind}; {needed}")]
    LayerKind { name: String, kind: &'static str, needed: &'static str },
    #[error("invalid layer name {0:?}: {1}")]
    InvalidLayerName(String, &'static str),
    #[error("invalid label: {0}")]
    InvalidLabel(String),
    #[error("device I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("metadata store error: {0}")]
    Metadata(#[from] redb::Error),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("the engine stopped accepting changes after an earlier I/O error; reopen the device")]
    Failed,
}

impl Error {
    /// The errno a POSIX file system returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NotFound | Error::LayerNotFound(_) => libc::ENOENT,
            Error::Exists | Error::LayerExists(_) => libc::EEXIST,
            Error::NotDirectory => libc::ENOTDIR,
            Error::IsDirectory => libc::EISDIR,
            Error::NotEmpty | Error::LayerHasChildren(_) => libc::ENOTEMPTY,
            Error::NameTooLong(_) => libc::ENAMETOOLONG,
            Error::InvalidName(_)
            | Error::InvalidArgument(_)
            | Error::InvalidLayerName(..)
            | Error::InvalidLabel(_) => libc::EINVAL,
            Error::NotPermitted(_) => libc::EPERM,
            Error::TooManyLinks => libc::EMLINK,
            Error::NoAttribute => libc::ENODATA,
            Error::AttributeTooLarge(_) => libc::E2BIG,
            Error::Range => libc::ERANGE,
            Error::FileTooLarge => libc::EFBIG,
            Error::NoSpace | Error::NoMetadataSpace => libc::ENOSPC,
            Error::Stale(_) => libc::ESTALE,
            Error::LayerKind { .. } => libc::EROFS,
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Metadata(_) | Error::Corrupt(_) | Error::Failed => libc::EIO,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Metadata(e.into())
            }
        }
    )*};
}
from_redb!(redb::StorageError, redb::TableError, redb::TransactionError, redb::CommitError, redb::SetDurabilityError);

/// Result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
