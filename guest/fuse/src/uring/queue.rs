//! The threads of the per-CPU queues. Each owns one io_uring and one ring entry: it registers
//! the entry, then answers the request the kernel put in it and fetches the next in one
//! command (`COMMIT_AND_FETCH`), until the connection ends.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fuser::Errno;
use io_uring::{EnterFlags, IoUring, cqueue, opcode, squeue, types};
use tracing::{debug, error, info};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{self, CMD_COMMIT_AND_FETCH, CMD_REGISTER, RingHeaders, UringCmdReq};
use crate::dispatch::{self, Page};
use crate::fs::{LcfsFs, MAX_IO};

/// How long a thread keeps registering while the kernel has not finished INIT (`EAGAIN`).
const REGISTER_PATIENCE: Duration = Duration::from_secs(30);

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// The threads serving the queues of one mount.
#[derive(Debug)]
pub(crate) struct Queues {
    threads: Vec<JoinHandle<()>>,
    /// One per thread: hands it the connection once INIT is done (dropped unsent: the
    /// connection does not use io_uring, and the thread ends).
    connections: Vec<mpsc::Sender<Arc<OwnedFd>>>,
    served: Arc<AtomicU64>,
}

impl Queues {
    /// Starts about `threads` threads, at least one per possible CPU, each with its io_uring
    /// ready. This comes before INIT: once the kernel has agreed to io_uring it holds every
    /// request until each CPU's queue has registered, so it may only be offered io_uring if
    /// every thread can register (an io_uring can be refused: `kernel.io_uring_disabled`,
    /// seccomp filters, memory limits). More than one thread per CPU lets a request wait for
    /// the disk without holding up the next one from that CPU.
    pub(crate) fn prepare(fs: Arc<LcfsFs>, threads: usize) -> io::Result<Queues> {
        let queues = possible_cpus()?;
        let threads_per_queue = threads.div_ceil(usize::from(queues)).max(1);
        let served = Arc::new(AtomicU64::new(0));
        let mut prepared = Queues { threads: Vec::new(), connections: Vec::new(), served: served.clone() };
        let (ready_tx, ready_rx) = mpsc::channel();
        for qid in 0..queues {
            for n in 0..threads_per_queue {
                let (connection_tx, connection_rx) = mpsc::channel();
                let worker = Worker { fs: fs.clone(), qid, served: served.clone(), first: qid == 0 && n == 0 };
                let ready = ready_tx.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("lcfs-uring-{qid}.{n}"))
                    .spawn(move || worker.run(&ready, &connection_rx))?;
                prepared.threads.push(thread);
                prepared.connections.push(connection_tx);
            }
        }
        drop(ready_tx);
        for _ in 0..prepared.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a FUSE io_uring queue thread ended before its ring was ready")),
            }
        }
        Ok(prepared)
    }

    /// Hands the threads the FUSE connection `dev` (a descriptor of the mount's `/dev/fuse`,
    /// after INIT); they register their entries and serve.
    pub(crate) fn start(&mut self, dev: OwnedFd) {
        let dev = Arc::new(dev);
        for connection in self.connections.drain(..) {
            let _ = connection.send(dev.clone());
        }
    }

    /// Requests answered over io_uring so far.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Waits for the threads, which end when the connection does (or at once if they never
    /// got it).
    pub(crate) fn join(mut self) {
        self.connections.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// CPUs the kernel may run on: it keeps one queue for each.
fn possible_cpus() -> io::Result<u16> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_count(&list)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("cannot read the CPU list {list:?}")))
}

/// How many CPUs a kernel CPU list ("0-3,5") names.
fn parse_cpu_count(list: &str) -> Option<u16> {
    let mut count = 0u16;
    for range in list.trim().split(',') {
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
            None => {
                let cpu = range.parse::<u16>().ok()?;
                (cpu, cpu)
            }
        };
        count = count.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(count)
}

/// How a queue thread ended.
enum Ended {
    /// The connection went away (unmount or abort).
    Disconnected,
    /// The kernel does not offer FUSE over io_uring on this connection.
    Unavailable(Errno),
}

/// The buffers of one ring entry. The kernel writes into them while it holds one of our
/// commands for the entry, that is, only during `io_uring_enter` calls of the owning thread.
struct Slot {
    headers: Box<RingHeaders>,
    payload: Box<[Page]>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            headers: Box::new(RingHeaders::new_zeroed()),
            payload: vec![Page::ZERO; MAX_IO as usize / 4096].into_boxed_slice(),
        }
    }

    /// The entry's buffers as the kernel wants them at registration: headers, then payload.
    fn iovecs(&mut self) -> [libc::iovec; 2] {
        let payload = self.payload.as_mut_bytes();
        [
            libc::iovec {
                iov_base: std::ptr::from_mut(self.headers.as_mut()).cast(),
                iov_len: size_of::<RingHeaders>(),
            },
            libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() },
        ]
    }
}

struct Worker {
    fs: Arc<LcfsFs>,
    qid: u16,
    served: Arc<AtomicU64>,
    /// The thread that reports, once, that the kernel refused io_uring.
    first: bool,
}

/// How many times a thread registers a fresh ring entry after a fault before it gives up.
const FRESH_ENTRIES: u32 = 3;

impl Worker {
    fn run(self, ready: &mpsc::Sender<io::Result<()>>, connection: &mpsc::Receiver<Arc<OwnedFd>>) {
        self.pin();
        let mut ring = match new_ring() {
            Ok(ring) => {
                let _ = ready.send(Ok(()));
                ring
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let Ok(dev) = connection.recv() else { return };
        for fault in 1..=FRESH_ENTRIES + 1 {
            let mut slot = Slot::new();
            match self.serve(&mut ring, dev.as_raw_fd(), &mut slot) {
                Ok(Ended::Disconnected) => {
                    debug!(queue = self.qid, "FUSE connection closed; queue thread ends");
                    return;
                }
                Ok(Ended::Unavailable(e)) => {
                    if self.first {
                        info!(error = ?e, "the kernel refused the io_uring queues; requests go through /dev/fuse");
                    }
                    return;
                }
                Err(e) => {
                    // A command may still be in flight, and the kernel would write into its
                    // buffers: they must outlive this thread.
                    std::mem::forget(slot);
                    if fault > FRESH_ENTRIES {
                        error!(queue = self.qid, error = %e, "a FUSE io_uring queue thread gives up; the queue's other threads serve its CPU");
                        return;
                    }
                    error!(queue = self.qid, error = %e, "a FUSE io_uring queue thread failed; it registers a fresh entry");
                }
            }
        }
    }

    /// Runs on the queue's CPU, so the kernel's wake-up of this thread stays on the CPU
    /// that made the request.
    fn pin(&self) {
        let mut set = nix::sched::CpuSet::new();
        if let Err(e) = set
            .set(usize::from(self.qid))
            .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        {
            debug!(queue = self.qid, error = %e, "could not pin a queue thread to its CPU");
        }
    }

    /// Registers `slot` and serves the requests the kernel puts in it until the connection
    /// ends.
    fn serve(&self, ring: &mut Ring, fd: RawFd, slot: &mut Slot) -> io::Result<Ended> {
        let mut iovecs = slot.iovecs();
        let deadline = Instant::now() + REGISTER_PATIENCE;
        loop {
            let register =
                command(fd, CMD_REGISTER, UringCmdReq { qid: self.qid, ..Default::default() }, Some(&mut iovecs));
            match submit(ring, &register)? {
                0.. => break,
                r if -r == libc::EAGAIN && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                r => return ended(-r, true),
            }
        }
        loop {
            let commit_id = slot.headers.ring_ent_in_out.commit_id;
            self.answer(slot);
            if self.served.fetch_add(1, Ordering::Relaxed) == 0 {
                info!("FUSE requests arrive over io_uring, one queue per CPU");
            }
            let commit =
                command(fd, CMD_COMMIT_AND_FETCH, UringCmdReq { commit_id, qid: self.qid, ..Default::default() }, None);
            let r = submit(ring, &commit)?;
            if r < 0 {
                return ended(-r, false);
            }
        }
    }

    /// Answers the request in `slot`, in place.
    fn answer(&self, slot: &mut Slot) {
        let header = abi::InHeader::read_from_prefix(&slot.headers.in_out).map(|(h, _)| h).unwrap_or_default();
        let op_in = slot.headers.op_in;
        let payload_in = slot.headers.ring_ent_in_out.payload_sz as usize;
        let payload = slot.payload.as_mut_bytes();
        let result = dispatch::serve_caught(&self.fs, &header, &op_in, payload, payload_in);
        let (out, len) = dispatch::out_header(header.unique, result);
        slot.headers.in_out[..size_of::<abi::OutHeader>()].copy_from_slice(out.as_bytes());
        slot.headers.ring_ent_in_out.payload_sz = len as u32;
    }
}

/// What a failed command means. A registration the kernel refuses leaves `/dev/fuse` serving
/// everything; a refused commit is a fault.
fn ended(errno: i32, registering: bool) -> io::Result<Ended> {
    match errno {
        libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => Ok(Ended::Disconnected),
        libc::EOPNOTSUPP | libc::EINVAL | libc::EAGAIN if registering => Ok(Ended::Unavailable(Errno::from_i32(errno))),
        _ => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn new_ring() -> io::Result<Ring> {
    // One thread submits and waits, so the kernel may run our completions only when we wait.
    Ring::builder().setup_single_issuer().setup_defer_taskrun().build(4).or_else(|_| Ring::builder().build(4))
}

/// Submits `sqe` and waits for its completion; returns its result. Where the kernel allows it
/// (Linux 6.15 and later) the wait is not counted as I/O wait: a queue thread waits for
/// requests, not for a disk, and otherwise every queue thread of an idle mount would show as
/// blocked on I/O (`/proc/pressure/io` at 100%, `wa` in `vmstat`), misleading monitoring and
/// anything that backs off under I/O pressure.
fn submit(ring: &mut Ring, sqe: &squeue::Entry128) -> io::Result<i32> {
    // SAFETY: the command points at the entry's iovecs and, through them, at its header and
    // payload buffers; the caller keeps all of them alive for as long as the kernel may use
    // them (`Worker::run` leaks them if a command may still be in flight).
    unsafe { ring.submission().push(sqe) }.map_err(|_| io::Error::other("the io_uring submission queue is full"))?;
    let mut flags = EnterFlags::GETEVENTS;
    if ring.params().is_feature_no_iowait() {
        flags |= EnterFlags::NO_IOWAIT;
    }
    loop {
        let to_submit = ring.submission().len() as u32;
        // SAFETY: no argument structure is passed, and the flags are ones this kernel accepts;
        // the submission's buffers are kept alive as said above.
        match unsafe { ring.submitter().enter::<libc::sigset_t>(to_submit, 1, flags.bits(), None) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        if let Some(cqe) = ring.completion().next() {
            return Ok(cqe.result());
        }
    }
}

/// A FUSE io_uring command for queue `req.qid`; a registration also hands over the entry's
/// two buffers.
fn command(fd: RawFd, op: u32, req: UringCmdReq, iovecs: Option<&mut [libc::iovec; 2]>) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[..size_of::<UringCmdReq>()].copy_from_slice(req.as_bytes());
    let mut builder = opcode::UringCmd80::new(types::Fd(fd), op).cmd(cmd);
    let Some(iovecs) = iovecs else { return builder.build() };
    builder = builder.addr(Some(iovecs.as_mut_ptr() as u64));
    with_len(builder.build(), iovecs.len() as u32)
}

/// Sets the SQE's `len` field, which `UringCmd80` does not expose and a FUSE registration
/// needs (the number of iovecs).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    /// Offset of `len` in `struct io_uring_sqe`.
    const LEN_OFFSET: usize = 24;
    // SAFETY: `Entry128` is `repr(C)`: a 64-byte `io_uring_sqe` followed by 64 command bytes,
    // all integers and unions of integers, so every bit pattern is valid and the two types
    // have the same size (checked by the io-uring crate and by a test below).
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(parse_cpu_count("0-1\n"), Some(2));
        assert_eq!(parse_cpu_count("0"), Some(1));
        assert_eq!(parse_cpu_count("0-3,5"), Some(5));
        assert_eq!(parse_cpu_count("3-1"), None);
        assert_eq!(parse_cpu_count("x"), None);
    }

    #[test]
    fn a_registration_names_its_two_buffers() {
        assert_eq!(size_of::<squeue::Entry128>(), 128);
        let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
        let sqe = command(7, CMD_REGISTER, UringCmdReq { qid: 3, ..Default::default() }, Some(&mut iovecs));
        // SAFETY: see `with_len`.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(bytes[0], io_uring::opcode::UringCmd80::CODE);
        assert_eq!(i32::from_ne_bytes(bytes[4..8].try_into().expect("field")), 7, "fd");
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().expect("field")), CMD_REGISTER, "cmd_op");
        assert_eq!(u64::from_ne_bytes(bytes[16..24].try_into().expect("field")), iovecs.as_ptr() as u64, "addr");
        assert_eq!(u32::from_ne_bytes(bytes[24..28].try_into().expect("field")), 2, "len");
        assert_eq!(u16::from_ne_bytes(bytes[64..66].try_into().expect("field")), 3, "qid in the command area");
    }
}
