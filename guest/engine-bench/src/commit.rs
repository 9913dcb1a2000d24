//! Commit latency against the amount of data a layer holds: a writable layer with a large file
//! (1 GiB by default) against one with a small file (1 MiB), each repetition on a fresh layer.
//! The data is written and made durable with `Engine::sync` before the clock starts, so only
//! `commit_layer` is timed, starting from cold CPU caches whatever the size. A `CountingDevice` under the engine counts the device syncs and bytes
//! each commit costs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::{LayerKind, NewNode, ROOT_INO};

use crate::harness::{self, Bed, BedSpec, DeviceKind, MIB, Record};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device the engine runs on.
    #[arg(long, value_enum, default_value_t = DeviceKind::File)]
    pub device: DeviceKind,
    /// Repetitions of each size, each on a fresh layer.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Data in the large layer.
    #[arg(long, value_parser = harness::parse_size, default_value = "1GiB")]
    pub large: u64,
    /// Data in the small layer.
    #[arg(long, value_parser = harness::parse_size, default_value = "1MiB")]
    pub small: u64,
}

/// Bytes written between a layer's data and its commit to push everything else out of the CPU
/// caches (larger than the last-level cache of common server CPUs).
const EVICT_BYTES: usize = 256 << 20;

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    // Each committed layer is removed after its measurement, so the data region needs room for
    // one large layer (plus blocks freed but not yet reusable); the rest is slack.
    let size = 2 * args.large + args.small + 512 * MIB;
    let bed = Bed::new(&BedSpec {
        kind: args.device,
        dir,
        name: "lcfs-commit.img",
        size,
        metadata_bytes: None,
        counting: true,
        keep: false,
    })?;
    let engine = &bed.engine;
    let counter = bed.counter.clone().context("the bed has no counter")?;
    engine.create_layer("base", None, LayerKind::Writable, BTreeMap::new())?;
    engine.commit_layer("base", "base-v1", None)?;
    let chunk = harness::random_bytes(MIB as usize, 1);
    let mut scratch = vec![0u8; EVICT_BYTES];

    let mut small_ms = Vec::new();
    let mut large_ms = Vec::new();
    let mut syncs_per_commit = Vec::new();
    let mut bytes_per_commit = Vec::new();
    for rep in 0..args.reps {
        for (label, bytes) in [("small", args.small), ("large", args.large)] {
            let key = format!("w-{label}-{rep}");
            let name = format!("c-{label}-{rep}");
            let layer = engine.create_layer(&key, Some("base-v1"), LayerKind::Writable, BTreeMap::new())?;
            let file = engine.create(layer.id, ROOT_INO, b"data", &NewNode::file(0o644, 0, 0))?;
            harness::write_sequential(engine, layer.id, file.ino, bytes, &chunk)?;
            engine.sync().context("syncing before the commit")?;
            // Writing 1 GiB leaves the CPU caches cold and 1 MiB does not; a commit on a memory
            // device takes tens of microseconds, so that alone would show in the ratio. Start
            // every commit from equally cold caches.
            scratch.fill(rep as u8);
            std::hint::black_box(&scratch);

            let (syncs, written) = (counter.syncs(), counter.bytes_written());
            let start = Instant::now();
            engine.commit_layer(&key, &name, None).with_context(|| format!("committing {key}"))?;
            let took = harness::ms(start.elapsed());
            syncs_per_commit.push((counter.syncs() - syncs) as f64);
            bytes_per_commit.push((counter.bytes_written() - written) as f64);

            eprintln!("commit: {} layer, rep {rep}: {took:.3} ms", harness::human_size(bytes));
            if label == "small" { &mut small_ms } else { &mut large_ms }.push(took);
            engine.remove_layer(&name).with_context(|| format!("removing {name}"))?;
        }
    }

    let (small, large) = (harness::median(&small_ms), harness::median(&large_ms));
    let mut rec = Record::new("commit", &bed.label);
    rec.param("device_kind", args.device.to_string())
        .param("reps", args.reps)
        .param("large_bytes", args.large)
        .param("small_bytes", args.small)
        .figure("large_ms", large)
        .figure("small_ms", small)
        .figure("large_ms_min", harness::min(&large_ms))
        .figure("small_ms_min", harness::min(&small_ms))
        .figure("large_ms_max", harness::max(&large_ms))
        .figure("small_ms_max", harness::max(&small_ms))
        .figure("ratio", large / small)
        .figure("device_syncs_per_commit", harness::median(&syncs_per_commit))
        .figure("device_bytes_per_commit", harness::median(&bytes_per_commit))
        .samples("large_ms", large_ms)
        .samples("small_ms", small_ms);
    Ok(rec)
}
