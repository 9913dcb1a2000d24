//! Crash tests: power cuts at random points, and `kill -9` of a process in the middle of work.
//!
//! Power cut: the engine runs random operations on a [`CrashDevice`] that dies after a random
//! number of writes. The image a reboot would find must open, be clean for fsck, and equal the
//! reference model at the last durable point (or, if the operation in flight was itself a
//! durable point, possibly that point). With torn writes (a random subset of unsynced sectors
//! survives) the committed layers must still match exactly.
//!
//! kill -9: a child process runs random operations on a device file and reports each durable
//! point on stdout; the parent kills it at a random moment, then checks fsck and that every
//! committed layer matches the model replayed to the last (or next) durable point.
//!
//! Knobs: `LCFS_CRASH_CASES` (power cuts per mode, default 200), `LCFS_KILL_CASES` (kills,
//! default 20).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcfs_engine::device::{CrashDevice, CrashMode, Device, FileDevice};
use lcfs_engine::{Engine, FormatOptions, LayerKind, OpenOptions, fsck};
use support::{Generator, MayDiffer, Model, Op, apply_engine, compare_allowing};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn options(max_dirty_bytes: usize) -> OpenOptions {
    OpenOptions { checkpoint_interval: None, cache_bytes: 4 << 20, max_dirty_bytes, ..OpenOptions::default() }
}

/// The model restricted to committed layers (what survives whatever happened to unsynced data).
fn committed_only(model: &Model) -> Model {
    let mut m = model.clone();
    m.layers.retain(|_, l| l.kind == LayerKind::Committed);
    m
}

fn compare_committed(engine: &Engine, model: &Model) -> Result<(), String> {
    let m = committed_only(model);
    let committed: Vec<String> = engine
        .layers()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|l| l.kind == LayerKind::Committed)
        .map(|l| l.name)
        .collect();
    let want: Vec<String> = m.layers.keys().cloned().collect();
    let mut got = committed;
    got.sort();
    if got != want {
        return Err(format!("committed layers differ: engine {got:?}, model {want:?}"));
    }
    for name in want {
        support::compare_layer(engine, &m, &name)?;
    }
    Ok(())
}

/// Bytes an operation may have overwritten in place (in blocks its layer already owned).
fn in_place_range(op: &Op) -> Option<(String, (u64, u64))> {
    const BS: u64 = 4096;
    match op {
        Op::Write { layer, offset, len, .. } => Some((layer.clone(), (*offset, offset + *len as u64))),
        // Zeroing goes through the write path; truncation zeroes the tail of the last block.
        Op::Fallocate { layer, offset, len, .. } => Some((layer.clone(), (*offset, offset + len))),
        Op::Truncate { layer, size, .. } => Some((layer.clone(), (*size, size.div_ceil(BS) * BS))),
        _ => None,
    }
}

/// Returns whether the power died during an operation (rather than after the last one).
fn power_cut_case(seed: u64, mode_of: impl Fn(u64) -> CrashMode) -> Result<bool, String> {
    let device = Arc::new(CrashDevice::new(40 << 20));
    let dyn_device: Arc<dyn Device> = device.clone();
    let format = FormatOptions { metadata_bytes: Some(16 << 20), ..FormatOptions::default() };
    Engine::format(&dyn_device, &format).map_err(|e| e.to_string())?;
    // Small overlay limits in some cases push non-durable commits through the store.
    let max_dirty = if seed.is_multiple_of(3) { 16 << 10 } else { 64 << 20 };
    let engine = Engine::open(dyn_device.clone(), &options(max_dirty)).map_err(|e| e.to_string())?;
    let mut generator = Generator::new(seed);
    let mut model = Model::default();
    let mut durable = model.clone();
    let mut written_since_durable = MayDiffer::new();
    let mut candidates: Vec<Model> = Vec::new();
    let ops = 80;
    let cut_at_step = (seed * 7919) % ops;
    for step in 0..ops {
        if step == cut_at_step {
            device.cut_power_after_writes((seed * 104_729) % 64);
        }
        let op = generator.next(&model);
        let before = model.clone();
        let got = apply_engine(&engine, &model, &op);
        if std::env::var_os("LCFS_MODEL_TRACE").is_some() {
            eprintln!("step {step}: {op:?} -> {got} (dead: {})", device.is_dead());
        }
        if device.is_dead() {
            // The operation in flight may have become durable if it was a durable point.
            candidates.push(durable.clone());
            if op.is_durable_point() {
                let mut after = before;
                after.apply(&op);
                candidates.push(after);
            }
            break;
        }
        let want = model.apply(&op);
        if got != want {
            return Err(format!("step {step}: {op:?}: engine errno {got}, model {want}"));
        }
        if op.is_durable_point() && got == 0 {
            durable = model.clone();
            written_since_durable.clear();
        } else if got == 0
            && let Some((layer, range)) = in_place_range(&op)
        {
            written_since_durable.entry(layer).or_default().push(range);
        }
    }
    let died_mid_operation = !candidates.is_empty();
    if candidates.is_empty() {
        // The cut came after the last write; the durable state is the last durable point.
        device.power_cut();
        candidates.push(durable);
    }
    drop(engine);
    let mode = mode_of(seed);
    let rebooted: Arc<dyn Device> = Arc::new(device.image_after_crash(mode));
    let report = fsck(rebooted.clone()).map_err(|e| format!("fsck could not run: {e}"))?;
    if !report.is_clean() {
        return Err(format!("fsck after the crash:\n{report}"));
    }
    let engine = Engine::open(rebooted.clone(), &options(64 << 20)).map_err(|e| format!("reopen: {e}"))?;
    let mut errors = Vec::new();
    for candidate in &candidates {
        let r = match mode {
            CrashMode::DropUnsynced => compare_allowing(&engine, candidate, &written_since_durable),
            CrashMode::Torn { .. } => compare_committed(&engine, candidate),
        };
        match r {
            Ok(()) => {
                engine.close().map_err(|e| e.to_string())?;
                let report = fsck(rebooted).map_err(|e| e.to_string())?;
                return if report.is_clean() {
                    Ok(died_mid_operation)
                } else {
                    Err(format!("fsck after reopen:\n{report}"))
                };
            }
            Err(e) => errors.push(e),
        }
    }
    Err(format!("the recovered device matches no durable point: {errors:?}"))
}

#[test]
fn power_cuts_leave_the_last_durable_state() {
    let cases = knob("LCFS_CRASH_CASES", 200);
    let first = knob("LCFS_CRASH_SEED", 1);
    let mut mid_operation = 0;
    for seed in first..first + cases {
        match power_cut_case(seed, |_| CrashMode::DropUnsynced) {
            Ok(mid) => mid_operation += u64::from(mid),
            Err(e) => panic!("power cut, seed {seed}: {e}"),
        }
    }
    assert!(mid_operation * 2 >= cases, "only {mid_operation} of {cases} power cuts hit an operation");
}

#[test]
fn torn_writes_never_damage_committed_layers() {
    let cases = knob("LCFS_CRASH_CASES", 200);
    let mut mid_operation = 0;
    for seed in 1..=cases {
        match power_cut_case(seed + 500_000, |s| CrashMode::Torn { seed: s }) {
            Ok(mid) => mid_operation += u64::from(mid),
            Err(e) => panic!("torn power cut, seed {}: {e}", seed + 500_000),
        }
    }
    assert!(mid_operation * 2 >= cases, "only {mid_operation} of {cases} power cuts hit an operation");
}

// ---- kill -9 ----

const CHILD_ENV: &str = "LCFS_CRASH_CHILD_DEVICE";
const CHILD_SEED_ENV: &str = "LCFS_CRASH_CHILD_SEED";

/// Runs in the child process only: random operations forever, announcing durable points.
#[test]
fn kill_child_entry() {
    let (Ok(path), Ok(seed)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_SEED_ENV)) else { return };
    let seed: u64 = seed.parse().expect("seed");
    let device: Arc<dyn Device> = Arc::new(FileDevice::open(std::path::Path::new(&path)).expect("open device"));
    let engine = Engine::open(device, &options(64 << 20)).expect("open engine");
    let mut generator = Generator::new(seed);
    generator.max_write = 256 << 10;
    let mut model = Model::default();
    for step in 0.. {
        let op = generator.next(&model);
        let got = apply_engine(&engine, &model, &op);
        let want = model.apply(&op);
        assert_eq!(got, want, "child step {step}: {op:?}");
        if op.is_durable_point() && got == 0 {
            println!("durable {step}");
        }
    }
}

fn kill_case(seed: u64) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("device.img");
    {
        let device: Arc<dyn Device> = Arc::new(FileDevice::open_or_create(&path, 64 << 20).map_err(|e| e.to_string())?);
        Engine::format(&device, &FormatOptions { metadata_bytes: Some(16 << 20), ..Default::default() })
            .map_err(|e| e.to_string())?;
    }
    let mut child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["--exact", "kill_child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let wanted_points = 1 + seed % 6;
    let deadline = Instant::now() + Duration::from_millis(200 + (seed * 37) % 400);
    let mut last_durable: Option<u64> = None;
    let mut seen = 0;
    let mut lines = BufReader::new(stdout).lines();
    while seen < wanted_points && Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(step) = line.strip_prefix("durable ").and_then(|s| s.trim().parse().ok()) {
                    last_durable = Some(step);
                    seen += 1;
                }
            }
            _ => break,
        }
    }
    child.kill().map_err(|e| e.to_string())?;
    let _ = child.wait();
    // Lines already written before the kill may still be in the pipe.
    for line in lines.map_while(Result::ok) {
        if let Some(step) = line.strip_prefix("durable ").and_then(|s| s.trim().parse().ok()) {
            last_durable = Some(step);
        }
    }
    // Replay the model: candidates are the last reported durable point and the next one.
    let mut generator = Generator::new(seed);
    generator.max_write = 256 << 10;
    let mut model = Model::default();
    let mut candidates = Vec::new();
    let mut step = 0u64;
    if last_durable.is_none() {
        candidates.push(model.clone());
    }
    loop {
        let op = generator.next(&model);
        let ok = model.apply(&op) == 0;
        if op.is_durable_point() && ok {
            if Some(step) >= last_durable {
                candidates.push(model.clone());
            }
            if candidates.len() >= 2 {
                break;
            }
        }
        step += 1;
        if step > 100_000 {
            break;
        }
    }
    let device: Arc<dyn Device> = Arc::new(FileDevice::open(&path).map_err(|e| e.to_string())?);
    let report = fsck(device.clone()).map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("fsck after kill -9:\n{report}"));
    }
    let engine = Engine::open(device, &options(64 << 20)).map_err(|e| format!("reopen: {e}"))?;
    let mut errors = Vec::new();
    for c in &candidates {
        match compare_committed(&engine, c) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(format!("after kill -9 (last durable step {last_durable:?}): {errors:?}"))
}

#[test]
fn kill_9_keeps_every_committed_layer() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let cases = knob("LCFS_KILL_CASES", 20);
    for seed in 1..=cases {
        if let Err(e) = kill_case(seed) {
            panic!("kill -9, seed {seed}: {e}");
        }
    }
}
