//! FUSE over io_uring (Linux 6.14 and later): one request queue per CPU, served by threads
//! pinned to that CPU.
//!
//! Over `/dev/fuse` every request wakes a daemon thread on whatever CPU it last ran, and its
//! answer wakes the caller back; on a VM whose idle vCPUs halt, each of those cross-CPU
//! wake-ups is the bulk of a round trip (`docs/design/fuse.md`). Over io_uring the kernel
//! queues a request on the caller's CPU, where a thread of that queue serves it, so the caller
//! and the daemon take turns on one CPU.
//!
//! The connection is still opened and negotiated by fuser on `/dev/fuse`. The threads here
//! create their rings first; INIT offers `FUSE_OVER_IO_URING` only if all of them could, since
//! from then on the kernel holds every request until each CPU's queue has registered a ring
//! entry (a header and a payload buffer). Then it sends all requests through the queues;
//! FORGET and INTERRUPT keep going to `/dev/fuse` (`dev_fuse`). If the kernel does not offer io_uring (too
//! old, or `fuse.enable_uring` off) or refuses a registration, `/dev/fuse` serves everything.

mod queue;

pub(crate) use queue::Queues;
