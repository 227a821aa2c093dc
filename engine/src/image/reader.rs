//! Opening an image: every structural check happens here, before a caller
//! sees a single chunk. Then chunks can be read alone, in any order, from any
//! thread.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::codec::ChunkDecoder;
use super::error::{ImageError, Result};
use super::header::{Header, HEADER_LEN};
use super::hex;
use super::index::{ChunkData, ChunkIndex};
use super::sign::TrustedKey;
use super::trailer::{RootSignature, Trailer, TRAILER_LEN};

/// An open, structurally checked image.
#[derive(Debug)]
pub struct ImageReader {
    file: File,
    path: PathBuf,
    file_len: u64,
    header: Header,
    trailer: Trailer,
    index: ChunkIndex,
    index_bytes: Vec<u8>,
}

/// Result of a full verification.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Chunks checked (frames decoded and hashed; zero chunks hashed).
    pub chunks_checked: u64,
    /// Frame bytes read.
    pub bytes_read: u64,
    /// Source bytes those chunks represent.
    pub source_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl ImageReader {
    /// Opens `path` and checks header, trailer, index root and frame layout.
    pub fn open(path: &Path) -> Result<ImageReader> {
        let file = File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| ImageError::io("examining", path, e))?
            .len();
        let read = |off: u64, len: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, off)
                .map_err(|e| ImageError::io("reading", path, e))?;
            Ok(buf)
        };
        let mut head = read(0, (HEADER_LEN as u64).min(file_len) as usize)?;
        head.resize(head.len().min(HEADER_LEN), 0);
        let header = Header::parse(&head)?;
        let min_len = (HEADER_LEN + TRAILER_LEN) as u64;
        if file_len < min_len {
            return Err(ImageError::Truncated {
                detail: format!("file is {file_len} bytes; an image is at least {min_len}"),
            });
        }
        let trailer_at = file_len - TRAILER_LEN as u64;
        let tb: [u8; TRAILER_LEN] = read(trailer_at, TRAILER_LEN)?
            .try_into()
            .expect("read exactly the trailer");
        let trailer = Trailer::parse(&tb, trailer_at)?;
        if trailer.index_offset < HEADER_LEN as u64
            || trailer.index_offset.checked_add(trailer.index_len) != Some(trailer_at)
        {
            return Err(ImageError::Truncated {
                detail: format!(
                    "the trailer at byte offset {trailer_at} places the index at {}..+{}, which does not end where the trailer starts",
                    trailer.index_offset, trailer.index_len
                ),
            });
        }
        let index_bytes = read(trailer.index_offset, trailer.index_len as usize)?;
        let computed = *blake3::hash(&index_bytes).as_bytes();
        if computed != trailer.root {
            return Err(ImageError::RootMismatch {
                offset: trailer.index_offset,
                len: trailer.index_len,
                expected: hex(&trailer.root),
                computed: hex(&computed),
            });
        }
        let index = ChunkIndex::parse(&index_bytes, trailer.index_offset, trailer.index_offset)?;
        if index.meta.chunk_size != header.chunk_size
            || index.meta.source_size != header.source_size
        {
            return Err(ImageError::CorruptStructure {
                part: "header",
                offset: 0,
                detail: "header and index disagree on chunk size or source size".into(),
            });
        }
        check_frames_tile(&index, trailer.index_offset)?;
        Ok(ImageReader {
            file,
            path: path.to_path_buf(),
            file_len,
            header,
            trailer,
            index,
            index_bytes,
        })
    }

    /// The chunk index.
    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    /// The encoded index exactly as stored (what the root covers).
    pub fn index_bytes(&self) -> &[u8] {
        &self.index_bytes
    }

    /// The image root.
    pub fn root(&self) -> [u8; 32] {
        self.trailer.root
    }

    /// The signature, if the image is signed.
    pub fn signature(&self) -> Option<&RootSignature> {
        self.trailer.signature.as_ref()
    }

    /// Size of the image file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the signature with a trusted key.
    pub fn check_signature(&self, key: &TrustedKey) -> Result<()> {
        key.verify(&self.trailer.root, self.signature())
    }

    /// Reads the stored frame that chunk `i` decodes from (for a duplicate,
    /// the original's frame); empty for zero and absent chunks. The bytes are
    /// not checked here: [`ChunkDecoder::decode`] checks them.
    pub fn read_frame(&self, i: u64, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let data = match self.index.entries[i as usize].data {
            ChunkData::Duplicate { of } => self.index.entries[of as usize].data,
            d => d,
        };
        if let Some(f) = data.frame() {
            buf.resize(f.len as usize, 0);
            self.file
                .read_exact_at(buf, f.offset)
                .map_err(|e| ImageError::io("reading", &self.path, e))?;
        }
        Ok(())
    }

    /// Reads, checks and decodes chunk `i` into `out`.
    pub fn read_chunk(
        &self,
        i: u64,
        dec: &mut ChunkDecoder,
        frame: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.read_frame(i, frame)?;
        dec.decode(&self.index, i, frame, out)
    }

    /// Recomputes every chunk hash on `threads` threads. Duplicates are not
    /// decoded twice: their original is checked, and the index ties them to
    /// it. Returns the lowest-numbered bad chunk's error, if any.
    pub fn verify(&self, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> Result<VerifyReport> {
        let start = Instant::now();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| ImageError::InvalidParameter(format!("thread pool: {e}")))?;
        let bytes_read = AtomicU64::new(0);
        let todo: Vec<u64> = (0..self.index.entries.len() as u64)
            .filter(|&i| {
                matches!(
                    self.index.entries[i as usize].data,
                    ChunkData::Zstd(_) | ChunkData::Raw(_) | ChunkData::Zero
                )
            })
            .collect();
        let errors: Vec<ImageError> = pool.install(|| {
            todo.par_iter()
                .map_init(
                    || (ChunkDecoder::new(), Vec::new(), Vec::new()),
                    |(dec, frame, out), &i| {
                        let r = self.read_chunk(i, dec, frame, out);
                        bytes_read.fetch_add(frame.len() as u64, Ordering::Relaxed);
                        progress(self.index.chunk_len(i) as u64);
                        r.err()
                    },
                )
                .flatten()
                .collect()
        });
        if let Some(first) = errors.into_iter().min_by_key(|e| match e {
            ImageError::CorruptChunk { chunk, .. } => *chunk,
            _ => 0,
        }) {
            return Err(first);
        }
        Ok(VerifyReport {
            chunks_checked: todo.len() as u64,
            bytes_read: bytes_read.into_inner(),
            source_bytes: todo.iter().map(|&i| self.index.chunk_len(i) as u64).sum(),
            elapsed: start.elapsed(),
        })
    }
}

/// Frames must cover the space between the header and the index exactly,
/// without overlap or gaps, so that no byte of the file goes unchecked.
fn check_frames_tile(index: &ChunkIndex, index_offset: u64) -> Result<()> {
    let mut frames: Vec<(u64, u64, u64)> = index
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.data.frame().map(|f| (f.offset, f.len as u64, i as u64)))
        .collect();
    frames.sort_unstable();
    let mut pos = HEADER_LEN as u64;
    for (off, len, i) in frames {
        if off != pos {
            return Err(ImageError::CorruptIndex {
                offset: index_offset,
                detail: format!(
                    "chunk {i}'s frame starts at byte offset {off}, expected {pos}: frames must tile the frame area"
                ),
            });
        }
        pos += len;
    }
    if pos != index_offset {
        return Err(ImageError::CorruptIndex {
            offset: index_offset,
            detail: format!(
                "frames end at byte offset {pos} but the index starts at {index_offset}"
            ),
        });
    }
    Ok(())
}
