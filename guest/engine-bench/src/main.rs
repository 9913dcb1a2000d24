//! lcfs-engine-bench: benchmarks of the LCFS storage engine against its performance targets.
//!
//! Each subcommand measures one target and prints one JSON line per result on stdout (progress
//! goes to stderr); `report` turns those lines into `docs/benchmarks/engine.md`.
//! `scripts/bench-engine.sh` runs everything, including the fio runs the sequential write is
//! compared with. These are benchmarks, not tests: they report, they do not assert.

#![forbid(unsafe_code)]

mod commit;
mod counters;
mod create_layer;
mod harness;
mod lookup;
mod overwrite;
mod report;
mod seq;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lcfs-engine-bench", version, about = "Benchmarks of the LCFS storage engine")]
struct Cli {
    /// Directory for file devices (images are created here and removed after use).
    #[arg(long, global = true, default_value = "/var/tmp/lcfs-bench")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Commit latency of a layer holding 1 GiB vs 1 MiB of new data.
    Commit(commit::Args),
    /// create_layer latency on a parent with 100k files vs an empty parent.
    CreateLayer(create_layer::Args),
    /// Lookup cost in a layer at depth 200 vs depth 1.
    LookupDepth(lookup::Args),
    /// Sequential write of 1 GiB in 1 MiB writes plus sync, on a file device.
    SeqWrite(seq::WriteArgs),
    /// Sequential read from the page cache of the file seq-write --keep left.
    SeqRead(seq::ReadArgs),
    /// Write amplification of 4 KiB random overwrites of an inherited file.
    RandOverwrite(overwrite::Args),
    /// Cost of the activity counters: a small-file workload counting and not counting.
    Counters(counters::Args),
    /// Every benchmark above with its defaults (no fio: use scripts/bench-engine.sh for that).
    All,
    /// Converts fio's JSON output into a result line.
    ImportFio(report::ImportFioArgs),
    /// Renders result lines as the markdown report.
    Report(report::ReportArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let dir = cli.dir.as_path();
    match &cli.command {
        Command::Commit(a) => commit::run(dir, a)?.emit(),
        Command::CreateLayer(a) => create_layer::run(dir, a)?.emit(),
        Command::LookupDepth(a) => lookup::run(dir, a)?.emit(),
        Command::SeqWrite(a) => seq::write(dir, a)?.emit(),
        Command::SeqRead(a) => seq::read(dir, a)?.emit(),
        Command::RandOverwrite(a) => overwrite::run(dir, a)?.emit(),
        Command::Counters(a) => counters::run(dir, a)?.emit(),
        Command::ImportFio(a) => report::import_fio(a)?.emit(),
        Command::Report(a) => report::report(a),
        Command::All => all(&cli),
    }
}

/// Runs every benchmark with its defaults, recording for each the command that repeats it alone.
fn all(cli: &Cli) -> Result<()> {
    let dir = cli.dir.as_path();
    let alone =
        |sub: &str| format!("lcfs-engine-bench --dir {} {sub}", harness::shell_quote(&dir.display().to_string()));
    let parse = |args: &[&str]| Cli::try_parse_from(["lcfs-engine-bench"].iter().chain(args)).map(|c| c.command);
    let steps: [&[&str]; 7] = [
        &["commit"],
        &["create-layer"],
        &["lookup-depth"],
        &["seq-write", "--keep"],
        &["seq-read"],
        &["rand-overwrite"],
        &["counters"],
    ];
    for step in steps {
        let mut rec = match parse(step)? {
            Command::Commit(a) => commit::run(dir, &a)?,
            Command::CreateLayer(a) => create_layer::run(dir, &a)?,
            Command::LookupDepth(a) => lookup::run(dir, &a)?,
            Command::SeqWrite(a) => seq::write(dir, &a)?,
            Command::SeqRead(a) => seq::read(dir, &a)?,
            Command::RandOverwrite(a) => overwrite::run(dir, &a)?,
            Command::Counters(a) => counters::run(dir, &a)?,
            other => anyhow::bail!("not a benchmark: {other:?}"),
        };
        rec.command = alone(&step.join(" "));
        rec.emit()?;
    }
    harness::remove_if_present(&dir.join("lcfs-seq.img"))
}
