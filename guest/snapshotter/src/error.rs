//! What can go wrong with a snapshot request, and the gRPC code containerd expects for each
//! (containerd's `errdefs` turns these codes back into its own error kinds).

use tonic::{Code, Status};

/// A failed [`crate::Host::commit_layer`].
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The mount could not push the layer's cached writes into the engine.
    #[error("flushing the layer before its commit: {0}")]
    Flush(#[source] std::io::Error),
    #[error(transparent)]
    Engine(#[from] lcfs_engine::Error),
}

/// A failed snapshot operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0:?} does not exist")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("parent {parent:?} of snapshot {key:?} is not a committed snapshot")]
    ParentNotCommitted { key: String, parent: String },
    #[error("snapshot {0:?} has children; remove them first")]
    HasChildren(String),
    #[error("snapshot {key:?} is {is}; the operation needs {needed}")]
    WrongKind { key: String, is: &'static str, needed: &'static str },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("snapshot {key:?}: {source}")]
    Engine { key: String, source: lcfs_engine::Error },
    #[error("flushing snapshot {key:?} before its commit: {source}")]
    Flush { key: String, source: std::io::Error },
    #[error("the snapshot task stopped: {0}")]
    Task(String),
}

impl SnapshotError {
    /// Wraps an engine error about snapshot `key`, turning the engine's layer errors into
    /// the snapshot errors they mean.
    pub fn engine(key: &str, source: lcfs_engine::Error) -> SnapshotError {
        use lcfs_engine::Error as E;
        match source {
            E::LayerNotFound(_) => SnapshotError::NotFound(key.to_string()),
            E::LayerExists(_) => SnapshotError::AlreadyExists(key.to_string()),
            E::LayerHasChildren(_) => SnapshotError::HasChildren(key.to_string()),
            source => SnapshotError::Engine { key: key.to_string(), source },
        }
    }

    fn code(&self) -> Code {
        use lcfs_engine::Error as E;
        match self {
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::ParentNotCommitted { .. } | SnapshotError::InvalidArgument(_) => Code::InvalidArgument,
            SnapshotError::HasChildren(_) | SnapshotError::WrongKind { .. } => Code::FailedPrecondition,
            SnapshotError::Engine { source, .. } => match source {
                E::LayerKind { .. } => Code::FailedPrecondition,
                E::InvalidLayerName(..) | E::InvalidLabel(_) | E::InvalidArgument(_) => Code::InvalidArgument,
                E::NoSpace | E::NoMetadataSpace => Code::ResourceExhausted,
                _ => Code::Internal,
            },
            SnapshotError::Flush { .. } | SnapshotError::Task(_) => Code::Internal,
        }
    }
}

impl From<SnapshotError> for Status {
    fn from(e: SnapshotError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
