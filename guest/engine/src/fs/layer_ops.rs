//! Layer operations: create, commit, remove, labels, and the list of a layer's changes.
//!
//! Create and commit touch one record whatever the layer holds. Remove deletes exactly the
//! rows the layer owns — found by prefix scans keyed by layer — and frees exactly its blocks.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::layers::LayerRef;
use crate::records::LayerRecord;
use crate::store::{Table, keys};
use crate::types::{Change, ChangeKind, FileKind, Ino, LayerId, LayerKind, NewNode, ROOT_INO, Timestamp, Usage};

use super::State;
use super::limits::LABEL_MAX;

/// Checks a layer name: it is the layer's directory name in the mount, so it follows the rules
/// of a file name.
fn check_layer_name(name: &str) -> Result<()> {
    crate::fs::check_name(name.as_bytes()).map_err(|e| {
        let why = match e {
            Error::NameTooLong(_) => "it is longer than 255 bytes",
            Error::InvalidName(why) => why,
            _ => "it is not a valid file name",
        };
        Error::InvalidLayerName(name.chars().take(64).collect(), why)
    })
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidLabel("a label has an empty key".to_string()));
        }
        if k.len() + v.len() > LABEL_MAX {
            return Err(Error::InvalidLabel(format!(
                "label {:?} is {} bytes, more than the {LABEL_MAX} allowed",
                k.chars().take(64).collect::<String>(),
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}

impl State {
    pub(crate) fn id_of(&self, name: &str) -> Result<LayerId> {
        self.layers.id_of(name).ok_or_else(|| Error::LayerNotFound(name.to_string()))
    }

    pub(crate) fn create_layer(
        &mut self,
        name: &str,
        parent: Option<&str>,
        kind: LayerKind,
        labels: BTreeMap<String, String>,
    ) -> Result<LayerId> {
        check_layer_name(name)?;
        check_labels(&labels)?;
        if kind == LayerKind::Committed {
            return Err(Error::InvalidArgument("layers are created writable or as views, then committed"));
        }
        if self.layers.id_of(name).is_some() {
            return Err(Error::LayerExists(name.to_string()));
        }
        let (parent_id, depth) = match parent {
            None => (None, 0),
            Some(p) => {
                let layer = self.layers.by_name(p).ok_or_else(|| Error::LayerNotFound(p.to_string()))?;
                if layer.record.kind != LayerKind::Committed {
                    return Err(Error::LayerKind {
                        name: p.to_string(),
                        kind: layer.record.kind.as_str(),
                        needed: "only committed layers can have children",
                    });
                }
                (Some(layer.id), layer.record.depth + 1)
            }
        };
        let id = LayerId(self.next_layer);
        self.next_layer += 1;
        let now = Timestamp::now();
        let record = LayerRecord {
            name: name.to_string(),
            parent: parent_id,
            depth,
            kind,
            created: now,
            updated: now,
            usage: Usage::default(),
            labels,
        };
        self.layers.insert(id, record);
        if parent_id.is_none() {
            // A layer without parent starts with an empty root directory.
            let root = State::new_record(&NewNode::dir(0o755, 0, 0), now, Vec::new())?;
            self.store.put(Table::Inodes, keys::inode(ROOT_INO, 0, id), root.encode());
            self.store.put(Table::LayerInodes, keys::layer_inode(id, ROOT_INO), vec![keys::OWN_CREATED]);
            self.add_usage(id, 0, 1);
        }
        Ok(id)
    }

    /// Checks that `key` can be committed as `name`.
    pub(crate) fn check_commit(&self, key: &str, name: &str) -> Result<LayerId> {
        check_layer_name(name)?;
        let id = self.id_of(key)?;
        let kind = self.layers.get(id).map(|l| l.record.kind).unwrap_or(LayerKind::Committed);
        if kind != LayerKind::Writable {
            return Err(Error::LayerKind {
                name: key.to_string(),
                kind: kind.as_str(),
                needed: "only writable layers can be committed",
            });
        }
        if name != key && self.layers.id_of(name).is_some() {
            return Err(Error::LayerExists(name.to_string()));
        }
        Ok(id)
    }

    pub(crate) fn commit_layer(
        &mut self,
        key: &str,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<LayerId> {
        if let Some(labels) = &labels {
            check_labels(labels)?;
        }
        let id = self.check_commit(key, name)?;
        if name != key {
            self.layers.rename(id, name.to_string());
        }
        if let Some(layer) = self.layers.get_mut(id) {
            layer.record.kind = LayerKind::Committed;
            // The committed layer is a new snapshot as containerd sees it: created now.
            let now = Timestamp::now();
            layer.record.created = now;
            layer.record.updated = now;
            if let Some(labels) = labels {
                layer.record.labels = labels;
            }
            layer.dirty = true;
        }
        self.open.retain(|k, _| k.0 != id);
        Ok(id)
    }

    pub(crate) fn remove_layer(&mut self, name: &str) -> Result<LayerId> {
        let id = self.id_of(name)?;
        if self.layers.get(id).is_some_and(|l| l.children > 0) {
            return Err(Error::LayerHasChildren(name.to_string()));
        }
        let l = self.layer(id)?;
        let prefix = keys::layer(id);
        for (k, _) in self.store.collect_prefix(Table::LayerInodes, &prefix)? {
            let (_, ino) = keys::parse_pair(&k).ok_or_else(|| Error::Corrupt("malformed layer inode key".into()))?;
            self.store.delete(Table::Inodes, keys::inode(Ino(ino), l.depth, id));
            self.drop_extents(id, Ino(ino))?;
            self.store.delete(Table::LayerInodes, k);
        }
        for table in [Table::Dirents, Table::DirChanges, Table::Orphans, Table::Extents] {
            for (k, _) in self.store.collect_prefix(table, &prefix)? {
                self.store.delete(table, k);
            }
        }
        self.store.delete(Table::Layers, keys::layer(id));
        self.layers.remove(id);
        self.open.retain(|k, _| k.0 != id);
        Ok(id)
    }

    pub(crate) fn set_labels(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<LayerId> {
        check_labels(&labels)?;
        let id = self.id_of(name)?;
        if let Some(layer) = self.layers.get_mut(id) {
            layer.record.labels = labels;
            layer.record.updated = Timestamp::now();
            layer.dirty = true;
        }
        Ok(id)
    }

    /// See [`crate::Engine::layer_changes`].
    pub(crate) fn changes(&self, id: LayerId) -> Result<Vec<Change>> {
        let l = self.layer(id)?;
        let mut out: BTreeMap<Vec<u8>, ChangeKind> = BTreeMap::new();
        let Some(parent_path) = l.parent_path() else {
            self.walk_all(&l, &mut out)?;
            return Ok(out.into_iter().map(|(path, kind)| Change { path, kind }).collect());
        };
        let mut dir_paths: HashMap<Ino, Option<Vec<u8>>> = HashMap::new();
        let mut dir_path = |st: &State, dir: Ino| -> Result<Option<Vec<u8>>> {
            if let Some(p) = dir_paths.get(&dir) {
                return Ok(p.clone());
            }
            let p = st.dir_path(&l.path, dir)?;
            dir_paths.insert(dir, p.clone());
            Ok(p)
        };
        let join = |dir: &[u8], name: &[u8]| {
            let mut p = dir.to_vec();
            if p != b"/" {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            p
        };
        // Names this layer added, removed or replaced.
        for (k, _) in self.store.collect_prefix(Table::DirChanges, &keys::layer(id))? {
            let (_, dir, name) = keys::parse_dirent(&k).ok_or_else(|| Error::Corrupt("malformed change key".into()))?;
            let Some(path) = dir_path(self, dir)? else {
                continue;
            };
            let now = match self.resolve_in(dir, &l.path)? {
                Some(v) if !v.rec.is_dead() => self.entry_of(v.owner, dir, name)?,
                _ => continue,
            };
            let before = match self.resolve_in(dir, parent_path)? {
                Some(v) if !v.rec.is_dead() && v.rec.kind == FileKind::Directory => {
                    self.entry_of(v.owner, dir, name)?
                }
                _ => None,
            };
            let kind = match (now, before) {
                (Some(_), None) => ChangeKind::Added,
                (None, Some(_)) => ChangeKind::Deleted,
                (Some(a), Some(b)) if a.0 != b.0 => ChangeKind::Modified,
                _ => continue,
            };
            out.insert(join(&path, name), kind);
        }
        // Inodes this layer copied up to change.
        for (k, v) in self.store.collect_prefix(Table::LayerInodes, &keys::layer(id))? {
            if v.as_slice() != [keys::OWN_COPIED] {
                continue;
            }
            let (_, ino) = keys::parse_pair(&k).ok_or_else(|| Error::Corrupt("malformed layer inode key".into()))?;
            let ino = Ino(ino);
            let Some(v) = self.resolve_in(ino, &l.path)? else {
                continue;
            };
            if v.rec.is_dead() {
                continue;
            }
            if ino == ROOT_INO {
                out.entry(b"/".to_vec()).or_insert(ChangeKind::Modified);
            }
            for link in &v.rec.links {
                if let Some(dir) = dir_path(self, link.parent)? {
                    out.entry(join(&dir, &link.name)).or_insert(ChangeKind::Modified);
                }
            }
        }
        Ok(out.into_iter().map(|(path, kind)| Change { path, kind }).collect())
    }

    /// Every path of a layer without parent, as added.
    fn walk_all(&self, l: &LayerRef, out: &mut BTreeMap<Vec<u8>, ChangeKind>) -> Result<()> {
        out.insert(b"/".to_vec(), ChangeKind::Added);
        let mut stack = vec![(ROOT_INO, Vec::new())];
        while let Some((dir, path)) = stack.pop() {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let batch = self.read_dir(l, dir, after.as_deref(), 1024)?;
                let Some(last) = batch.last() else { break };
                after = Some(last.name.clone());
                for e in batch {
                    let mut p = path.clone();
                    p.push(b'/');
                    p.extend_from_slice(&e.name);
                    if e.kind == FileKind::Directory {
                        stack.push((e.ino, p.clone()));
                    }
                    out.insert(p, ChangeKind::Added);
                }
            }
        }
        Ok(())
    }
}
