//! Model-based randomized test: random sequences of layer and file operations run against the
//! engine and against the in-memory reference model; every outcome (success or errno) must
//! match, reads must return the model's bytes, and every layer's full tree (content, metadata,
//! xattrs, link counts, hard-link structure) must match after every few operations, after
//! reopening the device, and at the end (where fsck must also find the device clean).
//!
//! Knobs: `LCFS_MODEL_SEQUENCES` (sequences per test thread, default 500; four threads),
//! `LCFS_MODEL_OPS` (operations per sequence, default 120), `LCFS_MODEL_SEED` (first seed).

mod support;

use std::sync::Arc;

use lcfs_engine::device::{Device, MemDevice};
use lcfs_engine::{Engine, FormatOptions, OpenOptions, fsck};
use support::{Generator, Model, apply_engine, compare};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn open(device: &Arc<dyn Device>) -> Engine {
    let options = OpenOptions { checkpoint_interval: None, cache_bytes: 4 << 20, ..OpenOptions::default() };
    Engine::open(device.clone(), &options).expect("open")
}

fn run_sequence(seed: u64, ops: u64) {
    let device: Arc<dyn Device> = Arc::new(MemDevice::new(40 << 20));
    let format = FormatOptions { metadata_bytes: Some(16 << 20), ..FormatOptions::default() };
    Engine::format(&device, &format).expect("format");
    let mut engine = open(&device);
    let mut model = Model::default();
    let mut generator = Generator::new(seed);
    for step in 0..ops {
        let op = generator.next(&model);
        if std::env::var_os("LCFS_MODEL_TRACE").is_some() {
            eprintln!("seed {seed} step {step}: {op:?}");
        }
        let got = apply_engine(&engine, &model, &op);
        let want = model.apply(&op);
        if std::env::var_os("LCFS_MODEL_TRACE").is_some() {
            eprintln!("  -> {want}");
        }
        assert_eq!(got, want, "seed {seed} step {step}: {op:?}: engine errno {got}, model errno {want}");
        if step % 10 == 9
            && let Err(e) = compare(&engine, &model)
        {
            panic!("seed {seed} after step {step} ({op:?}): {e}");
        }
        if generator_roll(seed, step) {
            engine.close().expect("close");
            engine = open(&device);
            if let Err(e) = compare(&engine, &model) {
                panic!("seed {seed} after reopening at step {step}: {e}");
            }
        }
    }
    if let Err(e) = compare(&engine, &model) {
        panic!("seed {seed} at the end: {e}");
    }
    engine.close().expect("close");
    let report = fsck(device.clone()).expect("fsck");
    assert!(report.is_clean(), "seed {seed}: fsck after the sequence:\n{report}");
    let engine = open(&device);
    if let Err(e) = compare(&engine, &model) {
        panic!("seed {seed} after the final reopen: {e}");
    }
}

/// Reopens the device now and then, deterministically per seed.
fn generator_roll(seed: u64, step: u64) -> bool {
    (seed.wrapping_mul(31).wrapping_add(step)).is_multiple_of(47)
}

fn run_batch(batch: u64) {
    let sequences = knob("LCFS_MODEL_SEQUENCES", 500);
    let ops = knob("LCFS_MODEL_OPS", 120);
    let first = knob("LCFS_MODEL_SEED", 1) + batch * 1_000_000;
    for seed in first..first + sequences {
        run_sequence(seed, ops);
    }
}

#[test]
fn random_sequences_match_the_model_batch_0() {
    run_batch(0);
}

#[test]
fn random_sequences_match_the_model_batch_1() {
    run_batch(1);
}

#[test]
fn random_sequences_match_the_model_batch_2() {
    run_batch(2);
}

#[test]
fn random_sequences_match_the_model_batch_3() {
    run_batch(3);
}
