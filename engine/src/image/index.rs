//! The chunk index: metadata plus one entry per logical chunk.
//!
//! The index is self-contained: a receiver that holds only these bytes (and
//! trusts their root, from the trailer or a signature) knows where every chunk
//! goes on the disk and what it must hash to. Layout (all integers LE):
//!
//! ```text
//! magic "RCINDEX\0" | version u16 | flags u16 (0) | reserved u32
//! metadata:
//!   source_size u64 | chunk_size u32 | logical_sector u32 | physical_sector u32
//!   reserved u32 | min_target_size u64 | created_unix u64
//!   tool_version (u16 len + UTF-8) | label count u16 | (key, value) strings
//! chunk_count u64
//! per chunk: kind u8, then (except absent chunks from version 2 on)
//!   mask mode u8 | content BLAKE3 [32]
//!   zstd/raw:  frame offset u64 | frame length u32 | frame BLAKE3 [32]
//!   duplicate: index of the earlier chunk u64
//!   mask mode 1: used-block bitmap, one bit per 4 KiB block, LSB first
//! ```
//!
//! An absent chunk has no used block, so its hash (zero) and mask (all
//! clear) say nothing: version 2 writes its kind byte alone. Version 1
//! indexes are read and re-encoded byte for byte, so their roots hold.

use std::collections::BTreeMap;

use super::error::{ImageError, Result};
use super::wire::{Cursor, Put, Short};
use super::{check_chunk_size, BLOCK_SIZE, FORMAT_VERSION, OLDEST_FORMAT_VERSION};

/// Magic at the start of the index.
pub const INDEX_MAGIC: [u8; 8] = *b"RCINDEX\0";

/// How a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkKind {
    /// Nothing to write: no block of the chunk is in use.
    Absent,
    /// All zeros: written as zeros or holes, costs no frame.
    Zero,
    /// A zstd frame.
    Zstd,
    /// The bytes as they are (zstd saved too little).
    Raw,
    /// Same content as an earlier chunk: costs no frame.
    Duplicate,
}

impl ChunkKind {
    /// All kinds, in wire order.
    pub const ALL: [ChunkKind; 5] = [
        ChunkKind::Absent,
        ChunkKind::Zero,
        ChunkKind::Zstd,
        ChunkKind::Raw,
        ChunkKind::Duplicate,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<ChunkKind> {
        ChunkKind::ALL.get(c as usize).copied()
    }

    /// Lower-case name, as printed by `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            ChunkKind::Absent => "absent",
            ChunkKind::Zero => "zero",
            ChunkKind::Zstd => "zstd",
            ChunkKind::Raw => "raw",
            ChunkKind::Duplicate => "duplicate",
        }
    }
}

/// Where a stored chunk's frame is in the image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef {
    /// Byte offset of the frame in the image file.
    pub offset: u64,
    /// Frame length in bytes.
    pub len: u32,
    /// BLAKE3 of the frame bytes as stored (checked before decompressing, so a
    /// damaged frame is named even where zstd would not notice).
    pub hash: [u8; 32],
}

/// How the chunk's content is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkData {
    /// No used blocks.
    Absent,
    /// All zeros.
    Zero,
    /// Stored in a zstd frame.
    Zstd(FrameRef),
    /// Stored raw.
    Raw(FrameRef),
    /// Same bytes as chunk `of`, which is earlier and stored in a frame.
    Duplicate {
        /// The earlier chunk.
        of: u64,
    },
}

impl ChunkData {
    /// The kind of storage.
    pub fn kind(&self) -> ChunkKind {
        match self {
            ChunkData::Absent => ChunkKind::Absent,
            ChunkData::Zero => ChunkKind::Zero,
            ChunkData::Zstd(_) => ChunkKind::Zstd,
            ChunkData::Raw(_) => ChunkKind::Raw,
            ChunkData::Duplicate { .. } => ChunkKind::Duplicate,
        }
    }

    /// The frame, for kinds that have one.
    pub fn frame(&self) -> Option<&FrameRef> {
        match self {
            ChunkData::Zstd(f) | ChunkData::Raw(f) => Some(f),
            _ => None,
        }
    }
}

/// Which 4 KiB blocks of a chunk are in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsedMask {
    /// Every block (what a raw capture records).
    All,
    /// A bitmap, one bit per block, LSB first; unused blocks are zero in the
    /// canonical chunk bytes and are not written on restore.
    Blocks(Vec<u8>),
}

impl UsedMask {
    /// Whether block `b` is in use.
    pub fn is_used(&self, b: usize) -> bool {
        match self {
            UsedMask::All => true,
            UsedMask::Blocks(m) => m.get(b / 8).is_some_and(|x| x & (1 << (b % 8)) != 0),
        }
    }

    /// Byte ranges (within the chunk of length `len`) that are in use, merged.
    pub fn used_ranges(&self, len: usize) -> Vec<std::ops::Range<usize>> {
        let blocks = len.div_ceil(BLOCK_SIZE);
        let mut out: Vec<std::ops::Range<usize>> = Vec::new();
        for b in 0..blocks {
            if !self.is_used(b) {
                continue;
            }
            let r = b * BLOCK_SIZE..((b + 1) * BLOCK_SIZE).min(len);
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }
}

/// One chunk's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkEntry {
    /// How the content is stored.
    pub data: ChunkData,
    /// BLAKE3 of the canonical chunk bytes (all zero for absent chunks).
    pub hash: [u8; 32],
    /// Used blocks.
    pub used: UsedMask,
}

impl ChunkEntry {
    /// The entry of a chunk of `len` bytes with no used block.
    pub fn absent(len: usize) -> ChunkEntry {
        ChunkEntry {
            data: ChunkData::Absent,
            hash: [0; 32],
            used: UsedMask::Blocks(vec![0; len.div_ceil(BLOCK_SIZE).div_ceil(8)]),
        }
    }
}

/// What the image says about its source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// Size of the captured source in bytes.
    pub source_size: u64,
    /// Logical chunk size in bytes.
    pub chunk_size: u32,
    /// Logical sector size of the source.
    pub logical_sector_size: u32,
    /// Physical sector size of the source.
    pub physical_sector_size: u32,
    /// The smallest target that can hold every used block.
    pub min_target_size: u64,
    /// Capture time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The rackcast version that captured it.
    pub tool_version: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// Metadata plus the chunk table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    /// The format version it is encoded in ([`FORMAT_VERSION`] for new
    /// images; an older one for an index read from an older image).
    pub version: u16,
    /// Image metadata.
    pub meta: Metadata,
    /// One entry per chunk, in disk order.
    pub entries: Vec<ChunkEntry>,
}

impl ChunkIndex {
    /// Number of chunks a source of `source_size` bytes has.
    pub fn chunks_for(source_size: u64, chunk_size: u32) -> u64 {
        source_size.div_ceil(chunk_size as u64)
    }

    /// Byte offset on the disk where chunk `i` starts.
    pub fn disk_offset(&self, i: u64) -> u64 {
        i * self.meta.chunk_size as u64
    }

    /// Length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: u64) -> usize {
        let start = self.disk_offset(i);
        (self.meta.source_size - start).min(self.meta.chunk_size as u64) as usize
    }

    /// The image root: BLAKE3 over the encoded index.
    pub fn root(&self) -> [u8; 32] {
        *blake3::hash(&self.emit()).as_bytes()
    }

    /// Number of chunks of each kind.
    pub fn histogram(&self) -> BTreeMap<ChunkKind, u64> {
        let mut h: BTreeMap<ChunkKind, u64> = ChunkKind::ALL.iter().map(|k| (*k, 0)).collect();
        for e in &self.entries {
            *h.entry(e.data.kind()).or_default() += 1;
        }
        h
    }

    /// Sum of the stored frame lengths.
    pub fn stored_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.data.frame())
            .map(|f| f.len as u64)
            .sum()
    }

    /// Encodes the index.
    pub fn emit(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut v = Vec::with_capacity(128 + self.entries.len() * 90);
        v.put(&INDEX_MAGIC);
        v.put_u16(self.version);
        v.put_u16(0);
        v.put_u32(0);
        v.put_u64(m.source_size);
        v.put_u32(m.chunk_size);
        v.put_u32(m.logical_sector_size);
        v.put_u32(m.physical_sector_size);
        v.put_u32(0);
        v.put_u64(m.min_target_size);
        v.put_u64(m.created_unix);
        put_str(&mut v, &m.tool_version);
        v.put_u16(m.labels.len() as u16);
        for (k, val) in &m.labels {
            put_str(&mut v, k);
            put_str(&mut v, val);
        }
        v.put_u64(self.entries.len() as u64);
        for e in &self.entries {
            v.put_u8(e.data.kind().code());
            if e.data == ChunkData::Absent && self.version >= 2 {
                continue;
            }
            v.put_u8(matches!(e.used, UsedMask::Blocks(_)) as u8);
            v.put(&e.hash);
            match &e.data {
                ChunkData::Zstd(f) | ChunkData::Raw(f) => {
                    v.put_u64(f.offset);
                    v.put_u32(f.len);
                    v.put(&f.hash);
                }
                ChunkData::Duplicate { of } => v.put_u64(*of),
                ChunkData::Absent | ChunkData::Zero => {}
            }
            if let UsedMask::Blocks(b) = &e.used {
                v.put(b);
            }
        }
        v
    }

    /// Decodes and validates an index. `base` is its byte offset in the image
    /// file (for error messages); `frames_end` is where frames must end (the
    /// index offset in a file; `u64::MAX` for a standalone index).
    pub fn parse(buf: &[u8], base: u64, frames_end: u64) -> Result<ChunkIndex> {
        let mut c = Cursor::new(buf);
        let bad = |at: usize, detail: String| ImageError::CorruptIndex {
            offset: base + at as u64,
            detail,
        };
        let short = |s: Short| bad(s.at, "index ends early".into());
        let magic: [u8; 8] = c.array().map_err(short)?;
        if magic != INDEX_MAGIC {
            return Err(ImageError::BadMagic {
                offset: base,
                found: magic.to_vec(),
            });
        }
        let version = c.u16().map_err(short)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ImageError::UnsupportedVersion {
                part: "index",
                found: version,
                supported: FORMAT_VERSION,
                offset: base + 8,
            });
        }
        let at = c.pos();
        if c.u16().map_err(short)? != 0 || c.u32().map_err(short)? != 0 {
            return Err(bad(at, "reserved index fields are not zero".into()));
        }
        let source_size = c.u64().map_err(short)?;
        let at = c.pos();
        let chunk_size = c.u32().map_err(short)?;
        check_chunk_size(chunk_size as u64).map_err(|e| bad(at, e.to_string()))?;
        let logical_sector_size = c.u32().map_err(short)?;
        let physical_sector_size = c.u32().map_err(short)?;
        let at = c.pos();
        if c.u32().map_err(short)? != 0 {
            return Err(bad(at, "reserved metadata field is not zero".into()));
        }
        let min_target_size = c.u64().map_err(short)?;
        let created_unix = c.u64().map_err(short)?;
        let tool_version = get_str(&mut c).map_err(|(at, d)| bad(at, d))?;
        let n_labels = c.u16().map_err(short)?;
        let mut labels = BTreeMap::new();
        for _ in 0..n_labels {
            let at = c.pos();
            let k = get_str(&mut c).map_err(|(at, d)| bad(at, d))?;
            let v = get_str(&mut c).map_err(|(at, d)| bad(at, d))?;
            // Sorted and unique, as emitted: one index, one encoding, one root.
            if labels
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= k)
            {
                return Err(bad(at, "labels are not sorted and unique".into()));
            }
            labels.insert(k, v);
        }
        let at = c.pos();
        let count = c.u64().map_err(short)?;
        let expected = ChunkIndex::chunks_for(source_size, chunk_size);
        if count != expected {
            return Err(bad(
                at,
                format!("{count} chunks listed, a {source_size}-byte source has {expected}"),
            ));
        }
        if min_target_size > source_size {
            return Err(bad(at, "minimum target size exceeds source size".into()));
        }
        let meta = Metadata {
            source_size,
            chunk_size,
            logical_sector_size,
            physical_sector_size,
            min_target_size,
            created_unix,
            tool_version,
            labels,
        };
        let mut entries: Vec<ChunkEntry> = Vec::with_capacity(count.min(1 << 24) as usize);
        let frame_bound = zstd::zstd_safe::compress_bound(chunk_size as usize) as u64;
        for i in 0..count {
            let at = c.pos();
            let chunk_bad = |d: String| {
                bad(
                    at,
                    format!("chunk {i} (disk offset {}): {d}", i * chunk_size as u64),
                )
            };
            let kind_code = c.u8().map_err(short)?;
            let kind = ChunkKind::from_code(kind_code)
                .ok_or_else(|| chunk_bad(format!("unknown chunk kind {kind_code}")))?;
            let len = (source_size - i * chunk_size as u64).min(chunk_size as u64);
            if kind == ChunkKind::Absent && version >= 2 {
                entries.push(ChunkEntry::absent(len as usize));
                continue;
            }
            let mask_mode = c.u8().map_err(short)?;
            let hash: [u8; 32] = c.array().map_err(short)?;
            let mut frame = || -> Result<FrameRef> {
                let offset = c.u64().map_err(short)?;
                let flen = c.u32().map_err(short)?;
                let fhash = c.array().map_err(short)?;
                if offset < super::header::HEADER_LEN as u64
                    || offset
                        .checked_add(flen as u64)
                        .is_none_or(|e| e > frames_end)
                {
                    return Err(chunk_bad(format!(
                        "frame at {offset} (+{flen}) lies outside the frame area"
                    )));
                }
                if flen as u64 > frame_bound.max(len) || flen == 0 {
                    return Err(chunk_bad(format!("implausible frame length {flen}")));
                }
                Ok(FrameRef {
                    offset,
                    len: flen,
                    hash: fhash,
                })
            };
            let data = match kind {
                ChunkKind::Absent => ChunkData::Absent,
                ChunkKind::Zero => ChunkData::Zero,
                ChunkKind::Zstd => ChunkData::Zstd(frame()?),
                ChunkKind::Raw => {
                    let f = frame()?;
                    if f.len as u64 != len {
                        return Err(chunk_bad(format!(
                            "raw frame of {} bytes for a {len}-byte chunk",
                            f.len
                        )));
                    }
                    ChunkData::Raw(f)
                }
                ChunkKind::Duplicate => {
                    let of = c.u64().map_err(short)?;
                    let ok = of < i
                        && entries[of as usize].data.frame().is_some()
                        && entries[of as usize].hash == hash
                        && ChunkIndex::len_of(source_size, chunk_size, of) == len;
                    if !ok {
                        return Err(chunk_bad(format!(
                            "duplicate of chunk {of}, which is not an earlier stored chunk with the same content"
                        )));
                    }
                    ChunkData::Duplicate { of }
                }
            };
            let used = match mask_mode {
                0 => UsedMask::All,
                1 => {
                    let n = (len as usize).div_ceil(BLOCK_SIZE).div_ceil(8);
                    UsedMask::Blocks(c.bytes(n).map_err(short)?.to_vec())
                }
                m => return Err(chunk_bad(format!("unknown mask mode {m}"))),
            };
            entries.push(ChunkEntry { data, hash, used });
        }
        if c.remaining() != 0 {
            return Err(bad(
                c.pos(),
                format!("{} stray bytes after the last chunk", c.remaining()),
            ));
        }
        Ok(ChunkIndex {
            version,
            meta,
            entries,
        })
    }

    fn len_of(source_size: u64, chunk_size: u32, i: u64) -> u64 {
        (source_size - i * chunk_size as u64).min(chunk_size as u64)
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    v.put_u16(b.len() as u16);
    v.put(b);
}

fn get_str(c: &mut Cursor<'_>) -> Result<String, (usize, String)> {
    let at = c.pos();
    let n = c
        .u16()
        .map_err(|s| (s.at, "index ends early".to_string()))?;
    let b = c
        .bytes(n as usize)
        .map_err(|s| (s.at, "index ends early".to_string()))?;
    String::from_utf8(b.to_vec()).map_err(|_| (at, "string is not UTF-8".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChunkIndex {
        let frame = FrameRef {
            offset: 64,
            len: 100,
            hash: [3; 32],
        };
        ChunkIndex {
            version: FORMAT_VERSION,
            meta: Metadata {
                source_size: (1 << 20) * 4 + 5000,
                chunk_size: 1 << 20,
                logical_sector_size: 512,
                physical_sector_size: 4096,
                min_target_size: (1 << 20) * 4 + 5000,
                created_unix: 1_700_000_000,
                tool_version: "rackcast 0.1.0".into(),
                labels: [("os".to_string(), "debian".to_string())].into(),
            },
            entries: vec![
                ChunkEntry {
                    data: ChunkData::Zstd(frame),
                    hash: [9; 32],
                    used: UsedMask::All,
                },
                ChunkEntry {
                    data: ChunkData::Duplicate { of: 0 },
                    hash: [9; 32],
                    used: UsedMask::All,
                },
                ChunkEntry {
                    data: ChunkData::Zero,
                    hash: [1; 32],
                    used: UsedMask::All,
                },
                ChunkEntry::absent(1 << 20),
                ChunkEntry {
                    data: ChunkData::Raw(FrameRef {
                        offset: 164,
                        len: 5000,
                        hash: [4; 32],
                    }),
                    hash: [5; 32],
                    used: UsedMask::Blocks(vec![0b01]),
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let i = sample();
        let bytes = i.emit();
        assert_eq!(ChunkIndex::parse(&bytes, 0, u64::MAX).unwrap(), i);
    }

    #[test]
    fn an_absent_entry_is_its_kind_byte_and_version_1_reencodes_as_it_was() {
        let v2 = sample();
        let mut v1 = sample();
        v1.version = 1;
        let (b1, b2) = (v1.emit(), v2.emit());
        // Version 1 spends mask mode, zero hash and a 32-byte mask.
        assert_eq!(b1.len() - b2.len(), 1 + 32 + 32);
        let back = ChunkIndex::parse(&b1, 0, u64::MAX).unwrap();
        assert_eq!(back, v1);
        assert!(
            back.emit() == b1,
            "a version 1 index keeps its bytes, so its root"
        );
        assert_ne!(v1.root(), v2.root());
    }

    #[test]
    fn truncation_at_every_length_is_an_error() {
        let bytes = sample().emit();
        for n in 0..bytes.len() {
            assert!(
                ChunkIndex::parse(&bytes[..n], 0, u64::MAX).is_err(),
                "len {n}"
            );
        }
    }

    #[test]
    fn used_ranges_merge() {
        let m = UsedMask::Blocks(vec![0b0000_1101]);
        assert_eq!(m.used_ranges(5 * 4096), vec![0..4096, 8192..16384]);
        assert_eq!(UsedMask::All.used_ranges(5000), vec![0..5000]);
    }
}
