//! What the activity counters cost: the same small-file workload on two engines, one counting
//! (as lcfsd runs) and one opened with `OpenOptions::counters` off.
//!
//! Each file goes through the calls a FUSE `printf data > f; cat f; rm f` makes of the engine:
//! a lookup that misses, create, open, a 1 KiB write, getattr, a 1 KiB read, release and
//! unlink. Every call is counted per layer; open, read and write also per file, and the
//! unlink drops the file's counters. Each round runs both engines back to back, in turns as to
//! which goes first, so drift hits them alike; the figures are each engine's median round, in
//! nanoseconds per engine call, and the median of the rounds' ratios.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::{Engine, LayerId, LayerKind, NewNode, OpenOptions, ROOT_INO};

use crate::harness::{self, Bed, BedSpec, DeviceKind, MIB, Record};

/// Engine calls per file of the workload.
const CALLS_PER_FILE: usize = 8;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device the engines run on.
    #[arg(long, value_enum, default_value_t = DeviceKind::Mem)]
    pub device: DeviceKind,
    /// Files per round. Short rounds, many of them: this VM's host takes time away in bursts
    /// that a long round cannot escape and a median of many short ones ignores.
    #[arg(long, default_value_t = 2_000)]
    pub files: usize,
    /// Timed rounds of each engine (after one untimed warm-up round each).
    #[arg(long, default_value_t = 99)]
    pub rounds: usize,
}

struct Side {
    name: &'static str,
    bed: Bed,
    layer: LayerId,
    samples: Vec<f64>,
}

pub fn run(dir: &Path, args: &Args) -> Result<Record> {
    anyhow::ensure!(args.files > 0 && args.rounds > 0, "need --files and --rounds > 0");
    let mut sides = Vec::new();
    for (name, counters) in [("counting", true), ("not_counting", false)] {
        let bed = Bed::with_options(
            &BedSpec {
                kind: args.device,
                dir,
                name: &format!("lcfs-counters-{name}.img"),
                size: 256 * MIB,
                metadata_bytes: None,
                counting: false,
                keep: false,
            },
            &OpenOptions { counters, ..harness::open_options() },
        )?;
        let layer = bed.engine.create_layer("work", None, LayerKind::Writable, Default::default())?.id;
        sides.push(Side { name, bed, layer, samples: Vec::new() });
    }

    let data = vec![b'x'; 1024];
    let mut buf = vec![0u8; 1024];
    for round in 0..=args.rounds {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let side = &mut sides[i];
            let start = Instant::now();
            churn(&side.bed.engine, side.layer, args.files, &data, &mut buf)
                .with_context(|| format!("round {round} of the {} engine", side.name))?;
            let ns = start.elapsed().as_nanos() as f64 / (args.files * CALLS_PER_FILE) as f64;
            if round > 0 {
                side.samples.push(ns);
            }
        }
    }

    // The counting engine must have counted, the other not: otherwise the comparison is void.
    let counted = |i: usize| sides[i].bed.engine.layer_stats(sides[i].layer).map(|s| s.total_ops());
    let (on, off) = (counted(0)?, counted(1)?);
    anyhow::ensure!(on > 0 && off == 0, "counting engine saw {on} operations, the other {off}");

    let median = |i: usize| harness::median(&sides[i].samples);
    let (counting, not_counting) = (median(0), median(1));
    let ratios: Vec<f64> = sides[0].samples.iter().zip(&sides[1].samples).map(|(on, off)| on / off).collect();
    let ratio = harness::median(&ratios);
    let extra: Vec<f64> = sides[0].samples.iter().zip(&sides[1].samples).map(|(on, off)| on - off).collect();
    let extra_ns = harness::median(&extra);
    eprintln!(
        "counters: {counting:.0} ns per engine call counting, {not_counting:.0} ns not counting; \
         median of the rounds: ratio {ratio:.3}, {extra_ns:+.0} ns per call"
    );
    let mut rec = Record::new("counters", &sides[0].bed.label);
    rec.param("device_kind", args.device.to_string())
        .param("files_per_round", args.files)
        .param("rounds", args.rounds)
        .param("calls_per_file", CALLS_PER_FILE)
        .figure("counting_ns", counting)
        .figure("not_counting_ns", not_counting)
        .figure("ratio", ratio)
        .figure("extra_ns", extra_ns)
        .figure("ratio_min", harness::min(&ratios))
        .figure("ratio_max", harness::max(&ratios));
    for side in sides {
        rec.samples(&format!("{}_ns", side.name), side.samples);
    }
    Ok(rec)
}

/// Creates, writes, reads and removes `files` files, one at a time.
fn churn(engine: &Engine, layer: LayerId, files: usize, data: &[u8], buf: &mut [u8]) -> Result<()> {
    let node = NewNode::file(0o644, 0, 0);
    for i in 0..files {
        let name = format!("f{i}");
        anyhow::ensure!(engine.lookup(layer, ROOT_INO, name.as_bytes()).is_err(), "{name} exists before it is created");
        let ino = engine.create(layer, ROOT_INO, name.as_bytes(), &node)?.ino;
        engine.open_file(layer, ino)?;
        engine.write(layer, ino, 0, data)?;
        black_box(engine.getattr(layer, ino)?);
        black_box(engine.read_into(layer, ino, 0, buf)?);
        engine.release_file(layer, ino)?;
        engine.unlink(layer, ROOT_INO, name.as_bytes())?;
    }
    Ok(())
}
