//! containerd's Snapshots gRPC service (`containerd.services.snapshots.v1.Snapshots`) over the
//! LCFS engine, for containerd's `proxy_plugins` of type `snapshot`, and its Diff service
//! (`containerd.services.diff.v1.Diff`), for `proxy_plugins` of type `diff` (containerd 2.x),
//! which unpacks image layers into snapshots in process.
//!
//! Every snapshot is one engine layer: an active snapshot a writable layer, a view a view
//! layer, a committed snapshot a committed layer. Prepare, View and Commit are therefore
//! constant-time engine operations, and a snapshot's mount is a bind mount of its layer's
//! directory in the LCFS FUSE mount. The service reaches the mount only through [`Host`], so
//! it can be tested over an engine alone.

#![forbid(unsafe_code)]

pub mod content;
pub mod filter;
pub mod names;

mod convert;
mod diff;
mod error;
mod host;
mod service;

use std::future::Future;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

pub use diff::Differ;
pub use error::{CommitError, SnapshotError};
pub use host::Host;
pub use service::Snapshotter;

use proto::diff::diff_server::DiffServer;
use proto::snapshots::snapshots_server::SnapshotsServer;

/// Serves the Snapshots and Diff services on `listener` until `shutdown` completes.
pub async fn serve<H: Host>(
    host: Arc<H>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Snapshotter::new(host.clone())))
        .add_service(DiffServer::new(Differ::new(host)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
}

/// Code generated from `proto/` by `build.rs`; module paths follow the protobuf packages.
#[allow(clippy::all, clippy::pedantic, missing_docs, missing_debug_implementations)]
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod diff {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.diff.v1");
                }
            }
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::diff::v1 as diff;
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}
