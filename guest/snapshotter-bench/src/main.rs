//! lcfs-snapshotter-bench: snapshot operations timed through containerd's Snapshots API, so
//! lcfs (a proxy plugin) and containerd's own overlayfs snapshotter are measured the same way
//! in one run. Prints one JSON line per result on stdout; `scripts/bench-snapshotter.sh` runs
//! it with the peers alternating and writes `docs/benchmarks/snapshotter.md`. A benchmark,
//! not a test: it reports, it does not assert.
//!
//! - `commit`: Commit latency of an active snapshot holding N MiB (written and fsynced
//!   through its mount first) against an empty one.
//! - `chain`: builds a chain of D committed snapshots (each adds one file), then times a
//!   Prepare on top and cold lookups of files that sit in the bottom layer, seen from a view
//!   of the top.

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
    /// Prepare on top of a chain of `depth` snapshots, and lookups from its top.
    Chain {
        #[arg(long, default_value_t = 200)]
        depth: usize,
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

async fn bench_chain(c: &mut Client, dir: &Path, depth: usize, files: usize) -> Result<()> {
    let id = run_id();
    let target = dir.join("chain");
    let mut parent = String::new();
    let mut made = Vec::new();
    let mut outcome = Ok(());
    for level in 0..depth {
        let key = format!("{id}/chain-{level}");
        let mounts = match c.prepare(&key, &parent).await {
            Ok(m) => m,
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        made.push(key.clone());
        if let Err(e) = mount(&mounts, &target) {
            outcome = Err(e.context(format!("mounting layer {} of the chain", level + 1)));
            break;
        }
        let written = (|| -> Result<()> {
            let count = if level == 0 { files } else { 1 };
            for i in 0..count {
                std::fs::write(target.join(format!("l{level}-f{i}")), b"x")?;
            }
            Ok(())
        })();
        unmount(&target)?;
        written?;
        let name = format!("{key}-committed");
        c.commit(&name, &key).await?;
        made.pop();
        made.push(name.clone());
        parent = name;
    }
    if let Err(e) = outcome {
        report(serde_json::json!({
            "bench": "chain", "snapshotter": c.snapshotter, "depth": depth, "error": format!("{e:#}"),
        }));
    } else {
        let key = format!("{id}/chain-top");
        let start = Instant::now();
        c.prepare(&key, &parent).await?;
        let prepare = start.elapsed();
        c.remove(&key).await?;
        let view = format!("{id}/chain-view");
        let mounts = c.view(&view, &parent).await?;
        let lookups = match mount(&mounts, &target) {
            Ok(()) => {
                let start = Instant::now();
                for i in 0..files {
                    std::fs::symlink_metadata(target.join(format!("l0-f{i}")))?;
                }
                let per = start.elapsed().as_secs_f64() * 1e6 / files as f64;
                unmount(&target)?;
                serde_json::json!(per)
            }
            Err(e) => serde_json::json!(format!("{e:#}")),
        };
        c.remove(&view).await?;
        report(serde_json::json!({
            "bench": "chain", "snapshotter": c.snapshotter, "depth": depth,
            "prepare_ms": millis(prepare), "lookup_us": lookups,
        }));
    }
    for key in made.iter().rev() {
        c.remove(key).await?;
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
        Bench::Chain { depth, files } => bench_chain(&mut client, &cli.dir, depth, files).await,
    }
}
