//! lcfs as containerd's snapshotter, end to end: a real containerd (Debian's package) with
//! `lcfsd` as its proxy snapshotter imports multi-layer images built here, unpacks them
//! through the FUSE mount and runs containers from them with runc. The unpacked tree is
//! compared file by file with what containerd's native snapshotter (plain full copies, the
//! reference semantics) makes of the same image. Needs root, containerd, runc and
//! busybox-static (`scripts/install-test-deps.sh` installs them).

mod support;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::oci::{self, LayerTar};
use support::tree;

const LCFSD: &str = env!("CARGO_BIN_EXE_lcfsd");
const IMAGE: &str = "lcfs.test/busybox:layers";

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn wait_for(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not become ready:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) with a child's pid and a signal number has no memory effects.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    child.wait().expect("wait")
}

/// `lcfsd run` with the snapshotter socket.
struct Lcfsd {
    child: Option<Child>,
    dir: PathBuf,
}

impl Lcfsd {
    fn start(dir: &Path) -> Lcfsd {
        let log = dir.join("lcfsd.log");
        let child = Command::new(LCFSD)
            .args(["run", "--size", "4294967296", "--device"])
            .arg(dir.join("disk.img"))
            .arg("--mountpoint")
            .arg(dir.join("mnt"))
            .arg("--api-socket")
            .arg(dir.join("api.sock"))
            .arg("--snapshotter-socket")
            .arg(Self::socket(dir))
            .arg("--containerd-root")
            .arg(Containerd::root(dir))
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log"))
            .spawn()
            .expect("start lcfsd");
        let socket = Self::socket(dir);
        wait_for("lcfsd", &log, || UnixStream::connect(&socket).is_ok());
        Lcfsd { child: Some(child), dir: dir.to_path_buf() }
    }

    fn socket(dir: &Path) -> PathBuf {
        dir.join("snapshotter.sock")
    }

    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let status = terminate(&mut child);
        assert!(status.success(), "lcfsd exited with {status}:\n{}", self.log());
        // containerd and runc are Go programs, whose preemption signals reach lcfs as FUSE
        // interrupts; neither they nor anything else containerd does is an error of lcfs's.
        let log = self.log();
        let errors: Vec<_> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(errors.is_empty(), "lcfsd logged errors:\n{log}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lcfsd.log")).unwrap_or_default()
    }

    /// The directory in the mount of the committed snapshot whose containerd key ends with
    /// `/name` (containerd prefixes keys with the namespace and a number).
    fn committed_dir(&self, name: &str) -> PathBuf {
        let out = Command::new(LCFSD)
            .args(["layer", "list", "--json", "--api-socket"])
            .arg(self.dir.join("api.sock"))
            .output()
            .expect("lcfsd layer list");
        assert!(out.status.success(), "lcfsd layer list: {}", text(&out));
        let layers: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let suffix = format!("/{name}");
        let found: Vec<&str> = layers
            .as_array()
            .expect("a list")
            .iter()
            .filter(|l| l["kind"] == "committed")
            .filter(|l| l["labels"]["lcfs.snapshot.key"].as_str().is_some_and(|k| k.ends_with(&suffix)))
            .filter_map(|l| l["name"].as_str())
            .collect();
        assert_eq!(found.len(), 1, "one committed layer for {name}: {layers}");
        self.dir.join("mnt").join(found[0])
    }

    fn fsck(&self) {
        let out = Command::new(LCFSD).args(["fsck", "--device"]).arg(self.dir.join("disk.img")).output().expect("fsck");
        assert!(out.status.success(), "fsck: {}", text(&out));
    }
}

impl Drop for Lcfsd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// A private containerd: its own root, state and socket, with lcfs as the proxy plugin.
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, snapshotter: &Path) -> Containerd {
        let missing: Vec<_> =
            ["containerd", "ctr", "runc", "containerd-shim-runc-v2"].into_iter().filter(|b| !on_path(b)).collect();
        assert!(missing.is_empty(), "{missing:?} not installed: run scripts/install-test-deps.sh");
        let root = dir.join("containerd");
        std::fs::create_dir_all(&root).expect("containerd dir");
        debug_assert_eq!(root.join("root"), Containerd::root(dir));
        // containerd 2.x reads config version 3, has split its CRI plugin in three, and unpacks
        // into a proxy snapshotter only for the platforms the plugin declares. It also takes
        // lcfs's Diff service as a proxy plugin, which unpacks lcfs snapshots in process.
        let platform =
            format!("linux/{}", std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"));
        let (version, cri, proxy_platform) = if containerd_major() >= 2 {
            (
                3,
                r#""io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime""#,
                // The transfer service behind `ctr images import` unpacks only where its
                // unpack_config says; listing any replaces its default (overlayfs).
                format!(
                    "\n  platform = \"{platform}\"\n[proxy_plugins.lcfs-diff]\n  type = \"diff\"\n  address = \"{snapshotter}\"\n  platform = \"{platform}\"\n[plugins.'io.containerd.service.v1.diff-service']\n  default = [\"lcfs-diff\", \"walking\"]\n[plugins.'io.containerd.transfer.v1.local']\n{}",
                    [("lcfs", "lcfs-diff"), ("native", "walking"), ("overlayfs", "walking")]
                        .map(|(s, d)| format!(
                            "  [[plugins.'io.containerd.transfer.v1.local'.unpack_config]]\n    platform = \"{platform}\"\n    snapshotter = \"{s}\"\n    differ = \"{d}\"\n"
                        ))
                        .concat(),
                    snapshotter = snapshotter.display()
                ),
            )
        } else {
            (2, r#""io.containerd.grpc.v1.cri""#, String::new())
        };
        let config = format!(
            r#"version = {version}
root = "{root}/root"
state = "{root}/state"
disabled_plugins = [{cri}]
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[proxy_plugins.lcfs]
  type = "snapshot"
  address = "{snapshotter}"{proxy_platform}
"#,
            root = root.display(),
            snapshotter = snapshotter.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("config");
        let log = root.join("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, dir: root };
        wait_for("containerd", &log, || c.ctr(&["version"]).status.success());
        c
    }

    /// containerd's root directory (its content store is below it).
    fn root(dir: &Path) -> PathBuf {
        dir.join("containerd/root")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("--address").arg(self.dir.join("containerd.sock")).args(args).output().expect("run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(out.status.success(), "ctr {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The directory of the native snapshotter's snapshot that holds `marker` (a path only
    /// the wanted snapshot has). The directory is the snapshot itself: native keeps full copies.
    fn native_snapshot_with(&self, marker: &str) -> PathBuf {
        let snapshots = self.dir.join("root/io.containerd.snapshotter.v1.native/snapshots");
        let dirs: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .expect("native snapshots")
            .map(|e| e.expect("entry").path())
            .filter(|d| d.join(marker).exists())
            .collect();
        assert_eq!(dirs.len(), 1, "one native snapshot has {marker}: {dirs:?}");
        dirs[0].clone()
    }

    fn run(&self, id: &str, script: &str) -> String {
        self.ctr_ok(&["run", "--rm", "--snapshotter", "lcfs", IMAGE, id, "/bin/sh", "-c", script])
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// The major version of the containerd on PATH (run the tests with another containerd first
/// on PATH to test it).
fn containerd_major() -> u32 {
    let out = Command::new("containerd").arg("--version").output().expect("containerd --version");
    let version = String::from_utf8_lossy(&out.stdout);
    // "containerd github.com/containerd/containerd/v2 2.1.9+unknown"
    let number = version.split_whitespace().nth(2).unwrap_or_default().trim_start_matches('v');
    number.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(1)
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin")]).any(|d| d.join(binary).exists()))
}

/// busybox from Debian's busybox-static, with the applets the checks use.
fn base_layer() -> LayerTar {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut l = LayerTar::default();
    l.dir("bin", 0o755).file("bin/busybox", 0o755, &busybox);
    for applet in ["sh", "cat", "ls", "stat", "test", "echo", "cp", "rm", "mkdir", "sync"] {
        l.symlink(&format!("bin/{applet}"), "busybox");
    }
    l.dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/group", 0o644, b"root:x:0:\n")
        .dir("tmp", 0o1777)
        .dir("data", 0o755)
        .file("data/keep", 0o644, b"keep\n")
        .file("data/gone", 0o644, b"gone\n")
        .dir("data/dir", 0o700)
        .file("data/dir/a", 0o600, b"a\n")
        .file("data/dir/b", 0o600, b"b\n")
        .file_owned("data/owned", 0o4755, 1000, 1000, b"setuid\n")
        .char_device("data/null", 1, 3)
        .file_with_xattrs("data/attrs", 0o644, b"attrs\n", &[("user.lcfs", "one")])
        .dir("opq", 0o755)
        .file("opq/x", 0o644, b"x\n")
        .file("opq/y", 0o644, b"y\n")
        .dir("hl", 0o755)
        .file("hl/orig", 0o644, b"linked\n")
        .hardlink("hl/link1", "hl/orig")
        .hardlink("hl/link2", "hl/orig");
    l
}

/// The test image: three layers that delete, make a directory opaque, replace one name of a
/// hard-linked file, link to a lower file, change xattrs and re-create a deleted directory.
fn test_image() -> (Vec<u8>, Vec<String>) {
    let mut second = LayerTar::default();
    second
        .dir("data", 0o755)
        .whiteout("data", "gone")
        .whiteout("data", "dir")
        .file_with_xattrs("data/keep", 0o640, b"keep v2\n", &[("user.lcfs", "two")])
        .symlink("data/sym", "keep")
        .symlink("data/abs", "/etc/passwd")
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/z", 0o644, b"z\n")
        .dir("hl", 0o755)
        .file("hl/link1", 0o644, b"replaced\n")
        .hardlink("hl/cross", "hl/orig");
    let mut third = LayerTar::default();
    third
        .dir("data", 0o755)
        .dir("data/dir", 0o755)
        .file("data/dir/c", 0o644, b"c\n")
        .dir("opq", 0o755)
        .whiteout("opq", "z")
        .file("opq/w", 0o644, b"w\n")
        .file("etc/hostname", 0o644, b"lcfs\n");
    oci::image_archive(IMAGE, &[base_layer().finish(), second.finish(), third.finish()], &["/bin/sh"])
}

#[test]
fn containerd_unpacks_and_runs_images_on_lcfs_as_on_the_native_snapshotter() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let mut lcfsd = Lcfsd::start(dir.path());
    let containerd = Containerd::start(dir.path(), &Lcfsd::socket(dir.path()));
    let (archive, diff_ids) = test_image();
    let archive_path = dir.path().join("image.tar");
    std::fs::write(&archive_path, archive).expect("write image");
    let archive_path = archive_path.to_str().expect("utf-8 path");
    for snapshotter in ["lcfs", "native"] {
        containerd.ctr_ok(&["images", "import", "--snapshotter", snapshotter, archive_path]);
    }
    // containerd 2.x unpacks through lcfs's Diff service, in process; older ones through the
    // mount. Either way the tree must be native's.
    let applied = lcfsd.log().matches("layer applied").count();
    assert_eq!(applied, if containerd_major() >= 2 { 3 } else { 0 }, "layers lcfs applied:\n{}", lcfsd.log());

    // The unpacked image, file by file, against the native snapshotter's full copy.
    let top = oci::chain_ids(&diff_ids).pop().expect("three layers");
    let ours = lcfsd.committed_dir(&top);
    let native = containerd.native_snapshot_with("etc/hostname");
    let (ours, native) = (tree::describe(&ours), tree::describe(&native));
    assert!(ours.contains_key("bin/busybox") && ours.contains_key("data/dir/c"), "{:?}", ours.keys());
    let diffs = tree::differences(&native, &ours);
    assert!(diffs.is_empty(), "lcfs (right) differs from native (left):\n{}", diffs.join("\n"));
    assert_eq!(ours["hl/orig"].nlink, 3, "orig, link2 and cross; link1 was replaced");
    assert_eq!(ours["data/keep"].xattrs.get("user.lcfs").map(Vec::as_slice), Some(&b"two"[..]));

    // Containers run from it, see the image and write into their own layer.
    let script = "cat /data/keep; ls /opq; ls /data/dir; cat /hl/link1; stat -c %h /hl/orig; \
                  test -e /data/gone || echo gone; echo written > /tmp/new; cat /tmp/new";
    assert_eq!(containerd.run("first", script), "keep v2\nw\nc\nreplaced\n3\ngone\nwritten\n");
    assert_eq!(
        containerd.run("second", "cat /tmp/new 2>&1; echo $?"),
        "cat: can't open '/tmp/new': No such file or directory\n1\n"
    );

    // A restart of lcfsd keeps containerd's images usable.
    lcfsd.stop();
    lcfsd = Lcfsd::start(dir.path());
    // containerd redials the socket with gRPC's backoff (about a second at first).
    let log = dir.path().join("containerd/containerd.log");
    wait_for("containerd's reconnection", &log, || {
        containerd.ctr(&["snapshots", "--snapshotter", "lcfs", "ls"]).status.success()
    });
    assert_eq!(containerd.run("third", "cat /etc/hostname /data/attrs"), "lcfs\nattrs\n");
    if containerd_major() >= 2 {
        // Client-side unpacks (Docker's image store) go through containerd's diff service,
        // which tries lcfs-diff first: lcfs snapshots are applied by lcfs, native ones fall
        // through to the walking differ. A new namespace makes containerd unpack again.
        for snapshotter in ["lcfs", "native"] {
            containerd.ctr_ok(&[
                "-n",
                "client",
                "images",
                "import",
                "--local",
                "--snapshotter",
                snapshotter,
                archive_path,
            ]);
        }
        assert_eq!(lcfsd.log().matches("layer applied").count(), 6, "{}", lcfsd.log());
        for snapshotter in ["lcfs", "native"] {
            let id = format!("client-{snapshotter}");
            let args =
                ["-n", "client", "run", "--rm", "--snapshotter", snapshotter, IMAGE, &id, "/bin/cat", "/data/keep"];
            assert_eq!(containerd.ctr_ok(&args), "keep v2\n", "{snapshotter}");
        }
    }
    drop(containerd);
    lcfsd.stop();
    lcfsd.fsck();
}

#[test]
fn layer_entries_that_escape_stay_inside_the_layer() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let lcfsd = Lcfsd::start(dir.path());
    let containerd = Containerd::start(dir.path(), &Lcfsd::socket(dir.path()));
    let marker = format!("lcfs-escape-{}", std::process::id());
    let mut evil = LayerTar::default();
    evil.raw_file(format!("../../../../{marker}-dotdot").as_bytes(), b"dotdot\n")
        .raw_file(format!("/{marker}-absolute").as_bytes(), b"absolute\n")
        .symlink("up", "/")
        .raw_file(format!("up/{marker}-through-symlink").as_bytes(), b"symlink\n");
    let (archive, _) = oci::image_archive("lcfs.test/escape:1", &[base_layer().finish(), evil.finish()], &["/bin/sh"]);
    let path = dir.path().join("escape.tar");
    std::fs::write(&path, archive).expect("write image");
    let out = containerd.ctr(&["images", "import", "--snapshotter", "lcfs", path.to_str().expect("utf-8")]);
    assert!(out.status.success(), "containerd confines such entries to the layer: {}", text(&out));
    for outside in ["/", "/var/tmp", "/tmp"] {
        for suffix in ["dotdot", "absolute", "through-symlink"] {
            let p = Path::new(outside).join(format!("{marker}-{suffix}"));
            assert!(!p.exists(), "{} was written outside the layer", p.display());
        }
    }
    let listing = containerd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "lcfs",
        "lcfs.test/escape:1",
        "escape",
        "/bin/sh",
        "-c",
        "ls /",
    ]);
    for suffix in ["dotdot", "absolute", "through-symlink"] {
        assert!(listing.contains(&format!("{marker}-{suffix}")), "{suffix} lands in the layer's root: {listing}");
    }
    drop(containerd);
    drop(lcfsd);
}
