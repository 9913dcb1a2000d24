//! Consistency check of a device, read-only.
//!
//! fsck opens the metadata store on a backend that keeps writes in memory, so it never writes
//! to the device, even when the store needs recovery after a crash. It checks, in order:
//! the superblock copies; every metadata page's checksum (redb's integrity check); every row of
//! every table (decodes, refers to things that exist, lies within the device); that no data
//! block is claimed twice; and then, layer by layer, the tree each layer sees: every entry
//! points at a live inode of the right type, link counts and subdirectory counts match the
//! entries, and every inode a layer owns is reachable (otherwise its space has leaked).
//! Problems are reported in words with the layer name, inode number and path where known.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use crate::device::Device;
use crate::error::{Error, OpenError};
use crate::fs::State;
use crate::layers::{LayerRef, Layers};
use crate::records::{InodeRecord, LayerRecord};
use crate::store::{Dir, ScratchBackend, Table, keys, lock_superblock};
use crate::superblock::{BLOCK_SIZE, Superblock};
use crate::types::{FileKind, Ino, LayerId, ROOT_INO};

/// Most problems listed one by one; the rest are counted.
const MAX_LISTED: usize = 200;

/// What fsck found.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub device: String,
    /// Corruption and leaks. The device is clean when there are none.
    pub problems: Vec<String>,
    /// Problems beyond those listed.
    pub unlisted_problems: usize,
    /// Things worth knowing that are not problems (recovery after a crash, for instance).
    pub notes: Vec<String>,
    pub layers: usize,
    pub inodes: u64,
    pub entries: u64,
    pub extents: u64,
    pub data_blocks_used: u64,
    pub data_blocks_total: u64,
    pub metadata_bytes: u64,
}

impl FsckReport {
    /// Whether the device is free of corruption and leaks.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.unlisted_problems == 0
    }

    fn problem(&mut self, p: impl Into<String>) {
        if self.problems.len() < MAX_LISTED {
            self.problems.push(p.into());
        } else {
            self.unlisted_problems += 1;
        }
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} layers, {} inode versions, {} directory entries, {} extents",
            self.device, self.layers, self.inodes, self.entries, self.extents
        )?;
        writeln!(
            f,
            "data: {} of {} blocks in use ({:.1} MiB of {:.1} MiB); metadata: {:.2} MiB",
            self.data_blocks_used,
            self.data_blocks_total,
            (self.data_blocks_used * BLOCK_SIZE) as f64 / 1048576.0,
            (self.data_blocks_total * BLOCK_SIZE) as f64 / 1048576.0,
            self.metadata_bytes as f64 / 1048576.0
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.unlisted_problems > 0 {
            writeln!(f, "... and {} more problems", self.unlisted_problems)?;
        }
        if self.is_clean() {
            write!(f, "clean")
        } else {
            write!(f, "NOT clean: {} problems", self.problems.len() + self.unlisted_problems)
        }
    }
}

/// Checks `device` without writing to it. Errors are problems that stop the check before it
/// can start (unreadable device, no lcfs superblock); everything else is in the report.
pub fn fsck(device: Arc<dyn Device>) -> Result<FsckReport, OpenError> {
    let name = device.name();
    let mut report = FsckReport { device: name.clone(), ..FsckReport::default() };
    let (sb, damage) = Superblock::read_checked(device.as_ref())?;
    if let Some(damage) = &damage {
        report.problem(format!("{damage}; the next open restores both copies from it"));
    } else if let Some(p) = Superblock::other_copy_problem(device.as_ref(), &sb) {
        report.notes.push(format!(
            "the older superblock copy {p}; the current copy is intact and the next superblock write replaces it"
        ));
    }
    report.metadata_bytes = sb.meta_len;
    let (start, end) = sb.data_blocks();
    report.data_blocks_total = end - start;

    let store = match crate::store::Store::open(ScratchBackend::new(device.clone(), &sb), 16 << 20, true) {
        Ok(s) => s,
        Err(e) => {
            report.problem(format!("metadata store failed its integrity check: {e}"));
            return Ok(report);
        }
    };
    // The store verified; now a read-only open tells whether it was closed cleanly.
    if crate::store::Store::needs_recovery(ScratchBackend::new(device.clone(), &sb)) {
        report.notes.push(
            "the device was not closed cleanly; its last durable state is intact and will be recovered at the next open"
                .to_string(),
        );
    }
    let superblock = Arc::new(std::sync::Mutex::new(sb));
    let layers = match check_tables(&store, &mut report, &superblock) {
        Ok(Some(layers)) => layers,
        Ok(None) => return Ok(report),
        Err(e) => {
            report.problem(format!("reading metadata failed: {e}"));
            return Ok(report);
        }
    };
    report.layers = layers;
    if !report.is_clean() {
        // Tree walks over broken tables only repeat the same problems.
        return Ok(report);
    }
    let state = match State::load(store, device, superblock) {
        Ok(s) => s,
        Err(e) => {
            report.problem(e.to_string());
            return Ok(report);
        }
    };
    report.data_blocks_used = state.alloc.total_blocks() - state.alloc.free_blocks();
    if let Err(e) = check_trees(&state, &mut report) {
        report.problem(format!("walking layer trees failed: {e}"));
    }
    Ok(report)
}

fn layer_label(records: &HashMap<LayerId, LayerRecord>, id: LayerId) -> String {
    match records.get(&id) {
        Some(r) => format!("layer {:?} (#{id})", r.name),
        None => format!("layer #{id}"),
    }
}

/// Row-level checks of every table. Returns the number of layers, or `None` when the layer
/// tree itself is broken.
fn check_tables(
    store: &crate::store::Store,
    report: &mut FsckReport,
    superblock: &crate::store::SharedSuperblock,
) -> Result<Option<usize>, Error> {
    let Some((next_ino, next_layer)) = read_counters(store, report)? else { return Ok(None) };
    let Some(records) = check_layers(store, report, next_layer)? else { return Ok(None) };
    let mut tables = Tables { store, report, next_ino, records, versions: HashMap::new() };
    tables.check_inodes()?;
    tables.check_ownership()?;
    tables.check_dirents()?;
    tables.check_extents(superblock)?;
    tables.check_dir_changes()?;
    tables.check_orphans()?;
    Ok(Some(tables.records.len()))
}

const ALL: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Unbounded, Bound::Unbounded);

/// The inode and layer counters of the meta table.
fn read_counters(store: &crate::store::Store, report: &mut FsckReport) -> Result<Option<(u64, u64)>, Error> {
    let mut counters = BTreeMap::new();
    store.scan(Table::Meta, ALL, Dir::Forward, |k, v| {
        counters.insert(k.to_vec(), v.to_vec());
        Ok(true)
    })?;
    let counter = |k: &[u8]| counters.get(k).filter(|v| v.len() == 8).and_then(|v| keys::be64(v, 0));
    match (counter(keys::META_NEXT_INO), counter(keys::META_NEXT_LAYER)) {
        (Some(next_ino), Some(next_layer)) => Ok(Some((next_ino, next_layer))),
        _ => {
            report.problem("the meta table lacks the inode or layer counter");
            Ok(None)
        }
    }
}

/// The layer records, if every one decodes and together they form a tree.
fn check_layers(
    store: &crate::store::Store,
    report: &mut FsckReport,
    next_layer: u64,
) -> Result<Option<HashMap<LayerId, LayerRecord>>, Error> {
    let mut records: HashMap<LayerId, LayerRecord> = HashMap::new();
    let mut broken_layers = false;
    store.scan(Table::Layers, ALL, Dir::Forward, |k, v| {
        match (keys::be64(k, 0).filter(|_| k.len() == 8), LayerRecord::decode(v)) {
            (Some(id), Ok(r)) => {
                if id >= next_layer {
                    report.problem(format!("layer #{id} is numbered beyond the layer counter ({next_layer})"));
                }
                records.insert(LayerId(id), r);
            }
            (None, _) => {
                report.problem("a layer row has a malformed key");
                broken_layers = true;
            }
            (Some(id), Err(e)) => {
                report.problem(format!("layer #{id}: {e}"));
                broken_layers = true;
            }
        }
        Ok(true)
    })?;
    if broken_layers {
        return Ok(None);
    }
    if let Err(e) = Layers::load(records.iter().map(|(k, v)| (*k, v.clone())).collect()) {
        report.problem(format!("the layers do not form a tree: {e}"));
        return Ok(None);
    }
    Ok(Some(records))
}

/// What the row checks of the inode-level tables share: the layers, and the inode versions
/// once [`Tables::check_inodes`] has read them.
struct Tables<'a> {
    store: &'a crate::store::Store,
    report: &'a mut FsckReport,
    next_ino: u64,
    records: HashMap<LayerId, LayerRecord>,
    versions: HashMap<(LayerId, Ino), InodeRecord>,
}

impl Tables<'_> {
    fn label(&self, id: LayerId) -> String {
        layer_label(&self.records, id)
    }

    /// Inode versions: filed under their layer's depth, numbered within the counter.
    fn check_inodes(&mut self) -> Result<(), Error> {
        let Tables { store, report, next_ino, records, versions } = self;
        let label = |id: LayerId| layer_label(records, id);
        store.scan(Table::Inodes, ALL, Dir::Forward, |k, v| {
            report.inodes += 1;
            let Some((ino, depth, layer)) = keys::parse_inode(k) else {
                report.problem("an inode row has a malformed key");
                return Ok(true);
            };
            let Some(lr) = records.get(&layer) else {
                report.problem(format!("inode {ino} has a version in {}, which does not exist (leaked)", label(layer)));
                return Ok(true);
            };
            if lr.depth != depth {
                report.problem(format!(
                    "inode {ino} in {} is filed under depth {depth}, the layer is at depth {}",
                    label(layer),
                    lr.depth
                ));
            }
            if ino.0 == 0 || ino.0 >= *next_ino {
                report.problem(format!("inode number {ino} in {} is outside the allocated range", label(layer)));
            }
            match InodeRecord::decode(v) {
                Ok(r) => {
                    versions.insert((layer, ino), r);
                }
                Err(e) => report.problem(format!("inode {ino} in {}: {e}", label(layer))),
            }
            Ok(true)
        })
    }

    /// The per-layer ownership index mirrors the inode versions.
    fn check_ownership(&mut self) -> Result<(), Error> {
        let Tables { store, report, records, versions, .. } = self;
        let label = |id: LayerId| layer_label(records, id);
        let mut owned = 0u64;
        store.scan(Table::LayerInodes, ALL, Dir::Forward, |k, v| {
            owned += 1;
            match keys::parse_pair(k) {
                Some((layer, ino)) => {
                    if v != [keys::OWN_CREATED] && v != [keys::OWN_COPIED] {
                        report.problem(format!(
                            "ownership row of inode {ino} in {} has an unknown value",
                            label(LayerId(layer))
                        ));
                    }
                    if !versions.contains_key(&(LayerId(layer), Ino(ino))) {
                        report.problem(format!(
                            "{} lists inode {ino} as its own but holds no version of it",
                            label(LayerId(layer))
                        ));
                    }
                }
                None => report.problem("an ownership row has a malformed key"),
            }
            Ok(true)
        })?;
        if owned != report.inodes {
            report.problem(format!("{} inode versions but {owned} ownership rows", report.inodes));
        }
        Ok(())
    }

    /// Directory entries live in directory versions and name allocated inodes.
    fn check_dirents(&mut self) -> Result<(), Error> {
        let Tables { store, report, next_ino, records, versions } = self;
        let label = |id: LayerId| layer_label(records, id);
        store.scan(Table::Dirents, ALL, Dir::Forward, |k, v| {
            report.entries += 1;
            let (Some((layer, dir, name)), Some((ino, _))) = (keys::parse_dirent(k), keys::parse_dirent_value(v))
            else {
                report.problem("a directory entry is malformed");
                return Ok(true);
            };
            let shown = String::from_utf8_lossy(name);
            match versions.get(&(layer, dir)) {
                Some(d) if d.kind == FileKind::Directory && !d.is_dead() => {}
                _ => report.problem(format!(
                    "entry {shown:?} in {} belongs to directory {dir}, which the layer does not hold (leaked)",
                    label(layer)
                )),
            }
            if let Err(e) = crate::fs::check_name(name) {
                report.problem(format!("entry {shown:?} of directory {dir} in {}: {e}", label(layer)));
            }
            if ino.0 == 0 || ino.0 >= *next_ino {
                report.problem(format!(
                    "entry {shown:?} of directory {dir} in {} names inode {ino}, which was never allocated",
                    label(layer)
                ));
            }
            Ok(true)
        })
    }

    /// Extents: owned by a live regular file, inside the data area, never overlapping.
    fn check_extents(&mut self, superblock: &crate::store::SharedSuperblock) -> Result<(), Error> {
        let (data_start, data_end) = lock_superblock(superblock).data_blocks();
        let mut runs: Vec<(u64, u64, LayerId, Ino)> = Vec::new();
        {
            let Tables { store, report, records, versions, .. } = &mut *self;
            let label = |id: LayerId| layer_label(records, id);
            store.scan(Table::Extents, ALL, Dir::Forward, |k, v| {
                report.extents += 1;
                let (Some((layer, ino, fb)), Some((dev, count))) =
                    (keys::parse_extent(k), keys::parse_extent_value(v))
                else {
                    report.problem("an extent row is malformed");
                    return Ok(true);
                };
                match versions.get(&(layer, ino)) {
                    Some(r) if r.kind == FileKind::Regular && !r.is_dead() => {}
                    _ => report.problem(format!(
                        "{} holds data of inode {ino} (file block {fb}, {count} blocks) but no live file of that number (leaked)",
                        label(layer)
                    )),
                }
                if count == 0 {
                    report.problem(format!("inode {ino} in {} has an empty extent", label(layer)));
                } else if dev != 0 {
                    if dev < data_start || dev + u64::from(count) > data_end {
                        report.problem(format!(
                            "inode {ino} in {}: blocks {dev}..{} lie outside the data area",
                            label(layer),
                            dev + u64::from(count)
                        ));
                    }
                    runs.push((dev, u64::from(count), layer, ino));
                }
                Ok(true)
            })?;
        }
        runs.sort_unstable();
        for w in runs.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if a.0 + a.1 > b.0 {
                let problem = format!(
                    "blocks {}..{} are claimed by inode {} in {} and by inode {} in {}",
                    b.0,
                    (a.0 + a.1).min(b.0 + b.1),
                    a.3,
                    self.label(a.2),
                    b.3,
                    self.label(b.2)
                );
                self.report.problem(problem);
            }
        }
        Ok(())
    }

    /// Change records name existing layers.
    fn check_dir_changes(&mut self) -> Result<(), Error> {
        let Tables { store, report, records, .. } = self;
        store.scan(Table::DirChanges, ALL, Dir::Forward, |k, _| {
            if let Some((layer, _, _)) = keys::parse_dirent(k)
                && !records.contains_key(&layer)
            {
                report.problem(format!(
                    "a change record names {}, which does not exist (leaked)",
                    layer_label(records, layer)
                ));
            }
            Ok(true)
        })
    }

    /// Orphan records have a nameless version behind them.
    fn check_orphans(&mut self) -> Result<(), Error> {
        let Tables { store, report, records, versions, .. } = self;
        let mut orphans = 0;
        store.scan(Table::Orphans, ALL, Dir::Forward, |k, _| {
            orphans += 1;
            if let Some((layer, ino)) = keys::parse_pair(k) {
                match versions.get(&(LayerId(layer), Ino(ino))) {
                    Some(r) if r.links.is_empty() => {}
                    _ => report.problem(format!(
                        "orphan record for inode {ino} in {} has no nameless version behind it",
                        layer_label(records, LayerId(layer))
                    )),
                }
            }
            Ok(true)
        })?;
        if orphans > 0 {
            report.notes.push(format!(
                "{orphans} files were open but deleted at the last durable point; the next open frees them"
            ));
        }
        Ok(())
    }
}

/// Walks every layer's tree.
fn check_trees(state: &State, report: &mut FsckReport) -> Result<(), Error> {
    let mut layers: Vec<LayerRef> = state.layers.iter().filter_map(|l| state.layers.layer_ref(l.id)).collect();
    layers.sort_by_key(|l| l.id);
    for l in layers {
        check_tree(state, &l, report)?;
    }
    Ok(())
}

fn check_tree(state: &State, l: &LayerRef, report: &mut FsckReport) -> Result<(), Error> {
    let name = state.layers.get(l.id).map(|x| format!("layer {:?}", x.record.name)).unwrap_or_default();
    match state.resolve_in(ROOT_INO, &l.path)? {
        Some(v) if !v.rec.is_dead() && v.rec.kind == FileKind::Directory => {}
        _ => {
            report.problem(format!("{name} has no root directory"));
            return Ok(());
        }
    }
    // Names seen per inode, and subdirectories per directory.
    let mut seen: HashMap<Ino, Vec<(Ino, Vec<u8>)>> = HashMap::new();
    let mut subdirs: HashMap<Ino, u32> = HashMap::new();
    let mut dirs_done: HashSet<Ino> = HashSet::new();
    let mut stack = vec![ROOT_INO];
    dirs_done.insert(ROOT_INO);
    while let Some(dir) = stack.pop() {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let batch = state.read_dir(l, dir, after.as_deref(), 4096)?;
            let Some(last) = batch.last() else { break };
            after = Some(last.name.clone());
            for e in batch {
                let shown = String::from_utf8_lossy(&e.name).into_owned();
                let v = match state.resolve_in(e.ino, &l.path)? {
                    Some(v) if !v.rec.is_dead() => v,
                    _ => {
                        report.problem(format!(
                            "{name}: entry {shown:?} of directory {dir} names inode {}, which the layer does not have",
                            e.ino
                        ));
                        continue;
                    }
                };
                if v.rec.kind != e.kind {
                    report.problem(format!(
                        "{name}: entry {shown:?} of directory {dir} says {:?} but inode {} is {:?}",
                        e.kind, e.ino, v.rec.kind
                    ));
                }
                seen.entry(e.ino).or_default().push((dir, e.name.clone()));
                if v.rec.kind == FileKind::Directory {
                    *subdirs.entry(dir).or_default() += 1;
                    if !dirs_done.insert(e.ino) {
                        report.problem(format!("{name}: directory {} is reachable by more than one name", e.ino));
                        continue;
                    }
                    stack.push(e.ino);
                }
            }
        }
    }
    for (&ino, names) in &seen {
        let Some(v) = state.resolve_in(ino, &l.path)? else { continue };
        let path = || {
            let (dir, n) = &names[0];
            let mut p =
                state.dir_path(&l.path, *dir).ok().flatten().unwrap_or_else(|| format!("<dir {dir}>").into_bytes());
            if p != b"/" {
                p.push(b'/');
            }
            p.extend_from_slice(n);
            String::from_utf8_lossy(&p).into_owned()
        };
        let mut recorded: Vec<(Ino, Vec<u8>)> = v.rec.links.iter().map(|k| (k.parent, k.name.clone())).collect();
        let mut found = names.clone();
        recorded.sort();
        found.sort();
        if recorded != found {
            report.problem(format!(
                "{name}: {} (inode {ino}) has link count {} but {} directory entries name it",
                path(),
                v.rec.nlink(),
                found.len()
            ));
        }
        if v.rec.kind == FileKind::Directory {
            let actual = subdirs.get(&ino).copied().unwrap_or(0);
            if v.rec.subdirs != actual {
                report.problem(format!(
                    "{name}: directory {} (inode {ino}) records {} subdirectories but holds {actual}",
                    path(),
                    v.rec.subdirs
                ));
            }
        }
    }
    let root_subdirs = subdirs.get(&ROOT_INO).copied().unwrap_or(0);
    if let Some(v) = state.resolve_in(ROOT_INO, &l.path)?
        && v.rec.subdirs != root_subdirs
    {
        report.problem(format!(
            "{name}: the root directory records {} subdirectories but holds {root_subdirs}",
            v.rec.subdirs
        ));
    }
    // Everything the layer owns must be reachable in it, or be an open-but-deleted file.
    for (k, _) in state.store.collect_prefix(Table::LayerInodes, &keys::layer(l.id))? {
        let Some((_, ino)) = keys::parse_pair(&k) else { continue };
        let ino = Ino(ino);
        if ino == ROOT_INO || seen.contains_key(&ino) {
            continue;
        }
        let Some(v) = state.resolve_in(ino, &l.path)? else { continue };
        if v.rec.is_dead() {
            continue;
        }
        if state.store.get(Table::Orphans, &keys::layer_inode(l.id, ino))?.is_some() {
            continue;
        }
        report.problem(format!(
            "{name}: inode {ino} ({:?}, {} bytes) is not reachable from the root (leaked)",
            v.rec.kind, v.rec.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::device::{CrashDevice, CrashMode, MemDevice};
    use crate::types::{LayerKind, NewNode};
    use crate::{Engine, FormatOptions, OpenOptions};

    fn options() -> OpenOptions {
        OpenOptions { checkpoint_interval: None, ..OpenOptions::default() }
    }

    #[test]
    fn a_clean_close_leaves_no_recovery_note_and_a_crash_does() {
        let device: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
        Engine::format(&device, &FormatOptions::default()).expect("format");
        let engine = Engine::open(device.clone(), &options()).expect("open");
        engine.create_layer("l", None, LayerKind::Writable, BTreeMap::new()).expect("layer");
        engine.close().expect("close");
        let report = fsck(device).expect("fsck");
        assert!(report.is_clean() && report.notes.is_empty(), "{report}");

        let crash = Arc::new(CrashDevice::new(64 << 20));
        let dyn_crash: Arc<dyn Device> = crash.clone();
        Engine::format(&dyn_crash, &FormatOptions::default()).expect("format");
        let engine = Engine::open(dyn_crash, &options()).expect("open");
        let l = engine.create_layer("l", None, LayerKind::Writable, BTreeMap::new()).expect("layer").id;
        engine.create(l, crate::ROOT_INO, b"f", &NewNode::file(0o644, 0, 0)).expect("create");
        crash.power_cut();
        drop(engine);
        let report = fsck(Arc::new(crash.image_after_crash(CrashMode::DropUnsynced))).expect("fsck");
        assert!(report.is_clean(), "{report}");
        assert!(report.notes.iter().any(|n| n.contains("not closed cleanly")), "{report}");
        assert_eq!(report.layers, 1);
    }
}
