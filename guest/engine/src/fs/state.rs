//! The state behind the engine lock: loading it from the store, flushing it back, and the
//! bookkeeping every change shares (inode numbers, usage, metadata room).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use tracing::warn;

use super::State;
use crate::alloc::Allocator;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::layers::{LayerRef, Layers};
use crate::records::LayerRecord;
use crate::stats::Op;
use crate::store::{SharedSuperblock, Store, Table, keys, lock_superblock};
use crate::superblock::BLOCK_SIZE;
use crate::types::{Ino, LayerId, LayerInfo, LayerKind};

impl State {
    /// Loads layers and derives free space from the extents.
    pub(crate) fn load(store: Store, device: Arc<dyn Device>, superblock: SharedSuperblock) -> Result<State> {
        let read_counter = |key: &[u8]| -> Result<u64> {
            let v = store
                .get(Table::Meta, key)?
                .ok_or_else(|| Error::Corrupt(format!("the meta table lacks {:?}", String::from_utf8_lossy(key))))?;
            keys::be64(&v, 0).filter(|_| v.len() == 8).ok_or_else(|| Error::Corrupt("malformed counter".into()))
        };
        let next_ino = read_counter(keys::META_NEXT_INO)?;
        let next_layer = read_counter(keys::META_NEXT_LAYER)?;
        let mut records = Vec::new();
        store.scan(Table::Layers, (Bound::Unbounded, Bound::Unbounded), crate::store::Dir::Forward, |k, v| {
            let id = keys::be64(k, 0)
                .filter(|_| k.len() == 8)
                .ok_or_else(|| Error::Corrupt("malformed layer key".into()))?;
            let rec = LayerRecord::decode(v).map_err(|e| Error::Corrupt(format!("layer {id}: {e}")))?;
            records.push((LayerId(id), rec));
            Ok(true)
        })?;
        let layers = Layers::load(records).map_err(|e| Error::Corrupt(e.to_string()))?;
        let (start, end) = lock_superblock(&superblock).data_blocks();
        let mut alloc = Allocator::new(start, end);
        store.scan(Table::Extents, (Bound::Unbounded, Bound::Unbounded), crate::store::Dir::Forward, |k, v| {
            let (layer, ino, fb) = keys::parse_extent(k).ok_or_else(|| Error::Corrupt("malformed extent key".into()))?;
            let (phys, n) =
                keys::parse_extent_value(v).ok_or_else(|| Error::Corrupt("malformed extent value".into()))?;
            if phys != 0 {
                alloc.mark_used(phys, u64::from(n)).map_err(|c| {
                    Error::Corrupt(format!(
                        "blocks {}..{} of inode {ino} (file block {fb}) in layer {layer} are outside the data area or claimed twice",
                        c.start,
                        c.start + c.len
                    ))
                })?;
            }
            Ok(true)
        })?;
        Ok(State {
            store,
            layers,
            alloc,
            superblock,
            device,
            next_ino,
            next_ino_stored: next_ino,
            next_layer,
            next_layer_stored: next_layer,
            open: HashMap::new(),
            finished: Vec::new(),
        })
    }

    /// The layer with this id.
    pub(crate) fn layer(&self, id: LayerId) -> Result<LayerRef> {
        self.layers.layer_ref(id).ok_or_else(|| Error::LayerNotFound(format!("#{id}")))
    }

    /// The layer with this id, which must accept changes.
    pub(crate) fn writable(&self, id: LayerId) -> Result<LayerRef> {
        let l = self.layer(id)?;
        if l.kind != LayerKind::Writable {
            let name = self.layers.get(id).map(|x| x.record.name.clone()).unwrap_or_default();
            return Err(Error::LayerKind { name, kind: l.kind.as_str(), needed: "it cannot be changed" });
        }
        Ok(l)
    }

    pub(crate) fn info(&self, id: LayerId) -> Result<LayerInfo> {
        let layer = self.layers.get(id).ok_or_else(|| Error::LayerNotFound(format!("#{id}")))?;
        Ok(self.layers.info(layer))
    }

    /// Writes what only lives in memory into the overlay, then the overlay into the store.
    pub(crate) fn flush(&mut self, durable: bool) -> Result<()> {
        let dirty: Vec<LayerId> = self.layers.iter().filter(|l| l.dirty).map(|l| l.id).collect();
        for id in dirty {
            if let Some(layer) = self.layers.get_mut(id) {
                layer.dirty = false;
                let bytes = layer.record.encode();
                self.store.put(Table::Layers, keys::layer(id), bytes);
            }
        }
        if self.next_ino != self.next_ino_stored {
            self.store.put(Table::Meta, keys::META_NEXT_INO.to_vec(), self.next_ino.to_be_bytes().to_vec());
            self.next_ino_stored = self.next_ino;
        }
        if self.next_layer != self.next_layer_stored {
            self.store.put(Table::Meta, keys::META_NEXT_LAYER.to_vec(), self.next_layer.to_be_bytes().to_vec());
            self.next_layer_stored = self.next_layer;
        }
        if let Err(e) = self.store.flush(durable) {
            self.store.discard_overlay();
            return Err(e);
        }
        if durable {
            self.discard_pending();
            self.alloc.release_pending();
        }
        Ok(())
    }

    /// Gives the space of blocks whose freeing is now durable back to the medium (a hole in a
    /// device file, so deleted data stops occupying the host's disk). Done before the blocks
    /// can be reused, so it never races a new write; a failure only costs host space.
    pub(crate) fn discard_pending(&self) {
        for (start, len) in self.alloc.pending_runs() {
            if let Err(e) = self.device.zero_range(start * BLOCK_SIZE, len * BLOCK_SIZE) {
                warn!(error = %e, "could not give freed space back to the device");
                return;
            }
        }
    }

    /// Moves the overlay into the store when it holds more than `max` bytes.
    pub(crate) fn bound_overlay(&mut self, max: usize) -> Result<()> {
        if self.store.overlay_bytes() > max { self.flush(false) } else { Ok(()) }
    }

    /// Refuses operations that add metadata when the metadata region is nearly full.
    pub(crate) fn ensure_metadata_room(&mut self, op: Op) -> Result<()> {
        if matches!(op, Op::Remove | Op::SetAttr) {
            return Ok(());
        }
        let (capacity, used) = {
            let sb = lock_superblock(&self.superblock);
            (sb.meta_capacity, sb.meta_len)
        };
        let reserve = (capacity / 16).max(4 << 20);
        let pending = 4 * self.store.overlay_bytes() as u64;
        if used + pending + reserve <= capacity {
            return Ok(());
        }
        // The store may have free pages inside; a durable flush lets it reuse them.
        self.flush(true)?;
        let used = lock_superblock(&self.superblock).meta_len;
        if used + reserve > capacity { Err(Error::NoMetadataSpace) } else { Ok(()) }
    }

    pub(crate) fn new_ino(&mut self) -> Ino {
        let ino = Ino(self.next_ino);
        self.next_ino += 1;
        ino
    }

    pub(crate) fn add_usage(&mut self, layer: LayerId, blocks: i64, inodes: i64) {
        if let Some(l) = self.layers.get_mut(layer) {
            let u = &mut l.record.usage;
            u.bytes = u.bytes.saturating_add_signed(blocks * BLOCK_SIZE as i64);
            u.inodes = u.inodes.saturating_add_signed(inodes);
            l.dirty = true;
        }
    }
}
