//! Bad devices: something that is not lcfs, a future format version, a flipped byte in every
//! metadata page, a truncated device, a stray write over the start of the device. Each must give a clear error that names the device and
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

/// Rewrites the format version in both superblock copies at the start, with a valid checksum,
/// as a build of that version would have written them.
fn set_version(bytes: &mut [u8], version: u32) {
    for copy in 0..2 {
        let at = copy * 4096;
        bytes[at + 8..at + 12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&bytes[at..at + 4092]);
        bytes[at + 4092..at + 4096].copy_from_slice(&crc.to_le_bytes());
    }
}

#[test]
fn a_future_version_is_refused() {
    let mut bytes = populated();
    set_version(&mut bytes, 3);
    // Not overridden by the (version 2) backup copy.
    let err = try_open(bytes).expect_err("future version");
    assert!(matches!(err, OpenError::UnsupportedVersion { found: 3, .. }), "{err}");
    assert!(err.to_string().contains("unsupported lcfs format version 3"), "{err}");
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
    // Both copies at the start damaged: the backup copy in the data region stands in.
    let mut b = bytes.clone();
    b[45] ^= 1;
    b[4096 + 45] ^= 1;
    assert_eq!(try_open(b.clone()).expect("opened from the backup copy"), intact);
    // And with the backup damaged too, nothing is left to trust.
    let backup = u64::from_le_bytes(bytes[80..88].try_into().expect("8 bytes")) as usize;
    b[backup + 45] ^= 1;
    let err = try_open(b).expect_err("every copy damaged");
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

/// Damage to the start of the device, as a stray write does it.
fn damaged(bytes: &[u8], what: &str) -> Vec<u8> {
    let mut b = bytes.to_vec();
    match what {
        "copy 1 zeroed" => b[..4096].fill(0),
        "copy 2 zeroed" => b[4096..8192].fill(0),
        "both copies zeroed" => b[..8192].fill(0),
        "the first MiB zeroed" => b[..1 << 20].fill(0),
        "bytes flipped in both copies" => {
            for at in [10, 45, 90, 4096 + 10, 4096 + 45, 4096 + 90] {
                b[at] ^= 0x5a;
            }
        }
        other => panic!("no such damage: {other}"),
    }
    b
}

/// A stray write over the start of the device never makes lcfs format over it: the backup
/// superblock in the data region stands in, fsck says what was damaged and what it used, and
/// the next open restores the copies at the start (after which fsck is clean again).
#[test]
fn a_damaged_start_is_restored_from_the_backup_never_formatted_over() {
    let bytes = populated();
    let intact = try_open(bytes.clone()).expect("intact device opens");
    for what in
        ["copy 1 zeroed", "copy 2 zeroed", "both copies zeroed", "the first MiB zeroed", "bytes flipped in both copies"]
    {
        let device: Arc<dyn Device> = Arc::new(MemDevice::from_bytes(damaged(&bytes, what)));
        let report = fsck(device.clone()).unwrap_or_else(|e| panic!("{what}: fsck cannot check: {e}"));
        if what.starts_with("copy") {
            // The other copy at the start is current or older but intact: nothing to restore.
            assert!(report.is_clean(), "{what}: {report}");
        } else {
            let text = report.to_string();
            assert!(!report.is_clean(), "{what}: fsck found nothing: {text}");
            assert!(text.contains("used the backup copy at byte"), "{what}: {text}");
        }
        let engine = Engine::open_or_format(device.clone(), &FormatOptions::default(), &options())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(dump(&engine), intact, "{what}: opened with different content");
        engine.close().expect("close");
        let report = fsck(device).expect("fsck runs");
        assert!(report.is_clean(), "{what}: after the restoring open: {report}");
    }
}

/// Version 1 devices (no backup copy; data from the first block of the data region) still
/// open. Without their superblocks they are damaged, not blank: never formatted over.
#[test]
fn a_version_1_device_opens_and_is_not_formatted_over_when_damaged() {
    let mut bytes = populated();
    // Relabel as version 1: the backup block becomes free data space, which is all version 1
    // knew of it.
    set_version(&mut bytes, 1);
    let backup = u64::from_le_bytes(bytes[80..88].try_into().expect("8 bytes")) as usize;
    bytes[backup..backup + 4096].fill(0);
    let device: Arc<dyn Device> = Arc::new(MemDevice::from_bytes(bytes.clone()));
    let engine = Engine::open(device.clone(), &options()).expect("a version 1 device opens");
    let base = engine.layer("child").expect("layer").id;
    let f = engine.create(base, ROOT_INO, b"new", &NewNode::file(0o644, 0, 0)).expect("create");
    engine.write(base, f.ino, 0, &[7; 9000]).expect("write");
    engine.close().expect("close");
    let report = fsck(device.clone()).expect("fsck runs");
    assert!(report.is_clean(), "{report}");

    let mut zeroed = bytes;
    zeroed[..8192].fill(0);
    let device: Arc<dyn Device> = Arc::new(MemDevice::from_bytes(zeroed));
    let err = Engine::open_or_format(device.clone(), &FormatOptions::default(), &options())
        .expect_err("a version 1 device without superblocks is refused");
    assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("damaged, not blank"), "{err}");
    let err = Engine::format(&device, &FormatOptions::default()).expect_err("format refuses too");
    assert!(matches!(err, OpenError::Damaged { .. }), "{err}");
    assert!(matches!(fsck(device), Err(OpenError::Damaged { .. })));
}
