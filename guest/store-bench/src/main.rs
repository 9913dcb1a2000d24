//! lcfs-store-bench: the measurement behind the choice of metadata store
//! (`docs/design/metadata-store.md`).
//!
//! It runs the engine's metadata access pattern against three candidates and prints a markdown
//! table: unpacking files (three rows per file: inode record, directory entry, ownership row),
//! looking names up (directory entry, then inode), listing a directory of 1,000 entries, a
//! small durable change (one file plus a durable commit), reopening, and the bytes on disk.
//!
//! * `redb, a transaction per change`: every file is its own non-durable write transaction;
//! * `redb + overlay`: changes gather in ordered in-memory maps and reach redb in one
//!   transaction per 10,000 files (the engine's design);
//! * `fjall`: an LSM tree; every file is one write batch without fsync.
//!
//! Every store works on files in `--dir`; each variant ends its load with a durable commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

/// Compares metadata stores on the engine's workload.
#[derive(Debug, Parser)]
struct Args {
    /// Directory for the stores' files.
    #[arg(long, default_value = "/var/tmp/lcfs-store-bench")]
    dir: PathBuf,
    /// Files to unpack.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
}

const TABLES: [&str; 3] = ["inodes", "dirents", "owned"];
const ENTRIES_PER_DIR: u64 = 1000;
const OVERLAY_FLUSH_EVERY: u64 = 10_000;

/// The rows one file adds, as the engine encodes them.
fn rows(i: u64) -> [(Vec<u8>, Vec<u8>); 3] {
    let ino = i + 2;
    let dir = 1_000_000 + i / ENTRIES_PER_DIR;
    let mut inode_key = ino.to_be_bytes().to_vec();
    inode_key.extend_from_slice(&0u32.to_be_bytes());
    inode_key.extend_from_slice(&1u64.to_be_bytes());
    // A regular file's record is about 130 bytes with one name.
    let record: Vec<u8> = (0..130u8).map(|b| b.wrapping_mul(31).wrapping_add(i as u8)).collect();
    let mut dirent_key = 1u64.to_be_bytes().to_vec();
    dirent_key.extend_from_slice(&dir.to_be_bytes());
    dirent_key.extend_from_slice(format!("file-{i:08}.so").as_bytes());
    let mut dirent_value = ino.to_be_bytes().to_vec();
    dirent_value.push(1);
    let mut owned_key = 1u64.to_be_bytes().to_vec();
    owned_key.extend_from_slice(&ino.to_be_bytes());
    [(inode_key, record), (dirent_key, dirent_value), (owned_key, vec![1])]
}

fn dir_prefix(dir_index: u64) -> Vec<u8> {
    let mut p = 1u64.to_be_bytes().to_vec();
    p.extend_from_slice(&(1_000_000 + dir_index).to_be_bytes());
    p
}

/// What one variant measured.
#[derive(Debug, Default)]
struct Figures {
    create_us: f64,
    lookup_ns: f64,
    list_us: f64,
    durable_change_ms: f64,
    reopen_ms: f64,
    disk_bytes: u64,
}

/// One candidate store.
trait Candidate {
    fn name(&self) -> &'static str;
    /// Unpacks `files` files, ending with a durable commit.
    fn load(&mut self, files: u64) -> Result<()>;
    /// Looks file `i` up: its directory entry, then its inode record.
    fn lookup(&self, i: u64) -> Result<bool>;
    /// Lists a directory; returns the number of entries.
    fn list(&self, dir_index: u64) -> Result<usize>;
    /// Adds one file and commits durably.
    fn durable_change(&mut self, i: u64) -> Result<()>;
    /// Closes and opens the store again.
    fn reopen(&mut self) -> Result<()>;
}

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn redb_tables() -> [Table; 3] {
    TABLES.map(TableDefinition::new)
}

struct Redb {
    path: PathBuf,
    db: Option<Database>,
    overlay: bool,
}

impl Redb {
    fn new(path: PathBuf, overlay: bool) -> Result<Redb> {
        let db = Database::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let tx = db.begin_write()?;
        for t in redb_tables() {
            tx.open_table(t)?;
        }
        tx.commit()?;
        Ok(Redb { path, db: Some(db), overlay })
    }

    fn db(&self) -> &Database {
        self.db.as_ref().expect("open")
    }

    fn commit(&self, batch: &[Vec<(Vec<u8>, Vec<u8>)>; 3], durability: Durability) -> Result<()> {
        let mut tx = self.db().begin_write()?;
        tx.set_durability(durability)?;
        for (def, rows) in redb_tables().into_iter().zip(batch) {
            let mut t = tx.open_table(def)?;
            for (k, v) in rows {
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Candidate for Redb {
    fn name(&self) -> &'static str {
        if self.overlay { "redb + overlay (the engine)" } else { "redb, a transaction per change" }
    }

    fn load(&mut self, files: u64) -> Result<()> {
        if self.overlay {
            let mut overlay: [BTreeMap<Vec<u8>, Vec<u8>>; 3] = Default::default();
            for i in 0..files {
                for (t, (k, v)) in rows(i).into_iter().enumerate() {
                    overlay[t].insert(k, v);
                }
                if (i + 1) % OVERLAY_FLUSH_EVERY == 0 || i + 1 == files {
                    let batch = overlay.each_mut().map(|m| std::mem::take(m).into_iter().collect());
                    self.commit(&batch, Durability::None)?;
                }
            }
        } else {
            for i in 0..files {
                let batch = rows(i).map(|r| vec![r]);
                self.commit(&batch, Durability::None)?;
            }
        }
        self.commit(&Default::default(), Durability::Immediate)
    }

    fn lookup(&self, i: u64) -> Result<bool> {
        let [inode, dirent, _] = rows(i);
        let tx = self.db().begin_read()?;
        let defs = redb_tables();
        let found = tx.open_table(defs[1])?.get(dirent.0.as_slice())?.is_some();
        let record = tx.open_table(defs[0])?.get(inode.0.as_slice())?.map(|g| g.value().len());
        Ok(found && record.is_some())
    }

    fn list(&self, dir_index: u64) -> Result<usize> {
        let tx = self.db().begin_read()?;
        let t = tx.open_table(redb_tables()[1])?;
        let lo = dir_prefix(dir_index);
        let hi = dir_prefix(dir_index + 1);
        Ok(t.range::<&[u8]>(lo.as_slice()..hi.as_slice())?.count())
    }

    fn durable_change(&mut self, i: u64) -> Result<()> {
        self.commit(&rows(i).map(|r| vec![r]), Durability::Immediate)
    }

    fn reopen(&mut self) -> Result<()> {
        drop(self.db.take());
        self.db = Some(Database::open(&self.path)?);
        Ok(())
    }
}

struct Fjall {
    path: PathBuf,
    db: Option<fjall::Database>,
    keyspaces: Vec<fjall::Keyspace>,
}

impl Fjall {
    fn new(path: PathBuf) -> Result<Fjall> {
        let mut f = Fjall { path, db: None, keyspaces: Vec::new() };
        f.open()?;
        Ok(f)
    }

    fn open(&mut self) -> Result<()> {
        let db = fjall::Database::builder(&self.path).open()?;
        self.keyspaces =
            TABLES.iter().map(|t| db.keyspace(t, fjall::KeyspaceCreateOptions::default)).collect::<Result<_, _>>()?;
        self.db = Some(db);
        Ok(())
    }

    fn db(&self) -> &fjall::Database {
        self.db.as_ref().expect("open")
    }

    fn put(&self, i: u64) -> Result<()> {
        let mut batch = self.db().batch();
        for (ks, (k, v)) in self.keyspaces.iter().zip(rows(i)) {
            batch.insert(ks, k, v);
        }
        batch.commit()?;
        Ok(())
    }
}

impl Candidate for Fjall {
    fn name(&self) -> &'static str {
        "fjall (LSM), a batch per change"
    }

    fn load(&mut self, files: u64) -> Result<()> {
        for i in 0..files {
            self.put(i)?;
        }
        self.db().persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }

    fn lookup(&self, i: u64) -> Result<bool> {
        let [inode, dirent, _] = rows(i);
        let found = self.keyspaces[1].get(&dirent.0)?.is_some();
        let record = self.keyspaces[0].get(&inode.0)?.map(|v| v.len());
        Ok(found && record.is_some())
    }

    fn list(&self, dir_index: u64) -> Result<usize> {
        let mut n = 0;
        for guard in self.keyspaces[1].prefix(dir_prefix(dir_index)) {
            guard.key()?;
            n += 1;
        }
        Ok(n)
    }

    fn durable_change(&mut self, i: u64) -> Result<()> {
        self.put(i)?;
        self.db().persist(fjall::PersistMode::SyncData)?;
        Ok(())
    }

    fn reopen(&mut self) -> Result<()> {
        self.keyspaces.clear();
        drop(self.db.take());
        self.open()
    }
}

fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    if meta.is_file() {
        return std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    }
    std::fs::read_dir(path)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| disk_bytes(&e.path())).sum())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn measure(c: &mut dyn Candidate, files: u64, path: &Path) -> Result<Figures> {
    let mut f = Figures::default();
    let t = Instant::now();
    c.load(files)?;
    f.create_us = t.elapsed().as_secs_f64() * 1e6 / files as f64;
    // A fixed pseudo-random order, the same for every candidate.
    let probes = files.min(100_000);
    let t = Instant::now();
    let mut x = 0x9e37_79b9u64;
    for _ in 0..probes {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        anyhow::ensure!(c.lookup((x >> 11) % files)?, "{}: a file is missing", c.name());
    }
    f.lookup_ns = t.elapsed().as_secs_f64() * 1e9 / probes as f64;
    let dirs = files / ENTRIES_PER_DIR;
    let mut listings = Vec::new();
    for d in 0..dirs.min(50) {
        let t = Instant::now();
        let n = c.list(d)?;
        listings.push(t.elapsed());
        anyhow::ensure!(n as u64 == ENTRIES_PER_DIR, "{}: directory {d} lists {n} entries", c.name());
    }
    f.list_us = median(listings).as_secs_f64() * 1e6;
    let mut changes = Vec::new();
    for i in 0..30 {
        let t = Instant::now();
        c.durable_change(files + i)?;
        changes.push(t.elapsed());
    }
    f.durable_change_ms = median(changes).as_secs_f64() * 1e3;
    let t = Instant::now();
    c.reopen()?;
    f.reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(c.lookup(files / 2)?, "{}: lost data across reopen", c.name());
    f.disk_bytes = disk_bytes(path);
    Ok(f)
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    println!(
        "| store | create a file (µs) | lookup (ns) | list 1,000 entries (µs) | durable change (ms) | reopen (ms) | on disk (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for variant in 0..3 {
        let path = args.dir.join(format!("store-{variant}"));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
        let mut candidate: Box<dyn Candidate> = match variant {
            0 => Box::new(Redb::new(path.clone(), false)?),
            1 => Box::new(Redb::new(path.clone(), true)?),
            _ => Box::new(Fjall::new(path.clone())?),
        };
        let f = measure(candidate.as_mut(), args.files, &path)?;
        println!(
            "| {} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} |",
            candidate.name(),
            f.create_us,
            f.lookup_ns,
            f.list_us,
            f.durable_change_ms,
            f.reopen_ms,
            f.disk_bytes as f64 / 1048576.0
        );
        drop(candidate);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir_all(&path);
    }
    Ok(())
}
