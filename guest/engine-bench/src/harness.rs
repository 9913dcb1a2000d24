//! What every benchmark shares: the device an engine runs on (memory or a sparse file under
//! `--dir`, optionally wrapped in a byte counter), the result record printed as one JSON line,
//! sizes on the command line, statistics and a seeded random number generator.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lcfs_engine::device::{CountingDevice, Device, FileDevice, MemDevice};
use lcfs_engine::{Engine, FormatOptions, Ino, LayerId, OpenOptions};
use serde::{Deserialize, Serialize};

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// The medium a benchmark's engine lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// `MemDevice`: no I/O at all, `sync` is free. Measures the engine's own work.
    Mem,
    /// `FileDevice` on a sparse file under `--dir`: real page cache and real `fdatasync`.
    File,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Mem => "mem",
            DeviceKind::File => "file",
        })
    }
}

/// The options every benchmark opens its engine with: no periodic checkpoint, so nothing but
/// the measured operation makes metadata durable.
pub fn open_options() -> OpenOptions {
    OpenOptions { checkpoint_interval: None, ..Default::default() }
}

/// An engine on a freshly formatted device, and what is needed to measure and clean it up.
#[derive(Debug)]
pub struct Bed {
    pub engine: Engine,
    /// Bytes written to / read from the device, when the bed was made with counting.
    pub counter: Option<Arc<CountingDevice<Arc<dyn Device>>>>,
    /// How the device is described in results: `mem` or `file:<path>`.
    pub label: String,
    /// The image file, removed on drop unless kept.
    path: Option<PathBuf>,
    keep: bool,
}

/// How to make a [`Bed`].
#[derive(Clone, Debug)]
pub struct BedSpec<'a> {
    pub kind: DeviceKind,
    /// Directory of file devices.
    pub dir: &'a Path,
    /// File name of the image (file devices).
    pub name: &'a str,
    /// Device size in bytes (file devices are sparse; memory is zero pages until touched).
    pub size: u64,
    /// Bytes of metadata region; the engine's default (an eighth) when `None`.
    pub metadata_bytes: Option<u64>,
    /// Wrap the device in a [`CountingDevice`].
    pub counting: bool,
    /// Leave the image file in place when the bed is dropped.
    pub keep: bool,
}

impl Bed {
    /// Formats a new device as `spec` says and opens an engine on it with [`open_options`].
    pub fn new(spec: &BedSpec<'_>) -> Result<Bed> {
        Bed::with_options(spec, &open_options())
    }

    /// As [`Bed::new`], opening the engine with `options`.
    pub fn with_options(spec: &BedSpec<'_>, options: &OpenOptions) -> Result<Bed> {
        let (raw, path): (Arc<dyn Device>, Option<PathBuf>) = match spec.kind {
            DeviceKind::Mem => (Arc::new(MemDevice::new(spec.size)), None),
            DeviceKind::File => {
                std::fs::create_dir_all(spec.dir).with_context(|| format!("creating {}", spec.dir.display()))?;
                let path = spec.dir.join(spec.name);
                remove_if_present(&path)?;
                let dev = FileDevice::open_or_create(&path, spec.size)?;
                (Arc::new(dev), Some(path))
            }
        };
        let label = match &path {
            Some(p) => format!("file:{}", p.display()),
            None => "mem".to_string(),
        };
        let (device, counter): (Arc<dyn Device>, _) = if spec.counting {
            let counter = Arc::new(CountingDevice::new(raw));
            (counter.clone(), Some(counter))
        } else {
            (raw, None)
        };
        Engine::format(&device, &FormatOptions { metadata_bytes: spec.metadata_bytes, ..Default::default() })
            .with_context(|| format!("formatting {label}"))?;
        let engine = Engine::open(device, options).with_context(|| format!("opening {label}"))?;
        Ok(Bed { engine, counter, label, path, keep: spec.keep })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(path) = &self.path
            && !self.keep
            && let Err(e) = std::fs::remove_file(path)
        {
            eprintln!("warning: cannot remove {}: {e}", path.display());
        }
    }
}

/// Removes a file if it exists.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// One benchmark result, printed as one JSON line on stdout.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Benchmark name: the subcommand (`commit`, `seq-write`, ...) or `fio-seq-write`.
    pub bench: String,
    /// Device description: `mem`, `file:<path>`, or the file fio wrote.
    pub device: String,
    /// Run number of repeated invocations (seq-write and fio alternate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<u32>,
    /// The command line that produced this record.
    pub command: String,
    /// Parameters of the run.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Figures by name; units are in the names (`_ms`, `_ns`, `_mb_s`, `_bytes`).
    #[serde(default)]
    pub figures: BTreeMap<String, f64>,
    /// Every sample behind a median, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub samples: BTreeMap<String, Vec<f64>>,
}

impl Record {
    pub fn new(bench: &str, device: &str) -> Record {
        Record { bench: bench.to_string(), device: device.to_string(), command: command_line(), ..Default::default() }
    }

    pub fn param(&mut self, key: &str, value: impl Into<serde_json::Value>) -> &mut Self {
        self.params.insert(key.to_string(), value.into());
        self
    }

    pub fn figure(&mut self, key: &str, value: f64) -> &mut Self {
        self.figures.insert(key.to_string(), value);
        self
    }

    pub fn samples(&mut self, key: &str, values: Vec<f64>) -> &mut Self {
        self.samples.insert(key.to_string(), values);
        self
    }

    /// Prints the record as one line of JSON.
    pub fn emit(&self) -> Result<()> {
        println!("{}", serde_json::to_string(self).context("encoding a result")?);
        Ok(())
    }
}

/// This process's command line, program name shortened to the binary's name.
fn command_line() -> String {
    let mut parts = vec!["lcfs-engine-bench".to_string()];
    parts.extend(std::env::args().skip(1).map(|a| shell_quote(&a)));
    parts.join(" ")
}

/// Quotes an argument for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

/// Parses `4096`, `4K`, `4KiB`, `256M`, `256MiB`, `1G`, `1GiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size such as 4096, 4KiB, 256MiB or 1GiB"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// A size for people: `1 GiB`, `256 MiB`, `4 KiB`, or bytes.
pub fn human_size(n: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}

/// Median of samples (mean of the middle two for an even count); NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 50.0)
}

/// The `p`th percentile by linear interpolation between closest ranks; NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0) * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

pub fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Megabytes (10^6 bytes) per second, as fio's `MB/s`.
pub fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// A small seeded generator (SplitMix64): reproducible offsets and data without caring about
/// the `rand` crate's API.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `[0, n)` (n > 0); the bias is negligible for the ranges used here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

/// A buffer of `len` pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    SplitMix64::new(seed).fill(&mut buf);
    buf
}

/// Writes `size` bytes to `ino` from offset 0 in `chunk.len()`-byte writes (the last may be
/// shorter).
pub fn write_sequential(engine: &Engine, layer: LayerId, ino: Ino, size: u64, chunk: &[u8]) -> Result<()> {
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(chunk.len() as u64) as usize;
        let written = engine.write(layer, ino, at, &chunk[..n]).with_context(|| format!("writing at {at}"))?;
        anyhow::ensure!(written == n, "short write at {at}: {written} of {n} bytes");
        at += n as u64;
    }
    Ok(())
}

/// Resolves a path component by component with `lookup`.
pub fn resolve(engine: &Engine, layer: LayerId, path: &[Vec<u8>]) -> lcfs_engine::Result<Ino> {
    let mut ino = lcfs_engine::ROOT_INO;
    for name in path {
        ino = engine.lookup(layer, ino, name)?.ino;
    }
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("256MiB"), Ok(256 * MIB));
        assert!(parse_size("1TB").is_err());
        assert!(parse_size("MiB").is_err());
        assert_eq!(human_size(GIB), "1 GiB");
        assert_eq!(human_size(4097), "4097 B");
    }

    #[test]
    fn percentiles_interpolate() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(percentile(&[0.0, 10.0], 90.0), 9.0);
    }

    #[test]
    fn quoting_leaves_plain_words_alone() {
        assert_eq!(shell_quote("--dir=/var/tmp/x"), "--dir=/var/tmp/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
