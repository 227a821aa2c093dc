//! Encoding a chunk for the image (zero detection, hashing, zstd or raw) and
//! decoding it back with every check. One encoder or decoder per thread: each
//! owns its zstd context.

use std::collections::HashMap;

use super::error::{ImageError, Result};
use super::index::{ChunkData, ChunkIndex};
use super::RAW_THRESHOLD;

/// How an encoder decided to store a chunk.
#[derive(Debug)]
pub enum EncodedChunk {
    /// Every byte is zero.
    Zero,
    /// zstd saved enough: the frame.
    Zstd(Vec<u8>),
    /// Store the input bytes as they are.
    Raw,
}

/// Per-thread chunk encoder.
pub struct ChunkEncoder {
    level: i32,
    comp: zstd::bulk::Compressor<'static>,
    probe: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
    zero_hashes: HashMap<usize, [u8; 32]>,
}

/// Size of each sample the encoder compresses to guess whether a chunk is
/// worth compressing at all.
const PROBE_LEN: usize = 16 * 1024;

impl ChunkEncoder {
    /// A new encoder at zstd `level` (1..=19, or negative fast levels).
    pub fn new(level: i32) -> Result<ChunkEncoder> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) || level == 0 {
            return Err(ImageError::InvalidParameter(format!(
                "zstd level {level} is outside {}..={} (0 is not allowed)",
                range.start(),
                range.end()
            )));
        }
        let make = |l| {
            zstd::bulk::Compressor::new(l)
                .map_err(|e| ImageError::InvalidParameter(format!("zstd level {l}: {e}")))
        };
        Ok(ChunkEncoder {
            level,
            comp: make(level)?,
            probe: make(1)?,
            scratch: Vec::new(),
            zero_hashes: HashMap::new(),
        })
    }

    /// The zstd level.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// BLAKE3 of `len` zero bytes (cached).
    pub fn zero_hash(&mut self, len: usize) -> [u8; 32] {
        *self
            .zero_hashes
            .entry(len)
            .or_insert_with(|| zero_hash(len))
    }

    /// Hashes a chunk's canonical bytes and picks how to store it.
    pub fn encode(&mut self, chunk: &[u8]) -> ([u8; 32], EncodedChunk) {
        if is_zero(chunk) {
            return (self.zero_hash(chunk.len()), EncodedChunk::Zero);
        }
        let hash = *blake3::hash(chunk).as_bytes();
        (hash, self.compress(chunk))
    }

    /// Picks zstd or raw for a chunk known not to be all zeros.
    pub fn compress(&mut self, chunk: &[u8]) -> EncodedChunk {
        if self.looks_incompressible(chunk) {
            return EncodedChunk::Raw;
        }
        let bound = zstd::zstd_safe::compress_bound(chunk.len());
        self.scratch.clear();
        self.scratch.reserve(bound);
        match self.comp.compress_to_buffer(chunk, &mut self.scratch) {
            Ok(n) if (n as f64) < chunk.len() as f64 * (1.0 - RAW_THRESHOLD) => {
                EncodedChunk::Zstd(self.scratch[..n].to_vec())
            }
            _ => EncodedChunk::Raw,
        }
    }

    /// Compresses three small samples at the fastest level: when none of them
    /// shrinks, the whole chunk is almost surely incompressible (encrypted,
    /// already compressed) and a full pass would only burn CPU.
    fn looks_incompressible(&mut self, chunk: &[u8]) -> bool {
        if chunk.len() < 8 * PROBE_LEN {
            return false;
        }
        let mid = chunk.len() / 2 - PROBE_LEN / 2;
        let end = chunk.len() - PROBE_LEN;
        [0, mid, end].iter().all(|&at| {
            let sample = &chunk[at..at + PROBE_LEN];
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(PROBE_LEN));
            match self.probe.compress_to_buffer(sample, &mut self.scratch) {
                Ok(n) => n as f64 >= PROBE_LEN as f64 * (1.0 - RAW_THRESHOLD / 2.0),
                Err(_) => false,
            }
        })
    }
}

/// Per-thread chunk decoder: checks the frame hash, decompresses and checks
/// the content hash. Nothing it returns is unchecked.
pub struct ChunkDecoder {
    dec: zstd::bulk::Decompressor<'static>,
}

impl std::fmt::Debug for ChunkEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkEncoder")
            .field("level", &self.level)
            .finish()
    }
}

impl std::fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkDecoder").finish_non_exhaustive()
    }
}

impl ChunkDecoder {
    /// A new decoder.
    pub fn new() -> ChunkDecoder {
        ChunkDecoder {
            dec: zstd::bulk::Decompressor::new().expect("zstd decompression context"),
        }
    }

    /// Decodes chunk `i` of `index` from `frame` into `out` (cleared first).
    ///
    /// For a duplicate chunk, `frame` is the frame of the chunk it duplicates.
    /// Zero chunks need no frame (pass an empty slice). Absent chunks decode to
    /// nothing: callers must not write them.
    pub fn decode(
        &mut self,
        index: &ChunkIndex,
        i: u64,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let entry = &index.entries[i as usize];
        let len = index.chunk_len(i);
        let disk_offset = index.disk_offset(i);
        out.clear();
        let stored = match entry.data {
            ChunkData::Absent => return Ok(()),
            ChunkData::Zero => {
                out.resize(len, 0);
                None
            }
            ChunkData::Duplicate { of } => Some((index.entries[of as usize].data, of)),
            d => Some((d, i)),
        };
        let mut image_offset = 0;
        if let Some((data, from)) = stored {
            let f = *data.frame().ok_or_else(|| ImageError::CorruptChunk {
                chunk: i,
                disk_offset,
                image_offset: 0,
                detail: format!("refers to chunk {from}, which has no frame"),
            })?;
            image_offset = f.offset;
            let bad = |detail: String| ImageError::CorruptChunk {
                chunk: i,
                disk_offset,
                image_offset: f.offset,
                detail,
            };
            if frame.len() != f.len as usize {
                return Err(bad(format!(
                    "frame is {} bytes, the index says {}",
                    frame.len(),
                    f.len
                )));
            }
            if *blake3::hash(frame).as_bytes() != f.hash {
                return Err(bad("frame bytes do not match their BLAKE3 hash".into()));
            }
            match data {
                ChunkData::Raw(_) => out.extend_from_slice(frame),
                _ => {
                    out.reserve(len);
                    let n = self
                        .dec
                        .decompress_to_buffer(frame, out)
                        .map_err(|e| bad(format!("zstd frame does not decompress: {e}")))?;
                    if n != len {
                        return Err(bad(format!("decompressed to {n} bytes, expected {len}")));
                    }
                }
            }
        }
        if *blake3::hash(out).as_bytes() != entry.hash {
            return Err(ImageError::CorruptChunk {
                chunk: i,
                disk_offset,
                image_offset,
                detail: "content does not match the chunk's BLAKE3 hash".into(),
            });
        }
        Ok(())
    }
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether every byte is zero. Checks 4 KiB at a time so the inner loop
/// vectorises and a non-zero chunk exits early.
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// BLAKE3 of `len` zero bytes.
pub fn zero_hash(len: usize) -> [u8; 32] {
    let zeros = [0u8; 64 * 1024];
    let mut h = blake3::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        h.update(&zeros[..n]);
        left -= n;
    }
    *h.finalize().as_bytes()
}
