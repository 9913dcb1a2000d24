//! Conversions between the engine's types and containerd's protobuf messages: a layer as a
//! snapshot's `Info`, a layer directory as the bind mount containerd gets, and the fields of an
//! `Info` that containerd's list filters name.

use std::collections::HashMap;
use std::path::Path;

use lcfs_engine::{LayerInfo, LayerKind};

use crate::filter::Fields;
use crate::names::KEY_LABEL;
use crate::proto::snapshots as pb;
use crate::proto::types::Mount;

/// The snapshot's description for containerd; `parent_key` is the parent snapshot's key.
pub(crate) fn snapshot_info(layer: LayerInfo, parent_key: String) -> pb::Info {
    let kind = match layer.kind {
        LayerKind::Writable => pb::Kind::Active,
        LayerKind::Committed => pb::Kind::Committed,
        LayerKind::View => pb::Kind::View,
    };
    let time = |t: lcfs_engine::Timestamp| prost_types::Timestamp { seconds: t.secs, nanos: t.nsecs as i32 };
    let mut labels: HashMap<String, String> = layer.labels.into_iter().collect();
    let name = labels.remove(KEY_LABEL).unwrap_or(layer.name);
    pb::Info {
        name,
        parent: parent_key,
        kind: kind.into(),
        created_at: Some(time(layer.created)),
        updated_at: Some(time(layer.updated)),
        labels,
    }
}

/// A snapshot's mount: a bind mount of its layer's directory in the lcfs mount, `rw` or `ro`.
pub(crate) fn bind_mount(layer_dir: &Path, access: &str) -> Mount {
    Mount {
        r#type: "bind".to_string(),
        source: layer_dir.display().to_string(),
        target: String::new(),
        options: vec!["rbind".to_string(), access.to_string()],
    }
}

impl Fields for pb::Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => Some(self.name.clone()),
            "parent" => Some(self.parent.clone()),
            "kind" => match self.kind() {
                pb::Kind::Active => Some("active".to_string()),
                pb::Kind::View => Some("view".to_string()),
                pb::Kind::Committed => Some("committed".to_string()),
                pb::Kind::Unknown => None,
            },
            "labels" => self.labels.get(&path[1..].join(".")).cloned(),
            _ => None,
        }
    }
}
