//! An idle mount does not make the machine look as if it waited for its disk. Each io_uring
//! queue thread sleeps in `io_uring_enter` with a command outstanding, which the kernel counts
//! as I/O wait unless told not to (Linux 6.15 and later): every idle queue thread would show in
//! `procs_blocked`, in `vmstat`'s `b` and `wa`, and in `/proc/pressure/io`. In its own test
//! binary, so that the other tests' disk traffic is not counted.

mod support;

use std::time::Duration;

use support::Mounted;

/// Tasks the kernel counts as waiting for I/O right now (`procs_blocked` in `/proc/stat`).
fn procs_blocked() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    stat.lines()
        .find_map(|line| line.strip_prefix("procs_blocked "))
        .and_then(|n| n.trim().parse().ok())
        .expect("procs_blocked in /proc/stat")
}

/// CPUs the kernel may run on; the mount has a queue, and at least one queue thread, for each.
fn possible_cpus() -> u64 {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").expect("read the CPU list");
    list.trim()
        .split(',')
        .map(|range| match range.split_once('-') {
            Some((a, b)) => b.parse::<u64>().expect("cpu") - a.parse::<u64>().expect("cpu") + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn idle_queue_threads_are_not_waiting_for_io() {
    let m = Mounted::new(1 << 30);
    if support::io_uring_turned_off() {
        eprintln!("skipped: FUSE over io_uring is turned off for this run (LCFS_TEST_NO_URING)");
        return;
    }
    if !m.over_io_uring() {
        support::kernel_lacks("FUSE over io_uring");
        return;
    }
    let kernel_can_tell = io_uring::IoUring::new(2).map(|ring| ring.params().is_feature_no_iowait()).unwrap_or(false);
    if !kernel_can_tell {
        support::kernel_lacks("IORING_ENTER_NO_IOWAIT (every io_uring wait counts as I/O wait)");
        return;
    }
    let dir = m.create_layer("idle", None);
    std::fs::write(dir.join("f"), b"x").expect("write");
    // Each sample counts every idle queue thread if they wait as I/O; other tasks' real I/O
    // only ever adds, so the fewest of several samples is what the mount itself contributes.
    let fewest = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            procs_blocked()
        })
        .min()
        .expect("samples");
    let cpus = possible_cpus();
    assert!(fewest < cpus, "{fewest} tasks in I/O wait at the quietest moment, with {cpus} idle queues mounted");
}
