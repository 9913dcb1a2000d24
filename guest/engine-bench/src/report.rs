//! Turning results into `docs/benchmarks/engine.md`: `import-fio` converts fio's JSON output
//! into a result record, and `report` renders the records (one JSON line each) as one markdown
//! table against the targets, followed by the details behind each figure and the machine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::harness::{self, Record};

#[derive(Debug, clap::Args)]
pub struct ImportFioArgs {
    /// fio's output with `--output-format=json`.
    pub file: PathBuf,
    /// Run number, to pair with `seq-write --run`.
    #[arg(long)]
    pub run: Option<u32>,
    /// The fio command line, recorded with the result.
    #[arg(long, default_value = "")]
    pub command: String,
    /// Name of the result: `fio-seq-write` for the peer of `seq-write`, `fio-fdatasync` for the
    /// machine's sync latency.
    #[arg(long, default_value = "fio-seq-write")]
    pub bench: String,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Result records, one JSON object a line (other lines are ignored).
    #[arg(long)]
    pub results: PathBuf,
    /// Markdown file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// `KEY=VALUE` lines for the machine and run description, in order.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
}

/// Reads fio's JSON output and returns its sequential-write bandwidth as a record.
pub fn import_fio(args: &ImportFioArgs) -> Result<Record> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    // fio may print warnings before the JSON document.
    let json = text.find('{').map(|i| &text[i..]).context("no JSON object in fio's output")?;
    let doc: serde_json::Value = serde_json::from_str(json).context("parsing fio's JSON output")?;
    let job = doc.get("jobs").and_then(|j| j.get(0)).context("fio's output has no job")?;
    let write = job.get("write").context("fio's job has no write figures")?;
    let number = |v: &serde_json::Value, key: &str| {
        v.get(key).and_then(serde_json::Value::as_f64).with_context(|| format!("fio's output lacks write.{key}"))
    };
    let bw_bytes = number(write, "bw_bytes")?;
    let io_bytes = number(write, "io_bytes")?;
    let runtime_ms = number(write, "runtime")?;
    let filename =
        job.get("job options").and_then(|o| o.get("filename")).and_then(serde_json::Value::as_str).unwrap_or("?");
    let mut rec = Record::new(&args.bench, &format!("file:{filename}"));
    rec.command = args.command.clone();
    rec.run = args.run;
    if let Some(v) = doc.get("fio version").and_then(serde_json::Value::as_str) {
        rec.param("fio_version", v);
    }
    rec.param("bytes", io_bytes)
        .figure("mb_s", bw_bytes / 1e6)
        .figure("seconds", runtime_ms / 1e3)
        .figure("job_mb_s", io_bytes / (runtime_ms / 1e3) / 1e6);
    let sync_p50 = job.pointer("/sync/lat_ns/percentile/50.000000").and_then(serde_json::Value::as_f64);
    if let Some(ns) = sync_p50 {
        rec.figure("sync_p50_us", ns / 1e3);
    }
    Ok(rec)
}

/// One line of the summary table.
struct Row {
    what: String,
    device: String,
    target: String,
    lcfs: String,
    peer: String,
    ratio: String,
    verdict: String,
    command: String,
}

impl Row {
    fn missing(what: &str, target: &str, command: &str) -> Row {
        Row {
            what: what.to_string(),
            device: "—".into(),
            target: target.to_string(),
            lcfs: "not run".into(),
            peer: "—".into(),
            ratio: "—".into(),
            verdict: "not run".into(),
            command: format!("`{command}`"),
        }
    }
}

fn verdict(failures: &[&str]) -> String {
    if failures.is_empty() { "**PASS**".to_string() } else { format!("**FAIL** ({})", failures.join("; ")) }
}

fn device_of(r: &Record) -> String {
    let kind = r.params.get("device_kind").and_then(serde_json::Value::as_str).unwrap_or("?");
    match r.device.strip_prefix("file:") {
        Some(path) => format!("{kind} (`{path}`)"),
        None => kind.to_string(),
    }
}

fn fig(r: &Record, key: &str) -> f64 {
    r.figures.get(key).copied().unwrap_or(f64::NAN)
}

fn param_u64(r: &Record, key: &str) -> u64 {
    r.params.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

fn ms(v: f64) -> String {
    if v < 10.0 { format!("{v:.3} ms") } else { format!("{v:.1} ms") }
}

fn code(s: &str) -> String {
    format!("`{s}`")
}

/// Reads the result lines of a file.
fn read_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let rec: Record =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a result record", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let records = read_records(&args.results)?;
    let of = |bench: &'static str| records.iter().filter(move |r| r.bench == bench);
    let mut rows = Vec::new();

    // 1. Commit.
    let mut any = false;
    for r in of("commit") {
        any = true;
        let (large, small, ratio) = (fig(r, "large_ms"), fig(r, "small_ms"), fig(r, "ratio"));
        // Comparisons with a missing (NaN) figure are false, so they count as failures.
        let checks = [(large < 5.0, "large ≥ 5 ms"), (small < 5.0, "small ≥ 5 ms"), (ratio <= 1.5, "ratio > 1.5")];
        let fails: Vec<&str> = checks.iter().filter(|(ok, _)| !ok).map(|(_, why)| *why).collect();
        let (lb, sb) = (param_u64(r, "large_bytes"), param_u64(r, "small_bytes"));
        rows.push(Row {
            what: format!(
                "Commit latency, layer with {} vs {} of new data (median of {})",
                harness::human_size(lb),
                harness::human_size(sb),
                param_u64(r, "reps")
            ),
            device: device_of(r),
            target: "each < 5 ms; ratio ≤ 1.5".into(),
            lcfs: format!(
                "{} ({}; device syncs per commit: {})",
                ms(large),
                harness::human_size(lb),
                fig(r, "device_syncs_per_commit")
            ),
            peer: format!("{} ({})", ms(small), harness::human_size(sb)),
            ratio: format!("{ratio:.2}"),
            verdict: verdict(&fails),
            command: code(&r.command),
        });
    }
    if !any {
        rows.push(Row::missing("Commit latency", "each < 5 ms; ratio ≤ 1.5", "lcfs-engine-bench commit"));
    }

    // 2. Layer creation.
    let mut any = false;
    for r in of("create-layer") {
        any = true;
        let (full, empty) = (fig(r, "full_ms"), fig(r, "empty_ms"));
        rows.push(Row {
            what: format!(
                "`create_layer` on a committed parent with {} files in {} directories (median of {})",
                param_u64(r, "files"),
                param_u64(r, "dirs"),
                param_u64(r, "reps")
            ),
            device: device_of(r),
            target: "< 5 ms".into(),
            lcfs: format!("{} (device syncs per creation: {})", ms(full), fig(r, "device_syncs_per_create")),
            peer: format!("{} (empty parent)", ms(empty)),
            ratio: format!("{:.2}", fig(r, "ratio")),
            verdict: verdict(if full < 5.0 { &[] } else { &["≥ 5 ms"] }),
            command: code(&r.command),
        });
        let per_dir = param_u64(r, "files").div_ceil(param_u64(r, "dirs").max(1));
        let big = param_u64(r, "big_dir_entries");
        for (entries, key) in [(per_dir, "inherited_dir"), (big, "big_dir")] {
            let (first, second) =
                (fig(r, &format!("first_create_in_{key}_ms")), fig(r, &format!("second_create_in_{key}_ms")));
            if first.is_nan() {
                continue;
            }
            rows.push(Row {
                what: format!(
                    "First file created in an inherited directory of {entries} entries (copies the directory \
                     up), vs the second; the sync after them wrote {:.1} MB",
                    fig(r, &format!("{key}_copy_up_sync_bytes")) / 1e6
                ),
                device: device_of(r),
                target: "reported".into(),
                lcfs: ms(first),
                peer: format!("{} (second)", ms(second)),
                ratio: format!("{:.0}", first / second),
                verdict: "—".into(),
                command: code(&r.command),
            });
        }
    }
    if !any {
        rows.push(Row::missing(
            "`create_layer` on a parent with 100k files",
            "< 5 ms",
            "lcfs-engine-bench create-layer",
        ));
    }

    // 3. Lookup depth.
    let mut any = false;
    for r in of("lookup-depth") {
        any = true;
        let depth = param_u64(r, "depth");
        for (key, desc) in [
            ("every", "every layer changes the directory and a shared file"),
            ("bottom", "only the bottom layer holds the files"),
        ] {
            let (ns, flat, ratio) =
                (fig(r, &format!("{key}_ns")), fig(r, "depth1_ns"), fig(r, &format!("{key}_ratio")));
            rows.push(Row {
                what: format!("Lookup at depth {depth} vs depth 1, {desc}; 4-component paths, ns per component"),
                device: device_of(r),
                target: "ratio ≤ 1.5".into(),
                lcfs: format!("{ns:.0} ns (depth {depth})"),
                peer: format!("{flat:.0} ns (depth 1)"),
                ratio: format!("{ratio:.2}"),
                verdict: verdict(if ratio <= 1.5 { &[] } else { &["ratio > 1.5"] }),
                command: code(&r.command),
            });
        }
    }
    if !any {
        rows.push(Row::missing("Lookup at depth 200 vs depth 1", "ratio ≤ 1.5", "lcfs-engine-bench lookup-depth"));
    }

    // 4. Sequential write against fio.
    let lcfs_runs: Vec<&Record> = of("seq-write").collect();
    let fio_runs: Vec<&Record> = of("fio-seq-write").collect();
    if lcfs_runs.is_empty() {
        rows.push(Row::missing("Sequential write, 1 GiB + sync", "≥ 0.8 × fio", "lcfs-engine-bench seq-write"));
    } else {
        let lcfs: Vec<f64> = lcfs_runs.iter().map(|r| fig(r, "mb_s")).collect();
        let fio: Vec<f64> = fio_runs.iter().map(|r| fig(r, "mb_s")).collect();
        let lcfs_mb = harness::median(&lcfs);
        let runs = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
        let (peer, ratio, v) = if fio.is_empty() {
            ("no fio run".to_string(), "—".to_string(), "n/a (no fio run)".to_string())
        } else {
            let fio_mb = harness::median(&fio);
            let ratio = lcfs_mb / fio_mb;
            (
                format!("{fio_mb:.0} MB/s (fio; runs: {})", runs(&fio)),
                format!("{ratio:.2}"),
                verdict(if ratio >= 0.8 { &[] } else { &["ratio < 0.8"] }),
            )
        };
        let first = lcfs_runs[0];
        let mut command = code(&first.command);
        if let Some(f) = fio_runs.first() {
            command.push_str(" vs ");
            command.push_str(&code(&f.command));
        }
        rows.push(Row {
            what: format!(
                "Sequential write of {} in {} writes + sync, in process (median of {} runs alternating with fio)",
                harness::human_size(param_u64(first, "bytes")),
                harness::human_size(param_u64(first, "block_bytes")),
                lcfs.len()
            ),
            device: device_of(first),
            target: "≥ 0.8 × fio".into(),
            lcfs: format!("{lcfs_mb:.0} MB/s (runs: {})", runs(&lcfs)),
            peer,
            ratio,
            verdict: v,
            command,
        });
    }

    // 5. Sequential read from cache.
    let mut any = false;
    for r in of("seq-read") {
        any = true;
        let mb = fig(r, "mb_s");
        rows.push(Row {
            what: format!(
                "Sequential read of {} from page cache in {} reads (median of {} passes after a warm-up)",
                harness::human_size(param_u64(r, "bytes")),
                harness::human_size(param_u64(r, "block_bytes")),
                param_u64(r, "passes")
            ),
            device: device_of(r),
            target: "≥ 2000 MB/s".into(),
            lcfs: format!("{mb:.0} MB/s (`read`); {:.0} MB/s (`read_into`, reused buffer)", fig(r, "read_into_mb_s")),
            peer: "—".into(),
            ratio: "—".into(),
            verdict: verdict(if mb >= 2000.0 { &[] } else { &["< 2000 MB/s"] }),
            command: code(&r.command),
        });
    }
    if !any {
        rows.push(Row::missing("Sequential read from cache", "≥ 2000 MB/s", "lcfs-engine-bench seq-read"));
    }

    // 6. Random overwrite amplification.
    let mut any = false;
    for r in of("rand-overwrite") {
        any = true;
        let block = param_u64(r, "block_bytes");
        let what = format!(
            "{} random overwrites of {} in an inherited {} file",
            param_u64(r, "writes"),
            harness::human_size(block),
            harness::human_size(param_u64(r, "file_bytes"))
        );
        let data_amp = fig(r, "data_amplification");
        rows.push(Row {
            what: format!("{what}: device bytes per overwrite, data only (before sync)"),
            device: device_of(r),
            target: format!("≈ {block} B per overwrite (amplification 0.9–1.1)"),
            lcfs: format!("{:.0} B", fig(r, "data_bytes_per_write")),
            peer: format!("{block} B (caller)"),
            ratio: format!("{data_amp:.3}"),
            verdict: verdict(if (0.9..=1.1).contains(&data_amp) { &[] } else { &["amplification outside 0.9–1.1"] }),
            command: code(&r.command),
        });
        rows.push(Row {
            what: format!("{what}: device bytes per overwrite including the metadata commit (after sync)"),
            device: device_of(r),
            target: "reported".into(),
            lcfs: format!("{:.0} B", fig(r, "total_bytes_per_write")),
            peer: format!("{block} B (caller)"),
            ratio: format!("{:.3}", fig(r, "total_amplification")),
            verdict: "—".into(),
            command: code(&r.command),
        });
    }
    if !any {
        rows.push(Row::missing(
            "Random 4 KiB overwrite amplification",
            "≈ 4 KiB per overwrite",
            "lcfs-engine-bench rand-overwrite",
        ));
    }

    // 7. What the activity counters cost.
    let mut any = false;
    for r in of("counters") {
        any = true;
        let ratio = fig(r, "ratio");
        rows.push(Row {
            what: format!(
                "Activity counters on vs off: a small-file workload in process ({} files a round, {} engine calls each), ns per call; median of {} paired rounds (their ratios {:.2}–{:.2})",
                param_u64(r, "files_per_round"),
                param_u64(r, "calls_per_file"),
                param_u64(r, "rounds"),
                fig(r, "ratio_min"),
                fig(r, "ratio_max")
            ),
            device: device_of(r),
            target: "ratio ≤ 1.05".into(),
            lcfs: format!("{:.0} ns counting ({:+.0} ns a call)", fig(r, "counting_ns"), fig(r, "extra_ns")),
            peer: format!("{:.0} ns not counting", fig(r, "not_counting_ns")),
            ratio: format!("{ratio:.3}"),
            verdict: verdict(if ratio <= 1.05 { &[] } else { &["ratio > 1.05"] }),
            command: code(&r.command),
        });
    }
    if !any {
        rows.push(Row::missing("Activity counters on vs off", "ratio ≤ 1.05", "lcfs-engine-bench counters"));
    }

    let md = render(&rows, &records, &args.meta);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("report: wrote {}", args.out.display());
    Ok(())
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn render(rows: &[Row], records: &[Record], meta: &[String]) -> String {
    let meta: Vec<(&str, &str)> = meta.iter().map(|m| m.split_once('=').unwrap_or((m.as_str(), ""))).collect();
    let get = |key: &str| meta.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let mut md = String::new();
    let _ = writeln!(md, "# Engine benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench-engine.sh`{}; do not edit by hand. \
         Figures are medians; ratios compare the lcfs figure with the baseline or peer column. \
         These are benchmarks, not tests: a FAIL marks a target the engine misses on this machine.\n",
        get("generated").map(|g| format!(" on {g}")).unwrap_or_default()
    );
    let _ = writeln!(md, "| Benchmark | Device | Target | lcfs | Baseline / peer | Ratio | Result | Command |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.what),
            cell(&r.device),
            cell(&r.target),
            cell(&r.lcfs),
            cell(&r.peer),
            cell(&r.ratio),
            cell(&r.verdict),
            cell(&r.command)
        );
    }

    let _ = writeln!(md, "\n## Machine and run\n");
    for (k, v) in &meta {
        if *k != "generated" {
            let _ = writeln!(md, "- **{k}**: {v}");
        }
    }
    let syncs: Vec<&Record> = records.iter().filter(|r| r.bench == "fio-fdatasync").collect();
    if let Some(first) = syncs.first() {
        let figures: Vec<String> = syncs.iter().map(|r| format!("{:.0} µs", fig(r, "sync_p50_us"))).collect();
        let _ = writeln!(
            md,
            "- **fdatasync latency of --dir** (fio, 4 KiB writes each followed by fdatasync, median; \
             measured at the start and at the end of the run): {} — every durable engine operation \
             (`commit_layer`, `create_layer`, `sync`) waits for at least one: `{}`",
            figures.join(", then "),
            first.command
        );
    }
    let _ = writeln!(
        md,
        "\n`lcfs-engine-bench` is `target/release/lcfs-engine-bench` (built by the script with \
         `cargo build --release -p lcfs-engine-bench`). Devices: `mem` is `MemDevice` (no I/O, free \
         sync: the engine's own cost); `file` is `FileDevice` on a sparse file under `--dir` (page \
         cache and real `fdatasync`). Every engine is opened with `checkpoint_interval: None`.\n"
    );

    let _ = writeln!(md, "## How each figure is measured\n");
    let _ = writeln!(md, "{}", HOW);

    let _ = writeln!(md, "## Raw results\n");
    let _ = writeln!(md, "Every record the run produced, as the binary printed it (samples in run order).\n");
    for r in records {
        let mut figures: BTreeMap<&str, String> = BTreeMap::new();
        for (k, v) in &r.figures {
            figures.insert(k, format!("{v:.4}"));
        }
        let run = r.run.map(|n| format!(" run {n}")).unwrap_or_default();
        let _ = writeln!(md, "### {}{run} — {}\n", r.bench, r.device);
        let _ = writeln!(md, "- command: `{}`", r.command);
        if !r.params.is_empty() {
            let p: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(md, "- params: {}", p.join(", "));
        }
        let f: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(md, "- figures: {}", f.join(", "));
        for (k, s) in &r.samples {
            let s: Vec<String> = s.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(md, "- samples {k}: {}", s.join(", "));
        }
        let _ = writeln!(md);
    }
    md
}

const HOW: &str = "\
- **Commit**: a writable layer on an empty committed parent gets one file of 1 GiB (or 1 MiB) \
written in 1 MiB writes; `Engine::sync` makes it durable; then only `commit_layer` is timed. \
Each repetition uses a fresh layer (the committed layer is removed afterwards, untimed); sizes \
alternate within a repetition. Between the sync and the commit the benchmark writes 256 MiB \
of scratch memory, so every commit starts from cold CPU caches: otherwise writing 1 GiB (which \
evicts everything) and 1 MiB (which does not) would show in the ratio of commits that take tens \
of microseconds on `mem`. `device syncs` counts `Device::sync` calls during the commit.
- **Layer creation**: one committed parent holds 100 directories of 1,000 empty files each, \
another is empty. `create_layer` of a writable child is timed on each parent in turn; the child \
is removed (untimed) before the next, so each measurement creates the parent's only child.
- **Lookup depth**: three engines hold `/usr/share/app/{shared,f000..f199}`: in one committed \
layer (depth 1); in a chain of 200 committed layers where layer *k* creates `f<k>` and touches \
`shared` (so `/usr/share/app` and `shared` have a version in every layer); and in a chain whose \
bottom layer holds everything while each layer above adds a file to `/var`. A writable layer on \
top of each chain resolves the 201 paths round-robin, one `lookup` per component (4 per path); \
rounds of the three engines alternate. The figure is nanoseconds per `lookup` call.
- **Sequential write**: a new image under `--dir`, a new layer and file, 1 GiB in 1 MiB \
`Engine::write` calls, then `Engine::sync`; the clock covers writes and sync. fio writes a new \
`fio.dat` in the same directory with `--rw=write --bs=1M --size=1G --end_fsync=1` (its \
bandwidth includes the final fsync). The script runs the pair three times, alternating which \
goes first, after one untimed warm-up run of each; each run deletes its own previous file \
immediately before writing, so both write into page-cache memory freed moments earlier (on VMs \
that hand freed memory back to the host, writing into returned memory is several times slower \
and would measure the hypervisor). The figures are the medians; every run is listed below.
- **Sequential read**: the file the last sequential write left, read with 1 MiB `Engine::read` \
calls after one warm-up pass (the file is in the page cache); the target applies to `read`, \
`read_into` with one reused buffer is shown beside it.
- **Copy-up probe** (with layer creation): a child of the full parent creates two files in \
`/d000` (1,000 entries), and a child of a third parent creates two in `/big` (100,000 entries), \
then syncs; the first create copies the directory's entries into the layer.
- **Random overwrite**: a 256 MiB file in a committed parent; a child layer overwrites 10,000 \
random 4 KiB-aligned blocks with 4 KiB writes (repeats allowed), then `Engine::sync`. A \
`CountingDevice` counts bytes written to the device after the setup had been synced: up to the \
sync (data; metadata stays in memory until then) and after it (data plus the metadata commit).
- **Activity counters**: two engines on memory devices, one counting per layer and per file as \
lcfsd does, one opened with `OpenOptions::counters` off, each with a writable layer. A round \
puts 2,000 files through the calls a FUSE `printf data > f; cat f; rm f` makes: a lookup that \
misses, create, open, a 1 KiB write, getattr, a 1 KiB read, release, unlink. Each round runs \
both engines back to back, in turns as to which goes first; the ratio is the median of the \
rounds' ratios, the extra cost the median of their differences. Through FUSE a request costs \
tens of microseconds here (`docs/design/fuse.md`), so the difference per call is what counting \
adds to one.
";
