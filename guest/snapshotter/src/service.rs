//! The Snapshots service: each containerd snapshot operation as one engine layer operation.
//!
//! Engine calls can block (layer operations sync the device), so every request runs on
//! tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;

use lcfs_engine::{Engine, LayerInfo, LayerKind};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::convert::{self, snapshot_info};
use crate::error::{CommitError, SnapshotError};
use crate::filter::{self, Filter};
use crate::host::Host;
use crate::names::{KEY_LABEL, layer_name};
use crate::proto::snapshots as pb;
use crate::proto::types::Mount;

/// Snapshots sent per `List` message.
const LIST_BATCH: usize = 100;

/// The gRPC service.
#[derive(Debug)]
pub struct Snapshotter<H> {
    host: Arc<H>,
}

impl<H: Host> Snapshotter<H> {
    pub fn new(host: Arc<H>) -> Snapshotter<H> {
        Snapshotter { host }
    }

    /// Runs `f` on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&H) -> Result<T, SnapshotError> + Send + 'static,
    ) -> Result<T, Status> {
        let host = self.host.clone();
        match tokio::task::spawn_blocking(move || f(&host)).await {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(SnapshotError::Task(e.to_string()).into()),
        }
    }
}

fn check_key(key: &str) -> Result<(), SnapshotError> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument("the snapshot key is empty".to_string()));
    }
    Ok(())
}

/// The layer behind snapshot `key`.
fn find(engine: &Engine, key: &str) -> Result<LayerInfo, SnapshotError> {
    check_key(key)?;
    match engine.layer(&layer_name(key)) {
        // A layer of that name that is not this key's (made by hand, or a hash collision) is
        // not this snapshot.
        Ok(info) if info.labels.get(KEY_LABEL).is_some_and(|k| k == key) => Ok(info),
        Ok(_) | Err(lcfs_engine::Error::LayerNotFound(_)) => Err(SnapshotError::NotFound(key.to_string())),
        Err(e) => Err(SnapshotError::engine(key, e)),
    }
}

/// containerd's labels, refusing the one lcfs keeps for itself.
fn user_labels(labels: HashMap<String, String>) -> Result<BTreeMap<String, String>, SnapshotError> {
    if labels.contains_key(KEY_LABEL) {
        return Err(SnapshotError::InvalidArgument(format!("label {KEY_LABEL:?} is reserved for lcfs")));
    }
    Ok(labels.into_iter().collect())
}

fn with_key(mut labels: BTreeMap<String, String>, key: &str) -> BTreeMap<String, String> {
    labels.insert(KEY_LABEL.to_string(), key.to_string());
    labels
}

fn kind_name(kind: LayerKind) -> &'static str {
    match kind {
        LayerKind::Writable => "active",
        LayerKind::Committed => "committed",
        LayerKind::View => "a view",
    }
}

/// Describes snapshot `key`, looking up its parent's key.
fn stat(engine: &Engine, key: &str) -> Result<pb::Info, SnapshotError> {
    let layer = find(engine, key)?;
    let parent_key = match &layer.parent {
        Some(parent) => {
            let parent = engine.layer(parent).map_err(|e| SnapshotError::engine(key, e))?;
            parent.labels.get(KEY_LABEL).cloned().unwrap_or(parent.name)
        }
        None => String::new(),
    };
    Ok(snapshot_info(layer, parent_key))
}

fn mounts_of<H: Host>(host: &H, key: &str, layer: &LayerInfo) -> Result<Vec<Mount>, SnapshotError> {
    let access = match layer.kind {
        LayerKind::Writable => "rw",
        LayerKind::View => "ro",
        LayerKind::Committed => {
            return Err(SnapshotError::WrongKind {
                key: key.to_string(),
                is: "committed",
                needed: "an active snapshot or a view",
            });
        }
    };
    Ok(vec![convert::bind_mount(&host.layer_dir(&layer.name), access)])
}

/// Prepare and View: a new layer on a committed parent.
fn create<H: Host>(
    host: &H,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
    kind: LayerKind,
) -> Result<Vec<Mount>, SnapshotError> {
    check_key(key)?;
    let labels = with_key(user_labels(labels)?, key);
    let engine = host.engine();
    let parent_layer = if parent.is_empty() {
        None
    } else {
        let p = find(engine, parent)?;
        if p.kind != LayerKind::Committed {
            return Err(SnapshotError::ParentNotCommitted { key: key.to_string(), parent: parent.to_string() });
        }
        Some(p.name)
    };
    // A taken name comes back as the engine's LayerExists, which is AlreadyExists here.
    let layer = engine
        .create_layer(&layer_name(key), parent_layer.as_deref(), kind, labels)
        .map_err(|e| SnapshotError::engine(key, e))?;
    host.layers_changed(&[&layer.name]);
    debug!(key, parent, kind = kind_name(kind), "snapshot created");
    mounts_of(host, key, &layer)
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<H: Host> pb::snapshots_server::Snapshots for Snapshotter<H> {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self.run(move |h| create(h, &r.key, &r.parent, r.labels, LayerKind::Writable)).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let mounts = self.run(move |h| create(h, &r.key, &r.parent, r.labels, LayerKind::View)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(&self, request: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let key = request.into_inner().key;
        let mounts = self.run(move |h| mounts_of(h, &key, &find(h.engine(), &key)?)).await?;
        Ok(Response::new(pb::MountsResponse { mounts }))
    }

    async fn commit(&self, request: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.run(move |h| {
            let engine = h.engine();
            check_key(&r.name)?;
            // As containerd's own snapshotters do: a taken name is reported before a bad key.
            let name = layer_name(&r.name);
            if engine.layer(&name).is_ok() {
                return Err(SnapshotError::AlreadyExists(r.name));
            }
            let active = find(engine, &r.key)?;
            if active.kind != LayerKind::Writable {
                return Err(SnapshotError::WrongKind { key: r.key, is: kind_name(active.kind), needed: "active" });
            }
            if !r.parent.is_empty() && stat(engine, &r.key)?.parent != r.parent {
                return Err(SnapshotError::InvalidArgument(format!(
                    "snapshot {:?} cannot be committed onto {:?}: lcfs does not rebase snapshots",
                    r.key, r.parent
                )));
            }
            let labels = with_key(user_labels(r.labels)?, &r.name);
            let started = std::time::Instant::now();
            h.commit_layer(&active.name, &name, Some(labels)).map_err(|e| match e {
                CommitError::Flush(source) => SnapshotError::Flush { key: r.key.clone(), source },
                CommitError::Engine(e) => SnapshotError::engine(&r.name, e),
            })?;
            debug!(total_us = started.elapsed().as_micros(), "commit timing");
            info!(key = %r.key, name = %r.name, "snapshot committed");
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = request.into_inner().key;
        self.run(move |h| {
            let layer = find(h.engine(), &key)?;
            h.engine().remove_layer(&layer.name).map_err(|e| SnapshotError::engine(&key, e))?;
            h.layers_changed(&[&layer.name]);
            debug!(key, "snapshot removed");
            Ok(())
        })
        .await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = request.into_inner().key;
        let info = self.run(move |h| stat(h.engine(), &key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = self
            .run(move |h| {
                let wanted =
                    r.info.ok_or_else(|| SnapshotError::InvalidArgument("the update has no info".to_string()))?;
                let key = wanted.name;
                let layer = find(h.engine(), &key)?;
                let given = user_labels(wanted.labels)?;
                let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
                let labels = if paths.is_empty() {
                    given
                } else {
                    let mut labels = layer.labels.clone();
                    labels.remove(KEY_LABEL);
                    for path in &paths {
                        if path == "labels" {
                            labels = given.clone();
                        } else if let Some(label) = path.strip_prefix("labels.") {
                            match given.get(label) {
                                Some(v) => labels.insert(label.to_string(), v.clone()),
                                None => labels.remove(label),
                            };
                        } else {
                            return Err(SnapshotError::InvalidArgument(format!(
                                "cannot update field {path:?} of snapshot {key:?}: only labels can change"
                            )));
                        }
                    }
                    labels
                };
                h.engine()
                    .set_layer_labels(&layer.name, with_key(labels, &key))
                    .map_err(|e| SnapshotError::engine(&key, e))?;
                stat(h.engine(), &key)
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(info) }))
    }

    type ListStream = ListStream;

    async fn list(&self, request: Request<pb::ListSnapshotsRequest>) -> Result<Response<ListStream>, Status> {
        let filters = request
            .into_inner()
            .filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
        let infos = self
            .run(move |h| {
                let layers = h.engine().layers().map_err(|e| SnapshotError::engine("", e))?;
                let keys: HashMap<String, String> =
                    layers.iter().filter_map(|l| Some((l.name.clone(), l.labels.get(KEY_LABEL)?.clone()))).collect();
                Ok(layers
                    .into_iter()
                    .filter(|l| keys.contains_key(&l.name))
                    .map(|l| {
                        let parent = l.parent.as_ref().and_then(|p| keys.get(p)).cloned().unwrap_or_default();
                        snapshot_info(l, parent)
                    })
                    .filter(|info| filter::any_matches(&filters, info))
                    .collect::<Vec<_>>())
            })
            .await?;
        let batches: Vec<_> =
            infos.chunks(LIST_BATCH).map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, request: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let key = request.into_inner().key;
        let usage = self.run(move |h| Ok(find(h.engine(), &key)?.usage)).await?;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        Ok(Response::new(pb::UsageResponse { size: to_i64(usage.bytes), inodes: to_i64(usage.inodes) }))
    }

    /// Removed layers free their space at once, so there is nothing left to clean.
    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}
