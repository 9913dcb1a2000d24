//! Test support: a simple in-memory reference model of layers and their files, a generator of
//! random operations, and a comparison of every layer's full tree between engine and model.
//!
//! The model keeps a full copy of each layer's tree (a layer clones its parent's tree when it is
//! created), which is the obviously-correct semantics the engine's sharing must reproduce.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use lcfs_engine::{
    Engine, Error, FallocateMode, FileKind, Ino, LayerId, LayerKind, NewNode, ROOT_INO, RenameFlags, SetAttr, XattrMode,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

pub type NodeId = u64;

#[derive(Clone, Debug, PartialEq)]
pub struct MNode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub data: Vec<u8>,
    pub target: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub children: BTreeMap<Vec<u8>, NodeId>,
}

impl MNode {
    fn new(kind: FileKind, perm: u16) -> MNode {
        MNode {
            kind,
            perm,
            uid: 0,
            gid: 0,
            rdev: 0,
            data: Vec::new(),
            target: Vec::new(),
            xattrs: BTreeMap::new(),
            children: BTreeMap::new(),
        }
    }
}

/// One layer's tree. Node 1 is the root.
#[derive(Clone, Debug)]
pub struct MFs {
    pub nodes: HashMap<NodeId, MNode>,
    pub next: NodeId,
}

impl MFs {
    fn new() -> MFs {
        let mut nodes = HashMap::new();
        nodes.insert(1, MNode::new(FileKind::Directory, 0o755));
        MFs { nodes, next: 2 }
    }

    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        let mut id = 1;
        for part in path {
            id = *self.nodes.get(&id)?.children.get(part)?;
        }
        Some(id)
    }

    /// Every (path, node) in the tree, parents first.
    pub fn paths(&self) -> Vec<(Vec<Vec<u8>>, NodeId)> {
        let mut out = vec![(Vec::new(), 1)];
        let mut i = 0;
        while i < out.len() {
            let (path, id) = out[i].clone();
            for (name, &child) in &self.nodes[&id].children {
                let mut p = path.clone();
                p.push(name.clone());
                out.push((p, child));
            }
            i += 1;
        }
        out
    }

    fn is_within(&self, dir: &[Vec<u8>], ancestor: &[Vec<u8>]) -> bool {
        dir.len() >= ancestor.len() && dir[..ancestor.len()] == *ancestor
    }

    fn gc(&mut self) {
        let live: std::collections::HashSet<NodeId> = self.paths().into_iter().map(|(_, id)| id).collect();
        self.nodes.retain(|id, _| live.contains(id));
    }
}

#[derive(Clone, Debug)]
pub struct MLayer {
    pub parent: Option<String>,
    pub kind: LayerKind,
    pub fs: MFs,
}

/// The reference model.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub layers: BTreeMap<String, MLayer>,
}

/// An operation, on the model and on the engine.
#[derive(Clone, Debug)]
pub enum Op {
    CreateLayer {
        name: String,
        parent: Option<String>,
    },
    CreateView {
        name: String,
        parent: String,
    },
    Commit {
        key: String,
        name: String,
    },
    RemoveLayer {
        name: String,
    },
    Create {
        layer: String,
        dir: Vec<Vec<u8>>,
        name: Vec<u8>,
        kind: FileKind,
        perm: u16,
    },
    Write {
        layer: String,
        path: Vec<Vec<u8>>,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate {
        layer: String,
        path: Vec<Vec<u8>>,
        size: u64,
    },
    Unlink {
        layer: String,
        dir: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
    Rmdir {
        layer: String,
        dir: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
    Link {
        layer: String,
        path: Vec<Vec<u8>>,
        dir: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
    Rename {
        layer: String,
        dir: Vec<Vec<u8>>,
        name: Vec<u8>,
        to_dir: Vec<Vec<u8>>,
        to_name: Vec<u8>,
        flags: RenameFlags,
    },
    Chmod {
        layer: String,
        path: Vec<Vec<u8>>,
        perm: u16,
        uid: u32,
    },
    SetXattr {
        layer: String,
        path: Vec<Vec<u8>>,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        layer: String,
        path: Vec<Vec<u8>>,
        name: Vec<u8>,
    },
    Fallocate {
        layer: String,
        path: Vec<Vec<u8>>,
        offset: u64,
        len: u64,
        mode: FallocateMode,
    },
    Read {
        layer: String,
        path: Vec<Vec<u8>>,
        offset: u64,
        len: usize,
    },
    /// Makes everything so far durable.
    Sync,
}

impl Op {
    /// Whether the engine makes everything before it durable when it returns.
    pub fn is_durable_point(&self) -> bool {
        matches!(
            self,
            Op::CreateLayer { .. } | Op::CreateView { .. } | Op::Commit { .. } | Op::RemoveLayer { .. } | Op::Sync
        )
    }
}

/// The errno of an outcome, or 0 for success.
pub type Outcome = i32;

fn errno<T>(r: Result<T, Error>) -> Outcome {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

const ENOENT: i32 = libc::ENOENT;

impl Model {
    pub fn writable_layers(&self) -> Vec<String> {
        self.layers.iter().filter(|(_, l)| l.kind == LayerKind::Writable).map(|(n, _)| n.clone()).collect()
    }

    fn committed_layers(&self) -> Vec<String> {
        self.layers.iter().filter(|(_, l)| l.kind == LayerKind::Committed).map(|(n, _)| n.clone()).collect()
    }

    fn has_children(&self, name: &str) -> bool {
        self.layers.values().any(|l| l.parent.as_deref() == Some(name))
    }

    /// Applies `op` to the model and returns its outcome.
    pub fn apply(&mut self, op: &Op) -> Outcome {
        match op {
            Op::CreateLayer { name, parent } => {
                if self.layers.contains_key(name) {
                    return libc::EEXIST;
                }
                let fs = match parent {
                    None => MFs::new(),
                    Some(p) => match self.layers.get(p) {
                        None => return ENOENT,
                        Some(l) if l.kind != LayerKind::Committed => return libc::EROFS,
                        Some(l) => l.fs.clone(),
                    },
                };
                self.layers.insert(name.clone(), MLayer { parent: parent.clone(), kind: LayerKind::Writable, fs });
                0
            }
            Op::CreateView { name, parent } => {
                if self.layers.contains_key(name) {
                    return libc::EEXIST;
                }
                let fs = match self.layers.get(parent) {
                    None => return ENOENT,
                    Some(l) if l.kind != LayerKind::Committed => return libc::EROFS,
                    Some(l) => l.fs.clone(),
                };
                self.layers.insert(name.clone(), MLayer { parent: Some(parent.clone()), kind: LayerKind::View, fs });
                0
            }
            Op::Commit { key, name } => {
                match self.layers.get(key) {
                    None => return ENOENT,
                    Some(l) if l.kind != LayerKind::Writable => return libc::EROFS,
                    _ => {}
                }
                if self.layers.contains_key(name) {
                    return libc::EEXIST;
                }
                let mut l = self.layers.remove(key).expect("checked");
                l.kind = LayerKind::Committed;
                self.layers.insert(name.clone(), l);
                0
            }
            Op::RemoveLayer { name } => {
                if !self.layers.contains_key(name) {
                    return ENOENT;
                }
                if self.has_children(name) {
                    return libc::ENOTEMPTY;
                }
                self.layers.remove(name);
                0
            }
            Op::Read { .. } | Op::Sync => 0,
            other => {
                let layer = layer_of(other).to_string();
                let Some(l) = self.layers.get_mut(&layer) else { return ENOENT };
                if l.kind != LayerKind::Writable {
                    return libc::EROFS;
                }
                let r = apply_fs(&mut l.fs, other);
                l.fs.gc();
                r
            }
        }
    }
}

fn layer_of(op: &Op) -> &str {
    match op {
        Op::Create { layer, .. }
        | Op::Write { layer, .. }
        | Op::Truncate { layer, .. }
        | Op::Unlink { layer, .. }
        | Op::Rmdir { layer, .. }
        | Op::Link { layer, .. }
        | Op::Rename { layer, .. }
        | Op::Chmod { layer, .. }
        | Op::SetXattr { layer, .. }
        | Op::RemoveXattr { layer, .. }
        | Op::Fallocate { layer, .. }
        | Op::Read { layer, .. } => layer,
        _ => "",
    }
}

fn dir_of(fs: &MFs, dir: &[Vec<u8>]) -> Result<NodeId, Outcome> {
    let id = fs.lookup(dir).ok_or(ENOENT)?;
    if fs.nodes[&id].kind != FileKind::Directory {
        return Err(libc::ENOTDIR);
    }
    Ok(id)
}

fn file_of(fs: &MFs, path: &[Vec<u8>]) -> Result<NodeId, Outcome> {
    let id = fs.lookup(path).ok_or(ENOENT)?;
    match fs.nodes[&id].kind {
        FileKind::Regular => Ok(id),
        FileKind::Directory => Err(libc::EISDIR),
        _ => Err(libc::EINVAL),
    }
}

fn apply_fs(fs: &mut MFs, op: &Op) -> Outcome {
    let r: Result<(), Outcome> = (|| {
        match op {
            Op::Create { dir, name, kind, perm, .. } => {
                let d = dir_of(fs, dir)?;
                if fs.nodes[&d].children.contains_key(name) {
                    return Err(libc::EEXIST);
                }
                let id = fs.next;
                fs.next += 1;
                let mut node = MNode::new(*kind, *perm);
                if *kind == FileKind::Symlink {
                    node.target = b"../some/target".to_vec();
                    node.perm = 0o777;
                }
                if *kind == FileKind::CharDevice {
                    node.rdev = 0x0501;
                }
                fs.nodes.insert(id, node);
                fs.nodes.get_mut(&d).expect("dir").children.insert(name.clone(), id);
            }
            Op::Write { path, offset, len, byte, .. } => {
                let id = file_of(fs, path)?;
                if *len == 0 {
                    // A write of nothing changes nothing, not even the size.
                    return Ok(());
                }
                let data = &mut fs.nodes.get_mut(&id).expect("file").data;
                let end = *offset as usize + len;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[*offset as usize..end].copy_from_slice(&pattern(*byte, *offset, *len));
            }
            Op::Truncate { path, size, .. } => {
                let id = file_of(fs, path)?;
                fs.nodes.get_mut(&id).expect("file").data.resize(*size as usize, 0);
            }
            Op::Fallocate { path, offset, len, mode, .. } => {
                let id = file_of(fs, path)?;
                let data = &mut fs.nodes.get_mut(&id).expect("file").data;
                let end = (offset + len) as usize;
                let zero_to = end.min(data.len());
                match mode {
                    FallocateMode::Allocate { keep_size } => {
                        if !keep_size && end > data.len() {
                            data.resize(end, 0);
                        }
                    }
                    FallocateMode::PunchHole => {
                        if (*offset as usize) < zero_to {
                            data[*offset as usize..zero_to].fill(0);
                        }
                    }
                    FallocateMode::ZeroRange { keep_size } => {
                        if (*offset as usize) < zero_to {
                            data[*offset as usize..zero_to].fill(0);
                        }
                        if !keep_size && end > data.len() {
                            data.resize(end, 0);
                        }
                    }
                }
            }
            Op::Unlink { dir, name, .. } => {
                let d = dir_of(fs, dir)?;
                let &id = fs.nodes[&d].children.get(name).ok_or(ENOENT)?;
                if fs.nodes[&id].kind == FileKind::Directory {
                    return Err(libc::EISDIR);
                }
                fs.nodes.get_mut(&d).expect("dir").children.remove(name);
            }
            Op::Rmdir { dir, name, .. } => {
                let d = dir_of(fs, dir)?;
                let &id = fs.nodes[&d].children.get(name).ok_or(ENOENT)?;
                if fs.nodes[&id].kind != FileKind::Directory {
                    return Err(libc::ENOTDIR);
                }
                if !fs.nodes[&id].children.is_empty() {
                    return Err(libc::ENOTEMPTY);
                }
                fs.nodes.get_mut(&d).expect("dir").children.remove(name);
            }
            Op::Link { path, dir, name, .. } => {
                let id = fs.lookup(path).ok_or(ENOENT)?;
                if fs.nodes[&id].kind == FileKind::Directory {
                    return Err(libc::EPERM);
                }
                let d = dir_of(fs, dir)?;
                if fs.nodes[&d].children.contains_key(name) {
                    return Err(libc::EEXIST);
                }
                fs.nodes.get_mut(&d).expect("dir").children.insert(name.clone(), id);
            }
            Op::Rename { dir, name, to_dir, to_name, flags, .. } => {
                let sd = dir_of(fs, dir)?;
                let dd = dir_of(fs, to_dir)?;
                let &src = fs.nodes[&sd].children.get(name).ok_or(ENOENT)?;
                let dst = fs.nodes[&dd].children.get(to_name).copied();
                let src_is_dir = fs.nodes[&src].kind == FileKind::Directory;
                let mut src_path = dir.clone();
                src_path.push(name.clone());
                if flags.exchange {
                    let dst = dst.ok_or(ENOENT)?;
                    if dst == src {
                        return Ok(());
                    }
                    let mut dst_path = to_dir.clone();
                    dst_path.push(to_name.clone());
                    if src_is_dir && fs.is_within(to_dir, &src_path) {
                        return Err(libc::EINVAL);
                    }
                    if fs.nodes[&dst].kind == FileKind::Directory && fs.is_within(dir, &dst_path) {
                        return Err(libc::EINVAL);
                    }
                    fs.nodes.get_mut(&sd).expect("dir").children.insert(name.clone(), dst);
                    fs.nodes.get_mut(&dd).expect("dir").children.insert(to_name.clone(), src);
                    return Ok(());
                }
                if let Some(dst) = dst {
                    if flags.no_replace {
                        return Err(libc::EEXIST);
                    }
                    if dst == src {
                        return Ok(());
                    }
                    let dst_is_dir = fs.nodes[&dst].kind == FileKind::Directory;
                    match (src_is_dir, dst_is_dir) {
                        (true, false) => return Err(libc::ENOTDIR),
                        (false, true) => return Err(libc::EISDIR),
                        (true, true) if !fs.nodes[&dst].children.is_empty() => return Err(libc::ENOTEMPTY),
                        _ => {}
                    }
                }
                if src_is_dir && fs.is_within(to_dir, &src_path) {
                    return Err(libc::EINVAL);
                }
                fs.nodes.get_mut(&sd).expect("dir").children.remove(name);
                fs.nodes.get_mut(&dd).expect("dir").children.insert(to_name.clone(), src);
            }
            Op::Chmod { path, perm, uid, .. } => {
                let id = fs.lookup(path).ok_or(ENOENT)?;
                let n = fs.nodes.get_mut(&id).expect("node");
                n.perm = *perm;
                n.uid = *uid;
            }
            Op::SetXattr { path, name, value, .. } => {
                let id = fs.lookup(path).ok_or(ENOENT)?;
                fs.nodes.get_mut(&id).expect("node").xattrs.insert(name.clone(), value.clone());
            }
            Op::RemoveXattr { path, name, .. } => {
                let id = fs.lookup(path).ok_or(ENOENT)?;
                fs.nodes.get_mut(&id).expect("node").xattrs.remove(name).ok_or(libc::ENODATA)?;
            }
            _ => unreachable!("not a file operation"),
        }
        Ok(())
    })();
    match r {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Resolves a path in an engine layer by lookups from the root.
pub fn resolve(e: &Engine, layer: LayerId, path: &[Vec<u8>]) -> Result<Ino, Error> {
    let mut ino = ROOT_INO;
    for part in path {
        ino = e.lookup(layer, ino, part)?.ino;
    }
    Ok(ino)
}

fn layer_id(e: &Engine, name: &str) -> Result<LayerId, Error> {
    Ok(e.layer(name)?.id)
}

/// Pattern written by a write op: depends on the byte and the offset so misplaced data shows.
pub fn pattern(byte: u8, offset: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| byte.wrapping_add(((offset as usize + i) / 4096) as u8)).collect()
}

/// Applies `op` to the engine and returns its outcome; read ops compare against the model.
pub fn apply_engine(e: &Engine, model: &Model, op: &Op) -> Outcome {
    match op {
        Op::CreateLayer { name, parent } => {
            errno(e.create_layer(name, parent.as_deref(), LayerKind::Writable, BTreeMap::new()))
        }
        Op::CreateView { name, parent } => errno(e.create_layer(name, Some(parent), LayerKind::View, BTreeMap::new())),
        Op::Commit { key, name } => errno(e.commit_layer(key, name, None)),
        Op::RemoveLayer { name } => errno(e.remove_layer(name)),
        Op::Sync => errno(e.sync()),
        Op::Create { layer, dir, name, kind, perm } => errno((|| {
            let l = layer_id(e, layer)?;
            let d = resolve(e, l, dir)?;
            let mut node = NewNode { kind: *kind, perm: *perm, ..NewNode::file(0, 0, 0) };
            if *kind == FileKind::Symlink {
                node.target = b"../some/target".to_vec();
                node.perm = 0o777;
            }
            if *kind == FileKind::CharDevice {
                node.rdev = 0x0501;
            }
            e.create(l, d, name, &node)
        })()),
        Op::Write { layer, path, offset, len, byte } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.write(l, ino, *offset, &pattern(*byte, *offset, *len))
        })()),
        Op::Truncate { layer, path, size } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.setattr(l, ino, &SetAttr { size: Some(*size), ..Default::default() })
        })()),
        Op::Fallocate { layer, path, offset, len, mode } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.fallocate(l, ino, *offset, *len, *mode)
        })()),
        Op::Unlink { layer, dir, name } => errno((|| {
            let l = layer_id(e, layer)?;
            let d = resolve(e, l, dir)?;
            e.unlink(l, d, name)
        })()),
        Op::Rmdir { layer, dir, name } => errno((|| {
            let l = layer_id(e, layer)?;
            let d = resolve(e, l, dir)?;
            e.rmdir(l, d, name)
        })()),
        Op::Link { layer, path, dir, name } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            let d = resolve(e, l, dir)?;
            e.link(l, ino, d, name)
        })()),
        Op::Rename { layer, dir, name, to_dir, to_name, flags } => errno((|| {
            let l = layer_id(e, layer)?;
            let d = resolve(e, l, dir)?;
            let td = resolve(e, l, to_dir)?;
            e.rename(l, d, name, td, to_name, *flags)
        })()),
        Op::Chmod { layer, path, perm, uid } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.setattr(l, ino, &SetAttr { perm: Some(*perm), uid: Some(*uid), ..Default::default() })
        })()),
        Op::SetXattr { layer, path, name, value } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.set_xattr(l, ino, name, value, XattrMode::Upsert)
        })()),
        Op::RemoveXattr { layer, path, name } => errno((|| {
            let l = layer_id(e, layer)?;
            let ino = resolve(e, l, path)?;
            e.remove_xattr(l, ino, name)
        })()),
        Op::Read { layer, path, offset, len } => {
            let r = (|| {
                let l = layer_id(e, layer)?;
                let ino = resolve(e, l, path)?;
                e.read(l, ino, *offset, *len)
            })();
            let expected = model
                .layers
                .get(layer)
                .and_then(|l| l.fs.lookup(path).map(|id| &l.fs.nodes[&id]))
                .filter(|n| n.kind == FileKind::Regular)
                .map(|n| {
                    let start = (*offset as usize).min(n.data.len());
                    let end = (*offset as usize + len).min(n.data.len());
                    n.data[start..end].to_vec()
                });
            match (r, expected) {
                (Ok(got), Some(want)) if got == want => 0,
                (Ok(got), Some(want)) => panic!(
                    "read of {path:?} in {layer} at {offset}: got {} bytes, want {} bytes; first difference at {:?}",
                    got.len(),
                    want.len(),
                    got.iter().zip(&want).position(|(a, b)| a != b)
                ),
                (Ok(_), None) => panic!("read of {path:?} in {layer} succeeded but the model has no such file"),
                (Err(_), Some(_)) => panic!("read of {path:?} in {layer} failed but the model has the file"),
                (Err(_), None) => 0,
            }
        }
    }
}

/// Generates operations that mostly hit existing things, so they exercise real paths.
pub struct Generator {
    pub rng: SmallRng,
    layer_counter: u32,
    /// Bytes of the largest write.
    pub max_write: usize,
}

const NAMES: [&[u8]; 8] = [b"a", b"b", b"c", b"dir", b"etc", b"passwd", b"x.so", b"long-name-with-dashes"];

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator { rng: SmallRng::seed_from_u64(seed), layer_counter: 0, max_write: 3 * 4096 + 100 }
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() { None } else { Some(items[self.rng.random_range(0..items.len())].clone()) }
    }

    fn name(&mut self) -> Vec<u8> {
        NAMES[self.rng.random_range(0..NAMES.len())].to_vec()
    }

    fn new_layer_name(&mut self) -> String {
        self.layer_counter += 1;
        format!("layer-{}", self.layer_counter)
    }

    /// The next operation for the model's current state.
    pub fn next(&mut self, model: &Model) -> Op {
        let writable = model.writable_layers();
        let committed = model.committed_layers();
        let roll = self.rng.random_range(0..100);
        if writable.is_empty() || roll < 6 {
            let parent = if self.rng.random_bool(0.8) { self.pick(&committed) } else { None };
            return Op::CreateLayer { name: self.new_layer_name(), parent };
        }
        if roll < 10 {
            let key = self.pick(&writable).expect("non-empty");
            return Op::Commit { key, name: self.new_layer_name() };
        }
        if roll < 11
            && let Some(parent) = self.pick(&committed)
        {
            return Op::CreateView { name: self.new_layer_name(), parent };
        }
        if roll == 13 {
            return Op::Sync;
        }
        if roll < 13 {
            let all: Vec<String> = model.layers.keys().cloned().collect();
            if let Some(name) = self.pick(&all) {
                return Op::RemoveLayer { name };
            }
        }
        let layer = if self.rng.random_bool(0.05) {
            self.pick(&model.layers.keys().cloned().collect::<Vec<_>>()).expect("non-empty")
        } else {
            self.pick(&writable).expect("non-empty")
        };
        let fs = &model.layers[&layer].fs;
        let paths = fs.paths();
        let dirs: Vec<Vec<Vec<u8>>> =
            paths.iter().filter(|(_, id)| fs.nodes[id].kind == FileKind::Directory).map(|(p, _)| p.clone()).collect();
        let files: Vec<Vec<Vec<u8>>> =
            paths.iter().filter(|(_, id)| fs.nodes[id].kind == FileKind::Regular).map(|(p, _)| p.clone()).collect();
        let any: Vec<Vec<Vec<u8>>> = paths.iter().skip(1).map(|(p, _)| p.clone()).collect();
        let dir = self.pick(&dirs).expect("root exists");
        let roll = self.rng.random_range(0..100);
        let split = |p: &Vec<Vec<u8>>| (p[..p.len() - 1].to_vec(), p[p.len() - 1].clone());
        match roll {
            0..=19 => {
                let kind = match self.rng.random_range(0..10) {
                    0..=4 => FileKind::Regular,
                    5..=7 => FileKind::Directory,
                    8 => FileKind::Symlink,
                    _ => *[FileKind::Fifo, FileKind::CharDevice, FileKind::Socket]
                        .get(self.rng.random_range(0..3))
                        .expect("in range"),
                };
                Op::Create { layer, dir, name: self.name(), kind, perm: self.rng.random_range(0..0o7777) }
            }
            20..=39 if !files.is_empty() => {
                let path = self.pick(&files).expect("non-empty");
                let len = if self.rng.random_bool(0.1) {
                    self.rng.random_range(0..self.max_write * 8)
                } else {
                    self.rng.random_range(0..self.max_write)
                };
                let offset = self.rng.random_range(0..5 * 4096);
                Op::Write { layer, path, offset, len, byte: self.rng.random() }
            }
            40..=44 if !files.is_empty() => {
                let path = self.pick(&files).expect("non-empty");
                Op::Truncate { layer, path, size: self.rng.random_range(0..6 * 4096) }
            }
            45..=47 if !files.is_empty() => {
                let path = self.pick(&files).expect("non-empty");
                let mode = match self.rng.random_range(0..3) {
                    0 => FallocateMode::Allocate { keep_size: self.rng.random() },
                    1 => FallocateMode::PunchHole,
                    _ => FallocateMode::ZeroRange { keep_size: self.rng.random() },
                };
                Op::Fallocate {
                    layer,
                    path,
                    offset: self.rng.random_range(0..5 * 4096),
                    len: self.rng.random_range(1..4 * 4096),
                    mode,
                }
            }
            48..=57 if !any.is_empty() => {
                let path = self.pick(&any).expect("non-empty");
                let is_dir = fs.lookup(&path).is_some_and(|id| fs.nodes[&id].kind == FileKind::Directory);
                let (d, n) = split(&path);
                // Mostly the right call for the type, sometimes the wrong one for its error.
                if is_dir == self.rng.random_bool(0.85) {
                    Op::Rmdir { layer, dir: d, name: n }
                } else {
                    Op::Unlink { layer, dir: d, name: n }
                }
            }
            58..=64 if !any.is_empty() => {
                let path = self.pick(&any).expect("non-empty");
                Op::Link { layer, path, dir, name: self.name() }
            }
            65..=76 if !any.is_empty() => {
                let (d, n) = split(&self.pick(&any).expect("non-empty"));
                let flags = match self.rng.random_range(0..6) {
                    0 => RenameFlags { exchange: true, no_replace: false },
                    1 => RenameFlags { exchange: false, no_replace: true },
                    _ => RenameFlags::default(),
                };
                let (to_dir, to_name) = if self.rng.random_bool(0.5) {
                    split(&self.pick(&any).expect("non-empty"))
                } else {
                    (dir, self.name())
                };
                Op::Rename { layer, dir: d, name: n, to_dir, to_name, flags }
            }
            77..=81 if !any.is_empty() => {
                let path = self.pick(&any).expect("non-empty");
                Op::Chmod { layer, path, perm: self.rng.random_range(0..0o7777), uid: self.rng.random_range(0..3) }
            }
            82..=87 if !any.is_empty() => {
                let path = self.pick(&any).expect("non-empty");
                let name = [b"user.a".to_vec(), b"trusted.overlay.opaque".to_vec(), b"security.capability".to_vec()]
                    [self.rng.random_range(0..3)]
                .clone();
                if self.rng.random_bool(0.7) {
                    let len = self.rng.random_range(0..40);
                    Op::SetXattr { layer, path, name, value: vec![self.rng.random(); len] }
                } else {
                    Op::RemoveXattr { layer, path, name }
                }
            }
            _ if !files.is_empty() => {
                let path = self.pick(&files).expect("non-empty");
                Op::Read {
                    layer,
                    path,
                    offset: self.rng.random_range(0..6 * 4096),
                    len: self.rng.random_range(0..20_000),
                }
            }
            _ => Op::Create { layer, dir, name: self.name(), kind: FileKind::Regular, perm: 0o644 },
        }
    }
}

/// Compares every layer of the engine with the model: names, kinds, parents, and each tree's
/// content, metadata, xattrs, link counts and hard-link structure.
pub fn compare(e: &Engine, model: &Model) -> Result<(), String> {
    compare_allowing(e, model, &HashMap::new())
}

/// Byte ranges of regular files, per layer, whose content may differ from the model: after a
/// crash, in-place overwrites of a writable layer's own blocks made after the last durable
/// point may or may not have reached the medium.
pub type MayDiffer = HashMap<String, Vec<(u64, u64)>>;

/// Like [`compare`], but bytes in `may_differ` are not compared.
pub fn compare_allowing(e: &Engine, model: &Model, may_differ: &MayDiffer) -> Result<(), String> {
    let layers = e.layers().map_err(|err| format!("listing layers: {err}"))?;
    let engine_names: Vec<String> = layers.iter().map(|l| l.name.clone()).collect();
    let model_names: Vec<String> = model.layers.keys().cloned().collect();
    let mut sorted = engine_names.clone();
    sorted.sort();
    if sorted != model_names {
        return Err(format!("layers differ: engine {sorted:?}, model {model_names:?}"));
    }
    for info in &layers {
        let m = &model.layers[&info.name];
        if info.kind != m.kind || info.parent != m.parent {
            return Err(format!(
                "layer {}: engine says {:?} on {:?}, model {:?} on {:?}",
                info.name, info.kind, info.parent, m.kind, m.parent
            ));
        }
        let ranges = may_differ.get(&info.name).map(Vec::as_slice).unwrap_or(&[]);
        compare_tree(e, info.id, &m.fs, ranges).map_err(|err| format!("layer {}: {err}", info.name))?;
    }
    Ok(())
}

/// Compares one layer's tree with the model's layer of the same name.
pub fn compare_layer(e: &Engine, model: &Model, name: &str) -> Result<(), String> {
    let info = e.layer(name).map_err(|err| format!("layer {name}: {err}"))?;
    let m = model.layers.get(name).ok_or_else(|| format!("the model has no layer {name}"))?;
    compare_tree(e, info.id, &m.fs, &[]).map_err(|err| format!("layer {name}: {err}"))
}

fn compare_tree(e: &Engine, layer: LayerId, fs: &MFs, may_differ: &[(u64, u64)]) -> Result<(), String> {
    // Hard-link structure: engine inode <-> model node must be a bijection.
    let mut ino_to_node: HashMap<Ino, NodeId> = HashMap::new();
    let mut node_to_ino: HashMap<NodeId, Ino> = HashMap::new();
    let mut names_of: HashMap<NodeId, u32> = HashMap::new();
    for (_, id) in fs.paths() {
        *names_of.entry(id).or_default() += 1;
    }
    let mut stack = vec![(ROOT_INO, 1u64, b"/".to_vec())];
    while let Some((ino, node_id, path)) = stack.pop() {
        let shown = String::from_utf8_lossy(&path).into_owned();
        let node = &fs.nodes[&node_id];
        if let Some(&prev) = ino_to_node.get(&ino)
            && prev != node_id
        {
            return Err(format!("{shown}: inode {ino} stands for two model files"));
        }
        if let Some(&prev) = node_to_ino.get(&node_id)
            && prev != ino
        {
            return Err(format!("{shown}: one model file is inodes {prev} and {ino}"));
        }
        ino_to_node.insert(ino, node_id);
        node_to_ino.insert(node_id, ino);
        let attr = e.getattr(layer, ino).map_err(|err| format!("{shown}: getattr: {err}"))?;
        if attr.kind != node.kind {
            return Err(format!("{shown}: kind {:?}, model {:?}", attr.kind, node.kind));
        }
        if attr.perm != node.perm || attr.uid != node.uid || attr.gid != node.gid || attr.rdev != node.rdev {
            return Err(format!(
                "{shown}: perm {:o} uid {} gid {} rdev {}, model {:o} {} {} {}",
                attr.perm, attr.uid, attr.gid, attr.rdev, node.perm, node.uid, node.gid, node.rdev
            ));
        }
        let expected_nlink = if node.kind == FileKind::Directory {
            2 + node.children.values().filter(|c| fs.nodes[c].kind == FileKind::Directory).count() as u32
        } else {
            names_of[&node_id]
        };
        if attr.nlink != expected_nlink {
            return Err(format!("{shown}: nlink {}, model {expected_nlink}", attr.nlink));
        }
        let mut xattrs = BTreeMap::new();
        for name in e.list_xattr(layer, ino).map_err(|err| format!("{shown}: listxattr: {err}"))? {
            let v = e.get_xattr(layer, ino, &name).map_err(|err| format!("{shown}: getxattr: {err}"))?;
            xattrs.insert(name, v);
        }
        if xattrs != node.xattrs {
            return Err(format!("{shown}: xattrs {xattrs:?}, model {:?}", node.xattrs));
        }
        match node.kind {
            FileKind::Regular => {
                if attr.size != node.data.len() as u64 {
                    return Err(format!("{shown}: size {}, model {}", attr.size, node.data.len()));
                }
                let data =
                    e.read(layer, ino, 0, node.data.len() + 10).map_err(|err| format!("{shown}: read: {err}"))?;
                let differs = |i: usize| {
                    data.get(i) != node.data.get(i) && !may_differ.iter().any(|&(a, b)| (a..b).contains(&(i as u64)))
                };
                if data.len() != node.data.len() || (0..node.data.len()).any(differs) {
                    let at = (0..node.data.len()).find(|&i| differs(i));
                    return Err(format!("{shown}: content differs at {at:?}"));
                }
            }
            FileKind::Symlink => {
                let t = e.read_link(layer, ino).map_err(|err| format!("{shown}: readlink: {err}"))?;
                if t != node.target {
                    return Err(format!("{shown}: symlink target differs"));
                }
            }
            FileKind::Directory => {
                let entries =
                    e.read_dir(layer, ino, None, usize::MAX).map_err(|err| format!("{shown}: readdir: {err}"))?;
                let names: Vec<&Vec<u8>> = entries.iter().map(|d| &d.name).collect();
                let model_names: Vec<&Vec<u8>> = node.children.keys().collect();
                if names != model_names {
                    return Err(format!(
                        "{shown}: entries {:?}, model {:?}",
                        names.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>(),
                        model_names.iter().map(|n| String::from_utf8_lossy(n)).collect::<Vec<_>>()
                    ));
                }
                for d in entries {
                    let child = node.children[&d.name];
                    let mut p = path.clone();
                    if p != b"/" {
                        p.push(b'/');
                    }
                    p.extend_from_slice(&d.name);
                    if d.kind != fs.nodes[&child].kind {
                        return Err(format!("{}: entry kind {:?}", String::from_utf8_lossy(&p), d.kind));
                    }
                    let looked = e.lookup(layer, ino, &d.name).map_err(|err| format!("lookup {:?}: {err}", d.name))?;
                    if looked.ino != d.ino {
                        return Err(format!("{}: lookup and readdir disagree", String::from_utf8_lossy(&p)));
                    }
                    stack.push((d.ino, child, p));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
