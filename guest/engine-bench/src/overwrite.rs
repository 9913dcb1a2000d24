//! Write amplification of small random overwrites of an inherited file: a large file (256 MiB)
//! in a committed parent, then 4 KiB-aligned 4 KiB overwrites at random blocks in a child layer,
//! then `Engine::sync`. A `CountingDevice` under the engine counts the bytes that reach the
//! device: before the sync (file data only; metadata still sits in memory) and after it
//! (including the metadata commit).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::{LayerKind, NewNode, ROOT_INO};

use crate::harness::{self, Bed, BedSpec, DeviceKind, MIB, Record, SplitMix64};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device under the counter.
    #[arg(long, value_enum, default_value_t = DeviceKind::Mem)]
    pub device: DeviceKind,
    /// Size of the inherited file.
    #[arg(long, value_parser = harness::parse_size, default_value = "256MiB")]
    pub file_size: u64,
    /// Random overwrites.
    #[arg(long, default_value_t = 10_000)]
    pub writes: u64,
    /// Bytes per overwrite (also their alignment).
    #[arg(long, value_parser = harness::parse_size, default_value = "4KiB")]
    pub block: u64,
    /// Seed of the offsets and data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(
        args.block > 0 && args.file_size >= args.block && args.writes > 0,
        "need 0 < --block <= --file-size and --writes > 0"
    );
    let bed = Bed::new(&BedSpec {
        kind: args.device,
        dir,
        name: "lcfs-overwrite.img",
        size: 2 * args.file_size + args.writes * args.block + 256 * MIB,
        metadata_bytes: None,
        counting: true,
        keep: false,
    })?;
    let engine = &bed.engine;
    let counter = bed.counter.clone().context("the bed has no counter")?;

    engine.create_layer("base", None, LayerKind::Writable, BTreeMap::new())?;
    let base = engine.layer("base")?;
    let file = engine.create(base.id, ROOT_INO, b"big", &NewNode::file(0o644, 0, 0))?;
    harness::write_sequential(engine, base.id, file.ino, args.file_size, &harness::random_bytes(MIB as usize, 3))?;
    engine.commit_layer("base", "base-v1", None)?;
    let child = engine.create_layer("child", Some("base-v1"), LayerKind::Writable, BTreeMap::new())?;
    engine.sync()?;

    let blocks = args.file_size / args.block;
    let mut rng = SplitMix64::new(args.seed);
    let mut data = vec![0u8; usize::try_from(args.block).context("--block is too large")?];
    let mut touched = HashSet::new();
    let (w0, s0) = (counter.bytes_written(), counter.syncs());
    let start = Instant::now();
    let mut last = (0u64, Vec::new());
    for _ in 0..args.writes {
        let b = rng.below(blocks);
        rng.fill(&mut data);
        engine.write(child.id, file.ino, b * args.block, &data).with_context(|| format!("overwriting block {b}"))?;
        touched.insert(b);
        last = (b, data.clone());
    }
    let write_s = start.elapsed().as_secs_f64();
    let w1 = counter.bytes_written();
    let sync_start = Instant::now();
    engine.sync().context("syncing")?;
    let sync_s = sync_start.elapsed().as_secs_f64();
    let (w2, s2) = (counter.bytes_written(), counter.syncs());

    // A light sanity check: the last overwrite reads back.
    let back = engine.read(child.id, file.ino, last.0 * args.block, data.len())?;
    let intact = back == last.1;
    if !intact {
        eprintln!("rand-overwrite: WARNING: the last overwrite does not read back");
    }

    let caller = (args.writes * args.block) as f64;
    let (data_bytes, total_bytes) = ((w1 - w0) as f64, (w2 - w0) as f64);
    let n = args.writes as f64;
    eprintln!(
        "rand-overwrite: {} overwrites of {}: {:.0} B/overwrite before sync, {:.0} B/overwrite with the commit",
        args.writes,
        harness::human_size(args.block),
        data_bytes / n,
        total_bytes / n
    );
    let mut rec = Record::new("rand-overwrite", &bed.label);
    rec.param("device_kind", format!("{}+CountingDevice", args.device))
        .param("file_bytes", args.file_size)
        .param("writes", args.writes)
        .param("block_bytes", args.block)
        .param("seed", args.seed)
        .param("distinct_blocks", touched.len())
        .param("last_write_intact", intact)
        .figure("caller_bytes", caller)
        .figure("data_bytes", data_bytes)
        .figure("total_bytes", total_bytes)
        .figure("metadata_bytes", total_bytes - data_bytes)
        .figure("data_bytes_per_write", data_bytes / n)
        .figure("total_bytes_per_write", total_bytes / n)
        .figure("data_amplification", data_bytes / caller)
        .figure("total_amplification", total_bytes / caller)
        .figure("syncs", (s2 - s0) as f64)
        .figure("write_s", write_s)
        .figure("sync_s", sync_s)
        .figure("overwrites_per_s", n / write_s);
    Ok(rec)
}
