//! The `/dev/fuse` transport. fuser mounts and negotiates the connection (INIT, answered by
//! [`Negotiation`]); from then on lcfs's own threads ([`Readers`]) read requests from the
//! descriptor and answer them with the decoder both transports share (`dispatch`).
//!
//! Where the kernel carries requests over io_uring (`uring`), this descriptor still brings what
//! the kernel never sends through the queues: FORGET and INTERRUPT. On older kernels, or when
//! the queues could not register, it brings everything.
//!
//! **Interrupts.** When a caller waiting on a request gets a signal, the kernel sends one
//! INTERRUPT for it (Go programs signal their threads for preemption all the time). lcfs never
//! cancels a request, and the kernel learns that from one `ENOSYS` answer to an INTERRUPT, but
//! only if the interrupted request is still waiting for its own answer on this descriptor
//! (`fuse_dev_do_write` looks the request up among those read from it); an answer that finds
//! nothing fails with `ENOENT`. So the readers keep the requests they are serving in a set, and
//! answer an INTERRUPT only while its request is in it, holding the set's lock so that the
//! request's own answer cannot overtake the `ENOSYS`. The first such answer ends interrupts for
//! the connection, and the set is no longer kept. Every other INTERRUPT gets no answer, which
//! the protocol allows: its request was answered already, or it is served over io_uring, where
//! the kernel has no way to find it from here (`docs/design/fuse.md`). No answer ever fails.

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use fuser::{Errno, Filesystem, InitFlags, KernelConfig, Request};
use nix::errno::Errno as SysErrno;
use tracing::{debug, error, warn};
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{self, InHeader, InterruptIn, opcode};
use crate::dispatch::{self, Page};
use crate::fs::{LcfsFs, MAX_IO};

/// Answers INIT: the capabilities lcfs asks of the kernel.
#[derive(Debug)]
pub(crate) struct Negotiation {
    pub(crate) fs: Arc<LcfsFs>,
    /// Offer FUSE over io_uring (the `uring` queues register once INIT is done).
    pub(crate) io_uring: bool,
}

impl Filesystem for Negotiation {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_ASYNC_READ,
            // The kernel enforces ACLs kept in system.posix_acl_* xattrs.
            InitFlags::FUSE_POSIX_ACL,
            // Privileges are dropped here on modification (see `drop_privileges`), which lets
            // the kernel mark inodes as having no security xattrs to check instead of asking
            // for security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ];
        let writeback = self.fs.writeback_cache().then_some(InitFlags::FUSE_WRITEBACK_CACHE);
        let uring = self.io_uring.then_some(InitFlags::FUSE_OVER_IO_URING);
        for flag in wanted.into_iter().chain(writeback).chain(uring) {
            if let Err(missing) = config.add_capabilities(flag) {
                debug!(?missing, "the kernel lacks a FUSE capability");
            }
        }
        if let Err(nearest) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }
}

/// How often the kernel interrupted a request, and how lcfs answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptCounts {
    /// INTERRUPTs read from `/dev/fuse`.
    pub received: u64,
    /// INTERRUPTs answered with `ENOSYS` (at most one per connection: it ends them).
    pub answered: u64,
}

/// The threads reading `/dev/fuse`.
#[derive(Debug)]
pub(crate) struct Readers {
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Readers {
    /// Starts `threads` threads serving the connection `dev` (after INIT).
    pub(crate) fn start(fs: Arc<LcfsFs>, dev: OwnedFd, threads: usize) -> io::Result<Readers> {
        let shared = Arc::new(Shared { fs, dev, interrupts: Interrupts::default(), failed_replies: AtomicU64::new(0) });
        let mut readers = Readers { threads: Vec::new(), shared };
        for n in 0..threads.max(1) {
            let shared = readers.shared.clone();
            let thread = std::thread::Builder::new().name(format!("lcfs-fuse-{n}")).spawn(move || shared.run())?;
            readers.threads.push(thread);
        }
        Ok(readers)
    }

    pub(crate) fn interrupts(&self) -> InterruptCounts {
        let i = &self.shared.interrupts;
        InterruptCounts { received: i.received.load(Ordering::Relaxed), answered: i.answered.load(Ordering::Relaxed) }
    }

    /// Answers the kernel refused.
    pub(crate) fn failed_replies(&self) -> u64 {
        self.shared.failed_replies.load(Ordering::Relaxed)
    }

    /// Waits for the threads, which end when the connection does.
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
struct Shared {
    fs: Arc<LcfsFs>,
    dev: OwnedFd,
    interrupts: Interrupts,
    failed_replies: AtomicU64,
}

/// What the readers know of the kernel's interrupts (see the module docs).
#[derive(Debug, Default)]
struct Interrupts {
    /// Set once an `ENOSYS` answer has found its request: the kernel sends no more.
    kernel_told: AtomicBool,
    /// Requests read from `/dev/fuse` and not answered yet, kept until `kernel_told`.
    in_flight: Mutex<HashSet<u64>>,
    received: AtomicU64,
    answered: AtomicU64,
}

impl Interrupts {
    /// Notes that request `unique` is being served; true if it must be [`Self::done`] later.
    fn serving(&self, unique: u64) -> bool {
        if self.kernel_told.load(Ordering::Acquire) {
            return false;
        }
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(unique);
        true
    }

    /// Notes that request `unique` is about to be answered. From here on an `ENOSYS` for it
    /// could arrive after its answer, so it is no longer answered.
    fn done(&self, unique: u64) {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&unique);
    }
}

/// Size of `fuse_in_header`.
const IN_HEADER: usize = size_of::<InHeader>();
/// Where a `WRITE`'s data starts in a request.
const WRITE_DATA_OFFSET: usize = IN_HEADER + size_of::<abi::WriteIn>();

/// Room for the largest request (a `WRITE` of `MAX_IO` bytes) and the largest answer. Reads
/// start `WRITE_DATA_OFFSET` bytes before a page boundary, so written data lands page-aligned,
/// as it does over io_uring.
struct RequestBuf {
    pages: Box<[Page]>,
}

impl RequestBuf {
    fn new() -> RequestBuf {
        RequestBuf { pages: vec![Page::ZERO; MAX_IO as usize / 4096 + 1].into_boxed_slice() }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.pages.as_mut_bytes()[4096 - WRITE_DATA_OFFSET..]
    }
}

impl Shared {
    fn run(&self) {
        let mut buf = RequestBuf::new();
        loop {
            let bytes = buf.bytes();
            let len = match nix::unistd::read(&self.dev, bytes) {
                Ok(len) => len,
                // ENOENT: the request was gone by the time it was copied; try the next.
                Err(SysErrno::EINTR | SysErrno::EAGAIN | SysErrno::ENOENT) => continue,
                Err(SysErrno::ENODEV | SysErrno::ECONNABORTED) => {
                    debug!("FUSE connection closed; /dev/fuse reader ends");
                    return;
                }
                Err(e) => {
                    error!(error = %e, "cannot read FUSE requests from /dev/fuse; this reader ends");
                    return;
                }
            };
            self.handle(bytes, len);
        }
    }

    /// Serves the request in the first `len` bytes of `buf`, and answers it if it wants one.
    fn handle(&self, buf: &mut [u8], len: usize) {
        let Some(header) = buf.get(..len).and_then(|b| InHeader::read_from_prefix(b).ok()).map(|(h, _)| h) else {
            warn!(len, "a FUSE request shorter than its header; ignored");
            return;
        };
        match header.opcode {
            // lcfs keeps no lookup counts: inode numbers are the engine's, never reused. A
            // NOTIFY_REPLY would answer a retrieve lcfs never asks for. None wants an answer.
            opcode::FORGET | opcode::BATCH_FORGET | opcode::NOTIFY_REPLY => return,
            opcode::INTERRUPT => return self.interrupt(&header, &buf[IN_HEADER..len]),
            // Sent on unmount of block-device-backed mounts only; nothing to tear down here.
            opcode::DESTROY => {
                self.reply(header.unique, Ok(0), &[]);
                return;
            }
            _ => {}
        }
        let fixed = abi::fixed_arg_len(header.opcode).min(len - IN_HEADER);
        let (head, payload) = buf.split_at_mut(IN_HEADER + fixed);
        let op_in = &head[IN_HEADER..];
        let payload_in = len - IN_HEADER - fixed;
        let tracked = self.interrupts.serving(header.unique);
        let result = dispatch::serve_caught(&self.fs, &header, op_in, payload, payload_in);
        if tracked {
            self.interrupts.done(header.unique);
        }
        self.reply(header.unique, result, payload);
    }

    /// Answers an INTERRUPT with `ENOSYS` if its request is still being served here; see the
    /// module docs.
    fn interrupt(&self, header: &InHeader, arg: &[u8]) {
        let interrupts = &self.interrupts;
        interrupts.received.fetch_add(1, Ordering::Relaxed);
        let Ok((target, _)) = InterruptIn::read_from_prefix(arg) else { return };
        let in_flight = interrupts.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if !in_flight.contains(&target.unique) {
            return;
        }
        // The lock keeps the request's own answer back until this one is written.
        if self.reply(header.unique, Err(Errno::ENOSYS), &[]) {
            interrupts.answered.fetch_add(1, Ordering::Relaxed);
            if !interrupts.kernel_told.swap(true, Ordering::AcqRel) {
                debug!("told the kernel that lcfs does not cancel requests; it sends no more interrupts");
            }
        }
        drop(in_flight);
    }

    /// Writes the answer to request `unique`: `Ok(n)` with the first `n` bytes of `payload`,
    /// or an errno. Returns whether the kernel took it.
    fn reply(&self, unique: u64, result: Result<usize, Errno>, payload: &[u8]) -> bool {
        let (out, len) = dispatch::out_header(unique, result.map(|len| len.min(payload.len())));
        let iov = [IoSlice::new(out.as_bytes()), IoSlice::new(&payload[..len])];
        match nix::sys::uio::writev(&self.dev, &iov) {
            Ok(_) => true,
            Err(e) => {
                self.failed_replies.fetch_add(1, Ordering::Relaxed);
                match e {
                    SysErrno::ENODEV | SysErrno::ECONNABORTED => {
                        debug!(unique, "the FUSE connection ended before an answer was written")
                    }
                    _ => error!(unique, error = %e, "the kernel refused a FUSE answer"),
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_data_lands_page_aligned() {
        let mut buf = RequestBuf::new();
        let bytes = buf.bytes();
        assert_eq!(bytes[WRITE_DATA_OFFSET..].as_ptr() as usize % 4096, 0);
        assert!(bytes.len() >= WRITE_DATA_OFFSET + MAX_IO as usize, "room for the largest WRITE");
    }

    #[test]
    fn requests_are_tracked_only_until_the_kernel_is_told() {
        let i = Interrupts::default();
        assert!(i.serving(2));
        assert!(i.in_flight.lock().expect("lock").contains(&2));
        i.done(2);
        assert!(i.in_flight.lock().expect("lock").is_empty());
        i.kernel_told.store(true, Ordering::Release);
        assert!(!i.serving(4));
        assert!(i.in_flight.lock().expect("lock").is_empty());
    }
}
