//! The writer refuses targets it must not write: too small, mounted, or held
//! by someone else (an exclusive open, a mount `/proc/self/mountinfo` does
//! not show).

use std::fs::OpenOptions;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rackcast_writer::{restore, DiskWriter, EngineChoice, WriterError};

use crate::common::*;

#[test]
fn target_smaller_than_the_image_is_refused() {
    let f = Fixture::new(4 << 20, 256 * 1024, 61);
    let Some(lo) = LoopDev::new(&f.path("small.bin"), 2 << 20) else {
        return;
    };
    let r = f.reader();
    let cfg = writer_config(EngineChoice::Auto, f.dir.path());
    let err = DiskWriter::open(&lo.dev, Arc::new(r.index().clone()), r.root(), &cfg)
        .expect_err("a 2 MiB device accepted a 4 MiB image");
    match err {
        WriterError::TargetTooSmall { size, min, .. } => {
            assert_eq!(size, 2 << 20);
            assert_eq!(min, r.index().meta.min_target_size);
        }
        e => panic!("expected TargetTooSmall, got {e}"),
    }
}

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn mounted_block_device_is_refused_without_force() {
    let f = Fixture::new(4 << 20, 256 * 1024, 62);
    let Some(lo) = LoopDev::new(&f.path("fs.bin"), 16 << 20) else {
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.dev)
        .status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("skipping mount test: mkfs.ext4 unavailable");
        return;
    }
    let mnt = f.path("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let st = Command::new("mount")
        .arg(&lo.dev)
        .arg(&mnt)
        .status()
        .expect("mount");
    if !st.success() {
        eprintln!("skipping mount test: mount failed (no permission in this container?)");
        return;
    }
    let _m = Mount(mnt.clone());
    let r = f.reader();
    let mut cfg = writer_config(EngineChoice::Auto, f.dir.path());
    let err = DiskWriter::open(&lo.dev, Arc::new(r.index().clone()), r.root(), &cfg)
        .expect_err("a mounted device was opened for writing");
    match err {
        WriterError::Mounted { mount_point, .. } => assert_eq!(mount_point, mnt.to_string_lossy()),
        e => panic!("expected Mounted, got {e}"),
    }
    cfg.force = true;
    cfg.resume = false;
    DiskWriter::open(&lo.dev, Arc::new(r.index().clone()), r.root(), &cfg)
        .expect("--force opens a mounted device");
}

/// What LVM, md, swap or another imager does to a disk: open it with
/// O_EXCL. Nothing shows in mountinfo; the writer's own exclusive open is
/// what refuses it, in the writer and in the restore pipeline alike.
#[test]
fn block_device_held_exclusively_by_another_opener_is_refused_as_in_use() {
    let f = Fixture::new(4 << 20, 256 * 1024, 63);
    let Some(lo) = LoopDev::new(&f.path("held.bin"), 8 << 20) else {
        return;
    };
    let holder = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(&lo.dev)
        .expect("hold the device exclusively");
    let r = f.reader();
    let index = Arc::new(r.index().clone());
    let cfg = writer_config(EngineChoice::Auto, f.dir.path());
    let err = DiskWriter::open(&lo.dev, index.clone(), r.root(), &cfg)
        .expect_err("a device held exclusively was opened for writing");
    assert_in_use(&err, &lo.dev);
    let err = restore(
        &r,
        &lo.dev,
        &restore_config(EngineChoice::Auto, f.dir.path()),
        &mut |_| {},
    )
    .expect_err("restore wrote a device held exclusively");
    assert_in_use(&err, &lo.dev);
    drop(holder);
    let w = DiskWriter::open(&lo.dev, index, r.root(), &cfg).expect("the released device opens");
    drop(w);
}

/// A file system mounted in another mount namespace holds the device, but
/// this process's mountinfo does not list it: only the exclusive open sees
/// that the disk is in use.
#[test]
fn device_mounted_where_mountinfo_cannot_see_it_is_refused_as_in_use() {
    let f = Fixture::new(4 << 20, 256 * 1024, 64);
    let Some(lo) = LoopDev::new(&f.path("ns.bin"), 16 << 20) else {
        return;
    };
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.dev)
        .status();
    if !mkfs.is_ok_and(|s| s.success()) {
        eprintln!("skipping namespace mount test: mkfs.ext4 unavailable");
        return;
    }
    let mnt = f.path("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let Some(_ns) = MountElsewhere::mount(&lo.dev, &mnt) else {
        return;
    };
    let rdev = std::fs::metadata(&lo.dev).expect("stat device").rdev();
    let dev = format!(" {}:{} ", libc::major(rdev), libc::minor(rdev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !info.lines().any(|l| l.contains(&dev)),
        "the mount is visible here; the test would not test the exclusive open"
    );
    let r = f.reader();
    let cfg = writer_config(EngineChoice::Auto, f.dir.path());
    let err = DiskWriter::open(&lo.dev, Arc::new(r.index().clone()), r.root(), &cfg)
        .expect_err("a device mounted in another namespace was opened for writing");
    assert_in_use(&err, &lo.dev);
}

fn assert_in_use(err: &WriterError, dev: &Path) {
    match err {
        WriterError::InUse { path, source } => {
            assert_eq!(path, dev);
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY), "cause kept");
            let text = err.to_string();
            assert!(
                text.contains(&dev.display().to_string()) && text.contains("is in use"),
                "error: {text}"
            );
        }
        e => panic!("expected InUse, got {e}"),
    }
}

/// A mount in a mount namespace of its own, kept by a `sleep` in it; the
/// namespace, and with it the mount, goes when the sleep is killed on drop.
struct MountElsewhere(Child);

impl MountElsewhere {
    /// `None` (with the reason printed) where no namespace can be made.
    fn mount(dev: &Path, at: &Path) -> Option<MountElsewhere> {
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount "$0" "$1" && echo mounted && exec sleep 120"#)
            .arg(dev)
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => MountElsewhere(c),
            Err(e) => {
                eprintln!("skipping namespace mount test: unshare: {e}");
                return None;
            }
        };
        let out = child.0.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.trim() == "mounted" => Some(child),
            Ok(_) => {
                eprintln!("skipping namespace mount test: unshare or mount failed");
                None
            }
            Err(_) => panic!("mounting in a new namespace took over 20 s"),
        }
    }
}

impl Drop for MountElsewhere {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
