//! pjdfstest, the POSIX file system test suite, inside a writable layer of a real mount —
//! and, in the same run, on the host's own file system as the reference: every test that
//! passes there must pass on lcfs.
//!
//! Needs the `pjdfstest` binary and a user named `tests` (`scripts/install-test-deps.sh`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use support::Mounted;

const CONFIG: &str = r#"
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// Skipped on any FUSE mount: glibc cannot tell LINK_MAX for FUSE (pathconf says 127,
/// "unknown"), and pjdfstest skips the test then. The engine's limit is 65,000, as ext4's.
const SKIPPED_ON_FUSE: [&str; 1] = ["link::link_count_max"];

/// Runs pjdfstest in `dir` (with `second` as the other file system for EXDEV cases) and
/// returns each test's outcome (`ok`, `FAILED`, `skipped`).
fn run(config: &Path, dir: &Path, second: &Path) -> BTreeMap<String, String> {
    let out = Command::new("pjdfstest")
        .arg("-c")
        .arg(config)
        .arg("-p")
        .arg(dir)
        .arg("-s")
        .arg(second)
        .output()
        .unwrap_or_else(|e| panic!("cannot run pjdfstest ({e}); install it with scripts/install-test-deps.sh"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut outcomes = BTreeMap::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        if let (Some(name), Some(outcome), None) = (words.next(), words.next(), words.next())
            && name.contains("::")
            && ["ok", "FAILED", "skipped"].contains(&outcome)
        {
            outcomes.insert(name.to_string(), outcome.to_string());
        }
    }
    assert!(
        outcomes.len() > 300,
        "pjdfstest ran only {} tests:\n{stdout}\n{}",
        outcomes.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    outcomes
}

fn world_writable(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
}

#[test]
fn every_test_that_passes_on_the_host_file_system_passes_on_lcfs() {
    let m = Mounted::new(4 << 30);
    let layer = m.create_layer("pjdfstest", None);
    let lcfs_dir = layer.join("t");
    world_writable(&lcfs_dir);
    let host = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let host_dir = host.path().join("t");
    world_writable(&host_dir);
    let config = host.path().join("pjdfstest.toml");
    std::fs::write(&config, CONFIG).expect("config");

    let on_lcfs = run(&config, &lcfs_dir, &host_dir);
    let on_host = run(&config, &host_dir, &lcfs_dir);

    let failed: Vec<&String> = on_lcfs.iter().filter(|(_, o)| *o == "FAILED").map(|(n, _)| n).collect();
    assert!(failed.is_empty(), "pjdfstest failures on lcfs: {failed:?}");
    let regressions: Vec<&String> = on_host
        .iter()
        .filter(|(name, outcome)| *outcome == "ok" && on_lcfs.get(*name).map(String::as_str) != Some("ok"))
        .map(|(name, _)| name)
        .filter(|name| !SKIPPED_ON_FUSE.contains(&name.as_str()))
        .collect();
    assert!(regressions.is_empty(), "pass on the host file system but not on lcfs: {regressions:?}");
    let passed = on_lcfs.values().filter(|o| *o == "ok").count();
    eprintln!(
        "pjdfstest: {passed} of {} passed on lcfs ({} on the host)",
        on_lcfs.len(),
        on_host.values().filter(|o| *o == "ok").count()
    );
}
