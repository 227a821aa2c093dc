//! Restoring an image file to a target: a pool of decoder threads (one zstd
//! context each) reads, checks and decodes chunks into pooled aligned
//! buffers and feeds the [`DiskWriter`]; then the target is flushed, read
//! back and checked as asked.
//!
//! ```text
//! image ─► decoders (N threads: read frame, BLAKE3, zstd, BLAKE3) ─► channel
//!            └─ delta: read the target's chunk, skip it when it matches
//! channel ─► DiskWriter (this thread) ─► io_uring ─► target ─► flush ─► read-back
//! ```

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use rackcast_engine::image::{ChunkData, ChunkDecoder, ChunkIndex, ImageReader};

use crate::error::{Result, WriterError};
use crate::writer::{
    AlignedBuf, BufferPool, ChunkPayload, DiskWriter, TargetReader, WriteSummary, WriterConfig,
};

/// How much of the target to read back after the final flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// No read-back.
    Off,
    /// About one chunk in sixteen (chosen from the image root, so each
    /// image checks a different, repeatable set), plus the first and last.
    #[default]
    Sample,
    /// Every chunk that is not absent.
    Full,
}

/// How a restore runs.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    /// The writer's configuration.
    pub writer: WriterConfig,
    /// Decoder threads.
    pub threads: usize,
    /// Hash what the target holds first and skip chunks that match.
    pub delta: bool,
    /// Read-back verification.
    pub verify: VerifyMode,
    /// How many times a chunk that reads back wrong is rewritten before the
    /// restore fails.
    pub verify_retries: u32,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            writer: WriterConfig::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            delta: false,
            verify: VerifyMode::default(),
            verify_retries: 2,
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// The writer's counters.
    pub write: WriteSummary,
    /// Chunks read back and found correct.
    pub chunks_verified: u64,
    /// Bytes of those chunks.
    pub bytes_verified: u64,
    /// Chunks rewritten because they read back wrong.
    pub chunks_rewritten: u64,
    /// Wall time, including the final flush and read-back.
    pub elapsed: Duration,
}

/// One decoder result: the chunk and its payload, or why it cannot be
/// written.
#[derive(Debug)]
pub struct Decoded {
    /// Chunk number.
    pub chunk: u64,
    /// The payload, or the check that failed (the chunk must not be written).
    pub result: Result<ChunkPayload>,
}

/// Decoder threads over a list of chunks, feeding a channel.
#[derive(Debug)]
pub struct DecodePool;

impl DecodePool {
    /// Decodes `chunks` of `img` on one thread per entry of `readers`, each
    /// into a buffer from `pool`, and hands the results to `consume` (on this
    /// thread) as they come. With a reader, a thread first hashes the
    /// target's copy of the chunk and yields [`ChunkPayload::OnTarget`] when
    /// it already matches. When `consume` returns, the threads stop and
    /// unconsumed buffers go back to the pool.
    pub fn run<R>(
        img: &ImageReader,
        chunks: &[u64],
        pool: &BufferPool,
        readers: Vec<Option<TargetReader>>,
        consume: impl FnOnce(&Receiver<Decoded>) -> R,
    ) -> R {
        let stop = AtomicBool::new(false);
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let (tx, rx) = crossbeam_channel::bounded(pool.count() + readers.len());
            for reader in readers {
                let tx = tx.clone();
                let (stop, next) = (&stop, &next);
                s.spawn(move || {
                    let mut w = Worker::new(img, pool, reader);
                    while !stop.load(Ordering::Relaxed) {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&chunk) = chunks.get(k) else { break };
                        let Some(result) = w.decode(chunk, stop) else {
                            break;
                        };
                        if tx.send(Decoded { chunk, result }).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let r = consume(&rx);
            stop.store(true, Ordering::Relaxed);
            for d in rx.iter() {
                if let Ok(ChunkPayload::Data(b)) = d.result {
                    pool.put(b);
                }
            }
            r
        })
    }
}

/// Restores `img` to `dest` (a file, created if missing, or a block device).
/// `progress` is told the bytes of each chunk dealt with.
///
/// Every chunk is checked before it is written; a bad chunk stops the
/// restore before it reaches the target, and what was written so far is
/// flushed and recorded so that a rerun resumes.
pub fn restore(
    img: &ImageReader,
    dest: &Path,
    cfg: &RestoreConfig,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreReport> {
    let start = Instant::now();
    let index = Arc::new(img.index().clone());
    let mut writer = DiskWriter::open(dest, index, img.root(), &cfg.writer)?;
    progress(writer.summary().bytes_resumed);
    let todo = writer.pending();
    let delta = cfg.delta && !writer.known_zero();
    let threads = cfg.threads.max(1);
    let r = write_chunks(img, &mut writer, &todo, threads, delta, progress)
        .and_then(|()| writer.flush());
    if let Err(e) = r {
        writer.abandon();
        return Err(e);
    }
    let mut report = RestoreReport::default();
    if cfg.verify != VerifyMode::Off {
        if let Err(e) = read_back(img, &mut writer, cfg, threads, &mut report) {
            writer.abandon();
            return Err(e);
        }
    }
    report.write = writer.finish()?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Reads `chunks` back from the target and returns the ones whose bytes do
/// not hash to the index: one thread per reader (each with its own
/// descriptor, O_DIRECT where the target allows).
pub fn find_bad_chunks(
    index: &ChunkIndex,
    readers: Vec<TargetReader>,
    chunks: &[u64],
) -> Result<Vec<u64>> {
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = readers
            .into_iter()
            .map(|r| {
                let next = &next;
                s.spawn(move || {
                    let mut buf = AlignedBuf::new(index.meta.chunk_size as usize);
                    let mut bad = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = chunks.get(k) else { break };
                        if r.hash_chunk(index, i, &mut buf)? != index.entries[i as usize].hash {
                            bad.push(i);
                        }
                    }
                    Ok(bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(WriterError::WorkerGone)))
            .collect()
    });
    let mut bad = Vec::new();
    for r in results {
        bad.extend(r?);
    }
    bad.sort_unstable();
    Ok(bad)
}

/// Which chunks read-back checks.
pub fn verify_set(index: &ChunkIndex, root: &[u8; 32], mode: VerifyMode) -> Vec<u64> {
    let present: Vec<u64> = (0..index.entries.len() as u64)
        .filter(|&i| !matches!(index.entries[i as usize].data, ChunkData::Absent))
        .collect();
    match mode {
        VerifyMode::Off => Vec::new(),
        VerifyMode::Full => present,
        VerifyMode::Sample => {
            let (first, last) = (present.first().copied(), present.last().copied());
            present
                .iter()
                .copied()
                .filter(|&i| {
                    let mut h = blake3::Hasher::new();
                    h.update(root).update(&i.to_le_bytes());
                    h.finalize().as_bytes()[0] % 16 == 0 || Some(i) == first || Some(i) == last
                })
                .collect()
        }
    }
}

/// Decodes `todo` and writes it, polling the writer between results.
fn write_chunks(
    img: &ImageReader,
    writer: &mut DiskWriter,
    todo: &[u64],
    threads: usize,
    delta: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    if todo.is_empty() {
        return Ok(());
    }
    let pool = writer.buffer_pool();
    let readers = (0..threads)
        .map(|_| delta.then(|| writer.target_reader()).transpose())
        .collect::<Result<Vec<_>>>()?;
    let index = img.index();
    DecodePool::run(img, todo, &pool, readers, |rx| -> Result<()> {
        let mut take = |d: Decoded, writer: &mut DiskWriter| -> Result<()> {
            writer.submit(d.chunk, d.result?)?;
            progress(index.chunk_len(d.chunk) as u64);
            Ok(())
        };
        loop {
            match rx.try_recv() {
                Ok(d) => take(d, writer)?,
                Err(TryRecvError::Empty) if writer.in_flight() > 0 => {
                    writer.poll(true)?;
                }
                Err(TryRecvError::Empty) => match rx.recv() {
                    Ok(d) => take(d, writer)?,
                    Err(_) => return Ok(()),
                },
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    })
}

/// Reads back what verification asks for; rewrites bad chunks up to the
/// retry limit, then fails naming their disk offsets.
fn read_back(
    img: &ImageReader,
    writer: &mut DiskWriter,
    cfg: &RestoreConfig,
    threads: usize,
    report: &mut RestoreReport,
) -> Result<()> {
    let index = img.index();
    let mut check = verify_set(index, &img.root(), cfg.verify);
    let mut attempts = 1;
    loop {
        let readers = (0..threads)
            .map(|_| writer.target_reader())
            .collect::<Result<Vec<_>>>()?;
        let bad = find_bad_chunks(index, readers, &check)?;
        for &i in check.iter().filter(|i| bad.binary_search(i).is_err()) {
            report.chunks_verified += 1;
            report.bytes_verified += index.chunk_len(i) as u64;
        }
        if bad.is_empty() {
            return Ok(());
        }
        if attempts > cfg.verify_retries {
            return Err(WriterError::VerifyFailed {
                path: writer.path().to_path_buf(),
                attempts,
                offsets: bad
                    .iter()
                    .map(|&i| {
                        (
                            index.disk_offset(i),
                            index.disk_offset(i) + index.chunk_len(i) as u64,
                        )
                    })
                    .collect(),
            });
        }
        for &i in &bad {
            writer.mark_unwritten(i);
        }
        report.chunks_rewritten += bad.len() as u64;
        write_chunks(img, writer, &bad, threads, false, &mut |_| {})?;
        writer.flush()?;
        attempts += 1;
        check = bad;
    }
}

/// One decoder thread's state: its zstd context and scratch space.
struct Worker<'a> {
    img: &'a ImageReader,
    pool: &'a BufferPool,
    reader: Option<TargetReader>,
    dec: ChunkDecoder,
    frame: Vec<u8>,
    out: Vec<u8>,
    scan: Option<AlignedBuf>,
    image_file: Option<std::fs::File>,
}

impl<'a> Worker<'a> {
    fn new(img: &'a ImageReader, pool: &'a BufferPool, reader: Option<TargetReader>) -> Self {
        let scan = reader
            .as_ref()
            .map(|_| AlignedBuf::new(img.index().meta.chunk_size as usize));
        Worker {
            img,
            pool,
            reader,
            dec: ChunkDecoder::new(),
            frame: Vec::new(),
            out: Vec::new(),
            scan,
            image_file: None,
        }
    }

    /// Decodes chunk `i`; `None` when told to stop while waiting for a buffer.
    fn decode(&mut self, i: u64, stop: &AtomicBool) -> Option<Result<ChunkPayload>> {
        let index = self.img.index();
        let entry = &index.entries[i as usize];
        if let (Some(r), Some(scan)) = (&self.reader, &mut self.scan) {
            match r.hash_chunk(index, i, scan) {
                Ok(h) if h == entry.hash => return Some(Ok(ChunkPayload::OnTarget)),
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        match entry.data {
            ChunkData::Zero => return Some(Ok(ChunkPayload::Zero)),
            ChunkData::Absent => return Some(Ok(ChunkPayload::OnTarget)),
            _ => {}
        }
        if let Some(fast) = self.raw_direct(i, stop) {
            return fast;
        }
        if let Err(e) = self
            .img
            .read_chunk(i, &mut self.dec, &mut self.frame, &mut self.out)
        {
            return Some(Err(e.into()));
        }
        let mut buf = self.pool.get_until(stop)?;
        buf.copy_from(&self.out);
        Some(Ok(ChunkPayload::Data(buf)))
    }

    /// A raw chunk whose frame hash is its content hash (as in every image
    /// the encoder writes) is read straight into the aligned buffer and
    /// hashed once: that one BLAKE3 proves both things [`ChunkDecoder`]
    /// would check (frame bytes and content), and saves two copies and a
    /// hash per byte of incompressible data. Anything else, or a mismatch
    /// (so that the error reported is the decoder's), takes the decoder's
    /// path: `None`. `Some(None)`: told to stop while waiting for a buffer.
    fn raw_direct(&mut self, i: u64, stop: &AtomicBool) -> Option<Option<Result<ChunkPayload>>> {
        let index = self.img.index();
        let entry = &index.entries[i as usize];
        let frame = match entry.data {
            ChunkData::Raw(f) => f,
            ChunkData::Duplicate { of } => match index.entries[of as usize].data {
                ChunkData::Raw(f) => f,
                _ => return None,
            },
            _ => return None,
        };
        let len = index.chunk_len(i);
        if frame.hash != entry.hash || frame.len as usize != len {
            return None;
        }
        if self.image_file.is_none() {
            self.image_file = Some(std::fs::File::open(self.img.path()).ok()?);
        }
        let file = self.image_file.as_ref()?;
        let Some(mut buf) = self.pool.get_until(stop) else {
            return Some(None);
        };
        let ok = file.read_exact_at(buf.fill(len), frame.offset).is_ok()
            && *blake3::hash(buf.as_slice()).as_bytes() == entry.hash;
        if ok {
            return Some(Some(Ok(ChunkPayload::Data(buf))));
        }
        self.pool.put(buf);
        None
    }
}
