//! The Snapshots service through its gRPC socket, checking what containerd's snapshotter test
//! suite (`core/snapshots/testsuite`) checks of a snapshotter's API: chains, removal order,
//! labels and field masks, usage, views, filters, deep chains, concurrent prepares, restarts
//! and the error codes containerd expects. Layer contents through a real mount are tested
//! with real containerd in `lcfsd`'s tests.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lcfs_engine::device::FileDevice;
use lcfs_engine::{Engine, FormatOptions, LayerKind, NewNode, OpenOptions, ROOT_INO};
use lcfs_snapshotter::proto::diff::diff_client::DiffClient;
use lcfs_snapshotter::proto::snapshots::snapshots_client::SnapshotsClient;
use lcfs_snapshotter::proto::snapshots::{self as pb, Kind};
use lcfs_snapshotter::{Host, names};
use tokio::net::UnixListener;
use tonic::Code;
use tonic::transport::Channel;

/// The engine plus a record of what the service asked of the mount.
struct TestHost {
    engine: Engine,
    mountpoint: PathBuf,
    /// Stands in for containerd's content store: blobs by hex digest.
    blobs: PathBuf,
    flushed: Mutex<Vec<String>>,
}

impl Host for TestHost {
    fn engine(&self) -> &Engine {
        &self.engine
    }
    fn layer_dir(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }
    fn flush_layer(&self, name: &str) -> std::io::Result<()> {
        self.flushed.lock().expect("lock").push(name.to_string());
        Ok(())
    }
    fn layers_changed(&self, _names: &[&str]) {}
    fn open_blob(&self, digest: &str) -> std::io::Result<std::fs::File> {
        std::fs::File::open(self.blobs.join(digest.trim_start_matches("sha256:")))
    }
}

struct Service {
    host: Arc<TestHost>,
    client: SnapshotsClient<Channel>,
    diff: DiffClient<Channel>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start(dir: &Path) -> Service {
        let device = Arc::new(FileDevice::open_or_create(&dir.join("dev.img"), 256 << 20).expect("device"));
        let engine =
            Engine::open_or_format(device, &FormatOptions::default(), &OpenOptions::default()).expect("engine");
        let blobs = dir.join("blobs");
        std::fs::create_dir_all(&blobs).expect("blobs");
        let host = Arc::new(TestHost { engine, mountpoint: dir.join("mnt"), blobs, flushed: Mutex::new(Vec::new()) });
        let socket = dir.join("snapshotter.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(lcfs_snapshotter::serve(host.clone(), listener, async {
            let _ = stopped.await;
        }));
        let server = tokio::spawn(async move { server.await.expect("join").expect("serve") });
        let channel = tonic::transport::Endpoint::try_from("http://lcfs.invalid")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await
            .expect("connect");
        Service {
            host,
            client: SnapshotsClient::new(channel.clone()),
            diff: DiffClient::new(channel),
            stop: Some(stop),
            server,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.client);
        drop(self.diff);
        self.server.await.expect("server stops");
        let host = Arc::try_unwrap(self.host).ok().expect("the server dropped its host");
        host.engine.close().expect("close");
    }

    async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<lcfs_snapshotter::proto::types::Mount>, tonic::Status> {
        let r = pb::PrepareSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
        Ok(self.client.prepare(r).await?.into_inner().mounts)
    }

    async fn prepare_labeled(&mut self, key: &str, parent: &str, labels: &[(&str, &str)]) -> Result<(), tonic::Status> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let r = pb::PrepareSnapshotRequest { key: key.into(), parent: parent.into(), labels, ..Default::default() };
        self.client.prepare(r).await.map(drop)
    }

    async fn view(
        &mut self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<lcfs_snapshotter::proto::types::Mount>, tonic::Status> {
        let r = pb::ViewSnapshotRequest { key: key.into(), parent: parent.into(), ..Default::default() };
        Ok(self.client.view(r).await?.into_inner().mounts)
    }

    async fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        let r = pb::CommitSnapshotRequest { name: name.into(), key: key.into(), ..Default::default() };
        self.client.commit(r).await.map(drop)
    }

    async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        self.client.remove(pb::RemoveSnapshotRequest { key: key.into(), ..Default::default() }).await.map(drop)
    }

    async fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        let r = self.client.stat(pb::StatSnapshotRequest { key: key.into(), ..Default::default() }).await?;
        Ok(r.into_inner().info.expect("stat has info"))
    }

    async fn list(&mut self, filters: &[&str]) -> Result<Vec<pb::Info>, tonic::Status> {
        let r =
            pb::ListSnapshotsRequest { filters: filters.iter().map(|f| f.to_string()).collect(), ..Default::default() };
        let mut stream = self.client.list(r).await?.into_inner();
        let mut all = Vec::new();
        while let Some(batch) = stream.message().await? {
            assert!(batch.info.len() <= 100, "batches stay small");
            all.extend(batch.info);
        }
        Ok(all)
    }

    async fn names(&mut self, filters: &[&str]) -> BTreeSet<String> {
        self.list(filters).await.expect("list").into_iter().map(|i| i.name).collect()
    }

    async fn update(&mut self, key: &str, labels: &[(&str, &str)], paths: &[&str]) -> Result<pb::Info, tonic::Status> {
        let info = pb::Info {
            name: key.into(),
            // What containerd 1.6 sends: a kind and zero times, both to be ignored.
            kind: Kind::Committed.into(),
            parent: "doesnotexist".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let mask = prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() };
        let r = pb::UpdateSnapshotRequest { info: Some(info), update_mask: Some(mask), ..Default::default() };
        Ok(self.client.update(r).await?.into_inner().info.expect("update has info"))
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the request should fail").code()
}

fn labels(info: &pb::Info) -> Vec<(String, String)> {
    let mut l: Vec<_> = info.labels.clone().into_iter().collect();
    l.sort();
    l
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in("/var/tmp").expect("tempdir")
}

#[tokio::test]
async fn a_chain_is_prepared_committed_viewed_and_removed_in_order() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    let key = "default/1/extract-1 sha256:aa";
    let mounts = s.prepare(key, "").await.expect("prepare");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].r#type, "bind");
    assert_eq!(mounts[0].options, ["rbind", "rw"]);
    assert_eq!(mounts[0].source, dir.path().join("mnt").join(names::layer_name(key)).display().to_string());
    let active = s.stat(key).await.expect("stat");
    assert_eq!((active.name.as_str(), active.kind(), active.parent.as_str()), (key, Kind::Active, ""));
    assert_eq!(active.created_at, active.updated_at);

    s.commit("default/2/sha256:aa", key).await.expect("commit");
    assert_eq!(s.host.flushed.lock().expect("lock").as_slice(), [names::layer_name(key)], "flushed before commit");
    assert_eq!(code(s.stat(key).await), Code::NotFound, "the active key is gone");
    let base = s.stat("default/2/sha256:aa").await.expect("stat");
    assert_eq!((base.kind(), base.parent.as_str()), (Kind::Committed, ""));
    assert_eq!(base.created_at, base.updated_at, "a commit is a new snapshot");

    s.prepare("top", "default/2/sha256:aa").await.expect("prepare on committed");
    assert_eq!(s.stat("top").await.expect("stat").parent, "default/2/sha256:aa");
    let view = s.view("view", "default/2/sha256:aa").await.expect("view");
    assert_eq!(view[0].options, ["rbind", "ro"]);
    assert_eq!(s.stat("view").await.expect("stat").kind(), Kind::View);
    let again = s.client.mounts(pb::MountsRequest { key: "view".into(), ..Default::default() }).await;
    assert_eq!(again.expect("mounts").into_inner().mounts, view);
    let of_committed =
        s.client.mounts(pb::MountsRequest { key: "default/2/sha256:aa".into(), ..Default::default() }).await;
    assert_eq!(code(of_committed), Code::FailedPrecondition);

    let err = s.remove("default/2/sha256:aa").await.expect_err("a parent cannot go first");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("remove"), "{}", err.message());
    s.remove("view").await.expect("remove view");
    s.remove("top").await.expect("remove top");
    s.remove("default/2/sha256:aa").await.expect("remove base");
    assert!(s.list(&[]).await.expect("list").is_empty());
    // Removed keys and names can be used again.
    s.prepare(key, "").await.expect("key reused");
    s.commit("default/2/sha256:aa", key).await.expect("name reused");
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_codes_containerd_expects() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    s.prepare("a", "").await.expect("prepare");
    s.prepare("b", "").await.expect("prepare");
    s.commit("c", "b").await.expect("commit");
    s.view("v", "c").await.expect("view");

    assert_eq!(code(s.prepare("x", "missing").await), Code::NotFound, "missing parent");
    assert_eq!(code(s.view("x", "missing").await), Code::NotFound, "missing parent");
    assert_eq!(code(s.prepare("x", "a").await), Code::InvalidArgument, "active parent");
    assert_eq!(code(s.prepare("x", "v").await), Code::InvalidArgument, "view as parent");
    for key in ["a", "c", "v"] {
        assert_eq!(code(s.prepare(key, "").await), Code::AlreadyExists, "prepare {key}");
        assert_eq!(code(s.view(key, "c").await), Code::AlreadyExists, "view {key}");
    }
    assert_eq!(code(s.prepare("", "").await), Code::InvalidArgument, "empty key");
    assert_eq!(code(s.commit("c", "missing").await), Code::AlreadyExists, "a taken name first");
    assert_eq!(code(s.commit("n", "missing").await), Code::NotFound);
    assert_eq!(code(s.commit("n", "v").await), Code::FailedPrecondition, "commit of a view");
    assert_eq!(code(s.commit("n", "c").await), Code::FailedPrecondition, "commit of a committed snapshot");
    assert_eq!(code(s.commit("", "a").await), Code::InvalidArgument, "empty name");
    s.commit("n", "a").await.expect("commit");
    assert_eq!(code(s.commit("n2", "a").await), Code::NotFound, "a second commit of the same key");

    let big = "x".repeat(5000);
    assert_eq!(code(s.prepare_labeled("l", "", &[("k", big.as_str())]).await), Code::InvalidArgument);
    assert_eq!(code(s.prepare_labeled("l", "", &[(names::KEY_LABEL, "x")]).await), Code::InvalidArgument);
    assert_eq!(code(s.prepare_labeled("l", "", &[("", "x")]).await), Code::InvalidArgument);
    assert_eq!(code(s.update("c", &[("k", big.as_str())], &[]).await), Code::InvalidArgument);
    assert_eq!(code(s.update("c", &[], &["parent"]).await), Code::InvalidArgument);
    assert_eq!(code(s.update("missing", &[], &[]).await), Code::NotFound);
    let no_info = s.client.update(pb::UpdateSnapshotRequest::default()).await;
    assert_eq!(code(no_info), Code::InvalidArgument);

    for missing in ["missing", ""] {
        let want = if missing.is_empty() { Code::InvalidArgument } else { Code::NotFound };
        assert_eq!(code(s.stat(missing).await), want);
        assert_eq!(code(s.remove(missing).await), want);
        let usage = s.client.usage(pb::UsageRequest { key: missing.into(), ..Default::default() }).await;
        assert_eq!(code(usage), want);
        let mounts = s.client.mounts(pb::MountsRequest { key: missing.into(), ..Default::default() }).await;
        assert_eq!(code(mounts), want);
    }
    assert_eq!(code(s.list(&["name=="]).await), Code::InvalidArgument, "bad filter");
    assert_eq!(code(s.list(&["name~=("]).await), Code::InvalidArgument, "bad regular expression");
    // Nothing above changed what exists.
    assert_eq!(s.names(&[]).await, ["c", "n", "v"].map(String::from).into());
    s.stop().await;
}

#[tokio::test]
async fn labels_update_like_containerds_own_snapshotters() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    s.prepare_labeled("a", "", &[("l1", "v1"), ("gc", "root")]).await.expect("prepare");
    let before = s.stat("a").await.expect("stat");
    assert_eq!(labels(&before), [("gc".into(), "root".into()), ("l1".into(), "v1".into())]);

    // No paths: every label replaced; kind, parent and times sent are ignored.
    let all = [("l1", "v1"), ("l2", "v2"), ("l3", "v3"), ("gc", "root")];
    let after = s.update("a", &all, &[]).await.expect("update");
    assert_eq!(labels(&after).len(), 4);
    assert_eq!((after.kind(), after.parent.as_str()), (Kind::Active, ""));
    assert_eq!(after.created_at, before.created_at, "created does not change");
    let time = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos)).expect("a time");
    assert!(time(after.updated_at) >= time(before.updated_at));
    assert_eq!(s.stat("a").await.expect("stat"), after, "stat agrees with what update returned");

    // Named labels: set if given, deleted if not; others kept.
    let after = s.update("a", &[("l1", "updated"), ("l4", "v4")], &["labels.l1", "labels.l2"]).await.expect("update");
    let want: Vec<(String, String)> =
        [("gc", "root"), ("l1", "updated"), ("l3", "v3")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(labels(&after), want);

    // "labels": exactly the map given.
    let after = s.update("a", &[("l4", "v4")], &["labels"]).await.expect("update");
    assert_eq!(labels(&after), [("l4".to_string(), "v4".to_string())]);

    // Commit labels replace the active snapshot's.
    let r = pb::CommitSnapshotRequest {
        name: "c".into(),
        key: "a".into(),
        labels: HashMap::from([("committed".to_string(), "yes".to_string())]),
        ..Default::default()
    };
    s.client.commit(r).await.expect("commit");
    assert_eq!(labels(&s.stat("c").await.expect("stat")), [("committed".to_string(), "yes".to_string())]);
    s.stop().await;
}

#[tokio::test]
async fn list_filters_like_containerd() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    let gc = ("containerd.io/gc.root", "check-walk");
    s.prepare_labeled("p", "", &[gc]).await.expect("prepare");
    s.commit("p-c", "p").await.expect("commit");
    let r = pb::CommitSnapshotRequest { name: "p".into(), key: "p-c".into(), ..Default::default() };
    assert_eq!(code(s.client.commit(r).await), Code::FailedPrecondition);
    s.prepare_labeled("a-wl", "p-c", &[gc, ("l", "1")]).await.expect("prepare");
    s.prepare_labeled("a-np-wl", "", &[gc, ("l", "2")]).await.expect("prepare");
    s.view("v-wl", "p-c").await.expect("view");
    s.prepare("a-nl", "").await.expect("prepare");

    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(s.names(&[]).await, set(&["p-c", "a-wl", "a-np-wl", "v-wl", "a-nl"]));
    assert_eq!(s.names(&[r#"labels."containerd.io/gc.root"==check-walk"#]).await, set(&["a-wl", "a-np-wl"]));
    assert_eq!(s.names(&["kind==active"]).await, set(&["a-wl", "a-np-wl", "a-nl"]));
    assert_eq!(s.names(&["kind==view"]).await, set(&["v-wl"]));
    assert_eq!(s.names(&["kind==committed"]).await, set(&["p-c"]));
    assert_eq!(s.names(&["name==p-c", "name==a-np-wl"]).await, set(&["p-c", "a-np-wl"]));
    assert_eq!(s.names(&["name==a-wl,labels.l"]).await, set(&["a-wl"]));
    assert_eq!(s.names(&["parent==p-c"]).await, set(&["a-wl", "v-wl"]));
    assert_eq!(s.names(&[r#"parent!="",labels.l"#]).await, set(&["a-wl"]));
    assert_eq!(s.names(&["labels.l"]).await, set(&["a-wl", "a-np-wl"]));
    assert_eq!(s.names(&["labels.l==2"]).await, set(&["a-np-wl"]));
    assert_eq!(s.names(&["name~=^a-n"]).await, set(&["a-np-wl", "a-nl"]));

    // Stat and List describe a snapshot the same way, times included.
    for info in s.list(&[]).await.expect("list") {
        assert_eq!(s.stat(&info.name).await.expect("stat"), info);
    }
    // Layers made by hand are no snapshots of containerd's: not listed, not found.
    s.host.engine.create_layer("by-hand", None, LayerKind::Writable, Default::default()).expect("create");
    assert!(!s.names(&[]).await.contains("by-hand"));
    assert_eq!(code(s.stat("by-hand").await), Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn usage_counts_what_a_snapshot_owns() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    s.prepare("a", "").await.expect("prepare");
    let empty = s.client.usage(pb::UsageRequest { key: "a".into(), ..Default::default() }).await.expect("usage");
    let layer = s.host.engine.layer(&names::layer_name("a")).expect("layer").id;
    let file = s.host.engine.create(layer, ROOT_INO, b"f", &NewNode::file(0o644, 0, 0)).expect("create");
    s.host.engine.write(layer, file.ino, 0, &vec![7u8; 1 << 20]).expect("write");
    let used = s.client.usage(pb::UsageRequest { key: "a".into(), ..Default::default() }).await.expect("usage");
    let (empty, used) = (empty.into_inner(), used.into_inner());
    assert_eq!(used.size - empty.size, 1 << 20);
    assert_eq!(used.inodes - empty.inodes, 1);
    s.stop().await;
}

#[tokio::test]
async fn deep_chains_and_many_snapshots_list_in_batches() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    let mut parent = String::new();
    for i in 0..200 {
        let (key, name) = (format!("default/{i}/extract"), format!("default/{i}/sha256:{i:064x}"));
        s.prepare(&key, &parent).await.expect("prepare");
        s.commit(&name, &key).await.expect("commit");
        parent = name;
    }
    s.prepare("container", &parent).await.expect("prepare on a 200-layer chain");
    assert_eq!(s.stat("container").await.expect("stat").parent, parent);
    let all = s.list(&[]).await.expect("list");
    assert_eq!(all.len(), 201);
    let by_name: HashMap<_, _> = all.iter().map(|i| (i.name.clone(), i.parent.clone())).collect();
    let (mut at, mut depth) = ("container".to_string(), 0);
    while let Some(p) = by_name.get(&at).filter(|p| !p.is_empty()) {
        at = p.clone();
        depth += 1;
    }
    assert_eq!(depth, 200, "the parents listed form the whole chain");
    s.stop().await;
}

#[tokio::test]
async fn concurrent_prepares_each_get_their_own_snapshot_or_a_clear_refusal() {
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    s.prepare("base-a", "").await.expect("prepare");
    s.commit("base", "base-a").await.expect("commit");
    let mut tasks = Vec::new();
    for i in 0..48 {
        let mut client = s.client.clone();
        // Every fourth key is asked for twice.
        let key = format!("c{}", if i % 4 == 3 { i - 1 } else { i });
        tasks.push(tokio::spawn(async move {
            let r = pb::PrepareSnapshotRequest { key, parent: "base".into(), ..Default::default() };
            client.prepare(r).await.map(drop).map_err(|e| e.code())
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("join"));
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 36);
    assert!(results.iter().filter_map(|r| r.err()).all(|c| c == Code::AlreadyExists), "{results:?}");
    assert_eq!(s.names(&["kind==active"]).await.len(), 36);
    s.stop().await;
}

#[tokio::test]
async fn snapshots_survive_a_restart_with_keys_and_labels() {
    let dir = tempdir();
    let long_key = format!("default/9/{}", "k/".repeat(150));
    {
        let mut s = Service::start(dir.path()).await;
        s.prepare_labeled("default/1/extract-7 sha256:ab", "", &[("l", "1")]).await.expect("prepare");
        s.commit("default/2/sha256:ab", "default/1/extract-7 sha256:ab").await.expect("commit");
        s.prepare(&long_key, "default/2/sha256:ab").await.expect("prepare a long key");
        s.update(&long_key, &[("after", "update")], &[]).await.expect("update");
        s.stop().await;
    }
    let mut s = Service::start(dir.path()).await;
    let long = s.stat(&long_key).await.expect("stat");
    assert_eq!((long.kind(), long.parent.as_str()), (Kind::Active, "default/2/sha256:ab"));
    assert_eq!(labels(&long), [("after".to_string(), "update".to_string())]);
    assert_eq!(s.names(&[]).await, [long_key.clone(), "default/2/sha256:ab".to_string()].into());
    s.remove(&long_key).await.expect("remove");
    s.remove("default/2/sha256:ab").await.expect("remove");
    s.client.cleanup(pb::CleanupRequest::default()).await.expect("cleanup");
    s.stop().await;
}

/// A gzip-compressed layer of `files`, stored as a blob; returns the layer's descriptor and
/// the digest of its uncompressed tar.
fn store_layer(s: &Service, files: &[(&str, &[u8])]) -> (lcfs_snapshotter::proto::types::Descriptor, String) {
    use sha2::Digest;
    use std::io::Write;
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).expect("path");
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        builder.append(&h, *data).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let blob = gz.finish().expect("gzip");
    let hex = |bytes: &[u8]| sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(s.host.blobs.join(hex(&blob)), &blob).expect("blob");
    let desc = lcfs_snapshotter::proto::types::Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: format!("sha256:{}", hex(&blob)),
        size: blob.len() as i64,
        annotations: HashMap::new(),
    };
    (desc, format!("sha256:{}", hex(&tar)))
}

#[tokio::test]
async fn diff_apply_unpacks_a_layer_into_an_active_snapshot() {
    use lcfs_snapshotter::proto::diff::ApplyRequest;
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    let mounts = s.prepare("default/1/extract", "").await.expect("prepare");
    let (desc, diff_id) = store_layer(&s, &[("etc/hostname", b"lcfs\n"), ("bin/sh", b"#!")]);
    let request = |desc: &lcfs_snapshotter::proto::types::Descriptor,
                   mounts: &[lcfs_snapshotter::proto::types::Mount]| {
        ApplyRequest { diff: Some(desc.clone()), mounts: mounts.to_vec(), ..Default::default() }
    };
    let applied = s.diff.apply(request(&desc, &mounts)).await.expect("apply").into_inner().applied.expect("applied");
    assert_eq!(applied.digest, diff_id);
    assert_eq!(applied.media_type, "application/vnd.oci.image.layer.v1.tar");
    let layer = s.host.engine.layer(&names::layer_name("default/1/extract")).expect("layer").id;
    let etc = s.host.engine.lookup(layer, ROOT_INO, b"etc").expect("etc");
    let hostname = s.host.engine.lookup(layer, etc.ino, b"hostname").expect("hostname");
    assert_eq!(s.host.engine.read(layer, hostname.ino, 0, 100).expect("read"), b"lcfs\n");

    // Not an lcfs snapshot's mounts, or a layer type lcfs does not know: another differ's job.
    let overlay = lcfs_snapshotter::proto::types::Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        ..Default::default()
    };
    let foreign_dir = lcfs_snapshotter::proto::types::Mount {
        r#type: "bind".into(),
        source: "/var/lib/elsewhere/1".into(),
        ..Default::default()
    };
    let mut encrypted = desc.clone();
    encrypted.media_type = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted".into();
    let mut no_blob = desc.clone();
    no_blob.digest = format!("sha256:{}", "0".repeat(64));
    let mut bad_digest = desc.clone();
    bad_digest.digest = "sha256:../../etc/passwd".into();
    let (garbage, _) = store_layer(&s, &[]);
    std::fs::write(s.host.blobs.join(garbage.digest.trim_start_matches("sha256:")), b"\x1f\x8bnot gzip")
        .expect("write");
    s.commit("default/3/committed", "default/1/extract").await.expect("commit");
    let committed = [lcfs_snapshotter::proto::types::Mount {
        r#type: "bind".into(),
        source: s.host.layer_dir(&names::layer_name("default/3/committed")).display().to_string(),
        ..Default::default()
    }];
    let cases = [
        (request(&desc, &[overlay]), Code::Unimplemented),
        (request(&desc, &[foreign_dir]), Code::Unimplemented),
        (request(&encrypted, &mounts), Code::Unimplemented),
        (request(&no_blob, &s.prepare("default/4/a", "").await.expect("prepare")), Code::NotFound),
        (request(&bad_digest, &s.prepare("default/5/b", "").await.expect("prepare")), Code::InvalidArgument),
        (request(&garbage, &s.prepare("default/6/c", "").await.expect("prepare")), Code::InvalidArgument),
        // The committed layer keeps its directory: it is no longer writable.
        (request(&desc, &committed), Code::FailedPrecondition),
    ];
    for (i, (req, code)) in cases.into_iter().enumerate() {
        let err = s.diff.apply(req).await.expect_err("refused");
        assert_eq!(err.code(), code, "case {i}: {}", err.message());
    }
    let compare = lcfs_snapshotter::proto::diff::DiffRequest::default();
    assert_eq!(s.diff.diff(compare).await.expect_err("no diffs").code(), Code::Unimplemented);
    s.stop().await;
}

#[tokio::test]
async fn a_cancelled_apply_stops_reading_its_layer() {
    use lcfs_snapshotter::proto::diff::ApplyRequest;
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempdir();
    let mut s = Service::start(dir.path()).await;
    let mounts = s.prepare("default/1/extract", "").await.expect("prepare");
    // 64 files of 1 MiB, fed through a pipe so that the test decides how fast the layer comes.
    let mut builder = tar::Builder::new(Vec::new());
    for i in 0..64 {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("f{i}")).expect("path");
        h.set_mode(0o644);
        h.set_size(1 << 20);
        h.set_cksum();
        builder.append(&h, &vec![i as u8; 1 << 20][..]).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let pipe = s.host.blobs.join("ab".repeat(32));
    let made = std::process::Command::new("mkfifo").arg(&pipe).status().expect("mkfifo");
    assert!(made.success());
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        let total = tar.len();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut pipe = std::fs::OpenOptions::new().write(true).open(pipe)?;
            for chunk in tar.chunks(64 << 10) {
                pipe.write_all(chunk)?;
                written.fetch_add(chunk.len() as u64, Ordering::Release);
            }
            assert_eq!(written.load(Ordering::Acquire), total as u64);
            Ok(())
        })
    };
    let desc = lcfs_snapshotter::proto::types::Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest,
        size: 0,
        annotations: HashMap::new(),
    };
    let request = ApplyRequest { diff: Some(desc), mounts: mounts.clone(), ..Default::default() };
    let started = written.clone();
    tokio::select! {
        r = s.diff.apply(request) => panic!("the apply ended before it was cancelled: {r:?}"),
        () = async move {
            while started.load(Ordering::Acquire) < 4 << 20 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        } => {}
    }
    // Leaving the select dropped the call: the server stops reading, and the writer's pipe breaks.
    let outcome =
        tokio::time::timeout(std::time::Duration::from_secs(30), tokio::task::spawn_blocking(move || writer.join()))
            .await
            .expect("the writer finished")
            .expect("join")
            .expect("writer thread");
    let err = outcome.expect_err("the apply stopped reading");
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    assert!(written.load(Ordering::Acquire) < 64 << 20);
    // The snapshot goes as after any failed unpack, and the service still serves.
    s.remove("default/1/extract").await.expect("remove");
    assert!(s.names(&[]).await.is_empty());
    s.stop().await;
}
