//! The metadata store: redb tables on the device's metadata region, with a write-back overlay.
//!
//! Every change goes into an in-memory overlay (an ordered map per table, `None` for a
//! deletion); reads see the overlay first, then the last redb commit. [`Store::flush`] writes
//! the overlay as one redb transaction — durable (`Immediate`, with a device sync) for
//! checkpoints, fsync and layer operations, or non-durable to bound memory. A crash therefore
//! returns the device to the last durable flush, atomically: redb commits are all or nothing.
//!
//! The overlay turns each file operation into a few map updates instead of a redb transaction
//! (measured in `docs/design/metadata-store.md`).

mod backend;
pub(crate) mod keys;

pub(crate) use backend::{RegionBackend, ScratchBackend, SharedSuperblock, lock_superblock};

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, StorageBackend, TableDefinition};

use crate::error::Result;

/// The tables of the store; see [`keys`] for their layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    Meta = 0,
    Layers,
    Inodes,
    LayerInodes,
    Dirents,
    Extents,
    DirChanges,
    Orphans,
}

const TABLE_COUNT: usize = 8;

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

const DEFS: [Def; TABLE_COUNT] = [
    TableDefinition::new("meta"),
    TableDefinition::new("layers"),
    TableDefinition::new("inodes"),
    TableDefinition::new("layer_inodes"),
    TableDefinition::new("dirents"),
    TableDefinition::new("extents"),
    TableDefinition::new("dir_changes"),
    TableDefinition::new("orphans"),
];

/// Direction of a range scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Forward,
    Backward,
}

/// A row of the overlay: key and value, `None` for a deletion.
type OverlayRow<'a> = (&'a Vec<u8>, &'a Option<Vec<u8>>);

/// Per-entry memory cost estimate of the overlay, beyond key and value bytes.
const OVERLAY_ENTRY_OVERHEAD: usize = 64;

/// Tables of the last redb commit, opened once per commit.
struct Snapshot {
    tables: Vec<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    // Keeps the snapshot alive; dropped after the tables.
    _txn: ReadTransaction,
}

/// See the module documentation.
pub(crate) struct Store {
    // Dropped before `db`: redb records a clean shutdown only when no transaction is alive.
    snapshot: Snapshot,
    db: Database,
    overlay: Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    overlay_bytes: usize,
    /// A non-durable commit happened since the last durable one.
    undurable: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("overlay_bytes", &self.overlay_bytes).finish_non_exhaustive()
    }
}

impl Store {
    /// Creates an empty store (all tables) on `backend`, durably.
    pub fn create(backend: impl StorageBackend, cache_bytes: usize) -> Result<Store, redb::Error> {
        let db = Database::builder().set_cache_size(cache_bytes).create_with_backend(backend)?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        for def in DEFS {
            tx.open_table(def)?;
        }
        tx.commit()?;
        Self::from_db(db)
    }

    /// Opens the store on `backend`. With `check`, redb verifies the checksum of every page of
    /// every tree first (and rebuilds its allocator state); a corrupt store fails to open.
    pub fn open(backend: impl StorageBackend, cache_bytes: usize, check: bool) -> Result<Store, redb::Error> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .set_check_integrity_on_open(check)
            .create_with_backend(backend)?;
        Self::from_db(db)
    }

    /// Whether the store on `backend` was not closed cleanly and needs crash recovery. Only
    /// for a store that has passed verification: it opens it without checking pages.
    pub fn needs_recovery(backend: impl StorageBackend) -> bool {
        matches!(Database::builder().open_read_only_with_backend(backend), Err(redb::DatabaseError::RepairAborted))
    }

    fn from_db(db: Database) -> Result<Store, redb::Error> {
        let snapshot = Self::snapshot(&db)?;
        Ok(Store { snapshot, db, overlay: vec![BTreeMap::new(); TABLE_COUNT], overlay_bytes: 0, undurable: false })
    }

    fn snapshot(db: &Database) -> Result<Snapshot, redb::Error> {
        let txn = db.begin_read()?;
        let mut tables = Vec::with_capacity(TABLE_COUNT);
        for def in DEFS {
            tables.push(txn.open_table(def)?);
        }
        Ok(Snapshot { tables, _txn: txn })
    }

    /// Whether the overlay holds changes not yet written to redb.
    pub fn is_dirty(&self) -> bool {
        self.overlay.iter().any(|m| !m.is_empty())
    }

    /// Estimated memory held by the overlay.
    pub fn overlay_bytes(&self) -> usize {
        self.overlay_bytes
    }

    pub fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay[table as usize].get(key) {
            return Ok(v.clone());
        }
        Ok(self.snapshot.tables[table as usize].get(key)?.map(|g| g.value().to_vec()))
    }

    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.overlay_bytes += key.len() + value.len() + OVERLAY_ENTRY_OVERHEAD;
        self.overlay[table as usize].insert(key, Some(value));
    }

    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.overlay_bytes += key.len() + OVERLAY_ENTRY_OVERHEAD;
        self.overlay[table as usize].insert(key, None);
    }

    /// Calls `visit` with each key and value in the range, in key order (or reverse), until it
    /// returns `false`.
    pub fn scan(
        &self,
        table: Table,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        dir: Dir,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let overlay = &self.overlay[table as usize];
        let mut ov: Box<dyn Iterator<Item = OverlayRow<'_>>> = match dir {
            Dir::Forward => Box::new(overlay.range::<[u8], _>(range)),
            Dir::Backward => Box::new(overlay.range::<[u8], _>(range).rev()),
        };
        let base = self.snapshot.tables[table as usize].range::<&[u8]>(range)?;
        let mut db: Box<dyn Iterator<Item = _>> = match dir {
            Dir::Forward => Box::new(base),
            Dir::Backward => Box::new(base.rev()),
        };
        let mut next_ov = ov.next();
        let mut next_db = db.next().transpose()?;
        loop {
            let order = match (&next_ov, &next_db) {
                (None, None) => return Ok(()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((ok, _)), Some((dk, _))) => {
                    let o = ok.as_slice().cmp(dk.value());
                    if dir == Dir::Backward { o.reverse() } else { o }
                }
            };
            match order {
                std::cmp::Ordering::Greater => {
                    if let Some((k, v)) = &next_db
                        && !visit(k.value(), v.value())?
                    {
                        return Ok(());
                    }
                    next_db = db.next().transpose()?;
                }
                o => {
                    if o == std::cmp::Ordering::Equal {
                        // The overlay shadows the committed row.
                        next_db = db.next().transpose()?;
                    }
                    if let Some((k, Some(v))) = next_ov
                        && !visit(k, v)?
                    {
                        return Ok(());
                    }
                    next_ov = ov.next();
                }
            }
        }
    }

    /// Collects the rows of `range`.
    pub fn collect(&self, table: Table, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = Vec::new();
        self.scan(table, range, Dir::Forward, |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(rows)
    }

    /// Calls `visit` with each row whose key starts with `prefix`, until it returns `false`.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        dir: Dir,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let (lo, hi) = keys::prefix_range(prefix);
        self.scan(table, (lo.as_ref().map(Vec::as_slice), hi.as_ref().map(Vec::as_slice)), dir, visit)
    }

    /// Collects the rows whose key starts with `prefix`.
    pub fn collect_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut rows = Vec::new();
        self.scan_prefix(table, prefix, Dir::Forward, |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(rows)
    }

    /// Whether any key starts with `prefix`.
    pub fn any_prefix(&self, table: Table, prefix: &[u8]) -> Result<bool> {
        let mut any = false;
        self.scan_prefix(table, prefix, Dir::Forward, |_, _| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }

    /// The last row of `range`.
    pub fn last(&self, table: Table, range: (Bound<&[u8]>, Bound<&[u8]>)) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut row = None;
        self.scan(table, range, Dir::Backward, |k, v| {
            row = Some((k.to_vec(), v.to_vec()));
            Ok(false)
        })?;
        Ok(row)
    }

    /// Writes the overlay as one redb transaction. Durable flushes sync the device (which also
    /// makes every data block written before the call durable); non-durable ones only move
    /// memory from the overlay into redb's cache.
    pub fn flush(&mut self, durable: bool) -> Result<()> {
        if !self.is_dirty() && (!durable || !self.undurable) {
            return Ok(());
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(if durable { Durability::Immediate } else { Durability::None })?;
        for (i, overlay) in self.overlay.iter().enumerate() {
            if overlay.is_empty() {
                continue;
            }
            let mut table = tx.open_table(DEFS[i])?;
            for (k, v) in overlay {
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        table.remove(k.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        self.undurable = !durable;
        self.snapshot = Self::snapshot(&self.db).map_err(crate::error::Error::Metadata)?;
        for m in &mut self.overlay {
            m.clear();
        }
        self.overlay_bytes = 0;
        Ok(())
    }

    /// Drops the overlay (after an I/O error: its changes can no longer be made durable).
    pub fn discard_overlay(&mut self) {
        for m in &mut self.overlay {
            m.clear();
        }
        self.overlay_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::device::{Device, MemDevice};
    use crate::superblock::Superblock;

    fn store() -> Store {
        let dev: Arc<dyn Device> = Arc::new(MemDevice::new(32 << 20));
        let sb = Arc::new(Mutex::new(Superblock::new(32 << 20, 16 << 20)));
        Store::create(RegionBackend::new(dev, sb), 1 << 20).expect("create")
    }

    fn keys(s: &Store, dir: Dir) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        s.scan(Table::Meta, (Bound::Unbounded, Bound::Unbounded), dir, |k, _| {
            out.push(k.to_vec());
            Ok(true)
        })
        .expect("scan");
        out
    }

    #[test]
    fn scans_merge_overlay_and_committed_rows_in_both_directions() {
        let mut s = store();
        for k in [1u8, 3, 5, 7] {
            s.put(Table::Meta, vec![k], vec![k]);
        }
        s.flush(false).expect("flush");
        s.put(Table::Meta, vec![4], vec![4]);
        s.delete(Table::Meta, vec![5]);
        s.put(Table::Meta, vec![7], vec![70]);
        s.put(Table::Meta, vec![9], vec![9]);
        let fwd = keys(&s, Dir::Forward);
        assert_eq!(fwd, vec![vec![1], vec![3], vec![4], vec![7], vec![9]]);
        let mut rev = keys(&s, Dir::Backward);
        rev.reverse();
        assert_eq!(rev, fwd);
        assert_eq!(s.get(Table::Meta, &[7]).expect("get"), Some(vec![70]));
        assert_eq!(s.get(Table::Meta, &[5]).expect("get"), None);
        let last = s.last(Table::Meta, (Bound::Unbounded, Bound::Excluded(&[7u8][..]))).expect("last");
        assert_eq!(last.map(|r| r.0), Some(vec![4]));
        s.flush(true).expect("flush");
        assert!(!s.is_dirty());
        assert_eq!(keys(&s, Dir::Forward), fwd);
    }
}
