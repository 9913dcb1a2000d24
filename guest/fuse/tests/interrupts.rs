//! Signals to callers waiting on the mount: the kernel sends an INTERRUPT for a request whose
//! caller got a signal, and lcfs, which never cancels a request, must neither fail an answer
//! nor lose one. Runs over whichever transport the mount uses (`LCFS_TEST_NO_URING=1`: over
//! `/dev/fuse`).

mod support;

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::Mounted;

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Looks up `count` names never seen before in `dir` (each lookup reaches the daemon), and
/// after every 20th writes and syncs a file (a slow request, which signals are likely to
/// interrupt), while this thread signals the caller with SIGURG as Go's runtime does to its
/// threads; returns the signals sent and every operation whose answer was not the real one.
fn operations_under_signals(dir: PathBuf, first: usize, count: usize) -> (u32, Vec<String>) {
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut wrong = Vec::new();
            for i in first..first + count {
                match std::fs::symlink_metadata(dir.join(format!("missing-{i}"))) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    other => wrong.push(format!("lookup {i}: {other:?}")),
                }
                if i % 20 == 0
                    && let Err(e) = write_and_sync(&dir.join(format!("synced-{i}")), i)
                {
                    wrong.push(format!("write and sync {i}: {e}"));
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
    (sent, worker.join().expect("worker"))
}

fn write_and_sync(path: &std::path::Path, i: usize) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(i.to_string().as_bytes())?;
    f.sync_all()?;
    match std::fs::read_to_string(path)? {
        back if back == i.to_string() => Ok(()),
        back => Err(std::io::Error::other(format!("read back {back:?}"))),
    }
}

/// Every operation of a signalled caller gets its real answer and no answer to the kernel fails.
/// At most one INTERRUPT is ever answered (`ENOSYS`, which tells the kernel that lcfs does not
/// cancel requests), and none over io_uring, where the kernel could not find its request.
/// Once the kernel has been told, it sends no more.
#[test]
fn interrupts_never_fail_an_answer_and_are_answered_at_most_once() {
    // SAFETY: installs a handler that does nothing for SIGURG, whose default action is to be
    // ignored; with a handler the signal interrupts waits instead of being dropped.
    let previous = unsafe { libc::signal(libc::SIGURG, ignore_signal as *const () as libc::sighandler_t) };
    assert_ne!(previous, libc::SIG_ERR);
    let m = Mounted::new(1 << 30);
    let dir = m.create_layer("busy", None);
    let over_io_uring = m.over_io_uring();
    let mount = m.mount.as_ref().expect("mounted");

    let (sent, wrong) = operations_under_signals(dir.clone(), 0, 4_000);
    assert!(sent > 100, "only {sent} signals were sent");
    assert!(wrong.is_empty(), "operations failed under {sent} signals: {wrong:?}");
    assert_eq!(mount.failed_replies(), 0, "answers the kernel refused");
    let first = mount.interrupts();
    eprintln!("io_uring {over_io_uring}: {sent} signals, {first:?}");
    assert!(first.answered <= 1, "{first:?}");
    if over_io_uring {
        assert_eq!(first.answered, 0, "an INTERRUPT was answered although its request came over io_uring");
    }

    let (sent, wrong) = operations_under_signals(dir, 4_000, 1_000);
    assert!(wrong.is_empty(), "operations failed under {sent} signals: {wrong:?}");
    assert_eq!(mount.failed_replies(), 0, "answers the kernel refused");
    let second = mount.interrupts();
    assert!(second.answered <= 1, "{second:?}");
    if first.answered == 1 {
        assert_eq!(second.received, first.received, "the kernel went on interrupting after ENOSYS");
    }
}
