//! Errors of the image format, capture, verification and restore.

use std::path::PathBuf;

/// Everything that can go wrong reading, writing or checking an image.
///
/// Corruption variants carry the chunk and the byte offset so that an operator
/// can tell exactly what is damaged.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A partition of the capture source is mounted.
    #[error("{device} is mounted {} at {mount_point}: {}", if *read_write { "read-write" } else { "read-only" }, if *read_write { "unmount it first (an image of a filesystem in use is not consistent)" } else { "unmount it, or capture anyway with --allow-mounted" })]
    Mounted {
        /// The mounted device.
        device: String,
        /// Where.
        mount_point: String,
        /// Read-write (always refused) or read-only.
        read_write: bool,
    },
    /// An I/O error, with what we were doing and on which path.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing", ...).
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with the rackcast image magic.
    #[error("not a rackcast image: bad magic {found:02x?} at byte offset {offset}")]
    BadMagic {
        /// Byte offset of the magic that did not match.
        offset: u64,
        /// The bytes found there.
        found: Vec<u8>,
    },
    /// The image was written by a format version this build does not read.
    #[error("unsupported image format version {found} in the {part} at byte offset {offset} (this rackcast reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// "header", "index" or "trailer".
        part: &'static str,
        /// The version found.
        found: u16,
        /// The newest version this build reads.
        supported: u16,
        /// Byte offset of the version field.
        offset: u64,
    },
    /// The file is shorter than its own structure says.
    #[error("truncated image: {detail}")]
    Truncated {
        /// What was missing.
        detail: String,
    },
    /// A fixed-size structure (header or trailer) fails its checksum.
    #[error("corrupt {part} at byte offset {offset}: {detail}")]
    CorruptStructure {
        /// "header" or "trailer".
        part: &'static str,
        /// Byte offset of the structure.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// The index (chunk table + metadata) does not parse.
    #[error("corrupt index at byte offset {offset}: {detail}")]
    CorruptIndex {
        /// Byte offset in the image file where parsing failed.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// The index does not hash to the root recorded in the trailer.
    #[error("index at byte offset {offset} ({len} bytes) does not match the image root: expected {expected}, computed {computed}")]
    RootMismatch {
        /// Byte offset of the index.
        offset: u64,
        /// Length of the index.
        len: u64,
        /// Root recorded in the trailer.
        expected: String,
        /// Root computed over the index.
        computed: String,
    },
    /// A chunk frame is damaged: its bytes, its decompression or its content
    /// hash do not match the index.
    #[error(
        "chunk {chunk} (disk offset {disk_offset}, image byte offset {image_offset}): {detail}"
    )]
    CorruptChunk {
        /// Chunk number.
        chunk: u64,
        /// Where the chunk belongs on the disk.
        disk_offset: u64,
        /// Where its frame starts in the image file.
        image_offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// The signature is missing, malformed or does not verify.
    #[error("signature check failed: {0}")]
    Signature(String),
    /// A key file could not be used.
    #[error("key file {path}: {detail}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A parameter is out of range (chunk size, level, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// The restore target cannot hold the image.
    #[error("target {path} is {size} bytes, smaller than the image's minimum target size of {min} bytes")]
    TargetTooSmall {
        /// The target.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The image's minimum target size.
        min: u64,
    },
    /// The caller cancelled the work (nothing half-written is left).
    #[error("cancelled after {done} of {total} bytes")]
    Cancelled {
        /// Bytes done when it stopped.
        done: u64,
        /// Bytes it had to do.
        total: u64,
    },
}

impl ImageError {
    /// Wraps an I/O error with context.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the image module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
