//! The lcfs API: JSON over HTTP/1.1 on a unix socket (the same API the VM forwards over vsock
//! port 1025). This module holds the wire types; `server` serves them from the daemon, `client`
//! is what the `lcfsd layer` commands use.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/status` | | [`Status`] |
//! | `GET /v1/layers` | | `[Layer]`, parents before children |
//! | `POST /v1/layers` | [`CreateLayer`] | `201` [`Layer`] |
//! | `GET /v1/layers/{name}` | | [`Layer`] |
//! | `DELETE /v1/layers/{name}` | | `204` |
//! | `POST /v1/layers/{key}/commit` | [`CommitLayer`] | [`Layer`] |
//! | `PUT /v1/layers/{name}/labels` | `{"labels": {…}}` | [`Layer`] |
//! | `GET /v1/layers/{name}/changes` | | `[Change]` |
//!
//! Errors are `{"error": "<what went wrong>", "code": "<kind>"}` with a matching HTTP status:
//! `not_found` 404, `exists` 409, `has_children` 409, `read_only` 409, `invalid` 400,
//! `no_space` 507, `internal` 500.

pub mod client;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A layer as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub id: u64,
    pub name: String,
    pub parent: Option<String>,
    /// `writable`, `committed` or `view`.
    pub kind: String,
    pub depth: u32,
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub created_ns: i128,
    pub updated_ns: i128,
    /// Bytes of data the layer owns.
    pub bytes: u64,
    /// Inodes the layer created or changed.
    pub inodes: u64,
}

impl From<lcfs_engine::LayerInfo> for Layer {
    fn from(l: lcfs_engine::LayerInfo) -> Layer {
        Layer {
            id: l.id.0,
            name: l.name,
            parent: l.parent,
            kind: kind_name(l.kind).to_string(),
            depth: l.depth,
            labels: l.labels,
            created_ns: l.created.as_nanos(),
            updated_ns: l.updated.as_nanos(),
            bytes: l.usage.bytes,
            inodes: l.usage.inodes,
        }
    }
}

pub fn kind_name(kind: lcfs_engine::LayerKind) -> &'static str {
    match kind {
        lcfs_engine::LayerKind::Writable => "writable",
        lcfs_engine::LayerKind::Committed => "committed",
        lcfs_engine::LayerKind::View => "view",
    }
}

/// Body of `POST /v1/layers`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLayer {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    /// `writable` (the default) or `view`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Body of `POST /v1/layers/{key}/commit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitLayer {
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Body of `PUT /v1/layers/{name}/labels`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    pub labels: BTreeMap<String, String>,
}

/// One change of a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Path inside the layer (bytes that are not UTF-8 are escaped as `\xNN`).
    pub path: String,
    /// `added`, `modified` or `deleted`.
    pub kind: String,
}

/// Answer of `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device: String,
    pub mountpoint: String,
    pub version: String,
    pub uptime_secs: u64,
    pub layers: usize,
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub code: String,
}
