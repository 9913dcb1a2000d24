//! lcfs-engine: the LCFS storage engine.
//!
//! Every container layer of a host lives on one [`device::Device`]. A layer is created from a
//! committed parent in constant time, sees its parent's files until it changes them (the first
//! change copies that inode's metadata into the layer; file data is shared per 4 KiB block and
//! copied on write), is committed into an immutable layer in constant time, and knows its own
//! changes. Committed layers survive `kill -9` and power loss byte for byte.
//!
//! The engine has no FUSE, gRPC or async dependency: the FUSE frontend, the containerd
//! snapshotter and the benchmarks all drive the same [`Engine`] API. Design, on-disk format
//! and invariants: `docs/design/engine.md`.
//!
//! ```
//! use std::sync::Arc;
//! use lcfs_engine::{Engine, FormatOptions, OpenOptions, LayerKind, NewNode, ROOT_INO};
//! use lcfs_engine::device::{Device, MemDevice};
//!
//! let device: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
//! Engine::format(&device, &FormatOptions::default())?;
//! let engine = Engine::open(device, &OpenOptions::default())?;
//! let base = engine.create_layer("base", None, LayerKind::Writable, Default::default())?;
//! let file = engine.create(base.id, ROOT_INO, b"hello", &NewNode::file(0o644, 0, 0))?;
//! engine.write(base.id, file.ino, 0, b"hello, world")?;
//! engine.commit_layer("base", "base-v1", None)?;
//! let child = engine.create_layer("container", Some("base-v1"), LayerKind::Writable, Default::default())?;
//! assert_eq!(engine.read(child.id, file.ino, 0, 100)?, b"hello, world");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod alloc;
pub mod device;
mod error;
mod fs;
mod fsck;
mod layers;
mod records;
pub mod stats;
mod store;
mod superblock;
mod types;

pub use error::{Error, OpenError, Result};
pub use fs::{Engine, FormatOptions, OpenOptions};
pub use fsck::{FsckReport, fsck};
pub use types::{
    Attr, Change, ChangeKind, DirEntry, FallocateMode, FileKind, Ino, LayerId, LayerInfo, LayerKind, NewNode, ROOT_INO,
    RenameFlags, SetAttr, SetTime, StatFs, Timestamp, Usage, XattrMode,
};

/// Size of a data block in bytes.
pub const BLOCK_SIZE: u64 = superblock::BLOCK_SIZE;
