//! Applies hand-built layer tars to a real engine on a file device and checks the tree.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use lcfs_engine::device::FileDevice;
use lcfs_engine::{Engine, FileKind, FormatOptions, Ino, LayerId, LayerKind, OpenOptions, ROOT_INO, Timestamp};
use lcfs_unpack::{UnpackError, apply};
use sha2::{Digest, Sha256};

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
}

fn engine() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Arc::new(FileDevice::open_or_create(&dir.path().join("dev.img"), 256 << 20).expect("device"));
    let engine = Engine::open_or_format(device, &FormatOptions::default(), &OpenOptions::default()).expect("engine");
    Fixture { _dir: dir, engine }
}

fn writable(engine: &Engine, name: &str, parent: Option<&str>) -> LayerId {
    engine.create_layer(name, parent, LayerKind::Writable, BTreeMap::new()).expect("layer").id
}

/// A tar written entry by entry, names taken verbatim (escaping names included).
struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Tar {
        Tar { builder: tar::Builder::new(Vec::new()) }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn append(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Tar {
        h.set_cksum();
        self.builder.append(&h, data).expect("append");
        self
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
        self.append(Tar::header(name, tar::EntryType::Directory, mode, 0), &[])
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Tar {
        self.append(Tar::header(name, tar::EntryType::Regular, mode, data.len() as u64), data)
    }

    fn owned_file(&mut self, name: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> &mut Tar {
        let mut h = Tar::header(name, tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.append(h, data)
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Tar {
        let mut h = Tar::header(name, kind, 0o644, 0);
        let bytes = target.as_bytes();
        h.as_old_mut().linkname[..bytes.len()].copy_from_slice(bytes);
        self.append(h, &[])
    }

    fn device(&mut self, name: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Tar {
        let mut h = Tar::header(name, kind, 0o600, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.append(h, &[])
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.builder.append_pax_extensions(records.iter().map(|(k, v)| (*k, *v))).expect("pax");
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().expect("finish")
    }
}

/// Resolves a path in a layer without following symbolic links.
fn find(engine: &Engine, layer: LayerId, path: &str) -> Option<lcfs_engine::Attr> {
    let mut ino = ROOT_INO;
    let mut attr = engine.getattr(layer, ROOT_INO).ok()?;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        attr = engine.lookup(layer, ino, part.as_bytes()).ok()?;
        ino = attr.ino;
    }
    Some(attr)
}

fn content(engine: &Engine, layer: LayerId, path: &str) -> Vec<u8> {
    let attr = find(engine, layer, path).unwrap_or_else(|| panic!("{path} missing"));
    engine.read(layer, attr.ino, 0, attr.size as usize + 1).expect("read")
}

fn names(engine: &Engine, layer: LayerId, dir: Ino) -> Vec<String> {
    let mut names: Vec<String> = engine
        .read_dir(layer, dir, None, 1000)
        .expect("read_dir")
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .filter(|n| n != "." && n != "..")
        .collect();
    names.sort();
    names
}

#[test]
fn every_entry_kind_keeps_its_attributes() {
    let f = engine();
    let layer = writable(&f.engine, "l1", None);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let tar = Tar::new()
        .dir("./", 0o755)
        .dir("./etc", 0o750)
        .file("./etc/hosts", 0o644, b"127.0.0.1 localhost\n")
        .owned_file("./usr/bin/su", 0o4755, 1000, 1001, b"#!/bin/su\n")
        .file("./big", 0o600, &big)
        .link(tar::EntryType::Symlink, "./etc/link", "hosts")
        .link(tar::EntryType::Link, "./etc/hard", "etc/hosts")
        .device("./dev/null", tar::EntryType::Char, 1, 3)
        .device("./dev/sda", tar::EntryType::Block, 8, 0)
        .device("./run/fifo", tar::EntryType::Fifo, 0, 0)
        .pax(&[("SCHILY.xattr.user.color", b"blue"), ("mtime", b"1600000001.25")])
        .file("./xattr", 0o644, b"x")
        .finish();
    let applied = apply(&f.engine, layer, &tar[..]).expect("apply");
    assert_eq!(applied.size, tar.len() as u64);
    let hex: String = Sha256::digest(&tar).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(applied.digest, format!("sha256:{hex}"));

    let e = &f.engine;
    assert_eq!(find(e, layer, "etc").expect("etc").perm, 0o750);
    assert_eq!(content(e, layer, "etc/hosts"), b"127.0.0.1 localhost\n");
    assert_eq!(content(e, layer, "big"), big);
    let su = find(e, layer, "usr/bin/su").expect("su");
    assert_eq!((su.perm, su.uid, su.gid), (0o4755, 1000, 1001));
    // The missing parents were created.
    assert_eq!(find(e, layer, "usr/bin").expect("usr/bin").perm, 0o755);
    let link = find(e, layer, "etc/link").expect("link");
    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(e.read_link(layer, link.ino).expect("readlink"), b"hosts");
    let hard = find(e, layer, "etc/hard").expect("hard");
    assert_eq!(hard.ino, find(e, layer, "etc/hosts").expect("hosts").ino);
    assert_eq!(hard.nlink, 2);
    let null = find(e, layer, "dev/null").expect("null");
    assert_eq!((null.kind, null.rdev), (FileKind::CharDevice, libc::makedev(1, 3)));
    assert_eq!(find(e, layer, "dev/sda").expect("sda").kind, FileKind::BlockDevice);
    assert_eq!(find(e, layer, "run/fifo").expect("fifo").kind, FileKind::Fifo);
    let x = find(e, layer, "xattr").expect("xattr");
    assert_eq!(e.get_xattr(layer, x.ino, b"user.color").expect("xattr"), b"blue");
    assert_eq!(x.mtime, Timestamp::new(1_600_000_001, 250_000_000));
    // Directory times are set after their entries.
    assert_eq!(find(e, layer, "etc").expect("etc").mtime, Timestamp::new(1_600_000_000, 0));
}

#[test]
fn compressed_layers_digest_their_uncompressed_stream() {
    let f = engine();
    let tar = Tar::new().file("a", 0o644, b"same").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = zstd::encode_all(&tar[..], 1).expect("zstd");
    let plain = apply(&f.engine, writable(&f.engine, "plain", None), &tar[..]).expect("plain");
    for (name, blob) in [("gz", gz), ("zst", zst)] {
        let layer = writable(&f.engine, name, None);
        assert_eq!(apply(&f.engine, layer, &blob[..]).expect(name), plain, "{name}");
        assert_eq!(content(&f.engine, layer, "a"), b"same");
    }
}

#[test]
fn whiteouts_and_opaque_directories_hide_the_parent_s_entries() {
    let f = engine();
    let e = &f.engine;
    let base = writable(e, "base-key", None);
    let tar = Tar::new()
        .file("gone", 0o644, b"1")
        .file("tree/a/deep", 0o644, b"2")
        .file("opaque/old", 0o644, b"3")
        .file("opaque/older", 0o644, b"4")
        .file("kept-dir/x", 0o644, b"5")
        .file("file-becomes-dir", 0o644, b"6")
        .dir("dir-becomes-file", 0o755)
        .file("dir-becomes-file/inner", 0o644, b"7")
        .finish();
    apply(e, base, &tar[..]).expect("base");
    e.commit_layer("base-key", "base", None).expect("commit");
    let top = writable(e, "top", Some("base"));
    let tar = Tar::new()
        .file(".wh.gone", 0o644, b"")
        .file(".wh.tree", 0o644, b"")
        .file(".wh.never-existed", 0o644, b"")
        .dir("opaque", 0o700)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/new", 0o644, b"n")
        .file("opaque/.wh..wh.plnk", 0o644, b"")
        .dir("kept-dir", 0o711)
        .dir("file-becomes-dir", 0o755)
        .file("dir-becomes-file", 0o644, b"now a file")
        .finish();
    apply(e, top, &tar[..]).expect("top");

    assert_eq!(names(e, top, ROOT_INO), ["dir-becomes-file", "file-becomes-dir", "kept-dir", "opaque"]);
    assert_eq!(names(e, top, find(e, top, "opaque").expect("opaque").ino), ["new"]);
    assert_eq!(find(e, top, "opaque").expect("opaque").perm, 0o700);
    let kept = find(e, top, "kept-dir").expect("kept-dir");
    assert_eq!((kept.perm, names(e, top, kept.ino)), (0o711, vec!["x".to_string()]));
    assert_eq!(find(e, top, "file-becomes-dir").expect("dir").kind, FileKind::Directory);
    assert_eq!(content(e, top, "dir-becomes-file"), b"now a file");
    // The parent layer is untouched.
    let parent = e.layer("base").expect("base").id;
    assert_eq!(content(e, parent, "gone"), b"1");
    assert_eq!(content(e, parent, "tree/a/deep"), b"2");
    assert_eq!(names(e, parent, find(e, parent, "opaque").expect("opaque").ino), ["old", "older"]);
}

#[test]
fn an_opaque_marker_spares_what_the_same_layer_added_before_it() {
    let f = engine();
    let e = &f.engine;
    let base = writable(e, "base-key", None);
    apply(e, base, &Tar::new().file("d/old", 0o644, b"o").finish()[..]).expect("base");
    e.commit_layer("base-key", "base", None).expect("commit");
    let top = writable(e, "top", Some("base"));
    let tar = Tar::new().file("d/early", 0o644, b"e").file("d/.wh..wh..opq", 0o644, b"").finish();
    apply(e, top, &tar[..]).expect("top");
    assert_eq!(names(e, top, find(e, top, "d").expect("d").ino), ["early"]);
}

#[test]
fn escaping_names_and_links_stay_inside_the_layer() {
    let f = engine();
    let e = &f.engine;
    let layer = writable(e, "l", None);
    let tar = Tar::new()
        .file("../../../escaped", 0o644, b"1")
        .file("/absolute", 0o644, b"2")
        .dir("etc", 0o755)
        .link(tar::EntryType::Symlink, "hostetc", "/etc")
        .file("hostetc/passwd-through-link", 0o644, b"3")
        .link(tar::EntryType::Symlink, "up", "../../../../..")
        .file("up/through-dotdot", 0o644, b"4")
        .link(tar::EntryType::Link, "hard-escape", "../../etc/passwd-through-link")
        .finish();
    apply(e, layer, &tar[..]).expect("apply");
    assert_eq!(content(e, layer, "escaped"), b"1");
    assert_eq!(content(e, layer, "absolute"), b"2");
    assert_eq!(content(e, layer, "etc/passwd-through-link"), b"3");
    assert_eq!(content(e, layer, "through-dotdot"), b"4");
    assert_eq!(content(e, layer, "hard-escape"), b"3");
    assert!(!std::path::Path::new("/escaped").exists());
    assert!(!std::path::Path::new("/etc/passwd-through-link").exists());
}

#[test]
fn bad_layers_are_refused_with_the_entry_named() {
    let f = engine();
    let e = &f.engine;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("missing-link", Tar::new().link(tar::EntryType::Link, "h", "nowhere").finish(), "\"h\": hard link target"),
        (
            "link-loop",
            {
                Tar::new()
                    .link(tar::EntryType::Symlink, "a", "b")
                    .link(tar::EntryType::Symlink, "b", "a")
                    .file("a/x", 0o644, b"")
                    .finish()
            },
            "too many levels of symbolic links",
        ),
        ("file-parent", Tar::new().file("f", 0o644, b"").file("f/x", 0o644, b"").finish(), "not a directory"),
    ];
    for (name, tar, expected) in cases {
        let layer = writable(e, name, None);
        let err = apply(e, layer, &tar[..]).expect_err(name).to_string();
        assert!(err.contains(expected), "{name}: {err}");
    }
    // A truncated or corrupt stream is a read error, not a panic.
    let tar = Tar::new().file("big", 0o644, &[7u8; 10_000]).finish();
    let layer = writable(e, "truncated", None);
    assert!(matches!(apply(e, layer, &tar[..3000]), Err(UnpackError::Read(_))));
    let mut corrupt = tar.clone();
    corrupt[148..156].copy_from_slice(b"garbage!");
    let layer = writable(e, "corrupt", None);
    assert!(matches!(apply(e, layer, &corrupt[..]), Err(UnpackError::Read(_))));
    let layer = writable(e, "gzip-garbage", None);
    assert!(matches!(apply(e, layer, &[0x1f, 0x8b, 0, 1, 2, 3][..]), Err(UnpackError::Read(_))));
}

#[test]
fn a_full_device_is_reported_and_the_engine_stays_usable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let device = Arc::new(FileDevice::open_or_create(&dir.path().join("dev.img"), 64 << 20).expect("device"));
    let e = Engine::open_or_format(device, &FormatOptions::default(), &OpenOptions::default()).expect("engine");
    let layer = writable(&e, "too-big", None);
    let tar = Tar::new().file("small", 0o644, b"fits").file("huge", 0o644, &vec![1u8; 96 << 20]).finish();
    match apply(&e, layer, &tar[..]) {
        Err(UnpackError::Engine { path, source, .. }) => {
            assert_eq!(path, "huge");
            assert!(matches!(*source, lcfs_engine::Error::NoSpace), "{source}");
        }
        other => panic!("expected no space, got {other:?}"),
    }
    // Once the failed layer is gone, the space is back.
    e.remove_layer("too-big").expect("remove");
    let layer = writable(&e, "after", None);
    apply(&e, layer, &Tar::new().file("f", 0o644, &vec![2u8; 8 << 20]).finish()[..]).expect("apply after");
    assert_eq!(content(&e, layer, "f").len(), 8 << 20);
}

#[test]
fn deep_trees_are_removed_without_recursion() {
    let f = engine();
    let e = &f.engine;
    let layer = writable(e, "deep", None);
    // Thousands of levels, deeper than a recursive removal could go on a 2 MiB stack.
    let deep = "a/".repeat(20_000) + "leaf";
    let mut builder = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(1);
    builder.append_data(&mut h, &deep, &b"x"[..]).expect("long name");
    let mut tar = Tar { builder };
    let tar = tar.file(".wh.a", 0o644, b"").finish();
    let done = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn({
            let tar = tar.clone();
            let f = f;
            move || {
                apply(&f.engine, layer, &tar[..]).expect("apply");
                names(&f.engine, layer, ROOT_INO)
            }
        })
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(done.is_empty(), "{done:?}");
}

#[test]
fn an_opaque_marker_also_empties_directories_the_layer_kept() {
    let f = engine();
    let e = &f.engine;
    let base = writable(e, "base-key", None);
    let tar = Tar::new().file("etc/ssl/old.pem", 0o644, b"o").file("etc/lower", 0o644, b"l").finish();
    apply(e, base, &tar[..]).expect("base");
    e.commit_layer("base-key", "base", None).expect("commit");
    let top = writable(e, "top", Some("base"));
    let tar = Tar::new()
        .dir("etc", 0o755)
        .dir("etc/ssl", 0o755)
        .file("etc/ssl/new.pem", 0o644, b"n")
        .file("etc/.wh..wh..opq", 0o644, b"")
        .finish();
    apply(e, top, &tar[..]).expect("top");
    assert_eq!(names(e, top, find(e, top, "etc").expect("etc").ino), ["ssl"]);
    assert_eq!(names(e, top, find(e, top, "etc/ssl").expect("ssl").ino), ["new.pem"]);
}

#[test]
fn the_last_header_of_a_directory_sets_its_times() {
    let f = engine();
    let layer = writable(&f.engine, "l", None);
    let mut tar = Tar::new();
    tar.dir("d", 0o755);
    let mut later = Tar::header("d", tar::EntryType::Directory, 0o700, 0);
    later.set_mtime(1_700_000_000);
    let tar = tar.append(later, &[]).finish();
    apply(&f.engine, layer, &tar[..]).expect("apply");
    let d = find(&f.engine, layer, "d").expect("d");
    assert_eq!((d.perm, d.mtime), (0o700, Timestamp::new(1_700_000_000, 0)));
}

#[test]
fn extended_attributes_beyond_the_engine_s_limits_are_refused() {
    let f = engine();
    let big = vec![b'v'; 70_000];
    let cases: [(&str, &[u8]); 2] = [("SCHILY.xattr.", b"empty name"), ("SCHILY.xattr.user.big", &big)];
    for (i, (key, value)) in cases.into_iter().enumerate() {
        let layer = writable(&f.engine, &format!("x{i}"), None);
        let tar = Tar::new().pax(&[(key, value)]).file("f", 0o644, b"").finish();
        match apply(&f.engine, layer, &tar[..]) {
            Err(UnpackError::Engine { path, .. }) => assert_eq!(path, "f"),
            other => panic!("{key}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn oversized_extension_headers_are_refused_before_they_fill_memory() {
    let f = engine();
    // Up to 1 MiB is fine, as in Go's reader; data the applier skips does not count.
    let fine = vec![b'v'; 900 << 10];
    let layer = writable(&f.engine, "fine", None);
    let mut skipped = Tar::header(".wh.nothing", tar::EntryType::Regular, 0o644, 4 << 20);
    skipped.set_cksum();
    let tar = Tar::new()
        .pax(&[("LCFS.comment", &fine)])
        .file("f", 0o644, b"")
        .append(skipped, &vec![0u8; 4 << 20])
        .file("after", 0o644, b"a")
        .finish();
    apply(&f.engine, layer, &tar[..]).expect("a 900 KiB PAX header");
    assert_eq!(content(&f.engine, layer, "after"), b"a");
    // A header of many MiB (a few KB once compressed) is refused while it is read.
    let huge = vec![b'v'; 8 << 20];
    let tar = Tar::new().pax(&[("LCFS.comment", &huge)]).file("g", 0o644, b"").finish();
    let layer = writable(&f.engine, "huge", None);
    match apply(&f.engine, layer, &tar[..]) {
        Err(UnpackError::Read(e)) => assert!(e.to_string().contains("larger than 1 MiB"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
