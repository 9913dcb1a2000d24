//! A mount whose io_uring queues cannot be set up serves everything through `/dev/fuse`
//! instead of hanging. Once the kernel has agreed to io_uring at INIT it holds every request
//! until each CPU's queue has registered, so lcfs must find out before INIT. In its own test
//! binary: it turns io_uring off for the whole machine while it runs.

mod support;

use std::fs;

use support::Mounted;

const IO_URING_DISABLED: &str = "/proc/sys/kernel/io_uring_disabled";

/// Puts the kernel's io_uring switch back as it was, also when the test fails.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(IO_URING_DISABLED, &self.0);
    }
}

#[test]
fn a_mount_without_io_uring_serves_through_dev_fuse() {
    let Ok(before) = fs::read_to_string(IO_URING_DISABLED) else {
        support::kernel_lacks(IO_URING_DISABLED);
        return;
    };
    let _restore = Restore(before.trim().to_string());
    fs::write(IO_URING_DISABLED, "2").expect("turn io_uring off");
    let started = std::time::Instant::now();
    let m = Mounted::new(1 << 30);
    let dir = m.create_layer("l", None);
    fs::write(dir.join("f"), b"served").expect("write");
    assert_eq!(fs::read(dir.join("f")).expect("read"), b"served");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the mount took {:?}", started.elapsed());
    assert_eq!(m.mount.as_ref().expect("mounted").io_uring_requests(), 0);
}
