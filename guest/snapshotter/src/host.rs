//! What the Snapshots and Diff services need from the daemon around the engine ([`Host`]):
//! lcfsd implements it over its FUSE mount; tests implement it over an engine alone.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lcfs_engine::{Engine, LayerInfo};

use crate::error::CommitError;

/// What the services need from the daemon around the engine: the mount that shows layers as
/// directories, and containerd's content store.
pub trait Host: Send + Sync + 'static {
    /// The engine holding the layers.
    fn engine(&self) -> &Engine;
    /// The directory of layer `name` in the mount; a snapshot's mount binds it.
    fn layer_dir(&self, name: &str) -> PathBuf;
    /// Pushes what the mount still caches for layer `name` into the engine (before a commit).
    fn flush_layer(&self, name: &str) -> std::io::Result<()>;
    /// Tells the mount that these layer names appeared or disappeared. A commit reports only
    /// the new name: the layer's directory is the same inode under it, and dropping the old
    /// name from the kernel's cache would also drop everything cached below it (for a layer
    /// holding 1 GiB that alone made a commit take 140 ms instead of 8).
    fn layers_changed(&self, names: &[&str]);
    /// Freezes the writable layer `layer` as `name`: pushes what the mount caches for it into
    /// the engine, commits it (constant time, durable), and reports only the new name to the
    /// mount. The lcfs API's commit and the snapshotter's Commit both come here.
    fn commit_layer(
        &self,
        layer: &str,
        name: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<LayerInfo, CommitError> {
        self.flush_layer(layer).map_err(CommitError::Flush)?;
        let info = self.engine().commit_layer(layer, name, labels)?;
        self.layers_changed(&[&info.name]);
        Ok(info)
    }
    /// Opens blob `digest` (`<algorithm>:<hex>`, already checked) of containerd's content
    /// store, for the Diff service.
    fn open_blob(&self, digest: &str) -> std::io::Result<std::fs::File>;
}
