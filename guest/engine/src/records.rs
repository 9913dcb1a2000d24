//! On-disk records kept in the metadata store, and their byte encoding.
//!
//! Every record starts with a one-byte record version so the format can evolve; decoding
//! never panics: malformed bytes are a [`DecodeError`] naming what was wrong.

use std::collections::BTreeMap;

use crate::types::{FileKind, Ino, LayerId, LayerKind, Timestamp, Usage};

const INODE_RECORD_VERSION: u8 = 1;
const LAYER_RECORD_VERSION: u8 = 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{record} record is malformed: {problem}")]
pub struct DecodeError {
    pub record: &'static str,
    pub problem: String,
}

/// Appends fixed-width little-endian fields and length-prefixed byte strings.
#[derive(Default)]
pub(crate) struct Encoder {
    pub buf: Vec<u8>,
}

impl Encoder {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn time(&mut self, t: Timestamp) -> &mut Self {
        self.buf.extend_from_slice(&t.secs.to_le_bytes());
        self.u32(t.nsecs)
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.buf.extend_from_slice(b);
        self
    }
}

/// Reads what [`Encoder`] wrote, failing instead of panicking on short or bad input.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    record: &'static str,
}

impl<'a> Decoder<'a> {
    pub fn new(buf: &'a [u8], record: &'static str) -> Self {
        Decoder { buf, record }
    }

    pub fn error(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError { record: self.record, problem: problem.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.error(format!("ends early ({} bytes left, {n} needed)", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn time(&mut self) -> Result<Timestamp, DecodeError> {
        let secs = i64::from_le_bytes(self.array()?);
        let nsecs = self.u32()?;
        if nsecs >= 1_000_000_000 {
            return Err(self.error(format!("nanoseconds field {nsecs} out of range")));
        }
        Ok(Timestamp { secs, nsecs })
    }
    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// A count of items that each take at least `min_item` bytes, checked against what is left
    /// so a corrupt count cannot make us allocate wildly.
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() {
            return Err(self.error(format!("claims {n} items but only {} bytes remain", self.buf.len())));
        }
        Ok(n)
    }
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.error(format!("{} trailing bytes", self.buf.len()))) }
    }
}

/// One name of an inode: the directory holding it and the name in that directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Link {
    pub parent: Ino,
    pub name: Vec<u8>,
}

/// Flag: the inode was deleted in this layer (a tombstone hiding older versions).
pub(crate) const INODE_DEAD: u8 = 1;

/// One layer's version of an inode.
///
/// A layer holds a version of an inode when it created it or changed it (copy-up on first
/// change). Directory entries live in their own table; file data in extents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InodeRecord {
    pub kind: FileKind,
    pub flags: u8,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// Bytes below this offset that this version has no extent for are read from the older
    /// version; bytes at or above it read as zeros (truncation ends inheritance).
    pub inherit_limit: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Number of subdirectories (directories only): `nlink` is `2 + subdirs`.
    pub subdirs: u32,
    /// Every name of the inode in this layer. A directory has one (none for the root); the link
    /// count of other files is the number of names.
    pub links: Vec<Link>,
    /// Symbolic link target.
    pub target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl InodeRecord {
    pub fn is_dead(&self) -> bool {
        self.flags & INODE_DEAD != 0
    }

    pub fn nlink(&self) -> u32 {
        if self.kind == FileKind::Directory { 2 + self.subdirs } else { self.links.len() as u32 }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u8(INODE_RECORD_VERSION).u8(self.kind.to_u8()).u8(self.flags).u16(self.perm);
        e.u32(self.uid).u32(self.gid).u64(self.rdev).u64(self.size).u64(self.inherit_limit);
        e.time(self.atime).time(self.mtime).time(self.ctime).time(self.crtime);
        e.u32(self.subdirs);
        e.u32(self.links.len() as u32);
        for l in &self.links {
            e.u64(l.parent.0).bytes(&l.name);
        }
        e.bytes(&self.target);
        e.u32(self.xattrs.len() as u32);
        for (k, v) in &self.xattrs {
            e.bytes(k).bytes(v);
        }
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<InodeRecord, DecodeError> {
        let mut d = Decoder::new(b, "inode");
        let version = d.u8()?;
        if version != INODE_RECORD_VERSION {
            return Err(d.error(format!("unknown record version {version}")));
        }
        let kind_byte = d.u8()?;
        let kind = FileKind::from_u8(kind_byte).ok_or_else(|| d.error(format!("unknown file type {kind_byte}")))?;
        let flags = d.u8()?;
        let perm = d.u16()?;
        if perm > 0o7777 {
            return Err(d.error(format!("permission bits {perm:o} out of range")));
        }
        let mut r = InodeRecord {
            kind,
            flags,
            perm,
            uid: d.u32()?,
            gid: d.u32()?,
            rdev: d.u64()?,
            size: d.u64()?,
            inherit_limit: d.u64()?,
            atime: d.time()?,
            mtime: d.time()?,
            ctime: d.time()?,
            crtime: d.time()?,
            subdirs: d.u32()?,
            links: Vec::new(),
            target: Vec::new(),
            xattrs: BTreeMap::new(),
        };
        let nlinks = d.count(12)?;
        for _ in 0..nlinks {
            let parent = Ino(d.u64()?);
            let name = d.bytes()?;
            r.links.push(Link { parent, name });
        }
        r.target = d.bytes()?;
        let nxattrs = d.count(8)?;
        for _ in 0..nxattrs {
            let k = d.bytes()?;
            let v = d.bytes()?;
            r.xattrs.insert(k, v);
        }
        d.finish()?;
        Ok(r)
    }
}

/// A layer as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerRecord {
    pub name: String,
    pub parent: Option<LayerId>,
    pub depth: u32,
    pub kind: LayerKind,
    pub created: Timestamp,
    pub updated: Timestamp,
    pub usage: Usage,
    pub labels: BTreeMap<String, String>,
}

impl LayerRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u8(LAYER_RECORD_VERSION).bytes(self.name.as_bytes());
        e.u64(self.parent.map_or(0, |p| p.0)).u32(self.depth).u8(self.kind.to_u8());
        e.time(self.created).time(self.updated);
        e.u64(self.usage.bytes).u64(self.usage.inodes);
        e.u32(self.labels.len() as u32);
        for (k, v) in &self.labels {
            e.bytes(k.as_bytes()).bytes(v.as_bytes());
        }
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<LayerRecord, DecodeError> {
        let mut d = Decoder::new(b, "layer");
        let version = d.u8()?;
        if version != LAYER_RECORD_VERSION {
            return Err(d.error(format!("unknown record version {version}")));
        }
        let name = d.bytes()?;
        let name = utf8(&d, name)?;
        let parent = match d.u64()? {
            0 => None,
            p => Some(LayerId(p)),
        };
        let depth = d.u32()?;
        let kind_byte = d.u8()?;
        let kind = LayerKind::from_u8(kind_byte).ok_or_else(|| d.error(format!("unknown layer kind {kind_byte}")))?;
        let created = d.time()?;
        let updated = d.time()?;
        let usage = Usage { bytes: d.u64()?, inodes: d.u64()? };
        let mut labels = BTreeMap::new();
        let n = d.count(8)?;
        for _ in 0..n {
            let k = d.bytes()?;
            let k = utf8(&d, k)?;
            let v = d.bytes()?;
            let v = utf8(&d, v)?;
            labels.insert(k, v);
        }
        d.finish()?;
        Ok(LayerRecord { name, parent, depth, kind, created, updated, usage, labels })
    }
}

fn utf8(d: &Decoder<'_>, b: Vec<u8>) -> Result<String, DecodeError> {
    String::from_utf8(b).map_err(|_| d.error("a string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_inode() -> InodeRecord {
        let mut xattrs = BTreeMap::new();
        xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        xattrs.insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 32, 0, 0]);
        InodeRecord {
            kind: FileKind::Regular,
            flags: 0,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            rdev: 0,
            size: 1 << 40,
            inherit_limit: 77,
            atime: Timestamp::new(-5, 1),
            mtime: Timestamp::new(1_700_000_000, 999_999_999),
            ctime: Timestamp::new(3, 4),
            crtime: Timestamp::new(5, 6),
            subdirs: 0,
            links: vec![Link { parent: Ino(1), name: b"a".to_vec() }, Link { parent: Ino(9), name: b"b".to_vec() }],
            target: Vec::new(),
            xattrs,
        }
    }

    #[test]
    fn inode_records_round_trip() {
        let r = sample_inode();
        assert_eq!(InodeRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn layer_records_round_trip() {
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/snapshot.ref".to_string(), "sha256:abc".to_string());
        let r = LayerRecord {
            name: "k8s.io/1/sha256:deadbeef".to_string(),
            parent: Some(LayerId(7)),
            depth: 3,
            kind: LayerKind::Committed,
            created: Timestamp::new(1, 2),
            updated: Timestamp::new(3, 4),
            usage: Usage { bytes: 4096, inodes: 3 },
            labels,
        };
        assert_eq!(LayerRecord::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_decodes_or_errors_without_panicking() {
        let bytes = sample_inode().encode();
        for n in 0..bytes.len() {
            assert!(InodeRecord::decode(&bytes[..n]).is_err(), "prefix of {n} bytes must not decode");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = InodeRecord::decode(&b);
            }
        }
    }
}
