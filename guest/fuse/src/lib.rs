//! lcfs-fuse: the FUSE frontend of the LCFS engine.
//!
//! One mount shows every layer as a directory named after it (`<mountpoint>/<layer>`);
//! committed layers and views are read-only, a writable layer's directory is a container's root
//! file system. Requests are served straight into the engine, whose counters therefore see
//! every operation: over io_uring, by threads pinned to each CPU (`uring`), where the kernel
//! offers it, and otherwise by threads reading `/dev/fuse` (`dev_fuse`), after fuser has
//! mounted and negotiated the connection. Both transports decode requests with one decoder
//! (`dispatch`, over the kernel's structures in `abi`). Design and measurements:
//! `docs/design/fuse.md`.

mod abi;
mod acl;
mod attr;
mod dev_fuse;
mod dispatch;
mod fs;
mod inode;
mod uring;

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Notifier, Session, SessionACL};
use lcfs_engine::Engine;
use tracing::{info, warn};

pub use dev_fuse::InterruptCounts;
use fs::LcfsFs;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Threads serving requests.
    pub threads: usize,
    /// Let every user reach the mount (`allow_other`); containers run as many users.
    pub allow_other: bool,
    /// Let the kernel cache writes and send them in large batches (FUSE writeback cache). On by
    /// default: faster for every workload measured (`docs/benchmarks/fuse.md`). Layers must then
    /// be flushed with [`Mount::flush_layer`] before they are committed.
    pub writeback_cache: bool,
    /// Readahead window of the mount in KiB. The kernel's default for FUSE (128 KiB) makes a
    /// cold sequential read a string of small requests; disks under local file systems get
    /// megabytes.
    pub readahead_kb: u32,
    /// Serve requests over io_uring, a queue per CPU, where the kernel offers it (Linux 6.14
    /// and later); turns the kernel's `fuse.enable_uring` parameter on if it is off. Requests
    /// go through `/dev/fuse` otherwise.
    pub io_uring: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions { threads: 4, allow_other: true, writeback_cache: true, readahead_kb: 4096, io_uring: true }
    }
}

/// A mounted file system, served by background threads until [`Mount::unmount`] (or drop).
#[derive(Debug)]
pub struct Mount {
    /// fuser's session, never run: it owns the mount (dropping it unmounts) and the
    /// descriptor the notifier writes to.
    session: Session<dev_fuse::Negotiation>,
    readers: dev_fuse::Readers,
    queues: Option<uring::Queues>,
    notifier: Notifier,
    mountpoint: PathBuf,
}

impl Mount {
    /// Tells the kernel that the layer directory `name` appeared or went away, so it does not
    /// answer from its cache.
    ///
    /// A commit under a new name keeps the layer's id, so its directory is the same inode under
    /// the new name: callers invalidate only the new name. Invalidating the old one would drop
    /// every cached dentry, inode and page below it (the kernel's `d_invalidate` prunes the
    /// subtree): a layer holding 1 GiB took 140 ms to commit instead of 8 ms. The old name instead
    /// moves to the new one at its first lookup (a directory has one dentry) or expires after
    /// the mount root's entry timeout, and meanwhile still reaches the same, now committed,
    /// layer.
    pub fn invalidate_layer(&self, name: &str) {
        match self.notifier.inval_entry(fuser::INodeNo::ROOT, std::ffi::OsStr::new(name)) {
            // ENOENT: the kernel had nothing cached under that name.
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                warn!(layer = name, error = %e, "could not invalidate a cached layer directory")
            }
            _ => {}
        }
    }

    /// Makes the kernel send everything it holds dirty for layer `name` (with the writeback
    /// cache, written data may still be in the kernel's page cache). Called before a layer is
    /// committed, so the committed layer holds every byte written before the commit.
    pub fn flush_layer(&self, name: &str) -> io::Result<()> {
        let dir = std::fs::File::open(self.mountpoint.join(name))?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Requests answered over io_uring so far (0 where the kernel does not offer it).
    pub fn io_uring_requests(&self) -> u64 {
        self.queues.as_ref().map_or(0, uring::Queues::served)
    }

    /// The kernel's INTERRUPTs so far, and how many were answered.
    pub fn interrupts(&self) -> InterruptCounts {
        self.readers.interrupts()
    }

    /// Answers to requests the kernel refused so far (over `/dev/fuse`; 0 when all is well).
    pub fn failed_replies(&self) -> u64 {
        self.readers.failed_replies()
    }

    /// Unmounts and waits for the serving threads to finish.
    pub fn unmount(self) -> io::Result<()> {
        info!(mountpoint = %self.mountpoint.display(), "unmounting");
        let Mount { mut session, readers, queues, .. } = self;
        let unmounted = session.unmount();
        // A mount still in use stays, and so does its connection: its threads go on serving
        // it and end with it.
        if unmounted.is_ok() {
            readers.join();
            if let Some(queues) = queues {
                queues.join();
            }
        }
        unmounted
    }
}

/// Mounts `engine` on `mountpoint` (as root: device nodes and set-user-id files work).
pub fn mount(engine: Engine, mountpoint: &Path, options: &MountOptions) -> io::Result<Mount> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lcfs".to_string()),
        MountOption::Subtype("lcfs".to_string()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
        MountOption::RW,
    ];
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    let fs = Arc::new(LcfsFs::new(engine, options.writeback_cache));
    // The queues' rings exist before INIT offers io_uring: once the kernel agrees, it holds
    // every request until each queue has registered.
    let mut queues = if options.io_uring && kernel_offers_io_uring() {
        uring::Queues::prepare(fs.clone(), options.threads)
            .inspect_err(|e| warn!(error = %e, "cannot set up the io_uring queues; requests go through /dev/fuse"))
            .ok()
    } else {
        None
    };
    let io_uring = queues.is_some();
    // Session::new returns once INIT is answered, so the queues can register right away.
    let session = Session::new(dev_fuse::Negotiation { fs: fs.clone(), io_uring }, mountpoint, &config)?;
    let notifier = session.notifier();
    // Every reader shares one descriptor, not one cloned each: the kernel looks an answer up
    // among the requests read from the descriptor it is written to, and an INTERRUPT's
    // answer must find its request (`dev_fuse`).
    let dev = session.as_fd().try_clone_to_owned()?;
    if let Some(queues) = queues.as_mut() {
        queues.start(dev.try_clone()?);
    }
    let readers = dev_fuse::Readers::start(fs, dev, options.threads)?;
    if let Err(e) = set_readahead(mountpoint, options.readahead_kb) {
        warn!(error = %e, "could not set the readahead window; cold sequential reads will be slower");
    }
    info!(mountpoint = %mountpoint.display(), threads = options.threads, io_uring, "mounted");
    Ok(Mount { session, readers, queues, notifier, mountpoint: mountpoint.to_path_buf() })
}

/// The kernel parameter that lets FUSE connections use io_uring (off by default).
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this kernel can carry FUSE over io_uring, turning its parameter on if needed. lcfs
/// owns the machines it runs on (its guest, or a CI host), and the parameter only lets FUSE
/// servers that ask for io_uring use it.
fn kernel_offers_io_uring() -> bool {
    match std::fs::read_to_string(ENABLE_URING) {
        Ok(v) if v.trim() == "Y" => true,
        Ok(_) => match std::fs::write(ENABLE_URING, "Y") {
            Ok(()) => {
                info!("turned on FUSE over io_uring in the kernel (fuse.enable_uring)");
                true
            }
            Err(e) => {
                warn!(error = %e, "could not turn on FUSE over io_uring (fuse.enable_uring); requests go through /dev/fuse");
                false
            }
        },
        Err(_) => false,
    }
}

/// Sets the readahead window of the mount's backing device info (its `read_ahead_kb`).
fn set_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(mountpoint)?);
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    std::fs::write(&path, kb.to_string()).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// What [`prepare_mountpoint`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountpointState {
    /// A directory ready to mount on.
    Ready,
    /// A mount left by a killed daemon ("transport endpoint is not connected") was detached.
    CleanedStaleMount,
}

/// Makes `mountpoint` ready: creates it if missing and detaches a stale FUSE mount left by a
/// daemon that was killed. A live file system mounted there is an error.
pub fn prepare_mountpoint(mountpoint: &Path) -> io::Result<MountpointState> {
    match std::fs::metadata(mountpoint) {
        Err(e) if no_daemon_behind(&e) => {
            detach(mountpoint)?;
            warn!(mountpoint = %mountpoint.display(), "detached a stale mount left by a previous daemon");
            Ok(MountpointState::CleanedStaleMount)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mountpoint)?;
            Ok(MountpointState::Ready)
        }
        Err(e) => Err(e),
        Ok(m) if !m.is_dir() => {
            Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{} is not a directory", mountpoint.display())))
        }
        Ok(_) => match mounted_type(mountpoint)? {
            None => Ok(MountpointState::Ready),
            // A stat may be answered from the kernel's cache even when the daemon behind the
            // mount is gone; listing the directory needs the daemon.
            Some((fstype, source))
                if fstype.starts_with("fuse")
                    && source == "lcfs"
                    && std::fs::read_dir(mountpoint).err().is_some_and(|e| no_daemon_behind(&e)) =>
            {
                detach(mountpoint)?;
                warn!(mountpoint = %mountpoint.display(), "detached a stale mount left by a previous daemon");
                Ok(MountpointState::CleanedStaleMount)
            }
            Some((fstype, _)) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already has a file system mounted on it ({fstype})", mountpoint.display()),
            )),
        },
    }
}

/// Whether an error from a FUSE mount means that no daemon serves it any more: its connection
/// is gone (`ENOTCONN`) or was aborted (`ECONNABORTED`); or `ECANCELED`, which a request gets
/// for a moment after a daemon serving over io_uring was killed, while the kernel tears down
/// its queues (seen in `kill_9_during_heavy_writes_keeps_every_committed_layer_and_leaves_a_
/// mount_to_clean`). A live daemon's mount answers none of these.
pub fn no_daemon_behind(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED))
}

/// Detaches whatever is mounted on `mountpoint` (lazily: it goes away with its last user).
pub fn detach(mountpoint: &Path) -> io::Result<()> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// The type and source of the file system mounted on `path`, if one is (per
/// /proc/self/mountinfo).
fn mounted_type(path: &Path) -> io::Result<Option<(String, String)>> {
    let canonical = std::fs::canonicalize(path)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id, parent, dev, root, mount point, options, optional fields..., "-", type,
    // source, super options.
    Ok(mountinfo.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let mp = fields.nth(4)?;
        if Path::new(&unescape_mountinfo(mp)) != canonical {
            return None;
        }
        let mut rest = fields.skip_while(|f| *f != "-");
        rest.next();
        let fstype = rest.next()?.to_string();
        Some((fstype, unescape_mountinfo(rest.next().unwrap_or_default())))
    }))
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo paths.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/var/lib/a\040b"), "/var/lib/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
