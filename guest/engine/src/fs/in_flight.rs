//! Writes in flight, and the layers that must wait for them.
//!
//! A write takes the state lock twice: once to plan (reserve new blocks, find the blocks it
//! overwrites in place), once to publish; the device I/O happens in between, without the lock.
//! Two things must not happen in that gap:
//!
//! * a commit: the write would change a layer its children take to be fixed, by overwriting
//!   its blocks in place or by publishing into it;
//! * a remove: the write would land in blocks the remove freed and another file may since
//!   have been given.
//!
//! So a write registers here while it holds the state lock to plan, and unregisters after it
//! has published or given up; a commit or remove first *closes* its layer: no new write may
//! start on it, and the commit or remove waits until the writes in flight on it are done. It
//! holds no engine lock while it waits, and a write that finds its layer closing waits, without
//! locks, for the commit or remove to end, then plans again (and is refused, as a write to a
//! committed or missing layer is).
//!
//! Unlinking or replacing a file does not close its layer: a write in flight holds a handle on
//! its file, like an open file, so a file unlinked meanwhile keeps its blocks until the write
//! is done. Truncate and `fallocate` take the file's inode lock, which the write holds
//! throughout.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::types::LayerId;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct WritesInFlight {
    state: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    /// Writes planned and not yet published or abandoned, per layer.
    writes: HashMap<LayerId, usize>,
    /// Layers a commit or remove is closing.
    closing: HashSet<LayerId>,
}

impl WritesInFlight {
    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, gate: MutexGuard<'a, Gate>) -> MutexGuard<'a, Gate> {
        self.changed.wait(gate).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while `layer` is being closed (after [`WritesInFlight::begin`] refused a write).
    pub(crate) fn wait_until_open(&self, layer: LayerId) {
        let mut gate = self.lock();
        while gate.closing.contains(&layer) {
            gate = self.wait(gate);
        }
    }

    /// Registers a write on `layer`, unless the layer is being closed. Called under the state
    /// lock, so a commit or remove, which takes that lock after closing, sees it.
    pub(crate) fn begin(&self, layer: LayerId) -> bool {
        let mut gate = self.lock();
        if gate.closing.contains(&layer) {
            return false;
        }
        *gate.writes.entry(layer).or_insert(0) += 1;
        true
    }

    /// Unregisters a write that [`WritesInFlight::begin`] registered.
    pub(crate) fn end(&self, layer: LayerId) {
        let mut gate = self.lock();
        if let Some(n) = gate.writes.get_mut(&layer) {
            *n -= 1;
            if *n == 0 {
                gate.writes.remove(&layer);
            }
        }
        drop(gate);
        self.changed.notify_all();
    }

    /// Closes `layer` to new writes and waits until none is in flight on it. The layer opens
    /// again when the returned guard goes. Must be called without the state lock.
    pub(crate) fn close(&self, layer: LayerId) -> ClosedLayer<'_> {
        let mut gate = self.lock();
        // One commit or remove at a time per layer.
        while gate.closing.contains(&layer) {
            gate = self.wait(gate);
        }
        gate.closing.insert(layer);
        while gate.writes.contains_key(&layer) {
            gate = self.wait(gate);
        }
        ClosedLayer { writes: self, layer }
    }
}

/// A layer closed to new writes; see [`WritesInFlight::close`].
#[derive(Debug)]
pub(crate) struct ClosedLayer<'a> {
    writes: &'a WritesInFlight,
    layer: LayerId,
}

impl Drop for ClosedLayer<'_> {
    fn drop(&mut self) {
        self.writes.lock().closing.remove(&self.layer);
        self.writes.changed.notify_all();
    }
}

/// A write registered with [`WritesInFlight::begin`]; unregisters it when it goes, on every
/// path out of the write.
#[derive(Debug)]
pub(crate) struct WriteInFlight<'a> {
    pub(crate) writes: &'a WritesInFlight,
    pub(crate) layer: LayerId,
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        self.writes.end(self.layer);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn closing_waits_for_the_writes_in_flight_and_refuses_new_ones() {
        let w = Arc::new(WritesInFlight::default());
        let (a, b) = (LayerId(1), LayerId(2));
        assert!(w.begin(a));
        assert!(w.begin(b));
        let (closed_tx, closed_rx) = mpsc::channel();
        let closer = {
            let w = w.clone();
            std::thread::spawn(move || {
                let _closed = w.close(a);
                closed_tx.send(()).expect("send");
                // Held until the test has tried a new write.
                std::thread::park();
            })
        };
        assert!(closed_rx.recv_timeout(Duration::from_millis(50)).is_err(), "closed with a write in flight");
        w.end(a);
        closed_rx.recv().expect("closed once the write ended");
        assert!(!w.begin(a), "a new write started on a closing layer");
        assert!(w.begin(b), "another layer is not closed");
        closer.thread().unpark();
        closer.join().expect("closer");
        assert!(w.begin(a), "the layer opens again");
    }
}
