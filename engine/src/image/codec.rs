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
    /// zstd saved enough: the frame (see [`ChunkEncoder::compress`]).
    Zstd(Vec<u8>),
    /// Store the input bytes as they are.
    Raw,
}

/// Per-thread chunk encoder.
pub struct ChunkEncoder {
    level: i32,
    comp: zstd::bulk::Compressor<'static>,
    frame: Vec<u8>,
    zero_hashes: HashMap<usize, [u8; 32]>,
}

/// A chunk is classified in parts of this size before it is compressed.
/// 64 KiB is the allocation grain of the file systems that fill disks
/// (ext4 and XFS extents, NTFS clusters of large volumes are smaller), so a
/// part is usually all one file's data, or all free space.
const PART: usize = 64 * 1024;
/// Bytes of each part whose byte histogram decides whether it is noise.
const SAMPLE: usize = 4096;
/// Sampled byte entropy (bits per byte) from which a part is taken as
/// incompressible. A 4 KiB sample of random bytes measures about 7.95; text,
/// code and file-system metadata measure 6.5 and below.
const NOISE_BITS: f64 = 7.6;
/// Largest block of a zstd frame (RFC 8878 §3.1.1.2.4).
const ZSTD_BLOCK_MAX: usize = 128 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Zero,
    Noise,
    Data,
}

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
        let comp = zstd::bulk::Compressor::new(level)
            .map_err(|e| ImageError::InvalidParameter(format!("zstd level {level}: {e}")))?;
        Ok(ChunkEncoder {
            level,
            comp,
            frame: Vec::new(),
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
    ///
    /// The chunk is cut into 64 KiB parts, each classed as zeros, noise
    /// (sampled byte entropy near 8 bits: compressed or encrypted data) or
    /// data. Runs of like parts become one zstd frame each, back to back:
    /// data runs compressed at the encoder's level, zero runs as RLE blocks
    /// and noise runs as raw blocks, both written directly (see
    /// [`stored_frame`]). A zstd decoder decodes concatenated frames as one
    /// stream (RFC 8878 §3.1), so the chunk still decodes with one call; zstd
    /// itself never spends time searching noise or zeros for matches.
    pub fn compress(&mut self, chunk: &[u8]) -> EncodedChunk {
        let parts: Vec<Part> = chunk.chunks(PART).map(classify).collect();
        if parts.iter().all(|&p| p == Part::Noise) {
            return EncodedChunk::Raw;
        }
        let limit = (chunk.len() as f64 * (1.0 - RAW_THRESHOLD)) as usize;
        self.frame.clear();
        let mut at = 0;
        for run in parts.chunk_by(|a, b| a == b) {
            let end = (at + run.len() * PART).min(chunk.len());
            let bytes = &chunk[at..end];
            at = end;
            match run[0] {
                Part::Zero => stored_frame(&mut self.frame, Stored::Rle(0, bytes.len())),
                Part::Noise => stored_frame(&mut self.frame, Stored::Raw(bytes)),
                Part::Data => {
                    // Straight into the frame, after what is there.
                    let at = self.frame.len();
                    self.frame
                        .reserve(zstd::zstd_safe::compress_bound(bytes.len()));
                    let mut out = std::io::Cursor::new(&mut self.frame);
                    out.set_position(at as u64);
                    if self.comp.compress_to_buffer(bytes, &mut out).is_err() {
                        return EncodedChunk::Raw;
                    }
                }
            }
            if self.frame.len() >= limit {
                return EncodedChunk::Raw;
            }
        }
        EncodedChunk::Zstd(self.frame.clone())
    }
}

/// Zeros, noise or data (see [`ChunkEncoder::compress`]).
fn classify(part: &[u8]) -> Part {
    if is_zero(part) {
        return Part::Zero;
    }
    // Both ends: a part where a file's compressed data gives way to text
    // (or the reverse) is data, not stored raw for its noisy half.
    let head = &part[..part.len().min(SAMPLE)];
    let tail = &part[part.len().saturating_sub(SAMPLE)..];
    if is_noise(head) && is_noise(tail) {
        Part::Noise
    } else {
        Part::Data
    }
}

/// Whether a full sample's byte entropy says incompressible.
fn is_noise(sample: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let n = sample.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    // Short samples cannot reach high entropy: only judge full ones.
    sample.len() == SAMPLE && bits >= NOISE_BITS
}

/// Content of a frame written without libzstd.
enum Stored<'a> {
    /// Bytes as they are (raw blocks).
    Raw(&'a [u8]),
    /// A byte repeated (RLE blocks).
    Rle(u8, usize),
}

/// Appends one zstd frame (RFC 8878 §3.1.1) of raw or RLE blocks.
///
/// Written by hand because libzstd has no store mode: even its fastest level
/// hashes every position of incompressible input looking for matches, and
/// that search was the largest cost of capturing disks that hold compressed
/// files. The frame format for these two block types is a few fixed fields.
fn stored_frame(out: &mut Vec<u8>, content: Stored<'_>) {
    let len = match content {
        Stored::Raw(b) => b.len(),
        Stored::Rle(_, n) => n,
    };
    debug_assert!(len > 0 && len <= u32::MAX as usize);
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: 4-byte content size, single segment (so the
    // window is the content size and no window descriptor follows), no
    // checksum (the chunk has its BLAKE3), no dictionary.
    out.push(0b1010_0000);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZSTD_BLOCK_MAX);
        let last = u32::from(done + n == len);
        let kind = match content {
            Stored::Raw(_) => 0u32,
            Stored::Rle(..) => 1,
        };
        let header = (n as u32) << 3 | kind << 1 | last;
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        match content {
            Stored::Raw(b) => out.extend_from_slice(&b[done..done + n]),
            Stored::Rle(byte, _) => out.push(byte),
        }
        done += n;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, mut s: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        b"systemd[1]: Started the rack disk image 0x7f3a\n"
            .iter()
            .copied()
            .cycle()
            .take(n)
            .collect()
    }

    #[test]
    fn stored_frames_decode_with_libzstd() {
        for len in [
            1,
            4095,
            ZSTD_BLOCK_MAX,
            ZSTD_BLOCK_MAX + 1,
            3 * ZSTD_BLOCK_MAX + 7,
        ] {
            let data = noise(len, len as u64 + 1);
            let mut f = Vec::new();
            stored_frame(&mut f, Stored::Raw(&data));
            assert_eq!(zstd::bulk::decompress(&f, len).unwrap(), data, "raw {len}");
            let mut f = Vec::new();
            stored_frame(&mut f, Stored::Rle(0xAB, len));
            assert_eq!(
                zstd::bulk::decompress(&f, len).unwrap(),
                vec![0xAB; len],
                "rle {len}"
            );
            assert!(f.len() < 32, "RLE of {len} bytes took {} bytes", f.len());
        }
    }

    #[test]
    fn mixed_chunk_is_split_into_frames_and_decodes_whole() {
        // text | zeros | noise | text, on part boundaries and off them.
        let mut chunk = text(3 * PART + 100);
        chunk.extend(vec![0u8; 5 * PART]);
        chunk.extend(noise(4 * PART, 7));
        chunk.extend(text(2 * PART - 100));
        let mut enc = ChunkEncoder::new(3).unwrap();
        let EncodedChunk::Zstd(frame) = enc.compress(&chunk) else {
            panic!("a chunk that is two-thirds text and zeros must compress");
        };
        // The noise is stored, not squeezed: the frame holds it whole.
        assert!(
            frame.len() > 4 * PART && frame.len() < 5 * PART,
            "{}",
            frame.len()
        );
        assert!(zstd::bulk::decompress(&frame, chunk.len()).unwrap() == chunk);
    }

    #[test]
    fn noise_is_raw_and_text_is_zstd() {
        let mut enc = ChunkEncoder::new(3).unwrap();
        assert!(matches!(
            enc.compress(&noise(1 << 20, 3)),
            EncodedChunk::Raw
        ));
        assert!(matches!(
            enc.compress(&text(1 << 20)),
            EncodedChunk::Zstd(_)
        ));
        // Mostly noise with a little text: not worth a frame.
        let mut c = noise(1 << 20, 5);
        c[..1000].copy_from_slice(&text(1000));
        assert!(matches!(enc.compress(&c), EncodedChunk::Raw));
    }

    #[test]
    fn a_part_where_noise_gives_way_to_text_is_compressed() {
        // 40 KiB of noise then 24 KiB of text: its first 4 KiB look like
        // noise, its last like text.
        let mut part = noise(PART, 9);
        part[40 << 10..].copy_from_slice(&text(24 << 10));
        assert_eq!(classify(&part), Part::Data);
        assert_eq!(classify(&noise(PART, 10)), Part::Noise);
        let mut enc = ChunkEncoder::new(3).unwrap();
        let EncodedChunk::Zstd(f) = enc.compress(&part) else {
            panic!("stored raw");
        };
        assert!(f.len() < (41 << 10), "{} bytes", f.len());
    }
}
