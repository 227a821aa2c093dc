//! The writer refuses targets it must not write: too small, or mounted.

use std::process::Command;
use std::sync::Arc;

use rackcast_writer::{DiskWriter, EngineChoice, WriterError};

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
