//! A write between its plan and its publication (`in_flight`), held there by the device while
//! the test commits, removes, unlinks or truncates under it. Each test passes for every order
//! the engine may choose and fails if the write lands in a committed layer or in blocks that
//! were freed and given to another file, or if it leaks what it reserved.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::device::{Device, MemDevice};
use crate::types::*;
use crate::{Engine, Error, FormatOptions, OpenOptions, Result, fsck};

const BLOCK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Armed,
    Holding,
    Released,
}

/// A memory device that holds the first write of a buffer starting with `pattern` (a write
/// of file data; metadata never starts with it) until the test releases it.
#[derive(Debug)]
struct HoldingDevice {
    inner: MemDevice,
    pattern: Vec<u8>,
    hold: Mutex<Hold>,
    changed: Condvar,
}

impl HoldingDevice {
    fn new(len: u64, pattern: &[u8]) -> Arc<HoldingDevice> {
        Arc::new(HoldingDevice {
            inner: MemDevice::new(len),
            pattern: pattern.to_vec(),
            hold: Mutex::new(Hold::Released),
            changed: Condvar::new(),
        })
    }

    fn set(&self, hold: Hold) {
        *self.hold.lock().unwrap_or_else(PoisonError::into_inner) = hold;
        self.changed.notify_all();
    }

    fn wait_for(&self, wanted: Hold) {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        while *hold != wanted {
            hold = self.changed.wait(hold).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn maybe_hold(&self, buf: &[u8]) {
        let mut hold = self.hold.lock().unwrap_or_else(PoisonError::into_inner);
        if *hold == Hold::Armed && buf.starts_with(&self.pattern) {
            *hold = Hold::Holding;
            self.changed.notify_all();
            while *hold != Hold::Released {
                hold = self.changed.wait(hold).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

impl Device for HoldingDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.maybe_hold(buf);
        self.inner.write_at(buf, offset)
    }
    fn write_direct(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.maybe_hold(buf);
        self.inner.write_direct(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn grow(&self, len: u64) -> io::Result<()> {
        self.inner.grow(len)
    }
    fn name(&self) -> String {
        "holding memory device".into()
    }
}

/// What a held write writes: one block of it.
const HELD: [u8; BLOCK] = [0xB7; BLOCK];

/// A block's bytes in brief: its length and first byte.
fn show(bytes: &[u8]) -> String {
    format!("{} bytes starting {:#04x}", bytes.len(), bytes.first().copied().unwrap_or(0))
}

struct Setup {
    engine: Engine,
    device: Arc<HoldingDevice>,
}

impl Setup {
    /// An engine on a device with a 16 MiB data region, so the tests can fill it.
    fn new() -> Setup {
        let device = HoldingDevice::new(48 << 20, &HELD[..64]);
        let dyn_device: Arc<dyn Device> = device.clone();
        let format = FormatOptions { metadata_bytes: Some(16 << 20), ..FormatOptions::default() };
        Engine::format(&dyn_device, &format).expect("format");
        let options = OpenOptions { checkpoint_interval: None, ..OpenOptions::default() };
        let engine = Engine::open(dyn_device, &options).expect("open");
        Setup { engine, device }
    }

    fn layer(&self, name: &str) -> LayerId {
        self.engine.create_layer(name, None, LayerKind::Writable, BTreeMap::new()).expect("create layer").id
    }

    fn file(&self, l: LayerId, name: &str, data: &[u8]) -> Ino {
        let ino = self.engine.create(l, ROOT_INO, name.as_bytes(), &NewNode::file(0o644, 0, 0)).expect("create").ino;
        if !data.is_empty() {
            self.engine.write(l, ino, 0, data).expect("write");
        }
        ino
    }

    fn read_all(&self, l: LayerId, ino: Ino) -> Vec<u8> {
        let size = self.engine.getattr(l, ino).expect("getattr").size;
        self.engine.read(l, ino, 0, size as usize).expect("read")
    }

    fn free_blocks(&self) -> u64 {
        self.engine.statfs().expect("statfs").blocks_free
    }

    /// Fills every free data block with a file of its own in layer `l`.
    fn fill(&self, l: LayerId) {
        self.engine.sync().expect("sync");
        let free = self.free_blocks() as usize;
        self.file(l, "filler", &vec![0x11; free * BLOCK]);
        self.engine.sync().expect("sync");
        assert_eq!(self.free_blocks(), 0, "the device is full");
    }

    /// Starts writing one block of `HELD` at offset 0 of `ino`, and returns once the device
    /// holds its data.
    fn held_write(&self, l: LayerId, ino: Ino) -> JoinHandle<Result<usize>> {
        self.device.set(Hold::Armed);
        let engine = self.engine.clone();
        let writer = std::thread::spawn(move || engine.write(l, ino, 0, &HELD));
        self.device.wait_for(Hold::Holding);
        writer
    }

    /// Runs `op` in a thread while the write is held, gives it a moment to finish (as it would
    /// if it did not wait for the write), runs `meanwhile` if it did, then releases the write.
    fn while_held<T: Send + 'static>(
        &self,
        op: impl FnOnce(Engine) -> T + Send + 'static,
        meanwhile: impl FnOnce(&T),
    ) -> T {
        let engine = self.engine.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let runner = std::thread::spawn(move || done_tx.send(op(engine)).expect("send"));
        let early = done_rx.recv_timeout(Duration::from_millis(200)).ok();
        if let Some(result) = &early {
            meanwhile(result);
        }
        self.device.set(Hold::Released);
        let result = early.unwrap_or_else(|| done_rx.recv().expect("the operation ends once the write is released"));
        runner.join().expect("runner");
        result
    }

    fn fsck_clean(self) {
        self.engine.sync().expect("sync");
        drop(self.engine);
        let device: Arc<dyn Device> = self.device;
        let report = fsck(device).expect("fsck runs");
        assert!(report.is_clean(), "{report}");
    }
}

#[test]
fn a_write_racing_a_commit_lands_before_it_or_not_at_all() {
    let s = Setup::new();
    let l = s.layer("l");
    let f = s.file(l, "f", &[0xAA; BLOCK]);
    let writer = s.held_write(l, f);
    // The content the committed layer has when the commit returns must stay its content.
    let at_commit = s.while_held(
        move |e| {
            e.commit_layer("l", "l@1", None).expect("commit");
            e.read(l, f, 0, BLOCK).expect("read")
        },
        |_| {},
    );
    let written = writer.join().expect("writer");
    assert!(matches!(written, Ok(BLOCK) | Err(Error::LayerKind { .. })), "{written:?}");
    let now = s.read_all(l, f);
    assert!(now == at_commit, "a committed layer changed after its commit: {} then {}", show(&at_commit), show(&now));
    s.fsck_clean();
}

#[test]
fn a_write_racing_a_remove_never_lands_in_another_files_blocks() {
    let s = Setup::new();
    let victim = s.layer("victim");
    let v = s.file(victim, "v", &[0xAA; BLOCK]);
    let other = s.layer("other");
    s.fill(other);
    let writer = s.held_write(victim, v);
    let fresh = [0xCC; BLOCK];
    let w = s.file(other, "w", &[]);
    // Had the remove not waited, its block would now be free and go to `w`.
    s.while_held(
        |e| e.remove_layer("victim"),
        |_| {
            s.engine.sync().expect("sync");
            s.engine.write(other, w, 0, &fresh).expect("write into the freed block");
        },
    )
    .expect("remove");
    let _ = writer.join().expect("writer");
    if s.engine.getattr(other, w).expect("getattr").size == 0 {
        s.engine.sync().expect("sync");
        s.engine.write(other, w, 0, &fresh).expect("write into the freed block");
    }
    let got = s.read_all(other, w);
    assert!(got == fresh, "another layer's file was overwritten: it holds {}", show(&got));
    s.fsck_clean();
}

#[test]
fn a_write_racing_a_remove_returns_what_it_reserved() {
    let s = Setup::new();
    let victim = s.layer("victim");
    let v = s.file(victim, "v", &[]);
    s.engine.sync().expect("sync");
    let free = s.free_blocks();
    // A new block, reserved by the plan.
    let writer = s.held_write(victim, v);
    s.while_held(|e| e.remove_layer("victim"), |_| {}).expect("remove");
    let _ = writer.join().expect("writer");
    s.engine.sync().expect("sync");
    assert_eq!(s.free_blocks(), free, "blocks leaked");
    s.fsck_clean();
}

#[test]
fn a_write_racing_an_unlink_keeps_the_files_blocks_until_it_is_done() {
    let s = Setup::new();
    let l = s.layer("l");
    let v = s.file(l, "v", &[0xAA; BLOCK]);
    s.fill(l);
    let w = s.file(l, "w", &[]);
    let writer = s.held_write(l, v);
    let fresh = [0xCC; BLOCK];
    // No handle is open on `v`: without the write's own, its block would be freed at once.
    s.engine.unlink(l, ROOT_INO, b"v").expect("unlink");
    s.engine.sync().expect("sync");
    let meanwhile = s.engine.write(l, w, 0, &fresh);
    assert!(matches!(meanwhile, Ok(_) | Err(Error::NoSpace)), "{meanwhile:?}");
    s.device.set(Hold::Released);
    writer.join().expect("writer").expect("the write to the unlinked file");
    if meanwhile.is_err() {
        s.engine.sync().expect("sync");
        s.engine.write(l, w, 0, &fresh).expect("write once the unlinked file is gone");
    }
    let got = s.read_all(l, w);
    assert!(got == fresh, "another file was overwritten: it holds {}", show(&got));
    s.fsck_clean();
}

#[test]
fn a_truncate_waits_for_a_write_in_flight_on_its_file() {
    let s = Setup::new();
    let l = s.layer("l");
    let f = s.file(l, "f", &[0xAA; 2 * BLOCK]);
    s.engine.sync().expect("sync");
    let free = s.free_blocks();
    let writer = s.held_write(l, f);
    let truncate = SetAttr { size: Some(0), ..SetAttr::default() };
    s.while_held(move |e| e.setattr(l, f, &truncate).map(|_| ()), |_| {}).expect("truncate");
    assert_eq!(writer.join().expect("writer").expect("write"), BLOCK);
    // The write came first (it held the file), then the truncate.
    assert_eq!(s.engine.getattr(l, f).expect("getattr").size, 0);
    s.engine.sync().expect("sync");
    assert_eq!(s.free_blocks(), free + 2, "the truncated file's blocks are free again");
    s.fsck_clean();
}
