//! Bad devices: something that is not lcfs, a future format version, a flipped byte in every
//! metadata page, a truncated device. Each must give a clear error that names the device and
//! the problem — never a panic, and never a write to the device — or, where the damage hit
//! space nothing refers to, open with every layer intact.

use std::collections::BTreeMap;
use std::sync::Arc;

use lcfs_engine::device::{CountingDevice, Device, MemDevice};
use lcfs_engine::{Engine, FormatOptions, LayerKind, NewNode, OpenError, OpenOptions, ROOT_INO, fsck};

fn options() -> OpenOptions {
    OpenOptions { checkpoint_interval: None, cache_bytes: 4 << 20, ..OpenOptions::default() }
}

/// A device with two layers and some files, closed cleanly.
fn populated() -> Vec<u8> {
    let device = Arc::new(MemDevice::new(40 << 20));
    let dyn_device: Arc<dyn Device> = device.clone();
    Engine::format(&dyn_device, &FormatOptions { metadata_bytes: Some(16 << 20), ..Default::default() })
        .expect("format");
    let engine = Engine::open(dyn_device, &options()).expect("open");
    let base = engine.create_layer("base", None, LayerKind::Writable, BTreeMap::new()).expect("layer").id;
    let dir = engine.create(base, ROOT_INO, b"etc", &NewNode::dir(0o755, 0, 0)).expect("mkdir").ino;
    for i in 0..50 {
        let f = engine.create(base, dir, format!("file-{i}").as_bytes(), &NewNode::file(0o644, 0, 0)).expect("create");
        engine.write(base, f.ino, 0, &vec![i as u8; 5000]).expect("write");
    }
    engine.commit_layer("base", "base@1", None).expect("commit");
    let child = engine.create_layer("child", Some("base@1"), LayerKind::Writable, BTreeMap::new()).expect("layer").id;
    engine.unlink(child, dir, b"file-3").expect("unlink");
    engine.close().expect("close");
    device.to_bytes()
}

/// Everything the device holds, as text, for comparing whole states.
fn dump(engine: &Engine) -> String {
    let mut out = String::new();
    for layer in engine.layers().expect("layers") {
        out.push_str(&format!("layer {} {:?}\n", layer.name, layer.kind));
        let mut stack = vec![(ROOT_INO, "/".to_string())];
        while let Some((dir, path)) = stack.pop() {
            for e in engine.read_dir(layer.id, dir, None, usize::MAX).expect("readdir") {
                let p = format!("{path}{}", String::from_utf8_lossy(&e.name));
                let attr = engine.getattr(layer.id, e.ino).expect("getattr");
                out.push_str(&format!("{p} {:?} {:o} {}\n", attr.kind, attr.perm, attr.nlink));
                if attr.kind == lcfs_engine::FileKind::Regular {
                    let data = engine.read(layer.id, e.ino, 0, attr.size as usize).expect("read");
                    out.push_str(&format!(
                        "  {} bytes, sum {}\n",
                        data.len(),
                        data.iter().map(|&b| u64::from(b)).sum::<u64>()
                    ));
                } else if attr.kind == lcfs_engine::FileKind::Directory {
                    stack.push((e.ino, format!("{p}/")));
                }
            }
        }
    }
    out
}

/// Opens `bytes`; on failure checks that nothing was written and the message names the device.
fn try_open(bytes: Vec<u8>) -> Result<String, OpenError> {
    let device = Arc::new(CountingDevice::new(MemDevice::from_bytes(bytes)));
    let result = Engine::open(device.clone(), &options());
    match result {
        Ok(engine) => {
            let text = dump(&engine);
            drop(engine);
            Ok(text)
        }
        Err(e) => {
            assert_eq!(device.bytes_written(), 0, "a failed open wrote to the device: {e}");
            assert!(e.to_string().starts_with("memory device: "), "the error does not name the device: {e}");
            Err(e)
        }
    }
}

#[test]
fn a_foreign_file_is_refused_without_a_write() {
    let mut bytes = vec![0u8; 40 << 20];
    bytes[..4].copy_from_slice(b"\x7fELF");
    bytes[5000] = 1;
    let err = try_open(bytes).expect_err("not lcfs");
    assert!(matches!(err, OpenError::NotLcfs { .. }), "{err}");
    assert!(err.to_string().contains("not an lcfs device"), "{err}");
    let err = try_open(vec![0u8; 40 << 20]).expect_err("blank");
    assert!(matches!(err, OpenError::Blank { .. }), "{err}");
    let format = Engine::format(
        &(Arc::new(MemDevice::from_bytes(vec![1u8; 40 << 20])) as Arc<dyn Device>),
        &FormatOptions::default(),
    );
    assert!(matches!(format, Err(OpenError::NotLcfs { .. })), "format must not overwrite foreign data unless forced");
}

#[test]
fn a_future_version_is_refused() {
    let mut bytes = populated();
    for copy in 0..2 {
        bytes[copy * 4096 + 8..copy * 4096 + 12].copy_from_slice(&2u32.to_le_bytes());
    }
    let err = try_open(bytes).expect_err("future version");
    assert!(matches!(err, OpenError::UnsupportedVersion { found: 2, .. }), "{err}");
    assert!(err.to_string().contains("unsupported lcfs format version 2"), "{err}");
}

#[test]
fn a_truncated_device_is_refused() {
    let bytes = populated();
    for len in [100usize, 6000, 20 << 20, (40 << 20) - 4096] {
        let err = try_open(bytes[..len].to_vec()).expect_err("truncated");
        assert!(
            matches!(
                err,
                OpenError::Truncated { .. } | OpenError::NotLcfs { .. } | OpenError::CorruptSuperblock { .. }
            ),
            "{len} bytes: {err}"
        );
        assert!(err.to_string().contains("truncated") || len < 8192, "{len} bytes: {err}");
    }
}

#[test]
fn damaged_superblock_copies_fall_back_or_are_refused() {
    let bytes = populated();
    let intact = try_open(bytes.clone()).expect("intact device opens");
    for copy in 0..2 {
        for offset in [0usize, 9, 20, 45, 60, 85, 4000, 4093] {
            let mut b = bytes.clone();
            b[copy * 4096 + offset] ^= 0x40;
            match try_open(b) {
                Ok(state) => assert_eq!(state, intact, "copy {copy} byte {offset}: opened with different content"),
                Err(e) => assert!(
                    matches!(e, OpenError::CorruptSuperblock { .. } | OpenError::CorruptMetadata { .. }),
                    "copy {copy} byte {offset}: {e}"
                ),
            }
        }
    }
    let mut b = bytes;
    b[45] ^= 1;
    b[4096 + 45] ^= 1;
    let err = try_open(b).expect_err("both copies damaged");
    assert!(err.to_string().contains("superblock is corrupt"), "{err}");
}

#[test]
fn a_flipped_byte_in_any_metadata_page_is_caught_or_harmless() {
    let bytes = populated();
    let intact = try_open(bytes.clone()).expect("intact device opens");
    let meta_len = u64::from_le_bytes(bytes[64..72].try_into().expect("8 bytes"))
        .max(u64::from_le_bytes(bytes[4096 + 64..4096 + 72].try_into().expect("8 bytes")));
    let meta_start = 1usize << 20;
    let pages = meta_len as usize / 4096;
    assert!(pages > 4, "the metadata store should span several pages, has {pages}");
    let (mut refused, mut harmless) = (0, 0);
    for page in 0..pages {
        // A byte in the page's first part (headers, keys) and one further in.
        for within in [5usize, 100, 1500] {
            let mut b = bytes.clone();
            b[meta_start + page * 4096 + within] ^= 0x10;
            match try_open(b.clone()) {
                Ok(state) => {
                    assert_eq!(state, intact, "page {page} byte {within}: opened with different content");
                    harmless += 1;
                    let report = fsck(Arc::new(MemDevice::from_bytes(b))).expect("fsck runs");
                    assert!(report.is_clean(), "page {page} byte {within}: open accepted it but fsck says\n{report}");
                }
                Err(e) => {
                    assert!(matches!(e, OpenError::CorruptMetadata { .. }), "page {page} byte {within}: {e}");
                    refused += 1;
                    let report = fsck(Arc::new(MemDevice::from_bytes(b))).expect("fsck runs");
                    assert!(!report.is_clean(), "page {page} byte {within}: open refused it but fsck says clean");
                }
            }
        }
    }
    assert!(refused > 0, "no flipped byte was detected");
    eprintln!("{refused} flips refused, {harmless} harmless (in unused space)");
}

#[test]
fn flipped_data_blocks_do_not_break_metadata() {
    // Data blocks carry no checksums (as in ext4 and overlayfs); damage there must not
    // confuse the engine: it opens and fsck is clean.
    let mut bytes = populated();
    let data_start = u64::from_le_bytes(bytes[80..88].try_into().expect("8 bytes")) as usize;
    bytes[data_start + 10] ^= 0xff;
    try_open(bytes).expect("opens");
}
