//! Layer creation latency against what the parent holds: `create_layer` on a committed parent
//! with 100k files spread over 100 directories, against the same on an empty committed parent.
//! Each created layer is removed (untimed) before the next, so every measurement creates the
//! parent's only child.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
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
}

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(args.reps > 0 && args.dirs > 0, "--reps and --dirs must be at least 1");
    let bed = Bed::new(&BedSpec {
        kind: args.device,
        dir,
        name: "lcfs-create-layer.img",
        size: GIB + 64 * MIB,
        metadata_bytes: Some(GIB),
        counting: false,
        keep: false,
    })?;
    let engine = &bed.engine;

    let start = Instant::now();
    populate(engine, args.files, args.dirs)?;
    let populate_s = start.elapsed().as_secs_f64();
    eprintln!("create-layer: {} files in {} directories committed in {populate_s:.1} s", args.files, args.dirs);
    engine.create_layer("empty", None, LayerKind::Writable, BTreeMap::new())?;
    engine.commit_layer("empty", "parent-empty", None)?;

    let mut full_ms = Vec::new();
    let mut empty_ms = Vec::new();
    for rep in 0..args.reps {
        for (parent, samples) in [("parent-empty", &mut empty_ms), ("parent-full", &mut full_ms)] {
            let name = format!("child-{rep}");
            let start = Instant::now();
            engine
                .create_layer(&name, Some(parent), LayerKind::Writable, BTreeMap::new())
                .with_context(|| format!("creating {name} on {parent}"))?;
            samples.push(harness::ms(start.elapsed()));
            engine.remove_layer(&name).with_context(|| format!("removing {name}"))?;
        }
    }

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
        .figure("populate_s", populate_s)
        .samples("full_ms", full_ms)
        .samples("empty_ms", empty_ms);
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
