//! End-to-end tests of `lcfsd run`: the real binary, a real FUSE mount, the API socket, the
//! layer commands, and the faults a daemon meets: a second daemon, SIGTERM, kill -9 during
//! heavy writes, a stale mount, a full device, a removed layer under an open file, a zeroed
//! start of the device, and bad API requests.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const LCFSD: &str = env!("CARGO_BIN_EXE_lcfsd");

struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
}

impl Daemon {
    fn device(dir: &Path) -> PathBuf {
        dir.join("disk.img")
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn layer_dir(&self, name: &str) -> PathBuf {
        self.mountpoint().join(name)
    }

    /// Starts `lcfsd run` on `dir/disk.img` and waits until its API answers.
    fn start(dir: &Path, size: &str) -> Daemon {
        Self::start_with(dir, size, &[])
    }

    /// [`Daemon::start`] with more arguments for `lcfsd run`.
    fn start_with(dir: &Path, size: &str, args: &[&str]) -> Daemon {
        let child = Command::new(LCFSD)
            .args(["run", "--device"])
            .arg(Self::device(dir))
            .args(["--size", size, "--mountpoint"])
            .arg(dir.join("mnt"))
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log")).expect("log file"))
            .spawn()
            .expect("start lcfsd");
        let d = Daemon { child: Some(child), dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http(&d.socket(), "GET", "/v1/status", "").0 == 200 {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("lcfsd did not become ready:\n{}", d.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn layer(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(LCFSD);
        cmd.arg("layer").args(args).arg("--api-socket").arg(self.socket());
        cmd.output().expect("run lcfsd layer")
    }

    fn layer_ok(&self, args: &[&str]) -> String {
        let out = self.layer(args);
        assert!(out.status.success(), "lcfsd layer {args:?}: {}", text(&out));
        text(&out)
    }

    /// SIGTERM, then the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "lcfsd did not stop after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill -9");
        child.wait().expect("wait");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A killed daemon leaves its mount behind.
        let _ = Command::new("umount").arg("-l").arg(self.mountpoint()).output();
    }
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// One raw HTTP/1.1 request on the API socket: (status, body).
fn http(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut s) = UnixStream::connect(socket) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: lcfsd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn fsck(dir: &Path) -> Output {
    Command::new(LCFSD).args(["fsck", "--device"]).arg(Daemon::device(dir)).output().expect("run fsck")
}

#[test]
fn serves_layers_until_sigterm_and_keeps_them_across_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), "2G");
    d.layer_ok(&["create", "base"]);
    std::fs::create_dir(d.layer_dir("base").join("etc")).expect("mkdir");
    std::fs::write(d.layer_dir("base").join("etc/os-release"), b"ID=lcfs\n").expect("write");
    assert!(d.layer_ok(&["commit", "base", "base@1"]).contains("committed base as base@1"));
    d.layer_ok(&["create", "c1", "--parent", "base@1", "--label", "owner=test"]);
    assert_eq!(std::fs::read(d.layer_dir("c1").join("etc/os-release")).expect("read"), b"ID=lcfs\n");
    let listed = d.layer_ok(&["list", "--json"]);
    let layers: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(layers.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(layers[1]["labels"]["owner"], "test");

    // A second daemon on the same device is refused.
    let second = Command::new(LCFSD)
        .args(["run", "--device"])
        .arg(Daemon::device(tmp.path()))
        .arg("--mountpoint")
        .arg(tmp.path().join("mnt2"))
        .arg("--api-socket")
        .arg(tmp.path().join("api2.sock"))
        .output()
        .expect("run");
    assert_eq!(second.status.code(), Some(2));
    assert!(text(&second).contains("is in use"), "{}", text(&second));

    let status = d.stop();
    assert!(status.success(), "lcfsd exited {status}:\n{}", d.log());
    assert!(!d.socket().exists(), "the socket is removed on exit");
    let out = fsck(tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let d = Daemon::start(tmp.path(), "2G");
    assert_eq!(std::fs::read(d.layer_dir("c1").join("etc/os-release")).expect("read"), b"ID=lcfs\n");
    let out = d.layer(&["remove", "base@1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("has child layers"), "{}", text(&out));
}

/// One stray write over the start of the device (both superblock copies sit in its first
/// 8 KiB) must not make `lcfsd run` format over every image: fsck says what is damaged and
/// what it used, and the daemon restores the superblocks from their backup and serves the
/// committed layers as before.
#[test]
fn a_zeroed_start_of_the_device_is_restored_not_formatted_over() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), "1G");
    d.layer_ok(&["create", "base"]);
    std::fs::write(d.layer_dir("base").join("kept"), b"committed before the damage").expect("write");
    d.layer_ok(&["commit", "base", "base@1"]);
    assert!(d.stop().success());

    let device = std::fs::OpenOptions::new().write(true).open(Daemon::device(tmp.path())).expect("device");
    device.write_all_at(&[0u8; 8192], 0).expect("zero the superblocks");
    drop(device);
    let out = fsck(tmp.path());
    assert_eq!(out.status.code(), Some(1), "fsck of the damaged device: {}", text(&out));
    assert!(text(&out).contains("used the backup copy"), "{}", text(&out));

    let mut d = Daemon::start(tmp.path(), "1G");
    assert!(d.log().contains("restoring them from the backup copy"), "{}", d.log());
    assert!(!d.log().contains("formatted"), "{}", d.log());
    let kept = std::fs::read(d.layer_dir("base@1").join("kept")).expect("the committed file");
    assert_eq!(kept, b"committed before the damage");
    assert!(d.stop().success());
    let out = fsck(tmp.path());
    assert_eq!(out.status.code(), Some(0), "fsck after the restoring start: {}", text(&out));
}

#[test]
fn kill_9_during_heavy_writes_keeps_every_committed_layer_and_leaves_a_mount_to_clean() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(tmp.path(), "4G");
    // Committed layers with known content.
    let mut parent: Option<String> = None;
    for i in 0..4 {
        let name = format!("l{i}");
        let mut args = vec!["create", name.as_str()];
        if let Some(p) = &parent {
            args.extend(["--parent", p.as_str()]);
        }
        d.layer_ok(&args);
        let data: Vec<u8> = (0..(1 << 20)).map(|b| (b * (i + 7)) as u8).collect();
        std::fs::write(d.layer_dir(&name).join(format!("file{i}")), &data).expect("write");
        let committed = format!("{name}@c");
        d.layer_ok(&["commit", &name, &committed]);
        parent = Some(committed);
    }
    // Heavy writes into a writable layer on top, then kill -9 in the middle.
    d.layer_ok(&["create", "busy", "--parent", "l3@c"]);
    let busy = d.layer_dir("busy");
    let writer = std::thread::spawn(move || {
        let chunk = vec![0xabu8; 256 << 10];
        for i in 0..400 {
            let Ok(mut f) = std::fs::File::create(busy.join(format!("w{i}"))) else { return };
            for _ in 0..4 {
                if f.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(400));
    d.kill9();
    let _ = writer.join();

    // The mount is left behind, disconnected (listing it needs the daemon; a stat could be
    // answered from the kernel's attribute cache). While the kernel tears down the dead
    // daemon's io_uring queues, a request that reached one ends with ECANCELED instead; once
    // the connection is gone, every request ends with ENOTCONN.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = std::fs::read_dir(d.mountpoint()).expect_err("stale mount");
        match err.raw_os_error() {
            Some(libc::ENOTCONN) => break,
            Some(libc::ECANCELED) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => panic!("listing the dead daemon's mount: {err}"),
        }
    }
    let out = fsck(tmp.path());
    assert_eq!(out.status.code(), Some(0), "fsck after kill -9: {}", text(&out));

    // Restart on the same mountpoint: the stale mount is cleaned, committed layers intact.
    let d = Daemon::start(tmp.path(), "4G");
    assert!(d.log().contains("stale mount"), "{}", d.log());
    for i in 0..4u64 {
        let data = std::fs::read(d.layer_dir("l3@c").join(format!("file{i}"))).expect("read");
        assert_eq!(data.len(), 1 << 20);
        assert!(data.iter().enumerate().all(|(b, &v)| v == (b as u64 * (i + 7)) as u8), "file{i} damaged");
    }
    let listed = d.layer_ok(&["list"]);
    assert!(listed.contains("busy"), "{listed}");
}

#[test]
fn a_full_device_says_enospc_and_recovers_after_removal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), "200M");
    d.layer_ok(&["create", "l"]);
    let path = d.layer_dir("l").join("big");
    let mut f = std::fs::File::create(&path).expect("create");
    let chunk = vec![1u8; 1 << 20];
    let mut written = 0u64;
    // With the kernel's writeback cache the error can surface at writeback (fsync, close)
    // rather than at write(), as on NFS; either way it must be ENOSPC.
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        if written >= 400 << 20 {
            break f.sync_all().expect_err("the device holds less than 400 MiB");
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    std::fs::remove_file(&path).expect("remove");
    // Freed space becomes reusable once the removal is durable.
    let dir = std::fs::File::open(d.layer_dir("l")).expect("open dir");
    dir.sync_all().expect("syncfs");
    std::fs::write(d.layer_dir("l").join("again"), vec![2u8; 32 << 20]).expect("space is back");
}

#[test]
fn an_open_file_of_a_removed_layer_fails_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), "1G");
    d.layer_ok(&["create", "gone"]);
    let path = d.layer_dir("gone").join("f");
    std::fs::write(&path, b"data").expect("write");
    let f = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    let inode = f.metadata().expect("fstat").ino();
    d.layer_ok(&["remove", "gone"]);
    assert!(!d.layer_dir("gone").exists());
    // Pages the kernel still caches may be read; anything that reaches the daemon fails.
    let err = f.set_len(0).expect_err("layer is gone");
    assert!(matches!(err.raw_os_error(), Some(libc::ESTALE) | Some(libc::ENOENT)), "{err}");
    assert_ne!(inode, 0);
    drop(f);
    assert_eq!(http(&d.socket(), "GET", "/v1/status", "").0, 200, "daemon still healthy");
}

#[test]
fn bad_api_requests_get_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), "1G");
    let s = d.socket();
    let cases: [(&str, &str, &str, u16, &str); 10] = [
        ("POST", "/v1/layers", "{not json", 400, "bad request body"),
        ("POST", "/v1/layers", r#"{"name":"x","bogus":1}"#, 400, "unknown field"),
        ("POST", "/v1/layers", r#"{"name":"a/b"}"#, 400, "invalid layer name"),
        ("POST", "/v1/layers", r#"{"name":"x","kind":"committed"}"#, 400, "unknown layer kind"),
        ("POST", "/v1/layers", r#"{"name":"x","parent":"nope"}"#, 404, "not found"),
        ("POST", "/v1/layers/nope/commit", r#"{"name":"y"}"#, 404, "not found"),
        ("DELETE", "/v1/layers/nope", "", 404, "not found"),
        ("GET", "/v1/nothing", "", 404, "no such api endpoint"),
        ("PUT", "/v1/layers/nope/labels", r#"{"labels":{"k":"v"}}"#, 404, "not found"),
        ("POST", "/v1/layers", &format!(r#"{{"name":"x","labels":{{"k":"{}"}}}}"#, "v".repeat(5000)), 400, "label"),
    ];
    for (method, path, body, status, words) in cases {
        let (got, answer) = http(&s, method, path, body);
        assert_eq!(got, status, "{method} {path} {body:.60}: {answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
        let message = json["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(message.contains(words), "{method} {path}: {answer}");
    }
    assert_eq!(http(&s, "POST", "/v1/layers", r#"{"name":"ok"}"#).0, 201);
    assert_eq!(http(&s, "POST", "/v1/layers", r#"{"name":"ok"}"#).0, 409);
    assert_eq!(http(&s, "POST", "/v1/layers", r#"{"name":"v","parent":"ok"}"#).0, 409, "a writable parent");
    let mode = std::fs::metadata(&s).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o600, "the API socket is private");
}

#[test]
fn a_commit_holds_every_byte_written_before_it_even_from_still_open_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(tmp.path(), "2G");
    d.layer_ok(&["create", "work"]);
    // The kernel caches these writes (writeback cache) and the file stays open over the commit.
    let data: Vec<u8> = (0..(8 << 20)).map(|i| (i % 241) as u8).collect();
    let mut f = std::fs::File::create(d.layer_dir("work").join("data")).expect("create");
    f.write_all(&data).expect("write");
    d.layer_ok(&["commit", "work", "work@1"]);
    assert_eq!(std::fs::read(d.layer_dir("work@1").join("data")).expect("read"), data);
    drop(f);
    // Read back from the device, not the kernel's cache: a child layer is a different file.
    d.layer_ok(&["create", "child", "--parent", "work@1"]);
    assert_eq!(std::fs::read(d.layer_dir("child").join("data")).expect("read"), data);
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Go programs (containerd, runc, Docker) preempt their threads with SIGURG, so signals often
/// arrive while a caller waits on a FUSE request, and the kernel then sends an INTERRUPT for
/// it. lcfs never cancels a request: every operation of the signalled caller gets its real
/// answer, no answer to the kernel fails, and the daemon logs nothing about it, over io_uring
/// and over /dev/fuse alike (`guest/fuse/src/dev_fuse.rs` says how).
#[test]
fn signalled_callers_get_their_answers_and_the_log_stays_clean() {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // SAFETY: installs a handler that does nothing for SIGURG, whose default action is to be
    // ignored; with a handler the signal interrupts waits instead of being dropped.
    let previous = unsafe { libc::signal(libc::SIGURG, ignore_signal as *const () as libc::sighandler_t) };
    assert_ne!(previous, libc::SIG_ERR);
    for io_uring in ["true", "false"] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = Daemon::start_with(tmp.path(), "1G", &["--io-uring", io_uring]);
        d.layer_ok(&["create", "busy"]);
        let dir = d.layer_dir("busy");
        let done = Arc::new(AtomicBool::new(false));
        let worker = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                for i in 0..5_000 {
                    // A name never seen before: the lookup goes to the daemon.
                    match std::fs::symlink_metadata(dir.join(format!("missing-{i}"))) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        other => wrong.push(format!("lookup {i}: {other:?}")),
                    }
                    if i % 10 == 0 {
                        let path = dir.join(format!("file-{i}"));
                        let written = std::fs::write(&path, i.to_string());
                        match (written, std::fs::read_to_string(&path)) {
                            (Ok(()), Ok(back)) if back == i.to_string() => {}
                            other => wrong.push(format!("file {i}: {other:?}")),
                        }
                    }
                }
                done.store(true, Ordering::Release);
                wrong
            })
        };
        let mut sent = 0u32;
        while !done.load(Ordering::Acquire) {
            // SAFETY: the thread is alive until `done` is set, and joined only below.
            if unsafe { libc::pthread_kill(worker.as_pthread_t(), libc::SIGURG) } == 0 {
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let wrong = worker.join().expect("worker");
        assert!(sent > 100, "only {sent} signals were sent");
        assert!(wrong.is_empty(), "io_uring {io_uring}: operations failed under {sent} signals: {wrong:?}");
        assert_eq!(http(&d.socket(), "GET", "/v1/status", "").0, 200, "daemon still healthy");
        let log = d.log();
        let bad: Vec<_> = log.lines().filter(|l| l.contains(" ERROR ") || l.contains(" WARN ")).collect();
        assert!(bad.is_empty(), "io_uring {io_uring}: the log has errors or warnings after {sent} signals:\n{log}");
    }
}
