//! Concurrent stress test: writer threads change files in a shared writable layer while a
//! coordinator commits or removes that layer under them and opens the next (a child of the
//! last commit), and a churn thread clones, commits and removes scratch layers on the side.
//! Each writer owns its files, so it keeps an exact model of them: an operation that returned
//! `Ok` happened before the layer closed, one refused because the layer closed did not. Right
//! after each commit the coordinator reads the committed layer's files. At the end every
//! committed layer must hold exactly what the coordinator read then and each writer's model of
//! its files at that commit, before and after reopening the device, and fsck must find it
//! clean. The data region is small, so freed blocks are soon given to other files.
//!
//! Knobs: `LCFS_STRESS_GENERATIONS` (layers committed or removed, default 40),
//! `LCFS_STRESS_OPS` (operations per writer and layer, default 60), `LCFS_STRESS_SEED`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use lcfs_engine::device::{Device, MemDevice};
use lcfs_engine::{
    Engine, Error, FormatOptions, Ino, LayerId, LayerKind, NewNode, OpenOptions, ROOT_INO, SetAttr, fsck,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

const WRITERS: usize = 3;
const FILES_PER_WRITER: usize = 5;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A writer's files: name to content.
type Files = BTreeMap<String, Vec<u8>>;

/// What happened to the layer of a generation.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Committed(String),
    Removed,
}

/// The coordinator's announcements.
#[derive(Debug, Default)]
struct Stage {
    /// The open generation's number and layer (generations count from 1).
    open: Option<(u64, LayerId)>,
    /// The outcome of each closed generation, by number minus one.
    outcomes: Vec<Outcome>,
    finished: bool,
}

#[derive(Debug, Default)]
struct Shared {
    stage: Mutex<Stage>,
    changed: Condvar,
    /// Operations done by all writers since the generation opened.
    ops: AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a generation after `after` opens or the run ends.
    fn next_after(&self, after: u64) -> (Option<(u64, LayerId)>, Vec<Outcome>) {
        let mut stage = self.lock();
        loop {
            match stage.open {
                Some((generation, id)) if generation > after => {
                    return (Some((generation, id)), stage.outcomes.clone());
                }
                _ if stage.finished => return (None, stage.outcomes.clone()),
                _ => stage = self.changed.wait(stage).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }

    fn current(&self) -> Option<u64> {
        self.lock().open.map(|(generation, _)| generation)
    }
}

/// An error that means the writer's layer was committed or removed under it.
fn closed(e: &Error) -> bool {
    matches!(e, Error::LayerKind { .. } | Error::LayerNotFound(_))
}

fn data(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    let seed: u8 = rng.random();
    (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect()
}

struct Writer {
    index: usize,
    engine: Engine,
    shared: Arc<Shared>,
    rng: SmallRng,
    ops_per_generation: u64,
}

impl Writer {
    /// Runs until the coordinator is done; returns this writer's files at each committed
    /// generation (by generation number).
    fn run(mut self) -> HashMap<u64, Files> {
        let mut committed: HashMap<u64, Files> = HashMap::new();
        let mut last_commit = Files::new();
        let mut model = Files::new();
        let mut generation = 0;
        loop {
            let (open, outcomes) = self.shared.next_after(generation);
            // Every generation from this writer's to the one now open has closed; settle them.
            let upto = open.map_or(outcomes.len() as u64, |(g, _)| g - 1);
            for closed_generation in generation.max(1)..=upto {
                match &outcomes[(closed_generation - 1) as usize] {
                    Outcome::Committed(_) => {
                        committed.insert(closed_generation, model.clone());
                        last_commit = model.clone();
                    }
                    Outcome::Removed => model = last_commit.clone(),
                }
            }
            let Some((open_generation, layer)) = open else { return committed };
            generation = open_generation;
            for _ in 0..self.ops_per_generation {
                if self.shared.current() != Some(generation) {
                    break;
                }
                match self.step(layer, &mut model) {
                    Ok(()) => {}
                    Err(e) if closed(&e) => break,
                    Err(e) => panic!("writer {} in generation {generation}: {e}", self.index),
                }
                self.shared.ops.fetch_add(1, Ordering::Relaxed);
            }
            // Done with this generation: wait for the coordinator to close it.
        }
    }

    fn name(&mut self) -> String {
        format!("w{}-f{}", self.index, self.rng.random_range(0..FILES_PER_WRITER))
    }

    fn ino(&self, layer: LayerId, name: &str) -> Result<Ino, Error> {
        self.engine.lookup(layer, ROOT_INO, name.as_bytes()).map(|a| a.ino)
    }

    /// One random operation on this writer's files, applied to `model` only if it succeeded.
    fn step(&mut self, layer: LayerId, model: &mut Files) -> Result<(), Error> {
        let name = self.name();
        let e = &self.engine;
        match self.rng.random_range(0..10) {
            0..=4 => {
                let offset = self.rng.random_range(0..3 * 4096 + 100);
                let len = self.rng.random_range(1..9000);
                let bytes = data(&mut self.rng, len);
                let ino = match self.ino(layer, &name) {
                    Ok(ino) => ino,
                    Err(Error::NotFound) => {
                        let ino = e.create(layer, ROOT_INO, name.as_bytes(), &NewNode::file(0o644, 0, 0))?.ino;
                        model.insert(name.clone(), Vec::new());
                        ino
                    }
                    Err(err) => return Err(err),
                };
                e.write(layer, ino, offset, &bytes)?;
                let file = model.get_mut(&name).expect("in the model");
                let end = offset as usize + len;
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[offset as usize..end].copy_from_slice(&bytes);
            }
            5 => {
                let Some(file) = model.get(&name) else { return Ok(()) };
                let size = self.rng.random_range(0..file.len() as u64 + 5000);
                let ino = self.ino(layer, &name)?;
                e.setattr(layer, ino, &SetAttr { size: Some(size), ..SetAttr::default() })?;
                model.get_mut(&name).expect("in the model").resize(size as usize, 0);
            }
            6 => {
                if model.contains_key(&name) {
                    e.unlink(layer, ROOT_INO, name.as_bytes())?;
                    model.remove(&name);
                }
            }
            _ => {
                // Reads see exactly this writer's model, whether the layer is still writable
                // or was committed meanwhile.
                let Some(want) = model.get(&name) else { return Ok(()) };
                let ino = self.ino(layer, &name)?;
                let got = e.read(layer, ino, 0, want.len() + 10)?;
                assert!(
                    got == *want,
                    "writer {}: {name} reads {} bytes, the model has {}",
                    self.index,
                    got.len(),
                    want.len()
                );
            }
        }
        Ok(())
    }
}

/// Clones, commits and removes scratch layers of committed generations until told to stop.
fn churn(engine: Engine, shared: Arc<Shared>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut n = 0;
    while !shared.lock().finished {
        let commits: Vec<String> = shared
            .lock()
            .outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Committed(name) => Some(name.clone()),
                Outcome::Removed => None,
            })
            .collect();
        let Some(base) = (!commits.is_empty()).then(|| commits[rng.random_range(0..commits.len())].clone()) else {
            std::thread::yield_now();
            continue;
        };
        n += 1;
        let scratch = format!("scratch-{n}");
        let l = engine.create_layer(&scratch, Some(&base), LayerKind::Writable, BTreeMap::new()).expect("clone").id;
        let ino = engine.create(l, ROOT_INO, b"scratch", &NewNode::file(0o644, 0, 0)).expect("create").ino;
        engine.write(l, ino, 0, &data(&mut rng, 5000)).expect("write scratch");
        if rng.random_bool(0.5) {
            engine.commit_layer(&scratch, &format!("{scratch}@c"), None).expect("commit scratch");
            engine.remove_layer(&format!("{scratch}@c")).expect("remove committed scratch");
        } else {
            engine.remove_layer(&scratch).expect("remove scratch");
        }
    }
}

fn open(device: &Arc<dyn Device>) -> Engine {
    let options =
        OpenOptions { checkpoint_interval: Some(std::time::Duration::from_millis(20)), ..OpenOptions::default() };
    Engine::open(device.clone(), &options).expect("open")
}

/// Every file of layer `name`.
fn read_layer(engine: &Engine, name: &str) -> Files {
    let layer = engine.layer(name).expect("layer").id;
    let mut files = Files::new();
    for entry in engine.read_dir(layer, ROOT_INO, None, 10_000).expect("list") {
        let size = engine.getattr(layer, entry.ino).expect("getattr").size;
        let content = engine.read(layer, entry.ino, 0, size as usize).expect("read");
        files.insert(String::from_utf8_lossy(&entry.name).into_owned(), content);
    }
    files
}

/// Every committed generation holds what was read right after its commit, and each writer's
/// files as the writer's model has them.
fn verify(engine: &Engine, outcomes: &[Outcome], at_commit: &HashMap<String, Files>, models: &[HashMap<u64, Files>]) {
    for (i, outcome) in outcomes.iter().enumerate() {
        let Outcome::Committed(name) = outcome else { continue };
        let generation = i as u64 + 1;
        let now = read_layer(engine, name);
        let then = &at_commit[name];
        assert!(
            now.keys().eq(then.keys()) && now.iter().zip(then.iter()).all(|(a, b)| a.1 == b.1),
            "{name} changed after its commit: files {:?}, then {:?}",
            now.iter().map(|(n, c)| (n, c.len())).collect::<Vec<_>>(),
            then.iter().map(|(n, c)| (n, c.len())).collect::<Vec<_>>()
        );
        let layer = engine.layer(name).expect("committed layer").id;
        let entries = engine.read_dir(layer, ROOT_INO, None, 10_000).expect("list");
        for (w, model) in models.iter().enumerate() {
            let want = model.get(&generation).unwrap_or_else(|| panic!("writer {w} has no model of {name}"));
            let prefix = format!("w{w}-");
            let names: Vec<String> = entries
                .iter()
                .map(|e| String::from_utf8_lossy(&e.name).into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect();
            assert_eq!(names, want.keys().cloned().collect::<Vec<_>>(), "{name}: writer {w}'s files");
            for (file, content) in want {
                let ino = engine.lookup(layer, ROOT_INO, file.as_bytes()).expect("lookup").ino;
                let got = engine.read(layer, ino, 0, content.len() + 10).expect("read");
                assert!(got == *content, "{name}/{file}: {} bytes, the model has {}", got.len(), content.len());
            }
        }
    }
}

#[test]
fn commits_and_removes_under_concurrent_writers_keep_every_layer_exact() {
    let generations = knob("LCFS_STRESS_GENERATIONS", 40);
    let ops = knob("LCFS_STRESS_OPS", 60);
    let seed = knob("LCFS_STRESS_SEED", 7);
    // Every generation keeps what its writers changed (about 300 KiB) and its metadata; the
    // rest of the data region is reused again and again.
    let metadata = (16 << 20) + generations * (128 << 10);
    let data_bytes = (20 << 20) + generations * (512 << 10);
    let device: Arc<dyn Device> = Arc::new(MemDevice::new(metadata + data_bytes + (1 << 20)));
    Engine::format(&device, &FormatOptions { metadata_bytes: Some(metadata), ..FormatOptions::default() })
        .expect("format");
    let engine = open(&device);
    let shared = Arc::new(Shared::default());

    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            let writer = Writer {
                index,
                engine: engine.clone(),
                shared: shared.clone(),
                rng: SmallRng::seed_from_u64(seed * 100 + index as u64),
                ops_per_generation: ops,
            };
            std::thread::spawn(move || writer.run())
        })
        .collect();
    let churner = {
        let (engine, shared) = (engine.clone(), shared.clone());
        std::thread::spawn(move || churn(engine, shared, seed))
    };

    let mut rng = SmallRng::seed_from_u64(seed);
    let mut base: Option<String> = None;
    let mut at_commit = HashMap::new();
    for generation in 1..=generations {
        let name = format!("generation-{generation}");
        let id = engine.create_layer(&name, base.as_deref(), LayerKind::Writable, BTreeMap::new()).expect("create").id;
        shared.ops.store(0, Ordering::Relaxed);
        shared.lock().open = Some((generation, id));
        shared.changed.notify_all();
        // Close the layer while the writers are busy in it: after some of their operations.
        let after = rng.random_range(0..ops * WRITERS as u64 / 2);
        while shared.ops.load(Ordering::Relaxed) < after {
            // A writer that failed stops counting; its panic is reported at the join below.
            if writers.iter().any(|w| w.is_finished()) {
                break;
            }
            std::thread::yield_now();
        }
        let outcome = if rng.random_bool(0.75) {
            let committed = format!("{name}@c");
            engine.commit_layer(&name, &committed, None).expect("commit");
            at_commit.insert(committed.clone(), read_layer(&engine, &committed));
            base = Some(committed.clone());
            Outcome::Committed(committed)
        } else {
            engine.remove_layer(&name).expect("remove");
            Outcome::Removed
        };
        let mut stage = shared.lock();
        stage.outcomes.push(outcome);
        stage.open = None;
        drop(stage);
    }
    {
        shared.lock().finished = true;
        shared.changed.notify_all();
    }
    let models: Vec<_> = writers.into_iter().map(|w| w.join().expect("writer")).collect();
    churner.join().expect("churn");
    let outcomes = shared.lock().outcomes.clone();

    verify(&engine, &outcomes, &at_commit, &models);
    engine.close().expect("close");
    let report = fsck(device.clone()).expect("fsck runs");
    assert!(report.is_clean(), "{report}");
    let engine = open(&device);
    verify(&engine, &outcomes, &at_commit, &models);
    engine.close().expect("close");
}
