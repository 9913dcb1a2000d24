//! Sequential I/O through the engine on a `FileDevice` under `--dir`, comparable with fio on the
//! same file system:
//!
//! - `seq-write`: a new file in a new layer, written in 1 MiB writes, then `Engine::sync`; the
//!   clock covers the writes and the sync (as fio's `--end_fsync=1` does). The image is left in
//!   place with `--keep` for `seq-read`.
//! - `seq-read`: the file `seq-write` left, read in 1 MiB reads after one untimed warm-up pass
//!   that puts it in the page cache; with `Engine::read` (the figure) and, for comparison, with
//!   `Engine::read_into` and one reused buffer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use lcfs_engine::device::{Device, FileDevice};
use lcfs_engine::{Engine, LayerKind, NewNode, ROOT_INO};

use crate::harness::{self, Bed, BedSpec, DeviceKind, MIB, Record};

const IMAGE: &str = "lcfs-seq.img";
const LAYER: &str = "seq";
const FILE: &[u8] = b"seq.dat";
const SEED: u64 = 7;

#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// Bytes to write.
    #[arg(long, value_parser = harness::parse_size, default_value = "1GiB")]
    pub size: u64,
    /// Bytes per write.
    #[arg(long, value_parser = harness::parse_size, default_value = "1MiB")]
    pub block: u64,
    /// Leave the image in `--dir` for `seq-read`.
    #[arg(long)]
    pub keep: bool,
    /// Run number, recorded with the result (the script alternates runs with fio).
    #[arg(long)]
    pub run: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct ReadArgs {
    /// Bytes per read.
    #[arg(long, value_parser = harness::parse_size, default_value = "1MiB")]
    pub block: u64,
    /// Timed passes over the file (after one warm-up pass); the figure is the median.
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// Size of the file to write first if `seq-write --keep` left none.
    #[arg(long, value_parser = harness::parse_size, default_value = "1GiB")]
    pub size: u64,
}

fn image(dir: &Path) -> PathBuf {
    dir.join(IMAGE)
}

pub fn write(dir: &Path, args: &WriteArgs) -> Result<Record> {
    anyhow::ensure!(args.block > 0 && args.size > 0, "--size and --block must be positive");
    let bed = Bed::new(&BedSpec {
        kind: DeviceKind::File,
        dir,
        name: IMAGE,
        // Metadata takes an eighth by default; this leaves the data region about 30% spare.
        size: args.size / 2 * 3 + 64 * MIB,
        metadata_bytes: None,
        counting: false,
        keep: args.keep,
    })?;
    let engine = &bed.engine;
    let layer = engine.create_layer(LAYER, None, LayerKind::Writable, BTreeMap::new())?;
    let file = engine.create(layer.id, ROOT_INO, FILE, &NewNode::file(0o644, 0, 0))?;
    let chunk = harness::random_bytes(usize::try_from(args.block).context("--block is too large")?, SEED);

    let start = Instant::now();
    harness::write_sequential(engine, layer.id, file.ino, args.size, &chunk)?;
    let written = start.elapsed();
    engine.sync().context("syncing")?;
    let total = start.elapsed();

    let mb_s = harness::mb_per_s(args.size, total);
    eprintln!(
        "seq-write: {} in {:.2} s ({:.2} s writing, {:.2} s syncing): {mb_s:.0} MB/s",
        harness::human_size(args.size),
        total.as_secs_f64(),
        written.as_secs_f64(),
        (total - written).as_secs_f64()
    );
    let mut rec = Record::new("seq-write", &bed.label);
    rec.run = args.run;
    rec.param("device_kind", "file")
        .param("bytes", args.size)
        .param("block_bytes", args.block)
        .figure("mb_s", mb_s)
        .figure("seconds", total.as_secs_f64())
        .figure("write_s", written.as_secs_f64())
        .figure("sync_s", (total - written).as_secs_f64());
    Ok(rec)
}

pub fn read(dir: &Path, args: &ReadArgs) -> Result<Record> {
    anyhow::ensure!(args.block > 0 && args.passes > 0, "--block and --passes must be positive");
    let path = image(dir);
    let mut wrote_here = false;
    if !path.exists() {
        eprintln!("seq-read: no {} from seq-write --keep; writing one", path.display());
        write(dir, &WriteArgs { size: args.size, block: MIB, keep: true, run: None })?;
        wrote_here = true;
    }
    let device: Arc<dyn Device> =
        Arc::new(FileDevice::open(&path).with_context(|| format!("opening {}", path.display()))?);
    let engine =
        Engine::open(device, &harness::open_options()).with_context(|| format!("opening {}", path.display()))?;
    let layer = engine.layer(LAYER).with_context(|| format!("{} has no layer {LAYER:?}", path.display()))?;
    let attr = engine.lookup(layer.id, ROOT_INO, FILE).context("looking up the file seq-write wrote")?;
    let size = attr.size;
    let block = usize::try_from(args.block).context("--block is too large")?;

    let pass = |check: bool| -> Result<(f64, bool)> {
        let expected = check.then(|| harness::random_bytes(MIB as usize, SEED));
        let mut intact = true;
        let start = Instant::now();
        let mut at = 0u64;
        while at < size {
            let data = engine.read(layer.id, attr.ino, at, block).with_context(|| format!("reading at {at}"))?;
            anyhow::ensure!(!data.is_empty(), "short file: nothing at {at} of {size}");
            if let Some(expected) = &expected
                && at == 0
            {
                let n = data.len().min(expected.len());
                intact = data[..n] == expected[..n];
            }
            at += data.len() as u64;
        }
        Ok((harness::mb_per_s(size, start.elapsed()), intact))
    };
    let (warm_mb_s, intact) = pass(true)?;
    if !intact {
        eprintln!("seq-read: WARNING: the first block read back differs from what seq-write wrote");
    }
    let mut samples = Vec::new();
    for _ in 0..args.passes {
        samples.push(pass(false)?.0);
    }
    // The same through `read_into` with one reused buffer, as a server that keeps its buffers
    // would read.
    let mut buf = vec![0u8; block];
    let mut into_samples = Vec::new();
    for _ in 0..args.passes {
        let start = Instant::now();
        let mut at = 0u64;
        while at < size {
            let n = engine.read_into(layer.id, attr.ino, at, &mut buf).with_context(|| format!("reading at {at}"))?;
            anyhow::ensure!(n > 0, "short file: nothing at {at} of {size}");
            at += n as u64;
        }
        into_samples.push(harness::mb_per_s(size, start.elapsed()));
    }
    let into_mb_s = harness::median(&into_samples);
    let mb_s = harness::median(&samples);
    eprintln!(
        "seq-read: {} from cache: {mb_s:.0} MB/s with read, {into_mb_s:.0} MB/s with read_into (warm-up {warm_mb_s:.0} MB/s)",
        harness::human_size(size)
    );
    drop(engine);
    if wrote_here {
        harness::remove_if_present(&path)?;
    }

    let mut rec = Record::new("seq-read", &format!("file:{}", path.display()));
    rec.param("device_kind", "file")
        .param("bytes", size)
        .param("block_bytes", args.block)
        .param("passes", args.passes)
        .param("first_block_intact", intact)
        .figure("mb_s", mb_s)
        .figure("warmup_mb_s", warm_mb_s)
        .figure("read_into_mb_s", into_mb_s)
        .samples("mb_s", samples)
        .samples("read_into_mb_s", into_samples);
    Ok(rec)
}
