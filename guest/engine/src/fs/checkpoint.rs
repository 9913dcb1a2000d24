//! The checkpoint thread, which makes file changes durable at an interval, and the final
//! flush when the last handle of an engine goes.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use tracing::{error, warn};

use super::{Engine, Shared};
use crate::error::Error;

#[derive(Debug)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

#[derive(Debug)]
pub(super) struct Checkpointer {
    handle: thread::JoinHandle<()>,
    stop: Arc<StopSignal>,
}

impl Shared {
    pub(super) fn stop_checkpointer(&self) {
        let taken = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = taken {
            *c.stop.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
            c.stop.wake.notify_all();
            if c.handle.thread().id() != thread::current().id() {
                let _ = c.handle.join();
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_checkpointer();
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.device.sync().map_err(Error::Io).and_then(|()| state.flush(true)) {
            error!(device = %self.device_name, error = %e, "final flush failed; changes since the last durable point are lost");
        }
    }
}

pub(super) fn start_checkpointer(shared: &Arc<Shared>, interval: Duration) {
    let stop = Arc::new(StopSignal { stopped: Mutex::new(false), wake: Condvar::new() });
    let weak = Arc::downgrade(shared);
    let thread_stop = stop.clone();
    let spawned = thread::Builder::new().name("lcfs-checkpoint".into()).spawn(move || {
        loop {
            let stopped = thread_stop.stopped.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = thread_stop.wake.wait_timeout(stopped, interval).unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
            drop(stopped);
            let Some(shared) = weak.upgrade() else { return };
            let engine = Engine { shared };
            if engine.is_dirty()
                && let Err(e) = engine.sync()
            {
                warn!(error = %e, "checkpoint failed");
            }
        }
    });
    match spawned {
        Ok(handle) => {
            *shared.checkpointer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Checkpointer { handle, stop });
        }
        Err(e) => {
            error!(error = %e, "cannot start the checkpoint thread; changes become durable on sync only")
        }
    }
}
