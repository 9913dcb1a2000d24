//! Lookup cost against layer depth. Three layer chains hold the same files under
//! `/usr/share/app` (`shared` and one `fNNN` per layer of the deep chain):
//!
//! - `depth1`: one committed layer holds everything;
//! - `every`: a chain of `depth` committed layers, each of which creates one file in
//!   `/usr/share/app` and touches `shared` (so the directory and `shared` have a version in
//!   every layer);
//! - `bottom`: the bottom layer holds everything, each layer above creates a file in `/var`.
//!
//! A writable layer on top of each chain (depth 1, or `depth`) resolves the 4-component paths
//! `/usr/share/app/<file>` with one `lookup` per component. Rounds of the three chains
//! alternate so drift hits them alike; the figure is the median round.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::{Engine, Ino, LayerId, LayerKind, NewNode, ROOT_INO, SetAttr, SetTime};

use crate::harness::{self, Bed, BedSpec, DeviceKind, MIB, Record};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device the engines run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Mem)]
    pub device: DeviceKind,
    /// Committed layers in the deep chains.
    #[arg(long, default_value_t = 200)]
    pub depth: u32,
    /// Path resolutions per round.
    #[arg(long, default_value_t = 50_000)]
    pub paths: usize,
    /// Timed rounds (after one untimed warm-up round).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Depth1,
    Every,
    Bottom,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Depth1 => "depth1",
            Shape::Every => "every",
            Shape::Bottom => "bottom",
        }
    }
}

struct Chain {
    shape: Shape,
    bed: Bed,
    top: LayerId,
    top_depth: u32,
    samples: Vec<f64>,
}

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(
        args.depth >= 2 && args.paths > 0 && args.rounds > 0,
        "need --depth >= 2, --paths and --rounds > 0"
    );
    let names: Vec<Vec<u8>> =
        std::iter::once(b"shared".to_vec()).chain((0..args.depth).map(|k| format!("f{k:03}").into_bytes())).collect();
    let paths: Vec<Vec<Vec<u8>>> =
        names.iter().map(|n| vec![b"usr".to_vec(), b"share".to_vec(), b"app".to_vec(), n.clone()]).collect();

    let mut chains = Vec::new();
    for shape in [Shape::Depth1, Shape::Every, Shape::Bottom] {
        let bed = Bed::new(&BedSpec {
            kind: args.device,
            dir,
            name: &format!("lcfs-lookup-{}.img", shape.name()),
            size: 256 * MIB,
            metadata_bytes: None,
            counting: false,
            keep: false,
        })?;
        let start = Instant::now();
        let top =
            build(&bed.engine, shape, args.depth).with_context(|| format!("building the {} chain", shape.name()))?;
        let top_depth = bed.engine.layer_by_id(top)?.depth;
        eprintln!(
            "lookup-depth: {} chain built in {:.1} s, top layer at depth {top_depth}",
            shape.name(),
            start.elapsed().as_secs_f64()
        );
        // Every path must resolve, and to the same inode kind in every chain.
        for p in &paths {
            harness::resolve(&bed.engine, top, p).with_context(|| format!("resolving {p:?} in {}", shape.name()))?;
        }
        chains.push(Chain { shape, bed, top, top_depth, samples: Vec::new() });
    }

    for round in 0..=args.rounds {
        for chain in &mut chains {
            let start = Instant::now();
            for i in 0..args.paths {
                let ino: Ino = harness::resolve(&chain.bed.engine, chain.top, &paths[i % paths.len()])?;
                black_box(ino);
            }
            let ns = start.elapsed().as_nanos() as f64 / (args.paths * 4) as f64;
            if round > 0 {
                chain.samples.push(ns);
            }
        }
    }

    let ns_of = |shape: Shape| chains.iter().find(|c| c.shape == shape).map(|c| harness::median(&c.samples));
    let (flat, every, bottom) = (
        ns_of(Shape::Depth1).unwrap_or(f64::NAN),
        ns_of(Shape::Every).unwrap_or(f64::NAN),
        ns_of(Shape::Bottom).unwrap_or(f64::NAN),
    );
    eprintln!(
        "lookup-depth: {flat:.0} ns at depth 1, {every:.0} ns at depth {} (every layer), {bottom:.0} ns (bottom only)",
        args.depth
    );
    let label = chains.first().map(|c| c.bed.label.clone()).unwrap_or_default();
    let mut rec = Record::new("lookup-depth", &label);
    rec.param("device_kind", args.device.to_string())
        .param("depth", args.depth)
        .param("paths_per_round", args.paths)
        .param("rounds", args.rounds)
        .param("path_components", 4)
        .figure("depth1_ns", flat)
        .figure("every_ns", every)
        .figure("bottom_ns", bottom)
        .figure("every_ratio", every / flat)
        .figure("bottom_ratio", bottom / flat);
    for c in chains {
        rec.param(&format!("{}_top_depth", c.shape.name()), c.top_depth);
        rec.samples(&format!("{}_ns", c.shape.name()), c.samples);
    }
    Ok(rec)
}

/// Builds one chain and returns its writable top layer.
fn build(engine: &Engine, shape: Shape, depth: u32) -> Result<LayerId> {
    let new =
        |name: &str, parent: Option<&str>| engine.create_layer(name, parent, LayerKind::Writable, BTreeMap::new());
    let file = NewNode::file(0o644, 0, 0);
    let dir = NewNode::dir(0o755, 0, 0);

    let base = new("l0", None)?;
    let usr = engine.create(base.id, ROOT_INO, b"usr", &dir)?;
    let share = engine.create(base.id, usr.ino, b"share", &dir)?;
    let app = engine.create(base.id, share.ino, b"app", &dir)?;
    let var = engine.create(base.id, ROOT_INO, b"var", &dir)?;
    let shared = engine.create(base.id, app.ino, b"shared", &file)?;
    engine.write(base.id, shared.ino, 0, &[1u8; 4096])?;
    let in_base = if shape == Shape::Every { 1 } else { depth };
    for k in 0..in_base {
        engine.create(base.id, app.ino, format!("f{k:03}").as_bytes(), &file)?;
    }
    engine.commit_layer("l0", "c0", None)?;
    if shape == Shape::Depth1 {
        return Ok(new("top", Some("c0"))?.id);
    }

    let touch = SetAttr { mtime: Some(SetTime::Now), ..Default::default() };
    for k in 1..depth {
        let key = format!("l{k}");
        let layer = new(&key, Some(&format!("c{}", k - 1)))?;
        match shape {
            Shape::Every => {
                engine.create(layer.id, app.ino, format!("f{k:03}").as_bytes(), &file)?;
                engine.setattr(layer.id, shared.ino, &touch)?;
            }
            _ => {
                engine.create(layer.id, var.ino, format!("x{k:03}").as_bytes(), &file)?;
            }
        }
        engine.commit_layer(&key, &format!("c{k}"), None)?;
    }
    Ok(new("top", Some(&format!("c{}", depth - 1)))?.id)
}
