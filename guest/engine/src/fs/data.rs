//! File data: extent maps, copy-on-write writes, reads through the version chain, truncate and
//! fallocate.
//!
//! A layer's version of a file maps file blocks to device blocks with extents
//! `(layer, inode, first file block) → (first device block, count)`; device block 0 (inside the
//! superblock area, never a data block) marks an explicit hole. A byte the version has no extent
//! for comes from the older version if it lies below the version's `inherit_limit` (the size when
//! the layer copied the inode up, lowered by truncation), and reads as zero otherwise. So
//! overwriting 4 KiB of an inherited 1 GiB file allocates and writes one block, and truncating
//! needs no copy at all.
//!
//! Invariant: bytes of an owned block beyond the end of the file are zero (truncation zeroes the
//! tail of the last block), so extending a file never uncovers old data.

use std::ops::Bound;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::records::InodeRecord;
use crate::store::{Dir, Table, keys};
use crate::superblock::BLOCK_SIZE;
use crate::types::{FallocateMode, FileKind, Ino, LayerId, Timestamp};

use super::State;
use super::inode::Version;
use super::limits::MAX_FILE_SIZE;

const BS: u64 = BLOCK_SIZE;
/// Device block number marking a hole in an extent.
const HOLE: u64 = 0;
/// Writes of file data at least this large bypass the device's page cache (the kernel already
/// caches them for the lcfs file); smaller ones stay buffered, where a direct write would cost
/// a disk round trip each. Reads stay buffered: they gain from the host's readahead and cache.
const DIRECT_MIN: usize = 64 << 10;

/// Writes file data to the device, large transfers directly.
fn write_data(device: &dyn Device, bytes: &[u8], at: u64) -> std::io::Result<()> {
    if bytes.len() >= DIRECT_MIN { device.write_direct(bytes, at) } else { device.write_at(bytes, at) }
}

/// A piece of a file's byte range and where its bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    /// File offset.
    pub start: u64,
    pub len: u64,
    /// Device byte offset, or `None` for zeros.
    pub device: Option<u64>,
}

/// An extent of one layer's version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub file_block: u64,
    pub device_block: u64,
    pub count: u64,
}

impl Extent {
    fn end(&self) -> u64 {
        self.file_block + self.count
    }
}

/// Writes prepared under the lock and carried out without it.
#[derive(Debug)]
pub(crate) struct WritePlan {
    /// (device offset, bytes): either a range of the caller's buffer or a merged block.
    pieces: Vec<(u64, Piece)>,
    /// Newly allocated runs to publish: (file block, device block, count).
    new_runs: Vec<Extent>,
    end: u64,
}

#[derive(Debug)]
enum Piece {
    Caller(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl WritePlan {
    /// Copies the data to the device.
    pub(crate) fn perform(&self, device: &dyn Device, data: &[u8]) -> std::io::Result<()> {
        for (at, piece) in &self.pieces {
            let bytes = match piece {
                Piece::Caller(r) => &data[r.clone()],
                Piece::Owned(b) => b.as_slice(),
            };
            write_data(device, bytes, *at)?;
        }
        Ok(())
    }
}

fn parse_extent(k: &[u8], v: &[u8]) -> Result<Extent> {
    let (_, _, file_block) = keys::parse_extent(k).ok_or_else(|| Error::Corrupt("malformed extent key".into()))?;
    let (device_block, count) =
        keys::parse_extent_value(v).ok_or_else(|| Error::Corrupt("malformed extent value".into()))?;
    if count == 0 {
        return Err(Error::Corrupt("an extent of zero blocks".into()));
    }
    Ok(Extent { file_block, device_block, count: u64::from(count) })
}

impl State {
    /// Extents of `owner`'s version of `ino` overlapping file blocks `[lo, hi)`, in order.
    pub(crate) fn extents(&self, owner: LayerId, ino: Ino, lo: u64, hi: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let first = keys::extent(owner, ino, 0);
        let at_lo = keys::extent(owner, ino, lo);
        if let Some((k, v)) = self.store.last(Table::Extents, (Bound::Included(&first), Bound::Included(&at_lo)))? {
            let e = parse_extent(&k, &v)?;
            if e.end() > lo {
                out.push(e);
            }
        }
        if hi > lo + 1 {
            let at_hi = keys::extent(owner, ino, hi);
            self.store.scan(
                Table::Extents,
                (Bound::Excluded(&at_lo), Bound::Excluded(&at_hi)),
                Dir::Forward,
                |k, v| {
                    out.push(parse_extent(k, v)?);
                    Ok(true)
                },
            )?;
        }
        Ok(out)
    }

    /// Where the bytes `[start, end)` of version `v` (seen by `l`) live.
    pub(crate) fn map_range(&self, l: &LayerRef, ino: Ino, v: &Version, start: u64, end: u64) -> Result<Vec<Segment>> {
        let mut mapping = Mapping { state: self, path: &l.path, ino, out: Vec::new() };
        mapping.version(Place::of(v), start..end)?;
        Ok(mapping.out)
    }

    /// Reads the bytes of `segments` (which start at file offset `base`) into `buf`.
    fn fill(&self, segments: &[Segment], base: u64, buf: &mut [u8]) -> Result<()> {
        for s in segments {
            let at = (s.start - base) as usize;
            let dst = &mut buf[at..at + s.len as usize];
            match s.device {
                Some(off) => self.device.read_at(dst, off)?,
                None => dst.fill(0),
            }
        }
        Ok(())
    }

    /// Reads into `buf` from `offset`; returns the number of bytes read (short at the end of
    /// the file).
    pub(crate) fn read_into(&self, l: &LayerRef, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let v = self.live(l, ino)?;
        match v.rec.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Error::IsDirectory),
            _ => return Err(Error::InvalidArgument("not a regular file")),
        }
        if offset >= v.rec.size {
            return Ok(0);
        }
        let end = v.rec.size.min(offset.saturating_add(buf.len() as u64));
        let n = (end - offset) as usize;
        let segments = self.map_range(l, ino, &v, offset, end)?;
        self.fill(&segments, offset, &mut buf[..n])?;
        Ok(n)
    }

    /// Plans a write: copies the inode up, finds the owned blocks to overwrite in place,
    /// allocates blocks for the rest and merges partial blocks with their current content.
    /// Fails unless `ino` is a regular file `l` may write.
    pub(crate) fn check_writable_file(&self, l: &LayerRef, ino: Ino) -> Result<()> {
        if l.kind != crate::types::LayerKind::Writable {
            let name = self.layers.get(l.id).map(|x| x.record.name.clone()).unwrap_or_default();
            return Err(Error::LayerKind { name, kind: l.kind.as_str(), needed: "it cannot be changed" });
        }
        match self.live(l, ino)?.rec.kind {
            FileKind::Regular => Ok(()),
            FileKind::Directory => Err(Error::IsDirectory),
            _ => Err(Error::InvalidArgument("not a regular file")),
        }
    }

    pub(crate) fn plan_write(&mut self, l: &LayerRef, ino: Ino, offset: u64, data: &[u8]) -> Result<WritePlan> {
        self.check_writable_file(l, ino)?;
        let v = self.live(l, ino)?;
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= MAX_FILE_SIZE).ok_or(Error::FileTooLarge)?;
        let mut plan = WritePlan { pieces: Vec::new(), new_runs: Vec::new(), end };
        if data.is_empty() {
            return Ok(plan);
        }
        let (lo, hi) = (offset / BS, end.div_ceil(BS));
        // Blocks not covered by an owned (non-hole) extent need new space.
        let owned: Vec<Extent> = if v.owner == l.id {
            self.extents(l.id, ino, lo, hi)?.into_iter().filter(|e| e.device_block != HOLE).collect()
        } else {
            Vec::new()
        };
        let mut gaps = Vec::new();
        let mut pos = lo;
        for e in &owned {
            if e.file_block > pos {
                gaps.push((pos, e.file_block.min(hi)));
            }
            pos = pos.max(e.end());
        }
        if pos < hi {
            gaps.push((pos, hi));
        }
        let want: u64 = gaps.iter().map(|(a, b)| b - a).sum();
        // Keep a file contiguous: continue right after the extent that ends where we start.
        let hint = if v.owner == l.id && lo > 0 {
            self.extents(l.id, ino, lo - 1, lo)?
                .first()
                .filter(|e| e.device_block != HOLE && e.end() == lo)
                .map(|e| e.device_block + e.count)
        } else {
            None
        };
        let runs = self.alloc.allocate(want, hint).ok_or(Error::NoSpace)?;
        let rec = self.own(l, ino, v)?;
        let v = Version { owner: l.id, depth: l.depth, rec };

        for e in &owned {
            let (s, t) = ((e.file_block * BS).max(offset), (e.end() * BS).min(end));
            if s < t {
                let dev = e.device_block * BS + (s - e.file_block * BS);
                plan.pieces.push((dev, Piece::Caller((s - offset) as usize..(t - offset) as usize)));
            }
        }
        // Lay the allocated runs over the gaps in order.
        let mut runs = runs.into_iter();
        let mut current: Option<(u64, u64)> = None;
        for (mut a, b) in gaps {
            while a < b {
                let (dev, n) = match current.take() {
                    Some(r) => r,
                    None => runs.next().ok_or_else(|| Error::Corrupt("allocator returned too little".into()))?,
                };
                let take = n.min(b - a);
                plan.new_runs.push(Extent { file_block: a, device_block: dev, count: take });
                if n > take {
                    current = Some((dev + take, n - take));
                }
                let run = Extent { file_block: a, device_block: dev, count: take };
                self.plan_new_blocks(l, ino, &v, (offset, data), run, &mut plan)?;
                a += take;
            }
        }
        Ok(plan)
    }

    /// Adds the pieces of the write of `data` at `offset` that fill the new blocks of `run`.
    /// Partial blocks are merged with what the file shows there now.
    fn plan_new_blocks(
        &self,
        l: &LayerRef,
        ino: Ino,
        v: &Version,
        (offset, data): (u64, &[u8]),
        run: Extent,
        plan: &mut WritePlan,
    ) -> Result<()> {
        let Extent { file_block: fb, device_block: dev, count } = run;
        let end = offset + data.len() as u64;
        let (bs, be) = (fb * BS, (fb + count) * BS);
        let (s, t) = (bs.max(offset), be.min(end));
        let at = |file_pos: u64| dev * BS + (file_pos - bs);
        let src = |a: u64, b: u64| (a - offset) as usize..(b - offset) as usize;
        let mut cur = bs;
        if s > bs || (count == 1 && t < be) {
            let mut merged = self.current_block(l, ino, v, bs)?;
            let b = t.min(bs + BS);
            merged[(s - bs) as usize..(b - bs) as usize].copy_from_slice(&data[src(s, b)]);
            plan.pieces.push((at(bs), Piece::Owned(merged)));
            cur = bs + BS;
        }
        let full_end = if t < be { be - BS } else { be };
        if cur < full_end {
            plan.pieces.push((at(cur), Piece::Caller(src(cur, full_end))));
            cur = full_end;
        }
        if t < be && cur < be {
            let block = be - BS;
            let mut merged = self.current_block(l, ino, v, block)?;
            merged[..(t - block) as usize].copy_from_slice(&data[src(block, t)]);
            plan.pieces.push((at(block), Piece::Owned(merged)));
        }
        Ok(())
    }

    /// The bytes a block of the file shows now.
    fn current_block(&self, l: &LayerRef, ino: Ino, v: &Version, block_start: u64) -> Result<Vec<u8>> {
        let segments = self.map_range(l, ino, v, block_start, block_start + BS)?;
        let mut buf = vec![0u8; BS as usize];
        self.fill(&segments, block_start, &mut buf)?;
        Ok(buf)
    }

    /// Makes a carried-out write visible: new extents, size and times.
    /// Every way out that does not publish returns the plan's new blocks.
    pub(crate) fn publish_write(&mut self, layer: LayerId, ino: Ino, plan: WritePlan) -> Result<()> {
        // The layer is still writable: a commit or remove waits for the writes in flight on
        // its layer (`in_flight`); checked again so that no path publishes into a layer that
        // is not.
        let l = match self.writable(layer) {
            Ok(l) => l,
            Err(e) => {
                self.abandon_write(plan);
                return Err(e);
            }
        };
        let v = match self.resolve_in(ino, &l.path) {
            Ok(Some(v)) if v.owner == layer && !v.rec.is_dead() => v,
            other => {
                // Removed while the data was in flight.
                self.abandon_write(plan);
                return other.and(Err(Error::Stale(ino.0)));
            }
        };
        for e in &plan.new_runs {
            self.replace_extents(&l, ino, e.file_block, e.count, Some(e.device_block))?;
            self.add_usage(layer, e.count as i64, 0);
        }
        let mut rec = v.rec;
        let now = Timestamp::now();
        rec.size = rec.size.max(plan.end);
        rec.mtime = now;
        rec.ctime = now;
        self.put_inode(&l, ino, &rec);
        Ok(())
    }

    /// Returns the blocks of a write that failed.
    pub(crate) fn abandon_write(&mut self, plan: WritePlan) {
        for e in plan.new_runs {
            self.alloc.unreserve(e.device_block, e.count);
        }
    }

    /// Plans, carries out and publishes a write while holding the lock (small writes inside
    /// other operations).
    fn write_locked(&mut self, l: &LayerRef, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        let plan = self.plan_write(l, ino, offset, data)?;
        if let Err(e) = plan.perform(self.device.as_ref(), data) {
            self.abandon_write(plan);
            return Err(Error::Io(e));
        }
        self.publish_write(l.id, ino, plan)
    }

    /// Replaces the layer's extents over file blocks `[fb, fb+count)` with one new extent
    /// (`Some(device block)`, `Some(HOLE)` for an explicit hole) or with nothing. Blocks that
    /// are no longer referenced are freed.
    fn replace_extents(&mut self, l: &LayerRef, ino: Ino, fb: u64, count: u64, new: Option<u64>) -> Result<()> {
        let end = fb + count;
        for e in self.extents(l.id, ino, fb, end)? {
            self.store.delete(Table::Extents, keys::extent(l.id, ino, e.file_block));
            if e.file_block < fb {
                self.put_extent(l.id, ino, Extent { count: fb - e.file_block, ..e });
            }
            if e.end() > end {
                let skip = end - e.file_block;
                let device_block = if e.device_block == HOLE { HOLE } else { e.device_block + skip };
                self.put_extent(l.id, ino, Extent { file_block: end, device_block, count: e.end() - end });
            }
            if e.device_block != HOLE {
                let (a, b) = (e.file_block.max(fb), e.end().min(end));
                self.alloc.free(e.device_block + (a - e.file_block), b - a);
                self.add_usage(l.id, -((b - a) as i64), 0);
            }
        }
        if let Some(device_block) = new {
            self.insert_extent(l.id, ino, Extent { file_block: fb, device_block, count })?;
        }
        Ok(())
    }

    fn put_extent(&mut self, layer: LayerId, ino: Ino, e: Extent) {
        // Counts stay below 2^32: files are limited to 2^31 blocks.
        self.store.put(
            Table::Extents,
            keys::extent(layer, ino, e.file_block),
            keys::extent_value(e.device_block, e.count as u32),
        );
    }

    /// Inserts an extent over a range that has none, merging with neighbours it continues.
    fn insert_extent(&mut self, layer: LayerId, ino: Ino, mut e: Extent) -> Result<()> {
        let continues = |prev: &Extent, next_device: u64| {
            if prev.device_block == HOLE {
                next_device == HOLE
            } else {
                next_device != HOLE && prev.device_block + prev.count == next_device
            }
        };
        if e.file_block > 0
            && let Some(prev) = self.extents(layer, ino, e.file_block - 1, e.file_block)?.first().copied()
            && prev.end() == e.file_block
            && continues(&prev, e.device_block)
        {
            e = Extent { file_block: prev.file_block, device_block: prev.device_block, count: prev.count + e.count };
        }
        if let Some(v) = self.store.get(Table::Extents, &keys::extent(layer, ino, e.end()))? {
            let next = parse_extent(&keys::extent(layer, ino, e.end()), &v)?;
            if continues(&e, next.device_block) {
                self.store.delete(Table::Extents, keys::extent(layer, ino, next.file_block));
                e.count += next.count;
            }
        }
        self.put_extent(layer, ino, e);
        Ok(())
    }

    /// Frees every extent of the layer's version of `ino`.
    pub(crate) fn drop_extents(&mut self, layer: LayerId, ino: Ino) -> Result<()> {
        let rows = self.store.collect_prefix(Table::Extents, &keys::pair(layer.0, ino.0))?;
        for (k, v) in rows {
            let e = parse_extent(&k, &v)?;
            self.store.delete(Table::Extents, k);
            if e.device_block != HOLE {
                self.alloc.free(e.device_block, e.count);
                self.add_usage(layer, -(e.count as i64), 0);
            }
        }
        Ok(())
    }

    /// Sets the size of `l`'s own version `rec` of a regular file.
    pub(crate) fn truncate(&mut self, l: &LayerRef, ino: Ino, rec: &mut InodeRecord, size: u64) -> Result<()> {
        if size < rec.size {
            let keep = size.div_ceil(BS);
            self.replace_extents(l, ino, keep, MAX_BLOCKS - keep, None)?;
            if !size.is_multiple_of(BS) {
                let block = size / BS;
                if let Some(e) = self.extents(l.id, ino, block, block + 1)?.first().filter(|e| e.device_block != HOLE) {
                    let at = (e.device_block + (block - e.file_block)) * BS + size % BS;
                    self.device.write_at(&vec![0u8; (BS - size % BS) as usize], at)?;
                }
            }
            rec.inherit_limit = rec.inherit_limit.min(size);
        }
        rec.size = size;
        Ok(())
    }

    pub(crate) fn fallocate(
        &mut self,
        l: &LayerRef,
        ino: Ino,
        offset: u64,
        len: u64,
        mode: FallocateMode,
    ) -> Result<()> {
        if len == 0 {
            return Err(Error::InvalidArgument("fallocate of an empty range"));
        }
        let end = offset.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE).ok_or(Error::FileTooLarge)?;
        let v = self.live(l, ino)?;
        match v.rec.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Error::IsDirectory),
            _ => return Err(Error::InvalidArgument("not a regular file")),
        }
        let now = Timestamp::now();
        let mut rec = self.own(l, ino, v)?;
        let keep_size = match mode {
            FallocateMode::Allocate { keep_size } => {
                self.allocate_zeroed(l, ino, &rec, offset, end)?;
                keep_size
            }
            FallocateMode::PunchHole => {
                self.zero_range(l, ino, &mut rec, offset, end)?;
                true
            }
            FallocateMode::ZeroRange { keep_size } => {
                self.zero_range(l, ino, &mut rec, offset, end)?;
                keep_size
            }
        };
        // Zeroing wrote through the write path, which may have changed the record.
        if let Some(current) = self.resolve_in(ino, &l.path)? {
            rec = current.rec;
        }
        if !keep_size && end > rec.size {
            rec.size = end;
        }
        rec.mtime = now;
        rec.ctime = now;
        self.put_inode(l, ino, &rec);
        Ok(())
    }

    /// Gives zero-filled blocks to the parts of `[offset, end)` that read as zeros without
    /// owning space, so later writes there cannot run out of space.
    fn allocate_zeroed(&mut self, l: &LayerRef, ino: Ino, rec: &InodeRecord, offset: u64, end: u64) -> Result<()> {
        let (lo, hi) = (offset / BS, end.div_ceil(BS));
        // Blocks without an extent below the inherited end still show the older version's data
        // and keep it; the rest (and explicit holes) read zeros and get space.
        let inherited_end = rec.inherit_limit.div_ceil(BS);
        let mut wanted = Vec::new();
        let mut want = |a: u64, b: u64| {
            if a < b {
                wanted.push((a, b));
            }
        };
        let mut pos = lo;
        for e in self.extents(l.id, ino, lo, hi)? {
            if e.file_block > pos {
                want(pos.max(inherited_end), e.file_block);
            }
            if e.device_block == HOLE {
                want(e.file_block.max(lo), e.end().min(hi));
            }
            pos = pos.max(e.end());
        }
        if pos < hi {
            want(pos.max(inherited_end), hi);
        }
        let total: u64 = wanted.iter().map(|(a, b)| b - a).sum();
        if total > self.alloc.free_blocks() {
            return Err(Error::NoSpace);
        }
        let zeros = vec![0u8; 1 << 20];
        for (a, b) in wanted {
            let runs = self.alloc.allocate(b - a, None).ok_or(Error::NoSpace)?;
            let mut fb = a;
            for (dev, n) in runs {
                let mut written = 0;
                while written < n * BS {
                    let chunk = (n * BS - written).min(zeros.len() as u64);
                    write_data(self.device.as_ref(), &zeros[..chunk as usize], dev * BS + written)?;
                    written += chunk;
                }
                self.replace_extents(l, ino, fb, n, Some(dev))?;
                self.add_usage(l.id, n as i64, 0);
                fb += n;
            }
        }
        Ok(())
    }

    /// Makes `[offset, end)` (clipped to the size) read as zeros, freeing whole blocks.
    fn zero_range(&mut self, l: &LayerRef, ino: Ino, rec: &mut InodeRecord, offset: u64, end: u64) -> Result<()> {
        let end = end.min(rec.size);
        if offset >= end {
            return Ok(());
        }
        let first_full = offset.div_ceil(BS);
        // Past the end of the file a partial last block counts as whole: its tail is zero.
        let full_end = if end == rec.size { end.div_ceil(BS) } else { end / BS };
        if first_full < full_end {
            self.replace_extents(l, ino, first_full, full_end - first_full, None)?;
            let inherited_end = rec.inherit_limit.div_ceil(BS).min(full_end);
            if first_full < inherited_end {
                self.insert_extent(
                    l.id,
                    ino,
                    Extent { file_block: first_full, device_block: HOLE, count: inherited_end - first_full },
                )?;
            }
        }
        let head_end = end.min(first_full * BS);
        if offset < head_end {
            self.write_locked(l, ino, offset, &vec![0u8; (head_end - offset) as usize])?;
        }
        let tail_start = offset.max(full_end * BS).max(head_end);
        if tail_start < end {
            self.write_locked(l, ino, tail_start, &vec![0u8; (end - tail_start) as usize])?;
        }
        Ok(())
    }
}

/// One past the last file block a file can have.
const MAX_BLOCKS: u64 = MAX_FILE_SIZE / BS + 1;

/// Where a version of a file stands: its owner, the owner's depth, and how far it inherits
/// its ancestors' bytes.
#[derive(Clone, Copy)]
struct Place {
    owner: LayerId,
    depth: u32,
    inherit_limit: u64,
}

impl Place {
    fn of(v: &Version) -> Place {
        Place { owner: v.owner, depth: v.depth, inherit_limit: v.rec.inherit_limit }
    }
}

/// Maps byte ranges of one file, seen through one layer's chain (`path`), to segments.
struct Mapping<'a> {
    state: &'a State,
    path: &'a [LayerId],
    ino: Ino,
    out: Vec<Segment>,
}

impl Mapping<'_> {
    /// The bytes `range` of the version at `place`: its own extents, and what it inherits
    /// around them.
    fn version(&mut self, place: Place, range: std::ops::Range<u64>) -> Result<()> {
        let std::ops::Range { start, end } = range;
        if start >= end {
            return Ok(());
        }
        let mut pos = start;
        for e in self.state.extents(place.owner, self.ino, start / BS, end.div_ceil(BS))? {
            let (es, ee) = (e.file_block * BS, e.end() * BS);
            let (s, t) = (es.max(pos), ee.min(end));
            if s >= t {
                continue;
            }
            if pos < s {
                self.inherited(place, pos..s)?;
            }
            let device = (e.device_block != HOLE).then(|| e.device_block * BS + (s - es));
            push(&mut self.out, Segment { start: s, len: t - s, device });
            pos = t;
        }
        if pos < end {
            self.inherited(place, pos..end)?;
        }
        Ok(())
    }

    /// Bytes `range` that the version at `place` has no extent for: its ancestor's below its
    /// inherit limit, zeros beyond.
    fn inherited(&mut self, place: Place, range: std::ops::Range<u64>) -> Result<()> {
        let limit = range.end.min(place.inherit_limit);
        let mut pos = range.start;
        if pos < limit
            && place.depth > 0
            && let Some(older) = self.state.resolve_in(self.ino, &self.path[..place.depth as usize])?
            && !older.rec.is_dead()
        {
            self.version(Place::of(&older), pos..limit)?;
            pos = limit;
        }
        if pos < range.end {
            push(&mut self.out, Segment { start: pos, len: range.end - pos, device: None });
        }
        Ok(())
    }
}

/// Appends a segment, merging it with the previous one when they continue each other.
fn push(out: &mut Vec<Segment>, s: Segment) {
    if let Some(last) = out.last_mut()
        && last.start + last.len == s.start
    {
        let joins = match (last.device, s.device) {
            (None, None) => true,
            (Some(a), Some(b)) => a + last.len == b,
            _ => false,
        };
        if joins {
            last.len += s.len;
            return;
        }
    }
    out.push(s);
}
