//! lcfs-snapshotter-bench: snapshot operations timed through containerd's Snapshots API, so
//! lcfs (a proxy plugin) and containerd's own overlayfs snapshotter are measured the same way
//! in one run. Prints one JSON line per result on stdout; `scripts/bench-snapshotter.sh` runs
//! it with the peers alternating and writes `docs/benchmarks/snapshotter.md`. A benchmark,
//! not a test: it reports, it does not assert.
//!
//! - `commit`: Commit latency of an active snapshot holding N MiB (written and fsynced
//!   through its mount first) against an empty one.
//! - `chain`: builds a chain of D committed snapshots (each adds one file) and a chain of
//!   one, then, in rounds alternating between them, times Prepares on top and cold lookups of
//!   files that sit in the bottom layer, seen from a fresh view of the top.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use lcfs_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient;
use lcfs_snapshotter::proto::snapshots::{self as pb};
use lcfs_snapshotter::proto::types::Mount;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "lcfs-snapshotter-bench", version, about = "Snapshot operations through containerd")]
struct Cli {
    /// containerd's gRPC socket.
    #[arg(long)]
    containerd: PathBuf,
    /// The snapshotter to measure (`lcfs`, `overlayfs`, ...).
    #[arg(long)]
    snapshotter: String,
    /// containerd namespace for the snapshots made here.
    #[arg(long, default_value = "lcfs-bench")]
    namespace: String,
    /// Where snapshots are mounted while they are written.
    #[arg(long, default_value = "/var/tmp/lcfs-snapshotter-bench")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Commit of an active snapshot holding `mib` MiB, then of an empty one.
    Commit {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Prepare on top of a chain of `depth` snapshots and of a 1-snapshot chain, and lookups
    /// from their tops.
    Chain {
        #[arg(long, default_value_t = 200)]
        depth: usize,
        /// Prepares timed on top of each chain per round (each removed again).
        #[arg(long, default_value_t = 5)]
        prepares: usize,
        /// Rounds, alternating between the chains; medians over all rounds are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Files in the bottom layer, each looked up once from the top.
        #[arg(long, default_value_t = 2000)]
        files: usize,
    },
}

struct Client {
    inner: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: String,
    /// Keeps every snapshot made here from containerd's garbage collector.
    labels: HashMap<String, String>,
}

impl Client {
    async fn connect(socket: &Path, snapshotter: &str, namespace: &str) -> Result<Client> {
        let socket = socket.to_path_buf();
        let channel = tonic::transport::Endpoint::try_from("http://containerd.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await
            .context("cannot connect to containerd")?;
        Ok(Client {
            inner: SnapshotsClient::new(channel),
            snapshotter: snapshotter.to_string(),
            namespace: namespace.to_string(),
            labels: HashMap::from([("containerd.io/gc.root".to_string(), "lcfs-snapshotter-bench".to_string())]),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Ok(ns) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", ns);
        }
        r
    }

    async fn prepare(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let m = pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: self.labels.clone(),
        };
        Ok(self.inner.prepare(self.request(m)).await.with_context(|| format!("prepare {key}"))?.into_inner().mounts)
    }

    async fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let m = pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: self.labels.clone(),
        };
        Ok(self.inner.view(self.request(m)).await.with_context(|| format!("view {key}"))?.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<()> {
        let m = pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels: self.labels.clone(),
            parent: String::new(),
        };
        self.inner.commit(self.request(m)).await.with_context(|| format!("commit {key}"))?;
        Ok(())
    }

    async fn remove(&mut self, key: &str) -> Result<()> {
        let m = pb::RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        self.inner.remove(self.request(m)).await.with_context(|| format!("remove {key}"))?;
        Ok(())
    }
}

/// Mounts what a snapshotter returned on `target` with mount(8), as containerd would.
fn mount(mounts: &[Mount], target: &Path) -> Result<()> {
    let [m] = mounts else { bail!("expected one mount, got {}", mounts.len()) };
    std::fs::create_dir_all(target)?;
    let out = Command::new("mount")
        .args(["-t", &m.r#type, "-o", &m.options.join(","), &m.source])
        .arg(target)
        .output()
        .context("cannot run mount")?;
    if !out.status.success() {
        bail!("mount -t {} failed: {}", m.r#type, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn unmount(target: &Path) -> Result<()> {
    let out = Command::new("umount").arg(target).output().context("cannot run umount")?;
    if !out.status.success() {
        bail!("umount {} failed: {}", target.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn report(line: serde_json::Value) {
    println!("{line}");
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A prefix no earlier run used, so runs never collide with what they left behind.
fn run_id() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
    )
}

async fn bench_commit(c: &mut Client, dir: &Path, mib: u64, runs: usize) -> Result<()> {
    let id = run_id();
    let target = dir.join("commit");
    let chunk = vec![0x5au8; 1 << 20];
    for run in 0..runs {
        for size in [mib, 0] {
            let key = format!("{id}/commit-{run}-{size}");
            let mounts = c.prepare(&key, "").await?;
            mount(&mounts, &target)?;
            let written = (|| -> Result<()> {
                let mut f = std::fs::File::create(target.join("data"))?;
                for _ in 0..size {
                    f.write_all(&chunk)?;
                }
                f.sync_all()?;
                Ok(())
            })();
            unmount(&target)?;
            written?;
            let name = format!("{key}-committed");
            let start = Instant::now();
            c.commit(&name, &key).await?;
            let elapsed = start.elapsed();
            report(serde_json::json!({
                "bench": "commit", "snapshotter": c.snapshotter, "mib": size, "run": run, "ms": millis(elapsed),
            }));
            c.remove(&name).await?;
        }
    }
    Ok(())
}

/// Builds a chain of `depth` committed snapshots; the bottom one holds `files` files. Returns
/// the snapshots made (to remove later) and the top one, or why the chain could not be built.
async fn build_chain(
    c: &mut Client,
    prefix: &str,
    target: &Path,
    depth: usize,
    files: usize,
) -> Result<(Vec<String>, Result<String>)> {
    let mut parent = String::new();
    let mut made = Vec::new();
    for level in 0..depth {
        let key = format!("{prefix}-{level}");
        let mounts = match c.prepare(&key, &parent).await {
            Ok(m) => m,
            Err(e) => return Ok((made, Err(e))),
        };
        made.push(key.clone());
        if let Err(e) = mount(&mounts, target) {
            return Ok((made, Err(e.context(format!("mounting layer {} of the chain", level + 1)))));
        }
        let written = (|| -> Result<()> {
            let count = if level == 0 { files } else { 1 };
            for i in 0..count {
                std::fs::write(target.join(format!("l{level}-f{i}")), b"x")?;
            }
            Ok(())
        })();
        unmount(target)?;
        written?;
        let name = format!("{key}-committed");
        c.commit(&name, &key).await?;
        made.pop();
        made.push(name.clone());
        parent = name;
    }
    Ok((made, Ok(parent)))
}

/// One round on top of a chain: timed prepares (each removed again), then a fresh view whose
/// bottom-layer files are each looked up once. Returns the prepare times (ms) and the time
/// per lookup (µs).
async fn chain_round(
    c: &mut Client,
    key: &str,
    top: &str,
    target: &Path,
    files: usize,
    prepares: usize,
) -> Result<(Vec<f64>, f64)> {
    let mut times = Vec::with_capacity(prepares);
    for i in 0..prepares {
        let k = format!("{key}-prepare-{i}");
        let start = Instant::now();
        c.prepare(&k, top).await?;
        times.push(millis(start.elapsed()));
        c.remove(&k).await?;
    }
    let view = format!("{key}-view");
    let mounts = c.view(&view, top).await?;
    let looked = async {
        mount(&mounts, target)?;
        let start = Instant::now();
        let walked = (0..files).try_for_each(|i| std::fs::symlink_metadata(target.join(format!("l0-f{i}"))).map(drop));
        let per = start.elapsed().as_secs_f64() * 1e6 / files as f64;
        unmount(target)?;
        walked?;
        Ok::<f64, anyhow::Error>(per)
    }
    .await;
    c.remove(&view).await?;
    Ok((times, looked?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A 1-snapshot chain and a `depth`-snapshot chain, measured in alternating rounds so that
/// drift of the machine affects both alike.
async fn bench_chain(
    c: &mut Client,
    dir: &Path,
    depth: usize,
    files: usize,
    prepares: usize,
    rounds: usize,
) -> Result<()> {
    let id = run_id();
    let target = dir.join("chain");
    let mut chains = Vec::new();
    for d in [1, depth] {
        let (made, top) = build_chain(c, &format!("{id}/chain{d}"), &target, d, files).await?;
        chains.push((d, made, top, Vec::new(), Vec::new()));
    }
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let (d, _, top, prepare_ms, lookup_us) = &mut chains[i];
            let Ok(top) = top else { continue };
            let (times, per) = chain_round(c, &format!("{id}/round{round}-{d}"), top, &target, files, prepares).await?;
            prepare_ms.extend(times);
            lookup_us.push(per);
        }
    }
    for (d, made, top, prepare_ms, lookup_us) in chains {
        match top {
            Ok(_) => report(serde_json::json!({
                "bench": "chain", "snapshotter": c.snapshotter, "depth": d,
                "prepare_ms": median(prepare_ms), "lookup_us": median(lookup_us),
            })),
            Err(e) => report(serde_json::json!({
                "bench": "chain", "snapshotter": c.snapshotter, "depth": d, "error": format!("{e:#}"),
            })),
        }
        for key in made.iter().rev() {
            c.remove(key).await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.dir).with_context(|| format!("cannot create {}", cli.dir.display()))?;
    let mut client = Client::connect(&cli.containerd, &cli.snapshotter, &cli.namespace).await?;
    match cli.command {
        Bench::Commit { mib, runs } => bench_commit(&mut client, &cli.dir, mib, runs).await,
        Bench::Chain { depth, files, prepares, rounds } => {
            bench_chain(&mut client, &cli.dir, depth, files, prepares, rounds).await
        }
    }
}
