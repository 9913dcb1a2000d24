//! A real FUSE mount of a fresh engine in a temporary directory, for the end-to-end tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};

use lcfs_engine::device::{Device, FileDevice};
use lcfs_engine::{Engine, FormatOptions, LayerKind, OpenOptions};
use lcfs_fuse::{Mount, MountOptions};

/// Says that this kernel lacks `what`, so a test checks nothing; fails instead where
/// `LCFS_TEST_REQUIRE_KERNEL_FEATURES=1` (CI sets it) says the machine must have it.
pub fn kernel_lacks(what: &str) {
    if std::env::var_os("LCFS_TEST_REQUIRE_KERNEL_FEATURES").is_some_and(|v| v == "1") {
        panic!("this kernel lacks {what}, and LCFS_TEST_REQUIRE_KERNEL_FEATURES=1 says it must have it");
    }
    eprintln!("skipped: this kernel lacks {what}");
}

/// Whether the test run turned FUSE over io_uring off (`LCFS_TEST_NO_URING=1`).
pub fn io_uring_turned_off() -> bool {
    std::env::var_os("LCFS_TEST_NO_URING").is_some()
}

/// An engine on a sparse file device, mounted; unmounted and removed on drop.
pub struct Mounted {
    pub engine: Engine,
    pub mount: Option<Mount>,
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(size: u64) -> Mounted {
        let dir = tempfile::tempdir().expect("tempdir");
        let device_path = dir.path().join("device.img");
        let device: Arc<dyn Device> = Arc::new(FileDevice::open_or_create(&device_path, size).expect("create device"));
        Engine::format(&device, &FormatOptions::default()).expect("format");
        let engine = Engine::open(device, &OpenOptions::default()).expect("open");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mountpoint");
        // LCFS_TEST_NO_WRITEBACK=1 runs the same tests without the kernel's writeback cache,
        // LCFS_TEST_NO_URING=1 with every request through /dev/fuse.
        let options = MountOptions {
            writeback_cache: std::env::var_os("LCFS_TEST_NO_WRITEBACK").is_none(),
            io_uring: std::env::var_os("LCFS_TEST_NO_URING").is_none(),
            ..MountOptions::default()
        };
        let mount = lcfs_fuse::mount(engine.clone(), &mnt, &options).expect("mount");
        Mounted { engine, mount: Some(mount), dir }
    }

    /// Whether requests reach the daemon over io_uring: waits (up to 10 s) for the per-CPU
    /// queues to take over where the kernel offers them and the test did not turn them off.
    pub fn over_io_uring(&self) -> bool {
        let Some(mount) = &self.mount else { return false };
        if std::env::var_os("LCFS_TEST_NO_URING").is_some()
            || !Path::new("/sys/module/fuse/parameters/enable_uring").exists()
        {
            return false;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mount.io_uring_requests() == 0 && std::time::Instant::now() < deadline {
            let _ = std::fs::metadata(self.mountpoint().join("probe"));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        mount.io_uring_requests() > 0
    }

    pub fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The directory of a layer in the mount.
    pub fn layer_dir(&self, name: &str) -> PathBuf {
        self.mountpoint().join(name)
    }

    pub fn create_layer(&self, name: &str, parent: Option<&str>) -> PathBuf {
        self.engine.create_layer(name, parent, LayerKind::Writable, BTreeMap::new()).expect("create layer");
        self.invalidate(name);
        self.layer_dir(name)
    }

    pub fn commit(&self, key: &str, name: &str) -> PathBuf {
        if let Some(m) = &self.mount {
            m.flush_layer(key).expect("flush before commit");
        }
        self.engine.commit_layer(key, name, None).expect("commit");
        self.invalidate(key);
        self.invalidate(name);
        self.layer_dir(name)
    }

    pub fn invalidate(&self, name: &str) {
        if let Some(m) = &self.mount {
            m.invalidate_layer(name);
        }
    }

    pub fn unmount(&mut self) {
        if let Some(m) = self.mount.take() {
            let _no_child_starting = spawn_or_unmount();
            m.unmount().expect("unmount");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// Tests run in parallel threads of one process, and a child process holds a copy of every
/// descriptor of that process until it execs: a child one test starts can keep a file another
/// test just closed open, and that test's unmount then fails with `EBUSY`. Starting a child
/// and unmounting therefore take turns.
static SPAWN_OR_UNMOUNT: Mutex<()> = Mutex::new(());

fn spawn_or_unmount() -> MutexGuard<'static, ()> {
    SPAWN_OR_UNMOUNT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `command` to completion and returns its output (see [`SPAWN_OR_UNMOUNT`]).
pub fn output(command: &mut Command) -> Output {
    let _no_unmount = spawn_or_unmount();
    command.output().unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// Runs a shell command, panicking with its output if it fails.
pub fn sh(script: &str, cwd: &Path) -> String {
    let out = output(Command::new("sh").arg("-c").arg(script).current_dir(cwd));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{script}` failed:\n{text}");
    text
}
