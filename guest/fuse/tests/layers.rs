//! Layered semantics through a real FUSE mount: what a child sees of its parent, copy-up on
//! change, deletion of inherited entries, hard links across the layer boundary, xattrs, mmap
//! writes, sparse files, rename of inherited directories, fallocate, copy_file_range, and
//! the faults a frontend must survive.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use support::Mounted;

fn xattr_get(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer is valid
    // for its length.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        None
    } else {
        buf.truncate(r as usize);
        Some(buf)
    }
}

fn xattr_set(path: &std::path::Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: both strings are NUL-terminated and live across the call; the value is valid
    // for its length.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

#[test]
fn a_child_sees_its_parent_and_changes_only_itself() {
    let m = Mounted::new(1 << 30);
    let base = m.create_layer("base", None);
    fs::create_dir_all(base.join("etc/conf.d")).expect("mkdir");
    fs::write(base.join("etc/passwd"), b"root:x:0:0\n").expect("write");
    fs::write(base.join("etc/conf.d/a.conf"), b"a=1\n").expect("write");
    fs::write(base.join("gone"), b"bye").expect("write");
    fs::hard_link(base.join("etc/passwd"), base.join("passwd.link")).expect("link");
    xattr_set(&base.join("etc/passwd"), "user.origin", b"base");
    let base = m.commit("base", "base-1");
    let child = m.create_layer("child", Some("base-1"));

    // Seen from the child, unchanged.
    assert_eq!(fs::read(child.join("etc/passwd")).expect("read"), b"root:x:0:0\n");
    assert_eq!(xattr_get(&child.join("etc/passwd"), "user.origin").as_deref(), Some(&b"base"[..]));
    assert_eq!(fs::metadata(child.join("etc/passwd")).expect("stat").nlink(), 2);

    // Changed in the child only.
    fs::OpenOptions::new()
        .append(true)
        .open(child.join("etc/passwd"))
        .expect("open")
        .write_all(b"bin:x:1:1\n")
        .expect("append");
    assert_eq!(fs::read(child.join("etc/passwd")).expect("read"), b"root:x:0:0\nbin:x:1:1\n");
    assert_eq!(
        fs::read(child.join("passwd.link")).expect("read"),
        b"root:x:0:0\nbin:x:1:1\n",
        "hard link shares the change"
    );
    assert_eq!(fs::read(base.join("etc/passwd")).expect("read"), b"root:x:0:0\n");

    // Deleted in the child, kept in the parent.
    fs::remove_file(child.join("gone")).expect("unlink");
    assert!(!child.join("gone").exists());
    assert!(base.join("gone").exists());
    fs::remove_file(child.join("passwd.link")).expect("unlink");
    assert_eq!(fs::metadata(child.join("etc/passwd")).expect("stat").nlink(), 1);
    assert_eq!(fs::metadata(base.join("etc/passwd")).expect("stat").nlink(), 2);

    // Hard link of an inherited file inside the child.
    fs::hard_link(child.join("etc/conf.d/a.conf"), child.join("a.link")).expect("link");
    assert_eq!(fs::metadata(child.join("a.link")).expect("stat").nlink(), 2);
    assert_eq!(fs::metadata(base.join("etc/conf.d/a.conf")).expect("stat").nlink(), 1);
    assert_eq!(
        fs::metadata(child.join("a.link")).expect("stat").ino(),
        fs::metadata(child.join("etc/conf.d/a.conf")).expect("stat").ino()
    );

    // Rename of an inherited directory.
    fs::rename(child.join("etc/conf.d"), child.join("conf")).expect("rename");
    assert_eq!(fs::read(child.join("conf/a.conf")).expect("read"), b"a=1\n");
    assert!(base.join("etc/conf.d/a.conf").exists());

    // The committed layer refuses changes.
    let err = fs::write(base.join("new"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = OpenOptions::new().write(true).open(base.join("etc/passwd")).expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // Links and renames never cross layers.
    let err = fs::hard_link(base.join("etc/passwd"), child.join("x")).expect_err("cross-layer link");
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");

    // The mount root lists the layers.
    let mut names: Vec<String> = fs::read_dir(m.mountpoint())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, vec!["base-1", "child"]);
}

#[test]
fn mmap_sparse_fallocate_and_copy_file_range() {
    let m = Mounted::new(1 << 30);
    let l = m.create_layer("l", None);

    // Sparse file: holes read as zeros and take no space.
    let f =
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(l.join("sparse")).expect("create");
    f.write_all_at(b"end", (64 << 20) - 3).expect("write");
    assert_eq!(f.metadata().expect("stat").len(), 64 << 20);
    let mut hole = vec![1u8; 4096];
    f.read_exact_at(&mut hole, 10 << 20).expect("read hole");
    assert!(hole.iter().all(|&b| b == 0));
    drop(f);

    // mmap writes reach the file.
    let path = l.join("mapped");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
    f.set_len(8192).expect("truncate");
    // SAFETY: mapping a file we own, of the length just set, shared and writable; unmapped
    // below before the file is closed.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    // SAFETY: the mapping is 8192 bytes long and writable.
    unsafe {
        std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), addr.cast::<u8>().add(4096), 7);
        assert_eq!(libc::msync(addr, 8192, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(addr, 8192), 0);
    }
    drop(f);
    let data = fs::read(&path).expect("read");
    assert_eq!(&data[4096..4103], b"mapped!");

    // fallocate: allocate extends; punch leaves zeros and keeps the size.
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(l.join("falloc")).expect("open");
    f.write_all_at(&[7u8; 16384], 0).expect("write");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: fallocate on an open descriptor with integer arguments.
    assert_eq!(unsafe { libc::fallocate(fd, 0, 0, 32768) }, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(f.metadata().expect("stat").len(), 32768);
    // SAFETY: as above.
    let r = unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 4096, 8192) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    let mut buf = vec![0u8; 16384];
    f.read_exact_at(&mut buf, 0).expect("read");
    assert!(
        buf[..4096].iter().all(|&b| b == 7)
            && buf[4096..12288].iter().all(|&b| b == 0)
            && buf[12288..].iter().all(|&b| b == 7)
    );
    drop(f);

    // copy_file_range within a layer.
    let src = File::open(l.join("falloc")).expect("open");
    let dst = File::create(l.join("copy")).expect("create");
    let mut off_in: i64 = 0;
    let mut off_out: i64 = 0;
    // SAFETY: both descriptors are open; the offsets are valid pointers to local integers.
    let n = unsafe {
        libc::copy_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&src),
            &mut off_in,
            std::os::fd::AsRawFd::as_raw_fd(&dst),
            &mut off_out,
            32768,
            0,
        )
    };
    assert_eq!(n, 32768, "{}", std::io::Error::last_os_error());
    drop(dst);
    assert_eq!(fs::read(l.join("copy")).expect("read"), fs::read(l.join("falloc")).expect("read"));
}

#[test]
fn posix_details_containers_rely_on() {
    let m = Mounted::new(1 << 30);
    let l = m.create_layer("l", None);
    // Device nodes, fifos, symlinks.
    support::sh("mknod null c 1 3 && mkfifo fifo && ln -s /etc/passwd link && chmod 4755 null", &l);
    let meta = fs::symlink_metadata(l.join("null")).expect("stat");
    assert_eq!(meta.rdev(), libc::makedev(1, 3));
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    assert_eq!(fs::read_link(l.join("link")).expect("readlink").to_str(), Some("/etc/passwd"));
    // The device node works as a device.
    fs::write(l.join("null"), b"discarded").expect("write to /dev/null");
    // Names as Linux limits them.
    let long = "n".repeat(256);
    let err = File::create(l.join(&long)).expect_err("too long");
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    File::create(l.join(&long[..255])).expect("255 bytes is fine");
    // Truncate and seek.
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(l.join("t")).expect("open");
    f.write_all(&[1u8; 10000]).expect("write");
    f.set_len(5000).expect("truncate");
    f.set_len(9000).expect("extend");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut all = Vec::new();
    f.read_to_end(&mut all).expect("read");
    assert_eq!(all.len(), 9000);
    assert!(all[..5000].iter().all(|&b| b == 1) && all[5000..].iter().all(|&b| b == 0));
    // Permissions survive and statfs answers.
    fs::set_permissions(l.join("t"), fs::Permissions::from_mode(0o640)).expect("chmod");
    assert_eq!(fs::metadata(l.join("t")).expect("stat").mode() & 0o777, 0o640);
    let st = nix_statfs(&l);
    assert_eq!(st.0, 4096);
    assert!(st.1 > 0);
}

/// (block size, free blocks) of the file system holding `path`.
fn nix_statfs(path: &std::path::Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: zeroed statvfs is a valid value to be overwritten by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated; st is a valid, writable statvfs.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_bsize, st.f_bavail)
}

/// `O_TMPFILE` makes an unnamed file, which `linkat` can name later, over either transport
/// (both decode requests with lcfs's own decoder, which serves `FUSE_TMPFILE`).
#[test]
fn o_tmpfile_makes_an_unnamed_file_that_can_be_named_later() {
    let m = Mounted::new(1 << 30);
    let l = m.create_layer("l", None);
    let opened = OpenOptions::new().read(true).write(true).mode(0o640).custom_flags(libc::O_TMPFILE).open(&l);
    let mut f = opened.expect("O_TMPFILE");
    f.write_all(b"unnamed").expect("write");
    let meta = f.metadata().expect("fstat");
    assert_eq!((meta.nlink(), meta.mode() & 0o7777), (0, 0o640));
    assert!(fs::read_dir(&l).expect("list").next().is_none(), "an unnamed file has no entry");
    // Naming it: linkat through /proc, as programs without CAP_DAC_READ_SEARCH do.
    let proc_path =
        std::ffi::CString::new(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f))).expect("path");
    let target = std::ffi::CString::new(l.join("named").as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: both paths are NUL-terminated and live across the call.
    let r = unsafe {
        libc::linkat(libc::AT_FDCWD, proc_path.as_ptr(), libc::AT_FDCWD, target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    };
    assert_eq!(r, 0, "linkat: {}", std::io::Error::last_os_error());
    drop(f);
    assert_eq!(fs::read(l.join("named")).expect("read the named file"), b"unnamed");
    assert_eq!(fs::metadata(l.join("named")).expect("stat").nlink(), 1);
    // An unnamed file that is closed without a name leaves nothing behind.
    let mut gone = OpenOptions::new().write(true).custom_flags(libc::O_TMPFILE).open(&l).expect("second");
    gone.write_all(&[7; 100_000]).expect("write");
    drop(gone);
    let names: Vec<_> = fs::read_dir(&l).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["named"]);
}

/// An ACL xattr value: version 2 header and (tag, perm, id) entries.
fn acl_value(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn posix_acls_are_kept_enforced_and_inherited() {
    let m = Mounted::new(1 << 30);
    let l = m.create_layer("l", None);
    let dir = l.join("shared");
    fs::create_dir(&dir).expect("mkdir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).expect("chmod");
    // default ACL: user::rwx user:nobody(65534):rwx group::r-x mask::rwx other::---
    let default = acl_value(&[
        (0x01, 7, u32::MAX),
        (0x02, 7, 65534),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    xattr_set(&dir, "system.posix_acl_default", &default);
    xattr_set(&dir, "system.posix_acl_access", &default);
    assert_eq!(xattr_get(&dir, "system.posix_acl_default").as_deref(), Some(default.as_slice()));
    // A file created inside inherits the default ACL, narrowed by its create mode (0640).
    let f = dir.join("f");
    OpenOptions::new().write(true).create_new(true).mode(0o640).open(&f).expect("create");
    let access = xattr_get(&f, "system.posix_acl_access").expect("inherited access ACL");
    assert_eq!(&access[..4], &2u32.to_le_bytes());
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o777, 0o640);
    let sub = dir.join("sub");
    fs::create_dir(&sub).expect("mkdir");
    assert_eq!(xattr_get(&sub, "system.posix_acl_default").as_deref(), Some(default.as_slice()));
    // The kernel enforces it: nobody may enter the 0770 directory through the named entry.
    let out = support::output(std::process::Command::new("runuser").args(["-u", "nobody", "--", "ls"]).arg(&dir));
    assert!(out.status.success(), "the ACL grants nobody access: {}", String::from_utf8_lossy(&out.stderr));
    let out = support::output(std::process::Command::new("runuser").args(["-u", "tests", "--", "ls"]).arg(&dir));
    assert!(!out.status.success(), "others are refused");
}

#[test]
fn modification_drops_privileges_as_linux_does() {
    let m = Mounted::new(1 << 30);
    let l = m.create_layer("l", None);
    let f = l.join("tool");
    fs::write(&f, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6777)).expect("chmod");
    xattr_set(&f, "security.capability", &[1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Root writes: capabilities go, set-id bits stay (root holds CAP_FSETID).
    OpenOptions::new().append(true).open(&f).expect("open").write_all(b"echo\n").expect("append");
    assert_eq!(xattr_get(&f, "security.capability"), None);
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o6777);
    // Another user writes: set-id bits go too.
    let out = support::output(
        std::process::Command::new("runuser")
            .args(["-u", "tests", "--", "sh", "-c"])
            .arg(format!("echo more >> '{}'", f.display())),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o0777);
    // A change of owner drops them as well.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o6755)).expect("chmod");
    std::os::unix::fs::chown(&f, Some(65534), None).expect("chown");
    assert_eq!(fs::metadata(&f).expect("stat").mode() & 0o7777, 0o0755);
}

#[test]
fn the_mount_gets_a_large_readahead_window() {
    let m = Mounted::new(1 << 30);
    let dev = fs::metadata(m.mountpoint()).expect("stat").dev();
    let path = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    assert_eq!(fs::read_to_string(&path).expect("read sysfs").trim(), "4096");
}

/// With the writeback cache the kernel sends a deleted file's dirty times after the file is
/// gone; a commit's syncfs must not fail because of them (containerd applies whiteouts by
/// deleting inherited files, then commits).
#[test]
fn deleting_files_does_not_fail_the_next_sync() {
    let m = support::Mounted::new(64 << 20);
    let base = m.create_layer("base", None);
    std::fs::write(base.join("inherited"), b"x").expect("write");
    m.commit("base", "base-c");
    let child = m.create_layer("child", Some("base-c"));
    std::fs::remove_file(child.join("inherited")).expect("delete an inherited file");
    std::fs::write(child.join("own"), b"y").expect("write");
    std::fs::remove_file(child.join("own")).expect("delete a file of the layer");
    let dir = std::fs::File::open(&child).expect("open the layer");
    nix::unistd::syncfs(&dir).expect("syncfs after deletions");
    m.commit("child", "child-c");
    assert!(!m.layer_dir("child-c").join("inherited").exists());
    assert!(m.layer_dir("base-c").join("inherited").exists());
}

/// Where the kernel offers FUSE over io_uring (its `fuse.enable_uring` parameter exists), the
/// mount serves requests through the per-CPU queues, and every operation works there too (the
/// other tests here and pjdfstest run over whichever transport the mount uses).
#[test]
fn requests_arrive_over_io_uring_where_the_kernel_offers_it() {
    if support::io_uring_turned_off() {
        return;
    }
    let kernel_offers = std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists();
    let m = Mounted::new(1 << 30);
    let dir = m.create_layer("uring", None);
    let served = || m.mount.as_ref().expect("mounted").io_uring_requests();
    // The queues register right after the mount; until every CPU's queue has, the kernel
    // holds requests back.
    assert_eq!(m.over_io_uring(), kernel_offers, "io_uring served {} requests", served());
    if !kernel_offers {
        support::kernel_lacks("FUSE over io_uring; /dev/fuse served everything");
        return;
    }
    let before = served();
    assert!(before > 0, "no request arrived over io_uring");
    fs::create_dir(dir.join("d")).expect("mkdir");
    for i in 0..50 {
        fs::write(dir.join("d").join(format!("f{i}")), vec![i as u8; 70_000]).expect("write");
    }
    let names: Vec<_> = fs::read_dir(dir.join("d")).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 50);
    fs::rename(dir.join("d/f1"), dir.join("d/renamed")).expect("rename");
    std::os::unix::fs::symlink("renamed", dir.join("d/link")).expect("symlink");
    assert_eq!(fs::read_link(dir.join("d/link")).expect("readlink"), std::path::Path::new("renamed"));
    xattr_set(&dir.join("d/f2"), "user.k", b"v");
    assert_eq!(xattr_get(&dir.join("d/f2"), "user.k").as_deref(), Some(&b"v"[..]));
    m.mount.as_ref().expect("mounted").flush_layer("uring").expect("sync");
    for i in 2..50 {
        assert_eq!(fs::read(dir.join("d").join(format!("f{i}"))).expect("read"), vec![i as u8; 70_000]);
    }
    fs::remove_file(dir.join("d/link")).expect("unlink");
    assert!(served() > before + 100, "only {} requests over io_uring", served() - before);
}
