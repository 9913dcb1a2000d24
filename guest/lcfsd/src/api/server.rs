//! The daemon side of the API: an axum router over the engine, served on a unix socket.
//!
//! Engine calls can block (a layer operation syncs the device), so each runs on tokio's
//! blocking pool. Layer directories of the mount change with these calls; the kernel is told
//! to forget the names involved so the mount shows them at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lcfs_engine::{Engine, LayerKind};
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::{ApiError, Change, CommitLayer, CreateLayer, Layer, SetLabels, Status};

/// What the handlers share.
#[derive(Debug)]
pub struct Daemon {
    pub engine: Engine,
    pub mount: Option<lcfs_fuse::Mount>,
    pub mountpoint: String,
    /// containerd's root directory (for its content store).
    pub containerd_root: std::path::PathBuf,
    pub started: Instant,
}

/// The snapshotter reaches the mount through the daemon.
impl lcfs_snapshotter::Host for Daemon {
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn layer_dir(&self, name: &str) -> std::path::PathBuf {
        Path::new(&self.mountpoint).join(name)
    }
    fn flush_layer(&self, name: &str) -> std::io::Result<()> {
        self.mount.as_ref().map_or(Ok(()), |m| m.flush_layer(name))
    }
    fn layers_changed(&self, names: &[&str]) {
        self.invalidate(names);
    }
    fn open_blob(&self, digest: &str) -> std::io::Result<std::fs::File> {
        let path = lcfs_snapshotter::content::blob_path(&self.containerd_root, digest)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        std::fs::File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }
}

impl Daemon {
    fn invalidate(&self, names: &[&str]) {
        if let Some(m) = &self.mount {
            for n in names {
                m.invalidate_layer(n);
            }
        }
    }
}

/// An API error: status and body.
#[derive(Debug)]
pub struct Failure(StatusCode, ApiError);

impl Failure {
    fn new(status: StatusCode, code: &str, error: impl Into<String>) -> Failure {
        Failure(status, ApiError { error: error.into(), code: code.to_string() })
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<lcfs_engine::Error> for Failure {
    fn from(e: lcfs_engine::Error) -> Failure {
        use lcfs_engine::Error as E;
        let (status, code) = match &e {
            E::LayerNotFound(_) | E::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            E::LayerExists(_) | E::Exists => (StatusCode::CONFLICT, "exists"),
            E::LayerHasChildren(_) => (StatusCode::CONFLICT, "has_children"),
            E::LayerKind { .. } => (StatusCode::CONFLICT, "read_only"),
            E::InvalidLayerName(..) | E::InvalidLabel(_) | E::InvalidArgument(_) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            E::NoSpace | E::NoMetadataSpace => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Failure::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for Failure {
    fn from(e: JsonRejection) -> Failure {
        Failure::new(StatusCode::BAD_REQUEST, "invalid", format!("bad request body: {}", e.body_text()))
    }
}

type Shared = State<Arc<Daemon>>;
type ApiResult<T> = Result<T, Failure>;

/// Runs an engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    daemon: &Arc<Daemon>,
    f: impl FnOnce(&Daemon) -> Result<T, lcfs_engine::Error> + Send + 'static,
) -> ApiResult<T> {
    let daemon = daemon.clone();
    match tokio::task::spawn_blocking(move || f(&daemon)).await {
        Ok(r) => r.map_err(Failure::from),
        Err(e) => Err(Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("engine task failed: {e}"))),
    }
}

async fn status(State(d): Shared) -> ApiResult<Json<Status>> {
    let started = d.started;
    blocking(&d, move |d| {
        let s = d.engine.statfs()?;
        Ok(Json(Status {
            device: d.engine.device_name().to_string(),
            mountpoint: d.mountpoint.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: started.elapsed().as_secs(),
            layers: d.engine.layers()?.len(),
            block_size: s.block_size,
            blocks: s.blocks,
            blocks_free: s.blocks_free,
        }))
    })
    .await
}

async fn list(State(d): Shared) -> ApiResult<Json<Vec<Layer>>> {
    blocking(&d, |d| Ok(Json(d.engine.layers()?.into_iter().map(Layer::from).collect()))).await
}

async fn get_layer(State(d): Shared, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Layer>> {
    blocking(&d, move |d| Ok(Json(d.engine.layer(&name)?.into()))).await
}

async fn create(
    State(d): Shared,
    body: Result<Json<CreateLayer>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Layer>)> {
    let Json(req) = body?;
    let kind = match req.kind.as_deref() {
        None | Some("writable") => LayerKind::Writable,
        Some("view") => LayerKind::View,
        Some(other) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("unknown layer kind {other:?}: use \"writable\" or \"view\""),
            ));
        }
    };
    let layer = blocking(&d, move |d| {
        let info = d.engine.create_layer(&req.name, req.parent.as_deref(), kind, req.labels)?;
        d.invalidate(&[&info.name]);
        Ok(info)
    })
    .await?;
    info!(layer = %layer.name, parent = ?layer.parent, "layer created");
    Ok((StatusCode::CREATED, Json(layer.into())))
}

async fn commit(
    State(d): Shared,
    UrlPath(key): UrlPath<String>,
    body: Result<Json<CommitLayer>, JsonRejection>,
) -> ApiResult<Json<Layer>> {
    let Json(req) = body?;
    let layer = blocking(&d, move |d| {
        // A missing layer is reported as such, not as a failed flush of its directory.
        d.engine.layer(&key)?;
        lcfs_snapshotter::Host::commit_layer(d, &key, &req.name, req.labels).map_err(|e| match e {
            lcfs_snapshotter::CommitError::Flush(e) => {
                warn!(layer = %key, error = %e, "flushing the layer before commit failed");
                lcfs_engine::Error::Io(e)
            }
            lcfs_snapshotter::CommitError::Engine(e) => e,
        })
    })
    .await?;
    info!(layer = %layer.name, "layer committed");
    Ok(Json(layer.into()))
}

async fn remove(State(d): Shared, UrlPath(name): UrlPath<String>) -> ApiResult<StatusCode> {
    let shown = name.clone();
    blocking(&d, move |d| {
        d.engine.remove_layer(&name)?;
        d.invalidate(&[&name]);
        Ok(())
    })
    .await?;
    info!(layer = %shown, "layer removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn set_labels(
    State(d): Shared,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<SetLabels>, JsonRejection>,
) -> ApiResult<Json<Layer>> {
    let Json(req) = body?;
    blocking(&d, move |d| Ok(Json(d.engine.set_layer_labels(&name, req.labels)?.into()))).await
}

async fn changes(State(d): Shared, UrlPath(name): UrlPath<String>) -> ApiResult<Json<Vec<Change>>> {
    blocking(&d, move |d| {
        Ok(Json(
            d.engine
                .layer_changes(&name)?
                .into_iter()
                .map(|c| Change {
                    path: c.path.escape_ascii().to_string(),
                    kind: match c.kind {
                        lcfs_engine::ChangeKind::Added => "added",
                        lcfs_engine::ChangeKind::Modified => "modified",
                        lcfs_engine::ChangeKind::Deleted => "deleted",
                    }
                    .to_string(),
                })
                .collect(),
        ))
    })
    .await
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint (see GET /v1/layers, /v1/status)")
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/layers", get(list).post(create))
        .route("/v1/layers/{name}", get(get_layer).delete(remove))
        .route("/v1/layers/{name}/commit", post(commit))
        .route("/v1/layers/{name}/labels", put(set_labels))
        .route("/v1/layers/{name}/changes", get(changes))
        .fallback(not_found)
        .with_state(daemon)
}

/// Binds a socket of the daemon (mode 0600), replacing a stale socket file left by a killed
/// daemon.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            // Another daemon might still be serving it; only a dead socket is replaced.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running daemon", path.display()),
                ));
            }
            warn!(socket = %path.display(), "removing a stale socket");
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(listener)
}
