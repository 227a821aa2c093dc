//! A simple, correct target for a cast receiver: frames are decoded and
//! checked on a writer thread and written at their offsets with positioned
//! writes; at the end zero chunks are laid down, the file is flushed and every
//! chunk is read back and checked. (The agent's io_uring writer is the fast
//! path; this one keeps `rackcast cast recv` self-contained.)

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender as ChanSender};

use super::net::ChunkSink;
use super::CastError;
use crate::image::{probe_source, ChunkData, ChunkDecoder, ChunkIndex, UsedMask};

/// What the sink did.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    /// Chunks found already correct on the target at the start.
    pub resumed_chunks: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Chunks read back and verified at the end.
    pub verified_chunks: u64,
}

/// How much of the target is read back after the final flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// Nothing (every chunk was still checked before it was written).
    Off,
    /// About one chunk in sixteen, plus the first and the last.
    Sample,
    /// Every chunk.
    Full,
}

/// Writes a received image to a file or block device.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    resume: bool,
    read_back: ReadBack,
    file: Option<Arc<File>>,
    index: Option<Arc<ChunkIndex>>,
    fresh: bool,
    tx: Option<ChanSender<(u32, Bytes)>>,
    worker: Option<JoinHandle<Result<u64, CastError>>>,
    backlog: Arc<AtomicU64>,
    stats: SinkStats,
}

impl FileSink {
    /// A sink for `path`; with `resume`, chunks already correct on it are
    /// not received again.
    pub fn new(path: &Path, resume: bool, read_back: ReadBack) -> FileSink {
        FileSink {
            path: path.to_path_buf(),
            resume,
            read_back,
            file: None,
            index: None,
            fresh: false,
            tx: None,
            worker: None,
            backlog: Arc::default(),
            stats: SinkStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> CastError {
        CastError::Target(format!("{what} {}: {e}", self.path.display()))
    }
}

fn chunk_matches(file: &File, index: &ChunkIndex, i: u64, buf: &mut Vec<u8>) -> bool {
    let len = index.chunk_len(i);
    buf.resize(len, 0);
    file.read_exact_at(buf, index.disk_offset(i)).is_ok()
        && *blake3::hash(buf).as_bytes() == index.entries[i as usize].hash
}

impl ChunkSink for FileSink {
    fn prepare(&mut self, index: &Arc<ChunkIndex>) -> Result<Vec<u32>, CastError> {
        let existed = self.path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(|e| self.err("opening", e))?;
        let info = probe_source(&file, &self.path).map_err(|e| self.err("examining", e))?;
        let size = index.meta.source_size;
        if info.is_block_device && info.size < index.meta.min_target_size {
            return Err(self.err(
                "refusing",
                format!(
                    "it is {} bytes, the image needs {}",
                    info.size, index.meta.min_target_size
                ),
            ));
        }
        if !info.is_block_device && info.size < size {
            file.set_len(size).map_err(|e| self.err("extending", e))?;
        }
        self.fresh = !existed || (!info.is_block_device && info.size == 0);
        let mut done = Vec::new();
        if self.resume && !self.fresh {
            let mut buf = Vec::new();
            for (i, e) in index.entries.iter().enumerate() {
                if e.data.frame().is_some() && chunk_matches(&file, index, i as u64, &mut buf) {
                    done.push(i as u32);
                }
            }
            self.stats.resumed_chunks = done.len() as u64;
        }
        let mut dups: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, e) in index.entries.iter().enumerate() {
            if let ChunkData::Duplicate { of } = e.data {
                dups.entry(of as u32).or_default().push(i as u32);
            }
        }
        let file = Arc::new(file);
        let (tx, rx) = bounded::<(u32, Bytes)>(64);
        let (f, idx, backlog, path) = (
            file.clone(),
            index.clone(),
            self.backlog.clone(),
            self.path.clone(),
        );
        self.worker = Some(std::thread::spawn(move || -> Result<u64, CastError> {
            let mut dec = ChunkDecoder::new();
            let mut out = Vec::new();
            let mut written = 0u64;
            for (chunk, frame) in rx {
                let targets =
                    std::iter::once(chunk).chain(dups.get(&chunk).into_iter().flatten().copied());
                for c in targets {
                    dec.decode(&idx, c as u64, &frame, &mut out)
                        .map_err(|e| CastError::Target(format!("chunk {c}: {e}")))?;
                    let off = idx.disk_offset(c as u64);
                    for r in idx.entries[c as usize].used.used_ranges(out.len()) {
                        f.write_all_at(&out[r.clone()], off + r.start as u64)
                            .map_err(|e| {
                                CastError::Target(format!("writing {}: {e}", path.display()))
                            })?;
                        written += r.len() as u64;
                    }
                }
                backlog.fetch_sub(frame.len() as u64, Ordering::Relaxed);
            }
            Ok(written)
        }));
        self.tx = Some(tx);
        self.file = Some(file);
        self.index = Some(index.clone());
        Ok(done)
    }

    fn write(&mut self, chunk: u32, frame: Bytes) -> Result<(), CastError> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| CastError::Target("write before prepare".into()))?;
        self.backlog
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if tx.send((chunk, frame)).is_err() {
            // The writer stopped: its error says why.
            self.tx = None;
            return match self.worker.take().map(|w| w.join()) {
                Some(Ok(Err(e))) => Err(e),
                _ => Err(CastError::Target("the writer thread stopped".into())),
            };
        }
        Ok(())
    }

    fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    fn finish(&mut self) -> Result<(), CastError> {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            self.stats.bytes_written += w
                .join()
                .map_err(|_| CastError::Target("the writer thread panicked".into()))??;
        }
        let (Some(file), Some(index)) = (self.file.clone(), self.index.clone()) else {
            return Err(CastError::Target("finish before prepare".into()));
        };
        for (i, e) in index.entries.iter().enumerate() {
            if e.data == ChunkData::Zero && !self.fresh {
                let len = index.chunk_len(i as u64);
                file.write_all_at(&vec![0u8; len], index.disk_offset(i as u64))
                    .map_err(|e| self.err("writing", e))?;
                self.stats.bytes_written += len as u64;
            }
        }
        file.sync_all().map_err(|e| self.err("flushing", e))?;
        // Read back: success means the bytes are on the target, not just sent.
        let mut buf = Vec::new();
        let last = index.entries.len().saturating_sub(1);
        let root = index.root();
        for (i, e) in index.entries.iter().enumerate() {
            if e.data == ChunkData::Absent || e.used != UsedMask::All {
                continue;
            }
            // The sample depends on the image root, so every image checks
            // a different set of chunks.
            let sampled = i == 0 || i == last || (i as u64 + root[0] as u64) % 16 == 0;
            if self.read_back == ReadBack::Off || (self.read_back == ReadBack::Sample && !sampled) {
                continue;
            }
            if !chunk_matches(&file, &index, i as u64, &mut buf) {
                return Err(CastError::Target(format!(
                    "chunk {i} at disk offset {} does not verify after writing",
                    index.disk_offset(i as u64)
                )));
            }
            self.stats.verified_chunks += 1;
        }
        Ok(())
    }
}
