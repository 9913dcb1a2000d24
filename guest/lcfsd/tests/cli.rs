//! End-to-end tests of the `lcfsd` binary: format and fsck on real files.

use std::path::Path;
use std::process::{Command, Output};

fn lcfsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcfsd")).args(args).output().expect("run lcfsd")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn format_creates_a_sparse_device_that_fsck_finds_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dir.path().join("disk.img");
    let out = lcfsd(&["format", "--device", path(&dev), "--size", "1G"]);
    assert!(out.status.success(), "{}", text(&out));
    let meta = std::fs::metadata(&dev).expect("stat");
    assert_eq!(meta.len(), 1 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 8 << 20, "the device file should be sparse");
    let out = lcfsd(&["fsck", "--device", path(&dev)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("clean"), "{}", text(&out));
    let again = lcfsd(&["format", "--device", path(&dev)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("already holds an lcfs file system"), "{}", text(&again));
    let forced = lcfsd(&["format", "--device", path(&dev), "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
}

#[test]
fn fsck_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = dir.path().join("foreign.img");
    std::fs::write(&foreign, vec![7u8; 1 << 20]).expect("write");
    let out = lcfsd(&["fsck", "--device", path(&foreign)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not an lcfs device"), "{}", text(&out));
    let missing = lcfsd(&["fsck", "--device", path(&dir.path().join("nope"))]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("No such file"), "{}", text(&missing));

    let dev = dir.path().join("disk.img");
    assert!(lcfsd(&["format", "--device", path(&dev), "--size", "256M"]).status.success());
    // Damage a metadata page that the empty store uses (its first page).
    let mut bytes = std::fs::read(&dev).expect("read");
    bytes[(1 << 20) + 64] ^= 0xff;
    std::fs::write(&dev, &bytes).expect("write");
    let out = lcfsd(&["fsck", "--device", path(&dev)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("NOT clean"), "{}", text(&out));
    assert_eq!(std::fs::read(&dev).expect("read"), bytes, "fsck must not write");
}

#[test]
fn format_refuses_impossible_sizes_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = dir.path().join("tiny.img");
    let out = lcfsd(&["format", "--device", path(&dev), "--size", "1M"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("too small"), "{}", text(&out));
    let out = lcfsd(&["format", "--device", path(&dev), "--size", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a size"), "{}", text(&out));
}

/// A loop device over a sparse file, detached on drop.
struct LoopDevice {
    path: String,
}

impl LoopDevice {
    fn new(backing: &Path) -> LoopDevice {
        let out = Command::new("losetup").args(["-f", "--show", path(backing)]).output().expect("run losetup");
        assert!(out.status.success(), "losetup failed (root and loop devices are needed): {}", text(&out));
        LoopDevice { path: String::from_utf8_lossy(&out.stdout).trim().to_string() }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

#[test]
fn a_block_device_formats_and_checks_but_cannot_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing).and_then(|f| f.set_len(96 << 20)).expect("backing file");
    let dev = LoopDevice::new(&backing);
    let out = lcfsd(&["format", "--device", &dev.path]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("formatted {} ({} bytes)", dev.path, 96 << 20)), "{}", text(&out));
    let out = lcfsd(&["fsck", "--device", &dev.path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = lcfsd(&["format", "--device", &dev.path, "--size", "1G", "--force"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot grow"), "{}", text(&out));
}
