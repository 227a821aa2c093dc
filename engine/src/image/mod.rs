//! The rackcast disk-image format.
//!
//! One seekable file:
//!
//! ```text
//! +--------+-------------------------------+-------+---------+
//! | header | chunk frames (zstd or raw)... | index | trailer |
//! +--------+-------------------------------+-------+---------+
//! ```
//!
//! - [`header`]: 64 fixed bytes: magic, version, chunk size, source size.
//! - frames: one independent frame per stored chunk, back to back; zero,
//!   absent and duplicate chunks cost no frame. Any chunk can be read alone.
//!   A zstd chunk's frame is a zstd stream: one or more zstd frames back to
//!   back (compressed runs, and runs of noise or zeros stored as raw or RLE
//!   blocks), which any zstd decoder decodes in one call.
//! - [`index`]: metadata and one entry per fixed-size logical chunk (kind,
//!   used-block mask, BLAKE3 of the canonical bytes, frame location and hash).
//!   It stands alone: a multicast receiver starts from it.
//! - [`trailer`]: where the index is, the image root (BLAKE3 over the index)
//!   and an optional Ed25519 signature over a context string and the root
//!   (`docs/image-format.md`).
//!
//! Every byte of a finished image is covered by a check: the header and trailer
//! by checksums, the index by the root, and the frames (which tile the space
//! between header and index exactly) by their frame hashes.

mod codec;
mod create;
mod error;
pub mod fs;
pub mod header;
pub mod index;
mod outfile;
mod reader;
mod restore;
mod sign;
mod source;
pub mod trailer;
mod wire;

pub use codec::{ChunkDecoder, ChunkEncoder, EncodedChunk};
pub use create::{create_image, create_image_from, CreateOptions, CreateSummary, ScanReport};
pub use error::{ImageError, Result};
pub use index::{ChunkData, ChunkEntry, ChunkIndex, ChunkKind, FrameRef, Metadata, UsedMask};
pub use reader::{ImageReader, VerifyReport};
pub use restore::{restore_image, RestoreOptions, RestoreSummary};
pub use sign::{public_path, sign_file, ImageSigner, TrustedKey};
pub use source::{mounted_parts, probe_source, MountedPart, SourceInfo};
pub use trailer::{RootSignature, Trailer};

/// The format version this build writes. Version 2 shrank an absent chunk's
/// index entry to its kind byte (version 1 also stored a zero hash and an
/// all-clear mask: 161 bytes, 0.2 MB on an 8 GiB disk of mostly free
/// space). Every part keeps the layout of version 1 otherwise.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// Granularity of the used-block mask.
pub const BLOCK_SIZE: usize = 4096;
/// Smallest chunk size accepted.
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Default chunk size (see `benches/image-vs-peers.sh` and the image bench).
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Default zstd level (see the image bench).
pub const DEFAULT_LEVEL: i32 = 3;
/// A chunk is stored raw when zstd saves less than this fraction (4 KiB of
/// a 4 MiB chunk). Low, because a chunk's frame stores its noise as raw
/// blocks, which decode as fast as a raw chunk: at 3% the capture
/// benchmark's disk kept 0.3 MB more than one zstd stream of the same
/// bytes, all in chunks that zstd shrank by 1-3%.
pub const RAW_THRESHOLD: f64 = 0.001;

/// Checks that a chunk size is a power of two in the accepted range.
pub fn check_chunk_size(n: u64) -> Result<()> {
    if !n.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&n) {
        return Err(ImageError::InvalidParameter(format!(
            "chunk size {n} must be a power of two from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes"
        )));
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Parses hex (either case); `None` if it is not hex of whole bytes.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
