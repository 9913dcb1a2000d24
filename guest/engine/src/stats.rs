//! Cheap activity counters: per layer (operations by type, bytes read and written) and per file
//! (accesses), kept in memory for reporting top layers and hot files.
//!
//! Layer counters are relaxed atomics. File counters live in a sharded map keyed by
//! (layer, inode) so concurrent operations on different files rarely meet on a lock; an
//! increment costs a hash and an uncontended lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::{Ino, LayerId};

/// Operation types counted per layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Lookup,
    GetAttr,
    SetAttr,
    Read,
    Write,
    Create,
    Remove,
    Rename,
    Link,
    ReadDir,
    ReadLink,
    Xattr,
    Open,
    Sync,
}

impl Op {
    pub const ALL: [Op; 14] = [
        Op::Lookup,
        Op::GetAttr,
        Op::SetAttr,
        Op::Read,
        Op::Write,
        Op::Create,
        Op::Remove,
        Op::Rename,
        Op::Link,
        Op::ReadDir,
        Op::ReadLink,
        Op::Xattr,
        Op::Open,
        Op::Sync,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::GetAttr => "getattr",
            Op::SetAttr => "setattr",
            Op::Read => "read",
            Op::Write => "write",
            Op::Create => "create",
            Op::Remove => "remove",
            Op::Rename => "rename",
            Op::Link => "link",
            Op::ReadDir => "readdir",
            Op::ReadLink => "readlink",
            Op::Xattr => "xattr",
            Op::Open => "open",
            Op::Sync => "sync",
        }
    }
}

/// Counters of one layer.
#[derive(Debug, Default)]
pub struct LayerCounters {
    ops: [AtomicU64; Op::ALL.len()],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl LayerCounters {
    pub(crate) fn op(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LayerStats {
        LayerStats {
            ops: Op::ALL.iter().map(|&op| (op, self.ops[op as usize].load(Ordering::Relaxed))).collect(),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// A copy of a layer's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerStats {
    pub ops: Vec<(Op, u64)>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl LayerStats {
    pub fn count(&self, op: Op) -> u64 {
        self.ops.iter().find(|(o, _)| *o == op).map_or(0, |(_, n)| *n)
    }

    pub fn total_ops(&self) -> u64 {
        self.ops.iter().map(|(_, n)| n).sum()
    }
}

/// Accesses of one file in one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    pub opens: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl FileStats {
    pub fn accesses(&self) -> u64 {
        self.opens + self.reads + self.writes
    }
}

const SHARDS: usize = 32;

/// Per-file counters; see the module documentation.
#[derive(Debug)]
pub(crate) struct FileCounters {
    shards: Vec<Mutex<HashMap<(LayerId, Ino), FileStats>>>,
}

impl Default for FileCounters {
    fn default() -> Self {
        FileCounters { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

impl FileCounters {
    fn shard(&self, layer: LayerId, ino: Ino) -> std::sync::MutexGuard<'_, HashMap<(LayerId, Ino), FileStats>> {
        let i = (ino.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ layer.0) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update(&self, layer: LayerId, ino: Ino, f: impl FnOnce(&mut FileStats)) {
        f(self.shard(layer, ino).entry((layer, ino)).or_default());
    }

    /// Drops the counters of one file (its layer version is gone).
    pub fn forget(&self, layer: LayerId, ino: Ino) {
        self.shard(layer, ino).remove(&(layer, ino));
    }

    pub fn forget_layer(&self, layer: LayerId) {
        for shard in &self.shards {
            shard.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| k.0 != layer);
        }
    }

    /// The `limit` most accessed files of `layer` (of every layer if `None`).
    pub fn top(&self, layer: Option<LayerId>, limit: usize) -> Vec<(LayerId, Ino, FileStats)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(shard.iter().filter(|(k, _)| layer.is_none_or(|l| k.0 == l)).map(|(k, v)| (k.0, k.1, *v)));
        }
        all.sort_by(|a, b| b.2.accesses().cmp(&a.2.accesses()).then(a.1.cmp(&b.1)));
        all.truncate(limit);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_ranks() {
        let layer = LayerCounters::default();
        layer.op(Op::Read);
        layer.op(Op::Read);
        layer.read(10);
        let s = layer.snapshot();
        assert_eq!(s.count(Op::Read), 2);
        assert_eq!(s.bytes_read, 10);
        let files = FileCounters::default();
        for _ in 0..3 {
            files.update(LayerId(1), Ino(5), |f| f.reads += 1);
        }
        files.update(LayerId(1), Ino(6), |f| f.opens += 1);
        files.update(LayerId(2), Ino(7), |f| f.writes += 9);
        let top = files.top(Some(LayerId(1)), 10);
        assert_eq!(top.iter().map(|t| t.1).collect::<Vec<_>>(), vec![Ino(5), Ino(6)]);
        assert_eq!(files.top(None, 1)[0].1, Ino(7));
        files.forget_layer(LayerId(1));
        assert_eq!(files.top(None, 10).len(), 1);
    }
}
