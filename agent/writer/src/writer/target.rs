//! Opening a restore target: what it is, how big, how writes must be aligned,
//! whether it is safe to write (not mounted or otherwise in use, big enough),
//! and the zeroing and read-back primitives that do not go through an engine.
//!
//! A block device is claimed with an O_EXCL open (without O_CREAT that
//! means an exclusive claim on the device, not file creation): the kernel
//! answers EBUSY while a file system is mounted on it or on one of its
//! partitions, or LVM, md, swap or another exclusive opener holds it,
//! wherever the mount lives and whether or not `/proc/self/mountinfo` is
//! readable. The mountinfo check stays in front of it only to name the
//! mount point. The claim is a descriptor of its own, held as long as the
//! target: the write descriptor is shared with an io_uring ring, which the
//! kernel tears down asynchronously, and a claim riding on it would outlive
//! the writer and refuse the next one.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FallocateFlags, StatxFlags};

use super::buffer::AlignedBuf;
use super::sys;
use crate::error::{Result, WriterError};

/// An open restore target.
#[derive(Debug)]
pub(crate) struct Target {
    pub path: PathBuf,
    /// Read-write descriptor, O_DIRECT where the file system allows.
    pub file: File,
    pub is_block: bool,
    pub size: u64,
    /// Direct-I/O offset and length alignment.
    pub align: usize,
    /// Whether writes bypass the page cache.
    pub direct: bool,
    /// We created the file: every byte reads as zero until written.
    pub created: bool,
    /// major:minor of a block device.
    pub dev: Option<(u32, u32)>,
    /// The exclusive (O_EXCL) descriptor that keeps a block device ours;
    /// never read, closed with the target.
    _claim: Option<File>,
}

impl Target {
    /// Opens `path` (creating a missing file, growing a file to `want_len`),
    /// checks size and mounts, and claims a block device exclusively; `force`
    /// skips the mount check and the exclusive claim.
    pub fn open(path: &Path, want_len: u64, min_size: u64, force: bool) -> Result<Target> {
        let existed = path.exists();
        let meta = existed
            .then(|| std::fs::metadata(path))
            .transpose()
            .map_err(|e| WriterError::io("examining", path, e))?;
        let is_block = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &meta {
            if !is_block && !m.is_file() {
                return Err(WriterError::NotATarget { path: path.into() });
            }
        }
        let dev = meta.as_ref().filter(|_| is_block).map(|m| {
            let rdev = m.rdev();
            (libc::major(rdev), libc::minor(rdev))
        });
        if let (Some(d), false) = (dev, force) {
            check_not_mounted(path, d)?;
        }
        // Only a device is claimed: O_EXCL on a regular file without O_CREAT
        // means nothing, and a file target may be created below.
        let claim = (is_block && !force).then(|| claim(path)).transpose()?;
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true).create(!is_block).truncate(false);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            // Some file systems refuse O_DIRECT: fall back to the page cache
            // (the final fdatasync still makes the data durable).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
                open(false).map_err(|e| WriterError::io("opening", path, e))?,
                false,
            ),
            Err(e) => return Err(WriterError::io("opening", path, e)),
        };
        let mut size = if is_block {
            use std::io::Seek;
            (&file)
                .seek(io::SeekFrom::End(0))
                .map_err(|e| WriterError::io("sizing", path, e))?
        } else {
            file.metadata()
                .map_err(|e| WriterError::io("examining", path, e))?
                .len()
        };
        if is_block && size < min_size {
            return Err(WriterError::TargetTooSmall {
                path: path.into(),
                size,
                min: min_size,
            });
        }
        if !is_block && size < want_len {
            file.set_len(want_len)
                .map_err(|e| WriterError::io("extending", path, e))?;
            size = want_len;
        }
        let align = if is_block {
            rustix::fs::ioctl_blksszget(&file).map_or(512, |n| n as usize)
        } else {
            file_dio_align(&file).unwrap_or(4096)
        };
        Ok(Target {
            path: path.into(),
            file,
            is_block,
            size,
            align: align.clamp(512, 4096),
            direct,
            created: !existed,
            dev,
            _claim: claim,
        })
    }

    /// Physical sector size (block devices) for reporting.
    pub fn physical_sector(&self) -> usize {
        if self.is_block {
            rustix::fs::ioctl_blkpbszget(&self.file).map_or(self.align, |n| n as usize)
        } else {
            self.align
        }
    }

    /// Makes `offset..offset+len` (aligned) read as zeros without writing
    /// data: BLKZEROOUT on block devices, a punched hole (or zero range) on
    /// files. Err when the target cannot, and the caller writes zeros.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_block {
            return sys::blk_zero_out(&self.file, offset, len);
        }
        let keep = FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.file, FallocateFlags::PUNCH_HOLE | keep, offset, len)
            .or_else(|_| {
                rustix::fs::fallocate(&self.file, FallocateFlags::ZERO_RANGE | keep, offset, len)
            })
            .map_err(io::Error::from)
    }

    /// Reads `len` bytes at the aligned `offset` into `buf` through `file`.
    pub fn read_into(
        &self,
        file: &File,
        offset: u64,
        len: usize,
        buf: &mut AlignedBuf,
    ) -> Result<()> {
        read_aligned(file, &self.path, self.align, offset, len, buf)
    }

    /// Another descriptor on the target for readers on other threads.
    pub fn reader(&self) -> Result<File> {
        let mut o = OpenOptions::new();
        o.read(true);
        if self.direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(&self.path)
            .map_err(|e| WriterError::io("opening for read-back", &self.path, e))
    }

    /// Makes everything written durable: fdatasync, and on block devices a
    /// buffer-cache flush so later buffered readers see the new bytes. An
    /// error here may mean data is lost for good (the kernel can drop pages
    /// it failed to write back), so the writer trusts no later flush of this
    /// descriptor after one failed.
    pub fn flush(&self) -> io::Result<()> {
        rustix::fs::fdatasync(&self.file)?;
        if self.is_block {
            sys::blk_flush_buffers(&self.file)?;
        }
        Ok(())
    }
}

/// Claims block device `path` for this process: an exclusive open, refused
/// with EBUSY while anything else holds the device.
fn claim(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => WriterError::InUse {
                path: path.into(),
                source: e,
            },
            _ => WriterError::io("claiming", path, e),
        })
}

/// Reads `len` bytes at the aligned `offset` of `file` into `buf`, rounding
/// the read up to `align` as O_DIRECT requires; bytes past the end of the
/// target read as zeros.
pub(crate) fn read_aligned(
    file: &File,
    path: &Path,
    align: usize,
    offset: u64,
    len: usize,
    buf: &mut AlignedBuf,
) -> Result<()> {
    let span = len.div_ceil(align) * align;
    let full = buf.full_mut();
    let mut got = 0;
    while got < span {
        match file.read_at(&mut full[got..span], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(WriterError::Read {
                    path: path.into(),
                    offset,
                    len,
                    source: e,
                })
            }
        }
    }
    full[got.min(span)..span].fill(0);
    buf.fill(len);
    Ok(())
}

/// Opens `path` read-only for read-back: (descriptor, alignment, size).
pub(crate) fn open_reader(path: &Path) -> Result<(File, usize, u64)> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    let file = open(true)
        .or_else(|_| open(false))
        .map_err(|e| WriterError::io("opening", path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| WriterError::io("examining", path, e))?;
    if meta.file_type().is_block_device() {
        use std::io::Seek;
        let size = (&file)
            .seek(io::SeekFrom::End(0))
            .map_err(|e| WriterError::io("sizing", path, e))?;
        let align = rustix::fs::ioctl_blksszget(&file).map_or(512, |n| n as usize);
        Ok((file, align.clamp(512, 4096), size))
    } else {
        let align = file_dio_align(&file).unwrap_or(4096);
        Ok((file, align.clamp(512, 4096), meta.len()))
    }
}

/// STATX_DIOALIGN: the file system's direct-I/O offset alignment (Linux 6.1+).
fn file_dio_align(file: &File) -> Option<usize> {
    let st = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    let have = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN);
    (have && st.stx_dio_offset_align > 0).then_some(st.stx_dio_offset_align as usize)
}

/// Refuses a block device that is mounted, or whose partitions are.
fn check_not_mounted(path: &Path, dev: (u32, u32)) -> Result<()> {
    let mut devs: BTreeSet<(u32, u32)> = BTreeSet::from([dev]);
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = std::fs::read_to_string(p.join("dev"))
                    .ok()
                    .and_then(|s| parse_dev(s.trim()))
                {
                    devs.insert(d);
                }
            }
        }
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(d), Some(mp)) = (f.get(2).and_then(|s| parse_dev(s)), f.get(4)) else {
            continue;
        };
        if devs.contains(&d) {
            return Err(WriterError::Mounted {
                path: path.into(),
                dev: format!("{}:{}", d.0, d.1),
                device: if d == dev {
                    "device".into()
                } else {
                    "partition".into()
                },
                mount_point: mp.to_string(),
            });
        }
    }
    Ok(())
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}
