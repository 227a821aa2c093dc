//! A simple, correct restore: decode and check chunks in parallel, write each
//! at its own offset with positioned writes, flush at the end.
//!
//! The io_uring writer (`rackcast-writer`) is the fast path that `rackcast
//! image restore` and the agent use; this one stays as the reference the
//! demo and the image tests check that path against.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::codec::ChunkDecoder;
use super::error::{ImageError, Result};
use super::index::ChunkData;
use super::reader::ImageReader;
use super::source::probe_source;

/// Options of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Decoder threads.
    pub threads: usize,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreSummary {
    /// Bytes written to the target (data and explicit zeros).
    pub bytes_written: u64,
    /// Bytes of zero chunks turned into holes or left as known zeros.
    pub zero_bytes_skipped: u64,
    /// Chunks written.
    pub chunks_written: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Writes the image to `dest` (a file, created if missing, or a block
/// device). Every chunk is checked before it is written; a bad chunk stops the
/// restore before it touches the target.
pub fn restore_image(
    img: &ImageReader,
    dest: &Path,
    opts: &RestoreOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreSummary> {
    let start = Instant::now();
    let index = img.index();
    let existed = dest.exists();
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .map_err(|e| ImageError::io("opening", dest, e))?;
    let info = probe_source(&file, dest)?;
    let source_size = index.meta.source_size;
    if info.is_block_device {
        if info.size < index.meta.min_target_size {
            return Err(ImageError::TargetTooSmall {
                path: dest.to_path_buf(),
                size: info.size,
                min: index.meta.min_target_size,
            });
        }
    } else if info.size < source_size {
        file.set_len(source_size)
            .map_err(|e| ImageError::io("extending", dest, e))?;
    }
    // A file we just created is all holes: zero chunks need no work there.
    let known_zero = !existed || (!info.is_block_device && info.size == 0);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| ImageError::InvalidParameter(format!("thread pool: {e}")))?;
    let mut summary = RestoreSummary::default();
    let count = index.entries.len() as u64;
    let batch = (opts.threads.max(1) * 2) as u64;
    let mut decoders: Vec<(ChunkDecoder, Vec<u8>, Vec<u8>)> = (0..batch)
        .map(|_| (ChunkDecoder::new(), Vec::new(), Vec::new()))
        .collect();
    let mut first = 0u64;
    while first < count {
        let last = (first + batch).min(count);
        let slots = &mut decoders[..(last - first) as usize];
        let results: Vec<Result<()>> = pool.install(|| {
            slots
                .par_iter_mut()
                .enumerate()
                .map(|(k, (dec, frame, out))| {
                    let i = first + k as u64;
                    match index.entries[i as usize].data {
                        ChunkData::Absent => Ok(()),
                        ChunkData::Zero if known_zero => Ok(()),
                        _ => img.read_chunk(i, dec, frame, out),
                    }
                })
                .collect()
        });
        for (k, r) in results.into_iter().enumerate() {
            r?;
            let i = first + k as u64;
            let entry = &index.entries[i as usize];
            let off = index.disk_offset(i);
            let len = index.chunk_len(i);
            match entry.data {
                ChunkData::Absent => {}
                ChunkData::Zero if known_zero => summary.zero_bytes_skipped += len as u64,
                ChunkData::Zero if !info.is_block_device && punch_hole(&file, off, len as u64) => {
                    summary.zero_bytes_skipped += len as u64;
                }
                _ => {
                    let out = &decoders[k].2;
                    for r in entry.used.used_ranges(len) {
                        file.write_all_at(&out[r.clone()], off + r.start as u64)
                            .map_err(|e| ImageError::io("writing", dest, e))?;
                        summary.bytes_written += r.len() as u64;
                    }
                    summary.chunks_written += 1;
                }
            }
            progress(len as u64);
        }
        first = last;
    }
    file.sync_all()
        .map_err(|e| ImageError::io("flushing", dest, e))?;
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// Deallocates a range of a file so it reads as zeros; false where the file
/// system cannot, and the caller writes zeros instead.
fn punch_hole(file: &File, off: u64, len: u64) -> bool {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    )
    .is_ok()
}
