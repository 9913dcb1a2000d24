//! The layer tree in memory.
//!
//! Each layer keeps its ancestry as an array (`path[d]` is its ancestor at depth `d`, and
//! `path[depth]` is the layer itself), so "is X an ancestor of L" is one array index. That is
//! what keeps lookups independent of depth: resolving an inode never walks the parent chain
//! (see `fs::inode`). The array costs `8 × depth` bytes per layer and is built when the layer
//! is created, without looking at what its parent holds.

use std::collections::HashMap;
use std::sync::Arc;

use crate::records::LayerRecord;
use crate::stats::LayerCounters;
use crate::types::{LayerId, LayerInfo, LayerKind};

/// A layer in memory.
#[derive(Debug)]
pub(crate) struct Layer {
    pub id: LayerId,
    pub record: LayerRecord,
    pub path: Arc<[LayerId]>,
    pub children: u32,
    /// The record changed since it was last written to the store.
    pub dirty: bool,
    pub counters: Arc<LayerCounters>,
}

/// What an operation needs of a layer, cloned out so the tree need not stay borrowed.
#[derive(Clone, Debug)]
pub(crate) struct LayerRef {
    pub id: LayerId,
    pub depth: u32,
    pub kind: LayerKind,
    pub path: Arc<[LayerId]>,
    pub counters: Arc<LayerCounters>,
}

impl LayerRef {
    /// Whether `layer` at `depth` is this layer or one of its ancestors.
    #[cfg(test)]
    pub fn sees(&self, layer: LayerId, depth: u32) -> bool {
        self.path.get(depth as usize) == Some(&layer)
    }

    /// The ancestry of the parent, if any.
    pub fn parent_path(&self) -> Option<&[LayerId]> {
        if self.depth == 0 { None } else { Some(&self.path[..self.depth as usize]) }
    }
}

/// Why the stored layers do not form a tree.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    #[error("layer {child} names parent {parent}, which does not exist")]
    MissingParent { child: LayerId, parent: LayerId },
    #[error("layer {0} records depth {1}, but its ancestry gives {2}")]
    WrongDepth(LayerId, u32, u32),
    #[error("layers {0} and {1} share the name {2:?}")]
    DuplicateName(LayerId, LayerId, String),
    #[error("layer {0} is its own ancestor")]
    Cycle(LayerId),
    #[error("layer {child} has parent {parent}, which is {kind}; only committed layers have children")]
    ParentNotCommitted { child: LayerId, parent: LayerId, kind: &'static str },
}

/// Every layer of the device.
#[derive(Debug, Default)]
pub(crate) struct Layers {
    by_id: HashMap<LayerId, Layer>,
    by_name: HashMap<String, LayerId>,
}

impl Layers {
    /// Builds the tree from stored records, checking that they form one.
    pub fn load(records: Vec<(LayerId, LayerRecord)>) -> Result<Layers, TreeError> {
        let records: HashMap<LayerId, LayerRecord> = records.into_iter().collect();
        let mut layers = Layers::default();
        let mut paths: HashMap<LayerId, Arc<[LayerId]>> = HashMap::new();
        for &id in records.keys() {
            Self::path_of(id, &records, &mut paths, 0)?;
        }
        for (id, record) in records {
            let path = paths.get(&id).cloned().ok_or(TreeError::Cycle(id))?;
            let actual_depth = path.len() as u32 - 1;
            if record.depth != actual_depth {
                return Err(TreeError::WrongDepth(id, record.depth, actual_depth));
            }
            if let Some(prev) = layers.by_name.insert(record.name.clone(), id) {
                return Err(TreeError::DuplicateName(prev, id, record.name));
            }
            layers.by_id.insert(id, Layer { id, record, path, children: 0, dirty: false, counters: Arc::default() });
        }
        let parents: Vec<(LayerId, LayerId)> =
            layers.by_id.values().filter_map(|l| l.record.parent.map(|p| (l.id, p))).collect();
        for (child, parent) in parents {
            let p = layers.by_id.get_mut(&parent).ok_or(TreeError::MissingParent { child, parent })?;
            if p.record.kind != LayerKind::Committed {
                return Err(TreeError::ParentNotCommitted { child, parent, kind: p.record.kind.as_str() });
            }
            p.children += 1;
        }
        Ok(layers)
    }

    fn path_of(
        id: LayerId,
        records: &HashMap<LayerId, LayerRecord>,
        paths: &mut HashMap<LayerId, Arc<[LayerId]>>,
        guard: usize,
    ) -> Result<Arc<[LayerId]>, TreeError> {
        if let Some(p) = paths.get(&id) {
            return Ok(p.clone());
        }
        if guard > records.len() {
            return Err(TreeError::Cycle(id));
        }
        let record = &records[&id];
        let mut path: Vec<LayerId> = match record.parent {
            None => Vec::new(),
            Some(parent) => {
                if !records.contains_key(&parent) {
                    return Err(TreeError::MissingParent { child: id, parent });
                }
                Self::path_of(parent, records, paths, guard + 1)?.to_vec()
            }
        };
        path.push(id);
        let path: Arc<[LayerId]> = path.into();
        paths.insert(id, path.clone());
        Ok(path)
    }

    pub fn get(&self, id: LayerId) -> Option<&Layer> {
        self.by_id.get(&id)
    }

    pub fn get_mut(&mut self, id: LayerId) -> Option<&mut Layer> {
        self.by_id.get_mut(&id)
    }

    pub fn id_of(&self, name: &str) -> Option<LayerId> {
        self.by_name.get(name).copied()
    }

    pub fn by_name(&self, name: &str) -> Option<&Layer> {
        self.by_name.get(name).and_then(|id| self.by_id.get(id))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Layer> {
        self.by_id.values()
    }

    pub fn layer_ref(&self, id: LayerId) -> Option<LayerRef> {
        self.by_id.get(&id).map(|l| LayerRef {
            id,
            depth: l.record.depth,
            kind: l.record.kind,
            path: l.path.clone(),
            counters: l.counters.clone(),
        })
    }

    /// Adds a new layer; its parent (if any) must exist.
    pub fn insert(&mut self, id: LayerId, record: LayerRecord) {
        let mut path = match record.parent.and_then(|p| self.by_id.get_mut(&p)) {
            Some(parent) => {
                parent.children += 1;
                parent.path.to_vec()
            }
            None => Vec::new(),
        };
        path.push(id);
        self.by_name.insert(record.name.clone(), id);
        self.by_id
            .insert(id, Layer { id, record, path: path.into(), children: 0, dirty: true, counters: Arc::default() });
    }

    /// Removes a layer without children.
    pub fn remove(&mut self, id: LayerId) -> Option<Layer> {
        let layer = self.by_id.remove(&id)?;
        self.by_name.remove(&layer.record.name);
        if let Some(parent) = layer.record.parent.and_then(|p| self.by_id.get_mut(&p)) {
            parent.children -= 1;
        }
        Some(layer)
    }

    /// Gives a layer a new name.
    pub fn rename(&mut self, id: LayerId, name: String) {
        if let Some(layer) = self.by_id.get_mut(&id) {
            self.by_name.remove(&layer.record.name);
            self.by_name.insert(name.clone(), id);
            layer.record.name = name;
            layer.dirty = true;
        }
    }

    pub fn info(&self, layer: &Layer) -> LayerInfo {
        LayerInfo {
            id: layer.id,
            name: layer.record.name.clone(),
            parent: layer.record.parent.and_then(|p| self.by_id.get(&p)).map(|p| p.record.name.clone()),
            kind: layer.record.kind,
            depth: layer.record.depth,
            labels: layer.record.labels.clone(),
            created: layer.record.created,
            updated: layer.record.updated,
            usage: layer.record.usage,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Timestamp, Usage};

    fn record(name: &str, parent: Option<u64>, depth: u32, kind: LayerKind) -> LayerRecord {
        LayerRecord {
            name: name.to_string(),
            parent: parent.map(LayerId),
            depth,
            kind,
            created: Timestamp::default(),
            updated: Timestamp::default(),
            usage: Usage::default(),
            labels: Default::default(),
        }
    }

    #[test]
    fn ancestry_answers_in_one_lookup() {
        let layers = Layers::load(vec![
            (LayerId(1), record("base", None, 0, LayerKind::Committed)),
            (LayerId(2), record("mid", Some(1), 1, LayerKind::Committed)),
            (LayerId(3), record("top", Some(2), 2, LayerKind::Writable)),
            (LayerId(4), record("other", Some(1), 1, LayerKind::Writable)),
        ])
        .expect("valid tree");
        let top = layers.layer_ref(LayerId(3)).expect("exists");
        assert!(top.sees(LayerId(1), 0) && top.sees(LayerId(2), 1) && top.sees(LayerId(3), 2));
        assert!(!top.sees(LayerId(4), 1));
        assert_eq!(layers.get(LayerId(1)).map(|l| l.children), Some(2));
    }

    #[test]
    fn broken_trees_are_rejected() {
        let missing = Layers::load(vec![(LayerId(2), record("x", Some(9), 1, LayerKind::Writable))]);
        assert!(matches!(missing, Err(TreeError::MissingParent { .. })));
        let cycle = Layers::load(vec![
            (LayerId(1), record("a", Some(2), 1, LayerKind::Committed)),
            (LayerId(2), record("b", Some(1), 1, LayerKind::Committed)),
        ]);
        assert!(cycle.is_err());
        let writable_parent = Layers::load(vec![
            (LayerId(1), record("a", None, 0, LayerKind::Writable)),
            (LayerId(2), record("b", Some(1), 1, LayerKind::Writable)),
        ]);
        assert!(matches!(writable_parent, Err(TreeError::ParentNotCommitted { .. })));
    }
}
