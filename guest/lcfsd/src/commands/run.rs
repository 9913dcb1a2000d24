//! `lcfsd run`: opens (or formats) the device, mounts it, serves the API (and containerd's
//! Snapshots service if asked), and on SIGTERM or SIGINT stops serving, unmounts, makes
//! everything durable and exits 0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lcfs_engine::device::{Device, FileDevice, FileDeviceError};
use lcfs_engine::{Engine, FormatOptions, OpenOptions};
use lcfs_fuse::{MountOptions, MountpointState};
use tracing::{info, warn};

use crate::api::server::{self, Daemon};
use crate::cli::RunArgs;

/// How long to wait for the FUSE threads after unmounting (containers may still hold files of
/// a lazily detached mount).
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let device = open_device(args)?;
    let options = OpenOptions {
        checkpoint_interval: (args.checkpoint_interval > 0).then(|| Duration::from_secs(args.checkpoint_interval)),
        grow_to: args.size,
        ..OpenOptions::default()
    };
    let format = FormatOptions { size: args.size, ..FormatOptions::default() };
    let engine = Engine::open_or_format(device, &format, &options)?;
    match lcfs_fuse::prepare_mountpoint(&args.mountpoint)
        .with_context(|| format!("cannot use {} as mountpoint", args.mountpoint.display()))?
    {
        MountpointState::CleanedStaleMount => {
            info!(mountpoint = %args.mountpoint.display(), "cleaned up after a daemon that did not exit cleanly")
        }
        MountpointState::Ready => {}
    }
    let threads = args.threads.unwrap_or_else(default_threads);
    let mount = lcfs_fuse::mount(
        engine.clone(),
        &args.mountpoint,
        &MountOptions {
            threads,
            writeback_cache: args.writeback_cache,
            io_uring: args.io_uring,
            ..MountOptions::default()
        },
    )
    .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
    let daemon = Arc::new(Daemon {
        engine: engine.clone(),
        mount: Some(mount),
        mountpoint: args.mountpoint.display().to_string(),
        containerd_root: args.containerd_root.clone(),
        started,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lcfsd-api")
        .build()
        .context("cannot start the API runtime")?;
    let served = runtime.block_on(serve(daemon.clone(), args));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let mount = Arc::try_unwrap(daemon).ok().and_then(|d| d.mount);
    unmount(mount, args);
    engine.close().context("final flush failed")?;
    info!("stopped cleanly");
    served
}

/// FUSE threads when `--threads` is not given: four per CPU, between 4 and 32. Most of a
/// thread's time is a wait in the kernel, and with one thread per CPU the kernel's
/// asynchronous requests (releases, write-back) queued ahead of the ones a caller waits for:
/// containerd unpacking a 410 MiB image took 28-39 s with 2 threads, 20-25 s with 4 or 8.
fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cpus).clamp(4, 32)
}

fn open_device(args: &RunArgs) -> anyhow::Result<Arc<dyn Device>> {
    let path = &args.device;
    let opened = match (path.exists(), args.size) {
        (false, None) => bail!("{} does not exist; give --size to create it", path.display()),
        (false, Some(size)) => FileDevice::open_or_create(path, size),
        (true, _) => FileDevice::open(path),
    };
    match opened {
        Ok(d) => Ok(Arc::new(d)),
        Err(FileDeviceError::Locked { .. }) => {
            bail!("{} is in use: another lcfsd (or fsck) has it open", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

async fn serve(daemon: Arc<Daemon>, args: &RunArgs) -> anyhow::Result<()> {
    let listener =
        server::bind(&args.api_socket).with_context(|| format!("cannot listen on {}", args.api_socket.display()))?;
    let snapshotter = match &args.snapshotter_socket {
        Some(path) => Some(server::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?),
        None => None,
    };
    info!(
        device = %args.device.display(),
        mountpoint = %args.mountpoint.display(),
        api_socket = %args.api_socket.display(),
        snapshotter_socket = ?args.snapshotter_socket,
        "ready"
    );
    // One signal stops both servers.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = axum::serve(listener, server::router(daemon.clone())).with_graceful_shutdown(stopped(stopping.clone()));
    let grpc = async {
        match snapshotter {
            Some(listener) => lcfs_snapshotter::serve(daemon, listener, stopped(stopping)).await,
            None => Ok(()),
        }
    };
    let (api, grpc) = tokio::join!(api, grpc);
    for path in std::iter::once(&args.api_socket).chain(&args.snapshotter_socket) {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(socket = %path.display(), error = %e, "could not remove a socket");
        }
    }
    api.context("the API server failed")?;
    grpc.context("the snapshotter server failed")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        warn!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
}

fn unmount(mount: Option<lcfs_fuse::Mount>, args: &RunArgs) {
    let Some(mount) = mount else {
        warn!("the mount is still referenced; detaching it by path");
        if let Err(e) = lcfs_fuse::detach(&args.mountpoint) {
            warn!(error = %e, "could not detach the mount");
        }
        return;
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = mount.unmount();
        let _ = done_tx.send(());
        r
    });
    match done_rx.recv_timeout(UNMOUNT_WAIT) {
        Ok(()) => match waiter.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "unmount reported an error"),
            Err(_) => warn!("the unmount thread panicked"),
        },
        Err(_) => warn!("the mount is still in use; it was detached and goes away with its last user"),
    }
}
