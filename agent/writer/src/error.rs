//! Errors of the disk writer and the restore pipeline.

use std::path::PathBuf;

use rackcast_engine::image::ImageError;

/// Everything that can go wrong writing an image to a target.
///
/// Variants carry the target path and disk offsets so that an operator can
/// tell exactly which bytes of which disk are in question.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The image could not be read or a chunk failed its checks (the chunk
    /// was not written).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An I/O error on the target or a state file, with what we were doing.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("opening", "flushing", ...).
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A write to the target failed.
    #[error("writing {len} bytes at disk offset {offset} of {path}: {source}")]
    Write {
        /// The target.
        path: PathBuf,
        /// Disk offset of the failed write.
        offset: u64,
        /// Its length.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// A read of the target (delta scan or read-back) failed.
    #[error("reading {len} bytes at disk offset {offset} of {path}: {source}")]
    Read {
        /// The target.
        path: PathBuf,
        /// Disk offset of the failed read.
        offset: u64,
        /// Its length.
        len: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The NoCloud seed could not be written (no GPT, no free space).
    #[error("the NoCloud seed: {0}")]
    Seed(String),
    /// Moving the GPT or growing the last partition failed (or cannot be
    /// done: an unknown filesystem, a target too small for the table).
    #[error("growing: {0}")]
    Grow(String),
    /// The target cannot hold the image.
    #[error("target {path} is {size} bytes, smaller than the image's minimum target size of {min} bytes")]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image's minimum target size.
        min: u64,
    },
    /// The target block device (or one of its partitions) is mounted.
    #[error("{path} is mounted ({device} {dev} on {mount_point}); refusing to write it (pass --force to override)")]
    Mounted {
        /// The target.
        path: PathBuf,
        /// The mounted device, as major:minor.
        dev: String,
        /// Its name ("the target" or the partition).
        device: String,
        /// Where it is mounted.
        mount_point: String,
    },
    /// The target block device is held by the kernel or another program:
    /// an exclusive open (O_EXCL) failed with EBUSY. This catches what
    /// `/proc/self/mountinfo` cannot show (an LVM physical volume, an md
    /// member, active swap, a mount in another namespace, another imager)
    /// and works when that file cannot be read at all.
    #[error("{path} is in use (mounted, an LVM physical volume, an md RAID member, active swap, or held open exclusively by another program); refusing to write it: {source}")]
    InUse {
        /// The target.
        path: PathBuf,
        /// The open's error (EBUSY).
        source: std::io::Error,
    },
    /// Flushing the target (fdatasync, then BLKFLSBUF on a device) failed.
    /// Linux reports a writeback error once and may drop the dirty pages it
    /// could not write, so a later flush that succeeds proves nothing: the
    /// writer marks nothing durable from then on, and it discarded the
    /// resume bitmap so that a rerun rewrites every chunk.
    #[error("flushing {path} failed: {source}; what was written since the last good flush may not be on disk, so the resume bitmap was discarded and a rerun rewrites every chunk")]
    FlushFailed {
        /// The target.
        path: PathBuf,
        /// The flush's error (the first one, on every later call too).
        source: std::io::Error,
    },
    /// The target is neither a regular file nor a block device.
    #[error("{path} is neither a regular file nor a block device")]
    NotATarget {
        /// The path.
        path: PathBuf,
    },
    /// io_uring was asked for and could not be set up.
    #[error("io_uring {step} failed for {path}: {source}")]
    Uring {
        /// The target.
        path: PathBuf,
        /// Which part of the setup failed.
        step: crate::writer::UringSetupStep,
        /// The OS error.
        source: std::io::Error,
    },
    /// Read-back verification still found bad chunks after every retry.
    #[error("read-back verification of {path} failed after {attempts} attempts: chunks at disk offsets {}", fmt_offsets(.offsets))]
    VerifyFailed {
        /// The target.
        path: PathBuf,
        /// How many times the chunks were written.
        attempts: u32,
        /// Disk offsets (start..end) of the chunks that still do not match.
        offsets: Vec<(u64, u64)>,
    },
    /// A chunk number outside the image, or a payload of the wrong length.
    #[error("chunk {chunk}: {detail}")]
    BadChunk {
        /// The chunk number.
        chunk: u64,
        /// What was wrong.
        detail: String,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A decode worker thread died.
    #[error("a decode worker stopped unexpectedly")]
    WorkerGone,
}

impl WriterError {
    /// Wraps an I/O error with context.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WriterError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

fn fmt_offsets(offsets: &[(u64, u64)]) -> String {
    offsets
        .iter()
        .map(|(s, e)| format!("{s}..{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Result alias for the writer.
pub type Result<T, E = WriterError> = std::result::Result<T, E>;
