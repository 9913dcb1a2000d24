//! Layer creation latency against what the parent holds: `create_layer` on a committed parent
//! with 100k files spread over 100 directories, against the same on an empty committed parent.
//! Each created layer is removed (untimed) before the next, so every measurement creates the
//! parent's only child. A `CountingDevice` under the engine counts the device syncs and bytes
//! each creation costs.
//!
//! For information it also times the first and the second file created in an inherited
//! directory (one of the full parent's, and one of 100k entries in a third parent): the first
//! copies the directory up with all its entries, so its cost grows with the directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::device::{CountingDevice, Device};
use lcfs_engine::{Engine, LayerKind, NewNode, ROOT_INO};

use crate::harness::{self, Bed, BedSpec, DeviceKind, GIB, MIB, Record};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device the engine runs on.
    #[arg(long, value_enum, default_value_t = DeviceKind::File)]
    pub device: DeviceKind,
    /// Files in the full parent.
    #[arg(long, default_value_t = 100_000)]
    pub files: u64,
    /// Directories the files are spread over.
    #[arg(long, default_value_t = 100)]
    pub dirs: u64,
    /// Layers created on each parent.
    #[arg(long, default_value_t = 200)]
    pub reps: usize,
    /// Entries of the large inherited directory the copy-up probe changes (0: no probe).
    #[arg(long, default_value_t = 100_000)]
    pub big_dir: u64,
}

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(args.reps > 0 && args.dirs > 0, "--reps and --dirs must be at least 1");
    let bed = Bed::new(&BedSpec {
        kind: args.device,
        dir,
        name: "lcfs-create-layer.img",
        size: GIB + 64 * MIB,
        metadata_bytes: Some(GIB),
        counting: true,
        keep: false,
    })?;
    let engine = &bed.engine;
    let counter = bed.counter.clone().context("the bed has no counter")?;

    let start = Instant::now();
    populate(engine, args.files, args.dirs)?;
    let populate_s = start.elapsed().as_secs_f64();
    eprintln!("create-layer: {} files in {} directories committed in {populate_s:.1} s", args.files, args.dirs);
    engine.create_layer("empty", None, LayerKind::Writable, BTreeMap::new())?;
    engine.commit_layer("empty", "parent-empty", None)?;

    let mut full_ms = Vec::new();
    let mut empty_ms = Vec::new();
    let mut syncs_per_create = Vec::new();
    let mut bytes_per_create = Vec::new();
    for rep in 0..args.reps {
        for (parent, samples) in [("parent-empty", &mut empty_ms), ("parent-full", &mut full_ms)] {
            let name = format!("child-{rep}");
            let (syncs, written) = (counter.syncs(), counter.bytes_written());
            let start = Instant::now();
            engine
                .create_layer(&name, Some(parent), LayerKind::Writable, BTreeMap::new())
                .with_context(|| format!("creating {name} on {parent}"))?;
            samples.push(harness::ms(start.elapsed()));
            syncs_per_create.push((counter.syncs() - syncs) as f64);
            bytes_per_create.push((counter.bytes_written() - written) as f64);
            engine.remove_layer(&name).with_context(|| format!("removing {name}"))?;
        }
    }

    let probe = copy_up_probe(engine, &counter, "parent-full", b"d000")?;
    let big = if args.big_dir > 0 {
        let layer = engine.create_layer("bigdir", None, LayerKind::Writable, BTreeMap::new())?;
        let dir = engine.create(layer.id, ROOT_INO, b"big", &NewNode::dir(0o755, 0, 0))?;
        for f in 0..args.big_dir {
            engine.create(layer.id, dir.ino, format!("f{f:06}").as_bytes(), &NewNode::file(0o644, 0, 0))?;
        }
        engine.commit_layer("bigdir", "parent-bigdir", None)?;
        Some(copy_up_probe(engine, &counter, "parent-bigdir", b"big")?)
    } else {
        None
    };

    let (full, empty) = (harness::median(&full_ms), harness::median(&empty_ms));
    eprintln!("create-layer: median {full:.3} ms on the full parent, {empty:.3} ms on the empty one");
    let mut rec = Record::new("create-layer", &bed.label);
    rec.param("device_kind", args.device.to_string())
        .param("files", args.files)
        .param("dirs", args.dirs)
        .param("reps", args.reps)
        .figure("full_ms", full)
        .figure("empty_ms", empty)
        .figure("full_ms_p90", harness::percentile(&full_ms, 90.0))
        .figure("empty_ms_p90", harness::percentile(&empty_ms, 90.0))
        .figure("ratio", full / empty)
        .figure("device_syncs_per_create", harness::median(&syncs_per_create))
        .figure("device_bytes_per_create", harness::median(&bytes_per_create))
        .figure("populate_s", populate_s)
        .figure("first_create_in_inherited_dir_ms", probe.first_ms)
        .figure("second_create_in_inherited_dir_ms", probe.second_ms)
        .figure("inherited_dir_copy_up_sync_bytes", probe.sync_bytes)
        .param("big_dir_entries", args.big_dir);
    if let Some(big) = big {
        rec.figure("first_create_in_big_dir_ms", big.first_ms)
            .figure("second_create_in_big_dir_ms", big.second_ms)
            .figure("big_dir_copy_up_sync_bytes", big.sync_bytes);
    }
    rec.samples("full_ms", full_ms).samples("empty_ms", empty_ms);
    Ok(rec)
}

/// Creates `files` empty files over `dirs` directories in a new layer and commits it as
/// `parent-full`.
fn populate(engine: &Engine, files: u64, dirs: u64) -> Result<()> {
    let layer = engine.create_layer("full", None, LayerKind::Writable, BTreeMap::new())?;
    let per_dir = files.div_ceil(dirs);
    let mut made = 0;
    for d in 0..dirs {
        let dir = engine.create(layer.id, ROOT_INO, format!("d{d:03}").as_bytes(), &NewNode::dir(0o755, 0, 0))?;
        for f in 0..per_dir.min(files - made) {
            engine.create(layer.id, dir.ino, format!("f{f:05}").as_bytes(), &NewNode::file(0o644, 0, 0))?;
        }
        made += per_dir.min(files - made);
    }
    engine.commit_layer("full", "parent-full", None)?;
    Ok(())
}

/// Times of the first and second change to an inherited directory, and the bytes the sync
/// after them wrote.
#[derive(Debug)]
struct Probe {
    first_ms: f64,
    second_ms: f64,
    sync_bytes: f64,
}

/// Creates two files in directory `/<dir>` of `parent` from a new child layer, then syncs.
fn copy_up_probe(
    engine: &Engine,
    counter: &CountingDevice<Arc<dyn Device>>,
    parent: &str,
    dir: &[u8],
) -> Result<Probe> {
    let layer = engine.create_layer("probe", Some(parent), LayerKind::Writable, BTreeMap::new())?;
    let dir = engine.lookup(layer.id, ROOT_INO, dir).context("looking up the probed directory")?;
    let mut times = [0.0; 2];
    for (i, t) in times.iter_mut().enumerate() {
        let start = Instant::now();
        engine.create(layer.id, dir.ino, format!("probe{i}").as_bytes(), &NewNode::file(0o644, 0, 0))?;
        *t = harness::ms(start.elapsed());
    }
    let written = counter.bytes_written();
    engine.sync()?;
    let sync_bytes = (counter.bytes_written() - written) as f64;
    engine.remove_layer("probe")?;
    Ok(Probe { first_ms: times[0], second_ms: times[1], sync_bytes })
}
