//! containerd's Diff service (`containerd.services.diff.v1.Diff`), Apply only: it unpacks an
//! image layer straight into the engine layer behind an lcfs snapshot, with no FUSE round
//! trips. containerd 2.x uses it through a `proxy_plugins` entry of type `diff`.
//!
//! Requests it cannot serve (mounts that are not an lcfs snapshot's, media types it does not
//! know, stream processors) get `Unimplemented`, which containerd's diff service reads as
//! "try the next differ", so listing lcfs before `walking` is safe for every snapshotter.
//!
//! An Apply that containerd cancels (or abandons by going away) stops at the next read of the
//! blob; what was applied stays in the layer until containerd removes the snapshot, as it does
//! after any failed unpack.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lcfs_engine::LayerKind;
use tonic::{Code, Request, Response, Status};

use crate::content;
use crate::host::Host;
use crate::proto::diff::diff_server::Diff;
use crate::proto::diff::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use crate::proto::types::{Descriptor, Mount};

/// The media type of what Apply reports: the uncompressed layer.
const APPLIED_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Why a layer was not applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{0}")]
    NotOurs(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("snapshot layer {0:?} does not exist")]
    NoLayer(String),
    #[error("snapshot layer {0:?} is not an active snapshot")]
    NotWritable(String),
    #[error("blob {digest} is not in containerd's content store: {source}")]
    NoBlob { digest: String, source: std::io::Error },
    #[error("applying layer {digest} to snapshot layer {layer:?}: {source}")]
    Unpack { digest: String, layer: String, source: lcfs_unpack::UnpackError },
    #[error("snapshot layer {layer:?}: {source}")]
    Engine { layer: String, source: lcfs_engine::Error },
    #[error("the apply task stopped: {0}")]
    Task(String),
    #[error("applying layer {digest} to snapshot layer {layer:?} was cancelled")]
    Cancelled { digest: String, layer: String },
}

impl From<ApplyError> for Status {
    fn from(e: ApplyError) -> Status {
        use lcfs_engine::Error as E;
        use lcfs_unpack::UnpackError as U;
        let code = match &e {
            ApplyError::NotOurs(_) => Code::Unimplemented,
            ApplyError::InvalidArgument(_) => Code::InvalidArgument,
            ApplyError::NoLayer(_) | ApplyError::NoBlob { .. } => Code::NotFound,
            ApplyError::NotWritable(_) => Code::FailedPrecondition,
            ApplyError::Cancelled { .. } => Code::Cancelled,
            ApplyError::Unpack { source: U::Read(_) | U::BadEntry { .. }, .. } => Code::InvalidArgument,
            ApplyError::Unpack { source: U::Engine { source, .. }, .. }
                if matches!(**source, E::NoSpace | E::NoMetadataSpace) =>
            {
                Code::ResourceExhausted
            }
            ApplyError::Engine { source: E::NoSpace | E::NoMetadataSpace, .. } => Code::ResourceExhausted,
            _ => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

/// The gRPC service.
#[derive(Debug)]
pub struct Differ<H> {
    host: Arc<H>,
}

impl<H: Host> Differ<H> {
    pub fn new(host: Arc<H>) -> Differ<H> {
        Differ { host }
    }
}

#[tonic::async_trait]
impl<H: Host> Diff for Differ<H> {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let request = request.into_inner();
        let layer = layer_of(self.host.as_ref(), &request.mounts)?;
        let desc = request.diff.ok_or_else(|| ApplyError::InvalidArgument("the request names no layer".into()))?;
        if !request.payloads.is_empty() {
            return Err(ApplyError::NotOurs("lcfs applies layers without stream processors".into()).into());
        }
        if !lcfs_unpack::supported_media_type(&desc.media_type) {
            return Err(ApplyError::NotOurs(format!("lcfs does not apply layers of type {:?}", desc.media_type)).into());
        }
        content::check_digest(&desc.digest).map_err(ApplyError::InvalidArgument)?;
        let host = self.host.clone();
        let started = std::time::Instant::now();
        // tonic drops this future when the call is cancelled; the guard then stops the apply.
        let cancel_on_drop = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let cancelled = cancel_on_drop.0.clone();
        let applied =
            tokio::task::spawn_blocking(move || apply(host.as_ref(), &layer, &desc.digest, request.sync_fs, cancelled))
                .await
                .map_err(|e| ApplyError::Task(e.to_string()))??;
        tracing::info!(digest = %applied.digest, bytes = applied.size, ms = started.elapsed().as_millis(), "layer applied");
        let applied = Descriptor {
            media_type: APPLIED_MEDIA_TYPE.to_string(),
            digest: applied.digest,
            size: i64::try_from(applied.size).unwrap_or(i64::MAX),
            annotations: Default::default(),
        };
        Ok(Response::new(ApplyResponse { applied: Some(applied) }))
    }

    async fn diff(&self, _request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        Err(Status::unimplemented("lcfs does not compute layer diffs; containerd's walking differ does"))
    }
}

/// Sets its flag when dropped: when the Apply call's future goes away before the apply is done.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A blob that stops giving data once its apply is cancelled.
struct CancellableBlob<R> {
    inner: R,
    cancelled: Arc<AtomicBool>,
}

impl<R: Read> Read for CancellableBlob<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancelled.load(Ordering::Acquire) {
            // Not `Interrupted`, which readers retry.
            return Err(io::Error::other("the apply was cancelled"));
        }
        self.inner.read(buf)
    }
}

fn apply<H: Host>(
    host: &H,
    layer: &str,
    digest: &str,
    sync: bool,
    cancelled: Arc<AtomicBool>,
) -> Result<lcfs_unpack::Applied, ApplyError> {
    let engine = host.engine();
    let info = match engine.layer(layer) {
        Ok(info) => info,
        Err(lcfs_engine::Error::LayerNotFound(_)) => return Err(ApplyError::NoLayer(layer.to_string())),
        Err(source) => return Err(ApplyError::Engine { layer: layer.to_string(), source }),
    };
    if info.kind != LayerKind::Writable {
        return Err(ApplyError::NotWritable(layer.to_string()));
    }
    let blob = host.open_blob(digest).map_err(|source| ApplyError::NoBlob { digest: digest.to_string(), source })?;
    let result = lcfs_unpack::apply(engine, info.id, CancellableBlob { inner: blob, cancelled: cancelled.clone() });
    // The kernel may have cached the layer's empty root; whatever was applied, forget it.
    host.layers_changed(&[layer]);
    if result.is_err() && cancelled.load(Ordering::Acquire) {
        tracing::warn!(%digest, %layer, "apply cancelled; the snapshot keeps what was applied until it is removed");
        return Err(ApplyError::Cancelled { digest: digest.to_string(), layer: layer.to_string() });
    }
    let applied =
        result.map_err(|source| ApplyError::Unpack { digest: digest.to_string(), layer: layer.to_string(), source })?;
    if sync {
        engine.sync_layer(info.id).map_err(|source| ApplyError::Engine { layer: layer.to_string(), source })?;
    }
    Ok(applied)
}

/// The layer whose directory the mounts bind; anything else is another snapshotter's.
fn layer_of<H: Host>(host: &H, mounts: &[Mount]) -> Result<String, ApplyError> {
    let not_ours = || ApplyError::NotOurs("the mounts are not an lcfs snapshot's".to_string());
    let [mount] = mounts else { return Err(not_ours()) };
    if mount.r#type != "bind" {
        return Err(not_ours());
    }
    let source = std::path::Path::new(&mount.source);
    let name = source.file_name().and_then(|n| n.to_str()).ok_or_else(not_ours)?;
    if host.layer_dir(name) != source {
        return Err(not_ours());
    }
    Ok(name.to_string())
}
