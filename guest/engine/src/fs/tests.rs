//! Unit tests of the engine on a memory device. The randomized model test, the crash tests and
//! the bad-input tests live under `tests/`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::device::{CountingDevice, Device, MemDevice};
use crate::types::*;
use crate::{Engine, Error, FormatOptions, OpenOptions};

fn options() -> OpenOptions {
    OpenOptions { checkpoint_interval: None, ..OpenOptions::default() }
}

fn engine_on(device: Arc<dyn Device>) -> Engine {
    Engine::format(&device, &FormatOptions::default()).expect("format");
    Engine::open(device, &options()).expect("open")
}

fn engine() -> Engine {
    engine_on(Arc::new(MemDevice::new(128 << 20)))
}

fn layer(e: &Engine, name: &str, parent: Option<&str>) -> LayerId {
    e.create_layer(name, parent, LayerKind::Writable, BTreeMap::new()).expect("create layer").id
}

fn file(e: &Engine, l: LayerId, dir: Ino, name: &str, data: &[u8]) -> Ino {
    let a = e.create(l, dir, name.as_bytes(), &NewNode::file(0o644, 0, 0)).expect("create");
    e.write(l, a.ino, 0, data).expect("write");
    a.ino
}

fn read_all(e: &Engine, l: LayerId, ino: Ino) -> Vec<u8> {
    let size = e.getattr(l, ino).expect("getattr").size;
    e.read(l, ino, 0, size as usize).expect("read")
}

#[test]
fn a_child_sees_its_parent_until_it_changes_things() {
    let e = engine();
    let base = layer(&e, "base", None);
    let etc = e.create(base, ROOT_INO, b"etc", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    let passwd = file(&e, base, etc, "passwd", b"root:x:0:0\n");
    e.commit_layer("base", "base@1", None).expect("commit");
    let c = layer(&e, "c1", Some("base@1"));
    assert_eq!(e.lookup(c, etc, b"passwd").expect("lookup").ino, passwd);
    assert_eq!(read_all(&e, c, passwd), b"root:x:0:0\n");
    e.write(c, passwd, 0, b"ROOT").expect("write");
    assert_eq!(read_all(&e, c, passwd), b"ROOT:x:0:0\n");
    assert_eq!(read_all(&e, base, passwd), b"root:x:0:0\n", "the parent must not change");
    e.unlink(c, etc, b"passwd").expect("unlink");
    assert!(matches!(e.lookup(c, etc, b"passwd"), Err(Error::NotFound)));
    assert!(e.lookup(base, etc, b"passwd").is_ok());
    assert!(matches!(e.write(base, passwd, 0, b"x"), Err(Error::LayerKind { .. })));
}

#[test]
fn overwriting_a_block_of_an_inherited_file_writes_about_one_block() {
    let device = Arc::new(CountingDevice::new(MemDevice::new(256 << 20)));
    let e = engine_on(device.clone());
    let base = layer(&e, "base", None);
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    let ino = file(&e, base, ROOT_INO, "big", &big);
    e.commit_layer("base", "base@1", None).expect("commit");
    let c = layer(&e, "c", Some("base@1"));
    e.sync().expect("sync");
    let before = device.bytes_written();
    e.write(c, ino, 4096 * 100 + 10, &[7u8; 100]).expect("write");
    let data_written = device.bytes_written() - before;
    assert_eq!(data_written, 4096, "one block copied on write");
    let mut expected = big.clone();
    expected[4096 * 100 + 10..4096 * 100 + 110].fill(7);
    assert!(read_all(&e, c, ino) == expected);
    assert!(read_all(&e, LayerId(1), ino) == big);
    assert_eq!(e.layer("c").expect("info").usage.bytes, 4096);
}

#[test]
fn sequential_writes_stay_in_one_extent_and_reads_cross_versions() {
    let e = engine();
    let base = layer(&e, "base", None);
    let ino = e.create(base, ROOT_INO, b"f", &NewNode::file(0o644, 0, 0)).expect("create").ino;
    let mut expected = Vec::new();
    for i in 0..64u32 {
        let chunk = vec![i as u8; 5000];
        e.write(base, ino, expected.len() as u64, &chunk).expect("write");
        expected.extend_from_slice(&chunk);
    }
    assert!(read_all(&e, base, ino) == expected);
    let st = e.read_state().expect("state");
    let extents = st.extents(base, ino, 0, u64::MAX / 8192).expect("extents");
    assert_eq!(extents.len(), 1, "{extents:?}");
}

#[test]
fn truncate_then_extend_reads_zeros_in_own_and_inherited_blocks() {
    let e = engine();
    let base = layer(&e, "base", None);
    let ino = file(&e, base, ROOT_INO, "f", &[1u8; 10000]);
    e.commit_layer("base", "b1", None).expect("commit");
    let c = layer(&e, "c", Some("b1"));
    e.write(c, ino, 0, &[2u8; 100]).expect("write");
    let set = |size| SetAttr { size: Some(size), ..Default::default() };
    e.setattr(c, ino, &set(50)).expect("truncate");
    e.setattr(c, ino, &set(9000)).expect("extend");
    let data = read_all(&e, c, ino);
    assert_eq!(&data[..50], &[2u8; 50]);
    assert!(data[50..].iter().all(|&b| b == 0));
    assert_eq!(read_all(&e, base, ino), vec![1u8; 10000]);
}

#[test]
fn punching_a_hole_in_inherited_data_reads_zeros_and_keeps_the_rest() {
    let e = engine();
    let base = layer(&e, "base", None);
    let ino = file(&e, base, ROOT_INO, "f", &[9u8; 5 * 4096]);
    e.commit_layer("base", "b1", None).expect("commit");
    let c = layer(&e, "c", Some("b1"));
    e.fallocate(c, ino, 1000, 3 * 4096, FallocateMode::PunchHole).expect("punch");
    let data = read_all(&e, c, ino);
    assert_eq!(data.len(), 5 * 4096);
    assert!(data[..1000].iter().all(|&b| b == 9));
    assert!(data[1000..1000 + 3 * 4096].iter().all(|&b| b == 0));
    assert!(data[1000 + 3 * 4096..].iter().all(|&b| b == 9));
    e.fallocate(c, ino, 0, 8 * 4096, FallocateMode::Allocate { keep_size: false }).expect("allocate");
    assert_eq!(e.getattr(c, ino).expect("attr").size, 8 * 4096);
    let data = read_all(&e, c, ino);
    assert!(data[5 * 4096..].iter().all(|&b| b == 0));
    assert!(data[..1000].iter().all(|&b| b == 9));
}

#[test]
fn hard_links_count_right_across_layers() {
    let e = engine();
    let base = layer(&e, "base", None);
    let ino = file(&e, base, ROOT_INO, "a", b"x");
    e.link(base, ino, ROOT_INO, b"b").expect("link");
    assert_eq!(e.getattr(base, ino).expect("attr").nlink, 2);
    e.commit_layer("base", "b1", None).expect("commit");
    let c = layer(&e, "c", Some("b1"));
    e.unlink(c, ROOT_INO, b"a").expect("unlink");
    assert_eq!(e.getattr(c, ino).expect("attr").nlink, 1);
    assert_eq!(e.getattr(base, ino).expect("attr").nlink, 2);
    e.link(c, ino, ROOT_INO, b"c").expect("link");
    e.link(c, ino, ROOT_INO, b"d").expect("link");
    assert_eq!(e.getattr(c, ino).expect("attr").nlink, 3);
    // Replacing one name of a hard-linked file with a new file.
    e.unlink(c, ROOT_INO, b"b").expect("unlink");
    file(&e, c, ROOT_INO, "b", b"new");
    assert_eq!(e.getattr(c, ino).expect("attr").nlink, 2);
}

#[test]
fn rename_covers_replace_exchange_and_directories() {
    let e = engine();
    let l = layer(&e, "l", None);
    let d1 = e.create(l, ROOT_INO, b"d1", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    let d2 = e.create(l, ROOT_INO, b"d2", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    let f = file(&e, l, d1, "f", b"1");
    let g = file(&e, l, d2, "g", b"2");
    e.rename(l, d1, b"f", d2, b"g", RenameFlags::default()).expect("replace");
    assert_eq!(e.lookup(l, d2, b"g").expect("lookup").ino, f);
    assert!(matches!(e.getattr(l, g), Err(Error::Stale(_))));
    assert!(matches!(e.rename(l, ROOT_INO, b"d1", d1, b"x", RenameFlags::default()), Err(Error::InvalidArgument(_))));
    e.rename(l, ROOT_INO, b"d2", d1, b"d2", RenameFlags::default()).expect("move dir");
    assert_eq!(e.getattr(l, ROOT_INO).expect("attr").nlink, 3);
    assert_eq!(e.getattr(l, d1).expect("attr").nlink, 3);
    let h = file(&e, l, ROOT_INO, "h", b"3");
    e.rename(l, ROOT_INO, b"h", d1, b"d2", RenameFlags { exchange: true, no_replace: false }).expect("exchange");
    assert_eq!(e.lookup(l, ROOT_INO, b"h").expect("lookup").ino, d2);
    assert_eq!(e.lookup(l, d1, b"d2").expect("lookup").ino, h);
    assert_eq!(e.getattr(l, d1).expect("attr").nlink, 2);
    assert_eq!(e.getattr(l, ROOT_INO).expect("attr").nlink, 4);
    assert!(matches!(
        e.rename(l, ROOT_INO, b"h", ROOT_INO, b"d1", RenameFlags { no_replace: true, exchange: false }),
        Err(Error::Exists)
    ));
}

#[test]
fn names_are_checked_as_linux_checks_them() {
    let e = engine();
    let l = layer(&e, "l", None);
    let long = vec![b'a'; 256];
    let node = NewNode::file(0o644, 0, 0);
    assert!(matches!(e.create(l, ROOT_INO, &long, &node), Err(Error::NameTooLong(256))));
    assert!(e.create(l, ROOT_INO, &long[..255], &node).is_ok());
    assert!(matches!(e.create(l, ROOT_INO, b"a/b", &node), Err(Error::InvalidName(_))));
    assert!(matches!(e.create(l, ROOT_INO, b"a\0b", &node), Err(Error::InvalidName(_))));
    assert_eq!(Error::NameTooLong(256).errno(), libc::ENAMETOOLONG);
}

#[test]
fn removing_a_layer_frees_exactly_what_it_owns() {
    let e = engine();
    let base = layer(&e, "base", None);
    let ino = file(&e, base, ROOT_INO, "f", &vec![1u8; 1 << 20]);
    e.commit_layer("base", "b1", None).expect("commit");
    e.sync().expect("sync");
    let free0 = e.statfs().expect("statfs").blocks_free;
    let c = layer(&e, "c", Some("b1"));
    e.write(c, ino, 0, &vec![2u8; 64 << 10]).expect("write");
    file(&e, c, ROOT_INO, "g", &vec![3u8; 128 << 10]);
    e.sync().expect("sync");
    assert_eq!(free0 - e.statfs().expect("statfs").blocks_free, 48);
    assert_eq!(e.layer("c").expect("info").usage.bytes, 48 * 4096);
    assert!(matches!(e.remove_layer("b1"), Err(Error::LayerHasChildren(_))));
    e.remove_layer("c").expect("remove");
    assert_eq!(e.statfs().expect("statfs").blocks_free, free0);
    assert_eq!(read_all(&e, LayerId(1), ino), vec![1u8; 1 << 20]);
}

#[test]
fn changes_list_what_a_layer_did() {
    let e = engine();
    let base = layer(&e, "base", None);
    let etc = e.create(base, ROOT_INO, b"etc", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    let a = file(&e, base, etc, "a", b"a");
    file(&e, base, etc, "b", b"b");
    file(&e, base, ROOT_INO, "c", b"c");
    e.commit_layer("base", "b1", None).expect("commit");
    let names = |ch: Vec<Change>| {
        ch.into_iter().map(|c| (String::from_utf8_lossy(&c.path).into_owned(), c.kind)).collect::<Vec<_>>()
    };
    assert_eq!(names(e.layer_changes("b1").expect("changes")).len(), 5);
    let c = layer(&e, "c", Some("b1"));
    e.write(c, a, 0, b"A").expect("write");
    e.unlink(c, etc, b"b").expect("unlink");
    let d = e.create(c, ROOT_INO, b"d", &NewNode::dir(0o700, 0, 0)).expect("mkdir").ino;
    file(&e, c, d, "e", b"e");
    assert_eq!(
        names(e.layer_changes("c").expect("changes")),
        vec![
            ("/".to_string(), ChangeKind::Modified),
            ("/d".to_string(), ChangeKind::Added),
            ("/d/e".to_string(), ChangeKind::Added),
            ("/etc".to_string(), ChangeKind::Modified),
            ("/etc/a".to_string(), ChangeKind::Modified),
            ("/etc/b".to_string(), ChangeKind::Deleted),
        ]
    );
}

#[test]
fn state_survives_reopen_and_unsynced_changes_reach_the_store_on_close() {
    let device: Arc<dyn Device> = Arc::new(MemDevice::new(128 << 20));
    let e = engine_on(device.clone());
    let base = layer(&e, "base", None);
    let ino = file(&e, base, ROOT_INO, "f", b"durable");
    e.set_xattr(base, ino, b"user.k", b"v", XattrMode::Upsert).expect("xattr");
    e.close().expect("close");
    let e = Engine::open(device, &options()).expect("reopen");
    let base = e.layer("base").expect("layer").id;
    assert_eq!(read_all(&e, base, ino), b"durable");
    assert_eq!(e.get_xattr(base, ino, b"user.k").expect("xattr"), b"v");
    assert!(e.create(base, ROOT_INO, b"g", &NewNode::file(0o644, 0, 0)).expect("create").ino.0 > ino.0);
}

#[test]
fn an_unlinked_open_file_lives_until_released() {
    let e = engine();
    let l = layer(&e, "l", None);
    let ino = file(&e, l, ROOT_INO, "f", b"still here");
    e.open_file(l, ino).expect("open");
    e.unlink(l, ROOT_INO, b"f").expect("unlink");
    assert_eq!(read_all(&e, l, ino), b"still here");
    assert_eq!(e.getattr(l, ino).expect("attr").nlink, 0);
    e.release_file(l, ino).expect("release");
    assert!(matches!(e.getattr(l, ino), Err(Error::Stale(_))));
    let tmp = e.create_unnamed(l, ROOT_INO, &NewNode::file(0o600, 0, 0)).expect("tmpfile").ino;
    e.write(l, tmp, 0, b"tmp").expect("write");
    e.link(l, tmp, ROOT_INO, b"named").expect("link");
    e.release_file(l, tmp).expect("release");
    assert_eq!(read_all(&e, l, tmp), b"tmp");
}

#[test]
fn layers_only_grow_from_committed_parents_and_views_are_read_only() {
    let e = engine();
    layer(&e, "w", None);
    assert!(matches!(
        e.create_layer("x", Some("w"), LayerKind::Writable, BTreeMap::new()),
        Err(Error::LayerKind { .. })
    ));
    e.commit_layer("w", "c", None).expect("commit");
    let v = e.create_layer("v", Some("c"), LayerKind::View, BTreeMap::new()).expect("view").id;
    assert!(matches!(e.create(v, ROOT_INO, b"f", &NewNode::file(0o644, 0, 0)), Err(Error::LayerKind { .. })));
    assert!(matches!(e.commit_layer("v", "v2", None), Err(Error::LayerKind { .. })));
    assert!(matches!(e.create_layer("c", None, LayerKind::Writable, BTreeMap::new()), Err(Error::LayerExists(_))));
    let mut big = BTreeMap::new();
    big.insert("k".to_string(), "v".repeat(5000));
    assert!(matches!(e.set_layer_labels("c", big), Err(Error::InvalidLabel(_))));
}

#[test]
fn a_full_device_says_enospc_and_recovers_when_space_is_freed() {
    let e = engine_on(Arc::new(MemDevice::new(64 << 20)));
    let l = layer(&e, "l", None);
    let ino = e.create(l, ROOT_INO, b"f", &NewNode::file(0o644, 0, 0)).expect("create").ino;
    let chunk = vec![1u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match e.write(l, ino, written, &chunk) {
            Ok(_) => written += chunk.len() as u64,
            Err(Error::NoSpace) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(written > 10 << 20);
    e.setattr(l, ino, &SetAttr { size: Some(0), ..Default::default() }).expect("truncate");
    e.sync().expect("sync");
    e.write(l, ino, 0, &chunk).expect("space is back");
}

#[test]
fn a_device_grows_while_open_and_keeps_its_size_after_reopen() {
    let device: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    let e = engine_on(device.clone());
    let before = e.statfs().expect("statfs").blocks;
    e.grow(96 << 20).expect("grow");
    assert_eq!(e.statfs().expect("statfs").blocks, before + (32 << 20) / 4096);
    let l = layer(&e, "l", None);
    file(&e, l, ROOT_INO, "big", &vec![5u8; 60 << 20]);
    e.close().expect("close");
    let e = Engine::open(device, &options()).expect("reopen");
    assert_eq!(e.statfs().expect("statfs").blocks, before + (32 << 20) / 4096);
}

#[test]
fn times_follow_posix_rules() {
    let e = engine();
    let l = layer(&e, "l", None);
    let at = |secs| Timestamp::new(secs, 123);
    let d = e.create(l, ROOT_INO, b"d", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    let f = e.create(l, d, b"f", &NewNode::file(0o644, 0, 0)).expect("create");
    assert_eq!((f.atime, f.mtime), (f.ctime, f.ctime));
    let old = SetAttr { atime: Some(SetTime::At(at(10))), mtime: Some(SetTime::At(at(20))), ..Default::default() };
    for ino in [d, f.ino] {
        e.setattr(l, ino, &old).expect("utimens");
    }
    let a = e.getattr(l, f.ino).expect("attr");
    assert_eq!((a.atime, a.mtime), (at(10), at(20)), "explicit times are kept to the nanosecond");
    assert!(a.ctime > at(20), "setting times changes ctime");
    e.write(l, f.ino, 0, b"x").expect("write");
    let b = e.getattr(l, f.ino).expect("attr");
    assert!(b.mtime > at(20) && b.ctime >= b.mtime && b.atime == at(10), "write changes mtime and ctime only");
    e.setattr(l, f.ino, &old).expect("utimens");
    let before = e.getattr(l, f.ino).expect("attr").ctime;
    e.rename(l, d, b"f", ROOT_INO, b"g", RenameFlags::default()).expect("rename");
    let c = e.getattr(l, f.ino).expect("attr");
    assert!(c.ctime > before && c.mtime == at(20), "rename changes the ctime of the moved file");
    let dir = e.getattr(l, d).expect("attr");
    assert!(dir.mtime > at(20), "removing a name changes the directory's mtime");
    e.setattr(l, f.ino, &old).expect("utimens");
    let before = e.getattr(l, f.ino).expect("attr").ctime;
    e.link(l, f.ino, d, b"h").expect("link");
    assert!(e.getattr(l, f.ino).expect("attr").ctime > before, "link changes ctime");
    e.set_xattr(l, f.ino, b"user.x", b"1", XattrMode::Create).expect("xattr");
    assert!(matches!(e.set_xattr(l, f.ino, b"user.x", b"1", XattrMode::Create), Err(Error::Exists)));
    assert!(matches!(e.set_xattr(l, f.ino, b"user.y", b"1", XattrMode::Replace), Err(Error::NoAttribute)));
    let pre_epoch = SetAttr { mtime: Some(SetTime::At(Timestamp::new(-100, 5))), ..Default::default() };
    assert_eq!(e.setattr(l, f.ino, &pre_epoch).expect("utimens").mtime, Timestamp::new(-100, 5));
}

#[test]
fn counters_record_operations_and_hot_files() {
    let e = engine();
    let l = layer(&e, "l", None);
    let hot = file(&e, l, ROOT_INO, "hot", b"data");
    let cold = file(&e, l, ROOT_INO, "cold", b"data");
    for _ in 0..5 {
        e.read(l, hot, 0, 4).expect("read");
    }
    e.read(l, cold, 0, 4).expect("read");
    let stats = e.layer_stats(l).expect("stats");
    assert_eq!(stats.count(crate::stats::Op::Read), 6);
    assert_eq!(stats.count(crate::stats::Op::Create), 2);
    assert_eq!(stats.bytes_read, 24);
    assert_eq!(stats.bytes_written, 8);
    let top = e.hot_files(Some(l), 1);
    assert_eq!(top[0].1, hot);
}

#[test]
fn an_engine_opened_without_counters_counts_nothing() {
    let device: Arc<dyn Device> = Arc::new(MemDevice::new(64 << 20));
    Engine::format(&device, &FormatOptions::default()).expect("format");
    let e = Engine::open(device, &OpenOptions { counters: false, ..options() }).expect("open");
    let l = layer(&e, "l", None);
    let f = file(&e, l, ROOT_INO, "f", b"data");
    e.open_file(l, f).expect("open");
    e.read(l, f, 0, 4).expect("read");
    let stats = e.layer_stats(l).expect("stats");
    assert_eq!((stats.total_ops(), stats.bytes_read, stats.bytes_written), (0, 0, 0));
    assert!(e.hot_files(Some(l), 10).is_empty());
}

#[test]
fn a_removed_file_takes_its_counters_with_it() {
    let e = engine();
    let l = layer(&e, "l", None);
    let kept = file(&e, l, ROOT_INO, "kept", b"data");
    let gone = file(&e, l, ROOT_INO, "gone", b"data");
    let open = file(&e, l, ROOT_INO, "open", b"data");
    for ino in [kept, gone, open] {
        e.read(l, ino, 0, 4).expect("read");
    }
    let counted = |ino: Ino| e.hot_files(Some(l), 100).iter().any(|t| t.1 == ino);
    assert!(counted(gone) && counted(open));
    e.unlink(l, ROOT_INO, b"gone").expect("unlink");
    assert!(!counted(gone), "a file with no name and no handle keeps no counters");
    // Unlinked while open, a file can still be read: it keeps its counters until released.
    e.open_file(l, open).expect("open");
    e.unlink(l, ROOT_INO, b"open").expect("unlink");
    e.read(l, open, 0, 4).expect("read after unlink");
    assert!(counted(open));
    e.release_file(l, open).expect("release");
    assert!(!counted(open));
    assert!(counted(kept));
}

#[test]
fn statfs_reports_space_and_names() {
    let e = engine();
    let s = e.statfs().expect("statfs");
    assert_eq!(s.block_size, 4096);
    assert_eq!(s.name_max, 255);
    assert!(s.blocks_free <= s.blocks && s.blocks_free > 0 && s.files_free > 0);
}

#[test]
fn layer_names_are_file_names_and_commit_may_keep_the_name() {
    let e = engine();
    for bad in ["", "a/b", ".", "..", "x\0y"] {
        assert!(
            matches!(e.create_layer(bad, None, LayerKind::Writable, BTreeMap::new()), Err(Error::InvalidLayerName(..))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        e.create_layer(&"n".repeat(256), None, LayerKind::Writable, BTreeMap::new()),
        Err(Error::InvalidLayerName(..))
    ));
    layer(&e, "sha256-abc", None);
    let info = e.commit_layer("sha256-abc", "sha256-abc", None).expect("commit in place");
    assert_eq!((info.name.as_str(), info.kind), ("sha256-abc", LayerKind::Committed));
}

#[test]
fn dropping_privileges_clears_caps_and_setid_bits_only_when_present() {
    let e = engine();
    let l = layer(&e, "l", None);
    let f = e.create(l, ROOT_INO, b"f", &NewNode::file(0o6755, 0, 0)).expect("create").ino;
    e.set_xattr(l, f, b"security.capability", b"caps", XattrMode::Upsert).expect("xattr");
    let before = e.getattr(l, f).expect("attr");
    e.drop_privileges(l, f, false).expect("drop caps");
    let a = e.getattr(l, f).expect("attr");
    assert_eq!(a.perm, 0o6755, "set-id bits stay without setid");
    assert!(matches!(e.get_xattr(l, f, b"security.capability"), Err(Error::NoAttribute)));
    assert!(a.ctime >= before.ctime);
    e.drop_privileges(l, f, true).expect("drop setid");
    assert_eq!(e.getattr(l, f).expect("attr").perm, 0o0755);
    // Set-group-id without group execute is mandatory locking, not a privilege: kept.
    let g = e.create(l, ROOT_INO, b"g", &NewNode::file(0o2644, 0, 0)).expect("create").ino;
    let ctime = e.getattr(l, g).expect("attr").ctime;
    e.drop_privileges(l, g, true).expect("nothing to drop");
    let a = e.getattr(l, g).expect("attr");
    assert_eq!((a.perm, a.ctime), (0o2644, ctime), "nothing changes, not even ctime");
}

#[test]
fn freed_space_goes_back_to_a_file_device() {
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let path = dir.path().join("dev.img");
    let device: Arc<dyn Device> =
        Arc::new(crate::device::FileDevice::open_or_create(&path, 256 << 20).expect("create"));
    let e = engine_on(device);
    let l = layer(&e, "l", None);
    file(&e, l, ROOT_INO, "big", &vec![7u8; 64 << 20]);
    e.sync().expect("sync");
    let allocated = || std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).expect("stat")) * 512;
    let full = allocated();
    assert!(full >= 64 << 20, "data is on the device: {full}");
    e.unlink(l, ROOT_INO, b"big").expect("unlink");
    e.sync().expect("sync");
    let after = allocated();
    assert!(full - after >= 60 << 20, "the file's space went back to the host: {full} -> {after}");
}
