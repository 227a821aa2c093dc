//! After a restore's chunks are on the target: what the image left out
//! (its unused blocks: kept as they are, zeroed or discarded), the backup
//! GPT moved to the end of a larger target, and with `grow` the last
//! partition and its ext2/3/4 or XFS filesystem extended to fill it.
//!
//! Growing runs the filesystems' own tools on a loop device over the
//! partition (`losetup --offset`): `e2fsck -fy` then `resize2fs` for ext,
//! a temporary mount and `xfs_growfs` for XFS. That needs root, and the
//! tools (e2fsprogs, xfsprogs) on the machine that restores.

use std::fs::OpenOptions;
use std::io::{self, Seek};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use rackcast_engine::image::fs::{fix_gpt, scan_disk, GptFixError};
use rackcast_engine::image::{ChunkData, ChunkIndex};
use rackcast_engine::sched::api::UnusedBlocks;
use rustix::fs::FallocateFlags;

use crate::error::{Result, WriterError};
use crate::writer::sys;

/// The steps after the chunks.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayoutOptions {
    /// The image's unused blocks.
    pub unused: UnusedBlocks,
    /// Extend the last partition (ext2/3/4 or XFS) to the target's end.
    pub grow: bool,
    /// With `grow`, bytes to leave free at the end (rounded to 1 MiB) for a
    /// partition made after, such as a NoCloud seed ([`crate::seed::SEED_ROOM`]).
    pub reserve: u64,
}

/// What they did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutReport {
    /// Bytes zeroed or discarded.
    pub unused_bytes: u64,
    /// The backup GPT was moved to the target's end.
    pub gpt_moved: bool,
    /// The partition grown: its number, filesystem, old and new length.
    pub grown: Option<(u32, String, u64, u64)>,
}

/// Filesystems `grow` can extend.
pub fn growable(fs: Option<&str>) -> bool {
    matches!(fs, Some("ext2" | "ext3" | "ext4" | "xfs"))
}

/// Runs the steps on `dest`, which holds `index`'s image.
pub fn finish_layout(
    index: &ChunkIndex,
    dest: &Path,
    opts: &LayoutOptions,
) -> Result<LayoutReport> {
    let io = |what, e| WriterError::io(what, dest, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dest)
        .map_err(|e| io("opening", e))?;
    let is_block = file
        .metadata()
        .map_err(|e| io("examining", e))?
        .file_type()
        .is_block_device();
    let size = (&file)
        .seek(io::SeekFrom::End(0))
        .map_err(|e| io("sizing", e))?;
    let sector = index.meta.logical_sector_size;
    let mut report = LayoutReport::default();

    // The last partition and its filesystem, checked before anything moves.
    let last = if opts.grow {
        let scan = scan_disk(&file, size, sector).map_err(|e| io("reading", e))?;
        let last = scan.partitions.into_iter().max_by_key(|p| p.start + p.len);
        match last {
            Some(p) if growable(p.fs.as_deref()) => Some(p),
            Some(p) => {
                return Err(WriterError::Grow(format!(
                    "partition {} holds {}: rackcast grows ext2/3/4 and XFS",
                    p.number,
                    p.fs.as_deref().unwrap_or("a filesystem it does not read")
                )))
            }
            None => {
                return Err(WriterError::Grow(
                    "the image has no partition to grow".into(),
                ))
            }
        }
    } else {
        None
    };

    if opts.unused != UnusedBlocks::Keep {
        for r in unused_ranges(index, size) {
            let (off, len) = (r.start, r.end - r.start);
            let done = if is_block {
                match opts.unused {
                    UnusedBlocks::Zero => sys::blk_zero_out(&file, off, len),
                    _ => sys::blk_discard(&file, off, len),
                }
            } else {
                rustix::fs::fallocate(
                    &file,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    off,
                    len,
                )
                .map_err(io::Error::from)
            };
            done.map_err(|e| io("clearing unused blocks of", e))?;
            report.unused_bytes += len;
        }
    }

    let fix = match fix_gpt(&file, size, sector, opts.grow.then_some(opts.reserve)) {
        Ok(f) => f,
        Err(GptFixError::Io(e)) => return Err(io("reading", e)),
        Err(e) => return Err(WriterError::Grow(e.to_string())),
    };
    if let Some(fix) = fix {
        for (off, bytes) in &fix.writes {
            file.write_all_at(bytes, *off)
                .map_err(|e| io("writing the partition table of", e))?;
        }
        file.sync_data().map_err(|e| io("flushing", e))?;
        report.gpt_moved = fix.backup_moved;
        if let (Some(grown), Some(old)) = (fix.grown, last) {
            let fs = old.fs.clone().unwrap_or_default();
            drop(file);
            grow_fs(dest, &fs, grown.start, grown.len)?;
            report.grown = Some((grown.number, fs, old.len, grown.len));
        }
    }
    Ok(report)
}

/// The byte ranges of `index`'s chunks that are not in use, merged, in
/// whole 512-byte sectors and within `size`.
fn unused_ranges(index: &ChunkIndex, size: u64) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    let mut push = |a: u64, b: u64| {
        let (a, b) = (a.div_ceil(512) * 512, (b.min(size) / 512) * 512);
        if a >= b {
            return;
        }
        match out.last_mut() {
            Some(l) if l.end == a => l.end = b,
            _ => out.push(a..b),
        }
    };
    for (i, e) in index.entries.iter().enumerate() {
        let off = index.disk_offset(i as u64);
        let len = index.chunk_len(i as u64);
        if e.data == ChunkData::Absent {
            push(off, off + len as u64);
            continue;
        }
        let mut at = 0usize;
        for r in e.used.used_ranges(len) {
            push(off + at as u64, off + r.start as u64);
            at = r.end;
        }
        push(off + at as u64, off + len as u64);
    }
    out
}

/// Grows the filesystem `fs` in the partition at `start` (`len` bytes) of
/// `dest`, through a loop device over it.
fn grow_fs(dest: &Path, fs: &str, start: u64, len: u64) -> Result<()> {
    // An automation environment carries these as modules, loaded on demand;
    // elsewhere they are loaded or built in, and a failure here shows below.
    let modules: &[&str] = if fs == "xfs" {
        &["loop", "xfs"]
    } else {
        &["loop"]
    };
    for m in modules {
        let _ = Command::new("modprobe")
            .arg("-q")
            .arg(m)
            .stderr(std::process::Stdio::null())
            .status();
    }
    let dev = run(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(format!("--offset={start}"))
        .arg(format!("--sizelimit={len}"))
        .arg(dest))?;
    let dev = Loop(dev.trim().to_string());
    if fs == "xfs" {
        let mnt = Mount::new(&dev.0)?;
        run(Command::new("xfs_growfs").arg(&mnt.0))?;
    } else {
        // e2fsck exits 1 when it fixed something; resize2fs insists on a
        // check after the last mount.
        let status = Command::new("e2fsck")
            .args(["-f", "-y", &dev.0])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| WriterError::Grow(format!("e2fsck (e2fsprogs): {e}")))?;
        if !matches!(status.code(), Some(0 | 1)) {
            return Err(WriterError::Grow(format!("e2fsck {}: {status}", dev.0)));
        }
        run(Command::new("resize2fs").arg(&dev.0))?;
    }
    Ok(())
}

/// Runs a tool, its stdout, or its stderr as the error.
fn run(c: &mut Command) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| WriterError::Grow(format!("{c:?}: {e}")))?;
    if !out.status.success() {
        return Err(WriterError::Grow(format!(
            "{c:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A temporary mount, unmounted (and its directory removed) on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(dev: &str) -> Result<Mount> {
        let dir = std::env::temp_dir().join(format!("rackcast-grow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| WriterError::io("creating", &dir, e))?;
        let m = Mount(dir);
        run(Command::new("mount").arg(dev).arg(&m.0))?;
        Ok(m)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}
