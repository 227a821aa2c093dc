//! The target disk writer.
//!
//! A [`DiskWriter`] takes decoded, verified chunks in any order — each is
//! written at its own disk offset, a chunk already written or in flight is
//! dropped — and writes them with O_DIRECT through an [`Engine`]: io_uring
//! where the kernel allows, positioned writes otherwise. Zero chunks become
//! BLKZEROOUT / holes (or nothing on a target known to be zeroed), absent
//! blocks are never touched, and a persisted bitmap of durable chunks lets an
//! interrupted restore resume. Success means a final flush has returned.
//!
//! A failed flush ends that: Linux reports a writeback error once and may
//! drop the pages it could not write, so the next fdatasync can return 0
//! with the data gone. After one failure the writer marks nothing durable
//! again, every later flush fails with the first error, and the resume
//! bitmap is discarded (not merely left behind) so that a rerun rewrites and
//! re-verifies every chunk rather than trusting anything about this disk.
//!
//! The restore pipeline ([`crate::restore`]) feeds it from an image file and
//! [`crate::DiskSink`] from the network, the same way: take a
//! buffer from [`DiskWriter::buffer_pool`], fill it with a checked chunk,
//! [`DiskWriter::submit`] it, and [`DiskWriter::poll`] now and then.

mod buffer;
mod engine;
mod resume;
#[allow(unsafe_code)]
pub(crate) mod sys;
mod target;
#[allow(unsafe_code)]
mod uring;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackcast_engine::image::{ChunkData, ChunkIndex};

pub use buffer::{AlignedBuf, BufferPool, MEM_ALIGN};
pub use engine::EngineKind;
pub use uring::UringSetupStep;

use crate::error::{Result, WriterError};
use engine::{Completed, Engine, SyncEngine, WriteOp};
use resume::ResumeState;
use target::Target;

/// Which engine to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring unless the kernel disables it or setup fails (the reason is
    /// kept in [`WriteSummary::engine_fallback`]), then sync.
    #[default]
    Auto,
    /// io_uring, or an error.
    Uring,
    /// Positioned writes.
    Sync,
}

/// How a writer behaves. Validated once in [`DiskWriter::open`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Engine selection.
    pub engine: EngineChoice,
    /// io_uring queue depth (16–64; 32 measured best, see the writer bench).
    pub queue_depth: u32,
    /// Chunk buffers in the pool: bounds memory and chunks in flight.
    pub buffers: usize,
    /// Register the pool's buffers with the ring (falls back when
    /// RLIMIT_MEMLOCK is too low).
    pub register_buffers: bool,
    /// Write a mounted or otherwise busy block device anyway: no mount
    /// check and no exclusive (O_EXCL) open.
    pub force: bool,
    /// Keep and honour a resume bitmap.
    pub resume: bool,
    /// Where the resume bitmap lives; default: `TARGET.rackcast-resume` next
    /// to a file target, `STATE_DIR/blockdev-MAJ-MIN.resume` for a device.
    pub state_path: Option<PathBuf>,
    /// Directory for block-device resume bitmaps.
    pub state_dir: PathBuf,
    /// How often durable progress is checkpointed (an fdatasync each time).
    pub checkpoint_interval: Duration,
    /// Caps the write rate in bytes per second (benchmarks and tests that
    /// need a restore to take a while); `None` writes at full speed.
    pub max_rate: Option<u64>,
    /// The caller knows every byte of the target reads as zero.
    pub assume_zeroed: bool,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            engine: EngineChoice::Auto,
            queue_depth: 32,
            buffers: 16,
            register_buffers: true,
            force: false,
            resume: true,
            state_path: None,
            state_dir: PathBuf::from("/var/lib/rackcast"),
            checkpoint_interval: Duration::from_secs(1),
            max_rate: None,
            assume_zeroed: false,
        }
    }
}

/// A chunk handed to the writer.
#[derive(Debug)]
pub enum ChunkPayload {
    /// The chunk's canonical bytes (length = the chunk's length), already
    /// checked against the index. Only used blocks are written.
    Data(AlignedBuf),
    /// The chunk is all zeros.
    Zero,
    /// The target already holds the chunk (a delta scan matched it).
    OnTarget,
}

/// What a writer did.
#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    /// The engine used.
    pub engine: Option<EngineKind>,
    /// Why [`EngineChoice::Auto`] runs positioned writes instead of io_uring
    /// (e.g. "io_uring setup failed: EPERM (Operation not permitted)").
    pub engine_fallback: Option<String>,
    /// Direct-I/O alignment of the target (logical sector, or STATX_DIOALIGN).
    pub align: usize,
    /// Physical sector size (BLKPBSZGET; the alignment for files).
    pub physical_sector: usize,
    /// Whether writes bypassed the page cache.
    pub direct: bool,
    /// Bytes written (data and explicit zeros).
    pub bytes_written: u64,
    /// Chunks written.
    pub chunks_written: u64,
    /// Bytes of zero chunks zeroed by BLKZEROOUT or holes.
    pub zero_bytes_discarded: u64,
    /// Bytes of zero chunks skipped because the target was known zeroed.
    pub zero_bytes_skipped: u64,
    /// Chunks the target already held (delta): not written.
    pub chunks_matched: u64,
    /// Bytes of those chunks.
    pub bytes_matched: u64,
    /// Chunks the resume bitmap said were already durable.
    pub chunks_resumed: u64,
    /// Bytes of those chunks.
    pub bytes_resumed: u64,
    /// Chunks delivered again after they were written or while in flight.
    pub duplicates_dropped: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Pending,
    InFlight(u8),
    Done,
}

/// Writes an image's chunks to a target, in any order.
pub struct DiskWriter {
    target: Target,
    index: Arc<ChunkIndex>,
    engine: Box<dyn Engine>,
    pool: BufferPool,
    states: Vec<ChunkState>,
    resume: Option<ResumeState>,
    unsynced: Vec<u64>,
    /// The first failed flush, kept to fail every later one with.
    flush_failed: Option<FlushFailure>,
    last_checkpoint: Instant,
    known_zero: bool,
    file_len: u64,
    cfg: WriterConfig,
    started: Instant,
    submitted_bytes: u64,
    reaped: Vec<Completed>,
    summary: WriteSummary,
}

impl std::fmt::Debug for DiskWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWriter")
            .field("target", &self.target.path)
            .field("engine", &self.engine.kind())
            .finish_non_exhaustive()
    }
}

/// Tag bit marking a submission that is a chunk's bounce-buffered tail.
const TAIL: u64 = 1;

impl DiskWriter {
    /// Opens `path` for the image described by `index` (whose root is
    /// `root`): refuses a mounted device (unless `force`) or one smaller than
    /// the image's minimum target size, creates or grows a file target, sets
    /// up the engine and loads a resume bitmap left by an interrupted run of
    /// the same image.
    pub fn open(
        path: &Path,
        index: Arc<ChunkIndex>,
        root: [u8; 32],
        cfg: &WriterConfig,
    ) -> Result<DiskWriter> {
        if !(1..=4096).contains(&cfg.queue_depth) || cfg.buffers == 0 {
            return Err(WriterError::Config(format!(
                "queue depth {} must be 1..=4096 and buffers {} at least 1",
                cfg.queue_depth, cfg.buffers
            )));
        }
        let meta = &index.meta;
        let target = Target::open(path, meta.source_size, meta.min_target_size, cfg.force)?;
        let pool = BufferPool::new(cfg.buffers, meta.chunk_size as usize);
        let (engine, engine_fallback) = make_engine(&target, cfg, &pool)?;
        let count = index.entries.len() as u64;
        let mut states = vec![ChunkState::Pending; count as usize];
        let mut summary = WriteSummary {
            engine: Some(engine.kind()),
            engine_fallback,
            align: target.align,
            physical_sector: target.physical_sector(),
            direct: target.direct,
            ..WriteSummary::default()
        };
        let resume = if cfg.resume {
            let sp = cfg
                .state_path
                .clone()
                .unwrap_or_else(|| default_state_path(&target, &cfg.state_dir));
            if let Some(dir) = sp.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| WriterError::io("creating", dir, e))?;
            }
            let (mut st, loaded) = ResumeState::load_or_new(&sp, root, target.size, count);
            if loaded && target.created {
                // The file the bitmap vouched for is gone: nothing is on disk.
                st.clear_all();
            } else if loaded {
                for i in 0..count {
                    if st.is_set(i) {
                        states[i as usize] = ChunkState::Done;
                        summary.chunks_resumed += 1;
                        summary.bytes_resumed += index.chunk_len(i) as u64;
                    }
                }
            }
            Some(st)
        } else {
            None
        };
        Ok(DiskWriter {
            known_zero: target.created || cfg.assume_zeroed,
            file_len: target.size,
            target,
            index,
            engine,
            pool,
            states,
            resume,
            unsynced: Vec::new(),
            flush_failed: None,
            last_checkpoint: Instant::now(),
            cfg: cfg.clone(),
            started: Instant::now(),
            submitted_bytes: 0,
            reaped: Vec::new(),
            summary,
        })
    }

    /// The pool producers take chunk buffers from.
    pub fn buffer_pool(&self) -> BufferPool {
        self.pool.clone()
    }

    /// Takes a free buffer from the pool, reaping finished writes while none
    /// is free (so a single-threaded caller cannot stall on its own writes).
    pub fn buffer(&mut self) -> Result<AlignedBuf> {
        loop {
            if let Some(b) = self.pool.try_get() {
                return Ok(b);
            }
            if self.engine.in_flight() == 0 {
                return Ok(self.pool.get());
            }
            self.poll(true)?;
        }
    }

    /// The engine in use.
    pub fn engine(&self) -> EngineKind {
        self.engine.kind()
    }

    /// The target's path.
    pub fn path(&self) -> &Path {
        &self.target.path
    }

    /// Where the resume bitmap lives, when resuming is on.
    pub fn state_path(&self) -> Option<&Path> {
        self.resume.as_ref().map(|r| r.path())
    }

    /// Whether the target is known to read as zeros where nothing was written.
    pub fn known_zero(&self) -> bool {
        self.known_zero
    }

    /// Whether chunk `i` still has to be delivered: not absent, not written,
    /// not in flight, not resumed.
    pub fn needs(&self, i: u64) -> bool {
        self.states.get(i as usize) == Some(&ChunkState::Pending)
            && !matches!(self.index.entries[i as usize].data, ChunkData::Absent)
    }

    /// Chunks not yet written, in disk order.
    pub fn pending(&self) -> Vec<u64> {
        (0..self.states.len() as u64)
            .filter(|&i| self.needs(i))
            .collect()
    }

    /// Writes chunk `i`. Returns at once: completion is noticed by
    /// [`DiskWriter::poll`] (which this also calls without waiting). A chunk
    /// that is already written or in flight is dropped.
    pub fn submit(&mut self, i: u64, payload: ChunkPayload) -> Result<()> {
        if i >= self.states.len() as u64 {
            return Err(WriterError::BadChunk {
                chunk: i,
                detail: format!("the image has {} chunks", self.states.len()),
            });
        }
        if !self.needs(i) {
            if let ChunkPayload::Data(b) = payload {
                self.pool.put(b);
            }
            if !matches!(self.index.entries[i as usize].data, ChunkData::Absent) {
                self.summary.duplicates_dropped += 1;
            }
            return Ok(());
        }
        let len = self.index.chunk_len(i);
        match payload {
            ChunkPayload::OnTarget => {
                self.summary.chunks_matched += 1;
                self.summary.bytes_matched += len as u64;
                self.mark_done(i);
            }
            ChunkPayload::Zero if self.known_zero => {
                self.summary.zero_bytes_skipped += len as u64;
                self.mark_done(i);
            }
            ChunkPayload::Zero => self.write_zero(i, len)?,
            ChunkPayload::Data(buf) => {
                if buf.len() != len {
                    let got = buf.len();
                    self.pool.put(buf);
                    return Err(WriterError::BadChunk {
                        chunk: i,
                        detail: format!("payload is {got} bytes, the chunk is {len}"),
                    });
                }
                self.write_data(i, buf)?;
            }
        }
        self.poll(false)?;
        Ok(())
    }

    /// Takes finished writes (waiting for one with `wait`, if any is in
    /// flight), returns their buffers to the pool and checkpoints durable
    /// progress when it is time. Returns the number of chunks finished.
    pub fn poll(&mut self, wait: bool) -> Result<usize> {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.engine
            .reap(wait, &mut reaped)
            .map_err(|e| WriterError::io("waiting for writes to", &self.target.path, e))?;
        let mut finished = 0;
        let mut first_err = None;
        for c in reaped.drain(..) {
            let i = c.tag >> 1;
            self.pool.put(c.buf);
            if let Err((op, e)) = c.result {
                self.states[i as usize] = ChunkState::Pending;
                first_err.get_or_insert(WriterError::Write {
                    path: self.target.path.clone(),
                    offset: op.disk_off,
                    len: op.len,
                    source: e,
                });
                continue;
            }
            if let ChunkState::InFlight(n) = self.states[i as usize] {
                if n > 1 {
                    self.states[i as usize] = ChunkState::InFlight(n - 1);
                } else {
                    self.summary.chunks_written += 1;
                    self.mark_done(i);
                    finished += 1;
                }
            }
        }
        self.reaped = reaped;
        if let Some(e) = first_err {
            return Err(e);
        }
        if self.resume.is_some()
            && !self.unsynced.is_empty()
            && self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval
        {
            self.checkpoint()?;
        }
        Ok(finished)
    }

    /// Submissions not yet finished.
    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    /// Waits for every write, flushes the target (fdatasync; BLKFLSBUF on a
    /// device) and persists the resume bitmap. Once a flush has failed
    /// ([`WriterError::FlushFailed`]) every later one fails the same way.
    pub fn flush(&mut self) -> Result<()> {
        while self.engine.in_flight() > 0 {
            self.poll(true)?;
        }
        self.checkpoint()
    }

    /// Forgets that chunk `i` was written (read-back found it wrong): it is
    /// pending again, and the resume bitmap no longer vouches for it.
    pub fn mark_unwritten(&mut self, i: u64) {
        if let Some(s) = self.states.get_mut(i as usize) {
            *s = ChunkState::Pending;
        }
        self.unsynced.retain(|&c| c != i);
        if let Some(r) = &mut self.resume {
            r.clear(i);
        }
    }

    /// Flushes, restores a file target's length and removes the resume
    /// bitmap: the restore is complete and durable.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.flush()?;
        if !self.target.is_block {
            let len = self
                .target
                .file
                .metadata()
                .map_err(|e| WriterError::io("examining", &self.target.path, e))?
                .len();
            if len > self.file_len {
                // The bounce-buffered tail was written as a whole aligned block.
                self.target
                    .file
                    .set_len(self.file_len)
                    .map_err(|e| WriterError::io("truncating", &self.target.path, e))?;
                self.flush_target()?;
            }
        }
        if let Some(r) = &self.resume {
            r.remove()?;
        }
        Ok(self.summary.clone())
    }

    /// Stops after an error elsewhere: waits for writes in flight and
    /// persists what is durable, so a rerun resumes from there. Best effort;
    /// after a failed flush nothing is persisted.
    pub fn abandon(mut self) {
        let _ = self.flush();
    }

    /// Counters so far.
    pub fn summary(&self) -> &WriteSummary {
        &self.summary
    }

    /// A reader on the target for delta scans and read-back (O_DIRECT where
    /// the target allows), and the direct-I/O alignment reads must use.
    pub fn target_reader(&self) -> Result<TargetReader> {
        Ok(TargetReader {
            file: self.target.reader()?,
            path: self.target.path.clone(),
            align: self.target.align,
            size: self.target.size,
        })
    }

    fn mark_done(&mut self, i: u64) {
        self.states[i as usize] = ChunkState::Done;
        self.unsynced.push(i);
    }

    fn checkpoint(&mut self) -> Result<()> {
        self.flush_target()?;
        self.last_checkpoint = Instant::now();
        if let Some(r) = &mut self.resume {
            for i in self.unsynced.drain(..) {
                r.set(i);
            }
            r.save()?;
            self.summary.checkpoints += 1;
        }
        self.unsynced.clear();
        Ok(())
    }

    /// Flushes the target. On the first failure the chunks written since the
    /// last good flush go back to pending and the resume bitmap is
    /// discarded; that failure is returned again by every later call,
    /// because a flush that returns after one that failed does not mean the
    /// earlier writes reached the disk.
    fn flush_target(&mut self) -> Result<()> {
        if let Some(f) = &self.flush_failed {
            return Err(f.error(&self.target.path));
        }
        let Err(e) = self.target.flush() else {
            return Ok(());
        };
        self.flush_failed = Some(FlushFailure::of(&e));
        for i in self.unsynced.drain(..) {
            self.states[i as usize] = ChunkState::Pending;
        }
        if let Some(r) = &mut self.resume {
            // Chunks an earlier flush made durable are dropped too: a disk
            // that loses writes is not one to trust a partial restore on.
            // The file on disk never held the unflushed chunks; if it cannot
            // be removed, an empty bitmap over it does the same. Either
            // failing leaves a bitmap no newer than the last good flush,
            // and the flush error is the one to report.
            r.clear_all();
            if r.remove().is_err() {
                let _ = r.save();
            }
        }
        Err(WriterError::FlushFailed {
            path: self.target.path.clone(),
            source: e,
        })
    }

    /// The used ranges of chunk `i`, as disk ranges clipped to the target.
    fn disk_ranges(&self, i: u64, len: usize) -> Vec<(usize, u64, usize)> {
        let off = self.index.disk_offset(i);
        self.index.entries[i as usize]
            .used
            .used_ranges(len)
            .into_iter()
            .filter_map(|r| {
                let start = off + r.start as u64;
                let end = (off + r.end as u64).min(self.target.size);
                (end > start).then(|| (r.start, start, (end - start) as usize))
            })
            .collect()
    }

    fn write_data(&mut self, i: u64, buf: AlignedBuf) -> Result<()> {
        let align = self.target.align as u64;
        let mut ops = Vec::new();
        let mut tail = None;
        for (buf_off, disk_off, len) in self.disk_ranges(i, buf.len()) {
            // Range starts are 4 KiB block boundaries (aligned); only the
            // image's last byte can end off-alignment.
            let aligned = len as u64 / align * align;
            if aligned > 0 {
                ops.push(WriteOp {
                    buf_off,
                    disk_off,
                    len: aligned as usize,
                });
            }
            if aligned < len as u64 {
                let a = aligned as usize;
                tail = Some((
                    disk_off + aligned,
                    buf.as_slice()[buf_off + a..buf_off + len].to_vec(),
                ));
            }
        }
        let bytes: u64 = ops.iter().map(|o| o.len as u64).sum::<u64>()
            + tail.as_ref().map_or(0, |(_, t)| t.len() as u64);
        self.throttle(bytes);
        let n = 1 + tail.is_some() as u8;
        self.states[i as usize] = ChunkState::InFlight(n);
        self.summary.bytes_written += bytes;
        self.engine
            .submit(i << 1, buf, ops)
            .map_err(|e| WriterError::io("submitting writes to", &self.target.path, e))?;
        if let Some((at, bytes)) = tail {
            self.write_tail(i, at, &bytes)?;
        }
        Ok(())
    }

    /// Writes an unaligned tail through a bounce buffer: read the aligned
    /// block it falls in, lay the tail over it, write the block back.
    fn write_tail(&mut self, i: u64, at: u64, bytes: &[u8]) -> Result<()> {
        let align = self.target.align;
        let mut bounce = AlignedBuf::new(align);
        self.target
            .read_into(&self.target.file, at, align, &mut bounce)?;
        bounce.fill(align)[..bytes.len()].copy_from_slice(bytes);
        let op = WriteOp {
            buf_off: 0,
            disk_off: at,
            len: align,
        };
        self.engine
            .submit((i << 1) | TAIL, bounce, vec![op])
            .map_err(|e| WriterError::io("submitting writes to", &self.target.path, e))
    }

    fn write_zero(&mut self, i: u64, len: usize) -> Result<()> {
        let align = self.target.align as u64;
        let ranges = self.disk_ranges(i, len);
        let clean = ranges
            .iter()
            .all(|&(_, d, l)| d % align == 0 && l as u64 % align == 0);
        if clean
            && ranges
                .iter()
                .all(|&(_, d, l)| self.target.zero_range(d, l as u64).is_ok())
        {
            self.summary.zero_bytes_discarded += ranges.iter().map(|r| r.2 as u64).sum::<u64>();
            self.mark_done(i);
            return Ok(());
        }
        // No discard here (or an unaligned tail): write real zeros.
        let mut buf = AlignedBuf::new(len);
        buf.fill(len).fill(0);
        self.write_data(i, buf)
    }

    fn throttle(&mut self, bytes: u64) {
        self.submitted_bytes += bytes;
        if let Some(rate) = self.cfg.max_rate.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(self.submitted_bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}

/// The first failed flush, enough to report it again (an `io::Error` is
/// not `Clone`).
#[derive(Debug, Clone, Copy)]
enum FlushFailure {
    Os(i32),
    Kind(std::io::ErrorKind),
}

impl FlushFailure {
    fn of(e: &std::io::Error) -> FlushFailure {
        e.raw_os_error()
            .map_or(FlushFailure::Kind(e.kind()), FlushFailure::Os)
    }

    fn error(self, path: &Path) -> WriterError {
        let source = match self {
            FlushFailure::Os(n) => std::io::Error::from_raw_os_error(n),
            FlushFailure::Kind(k) => std::io::Error::from(k),
        };
        WriterError::FlushFailed {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads chunks back from the target (delta scans, read-back verification).
#[derive(Debug)]
pub struct TargetReader {
    file: std::fs::File,
    path: PathBuf,
    align: usize,
    size: u64,
}

impl TargetReader {
    /// Opens `path` (a file or block device) for reading back, O_DIRECT
    /// where it allows, with its alignment and size.
    pub fn open(path: &Path) -> Result<TargetReader> {
        let (file, align, size) = target::open_reader(path)?;
        Ok(TargetReader {
            file,
            path: path.into(),
            align,
            size,
        })
    }

    /// Reads the canonical bytes of chunk `i` of `index` as the target holds
    /// them (unused blocks read as zeros, as in the canonical chunk) into
    /// `buf`, and returns their BLAKE3.
    pub fn hash_chunk(&self, index: &ChunkIndex, i: u64, buf: &mut AlignedBuf) -> Result<[u8; 32]> {
        let off = index.disk_offset(i);
        let len = index.chunk_len(i);
        let span = ((self.size.saturating_sub(off)) as usize).min(len);
        target::read_aligned(&self.file, &self.path, self.align, off, span, buf)?;
        let data = buf.fill(len);
        data[span..].fill(0);
        let entry = &index.entries[i as usize];
        if !matches!(entry.used, rackcast_engine::image::UsedMask::All) {
            let mut pos = 0;
            for r in entry.used.used_ranges(len) {
                data[pos..r.start].fill(0);
                pos = r.end;
            }
            data[pos..].fill(0);
        }
        Ok(*blake3::hash(data).as_bytes())
    }
}

/// The engine `cfg` asks for on `t`, and why Auto fell back to positioned
/// writes when it did.
fn make_engine(
    t: &Target,
    cfg: &WriterConfig,
    pool: &BufferPool,
) -> Result<(Box<dyn Engine>, Option<String>)> {
    let file = || {
        t.file
            .try_clone()
            .map_err(|e| WriterError::io("duplicating", &t.path, e))
    };
    let sync = || -> Result<Box<dyn Engine>> { Ok(Box::new(SyncEngine::new(file()?))) };
    let uring = || -> Result<std::result::Result<Box<dyn Engine>, uring::SetupError>> {
        let reg = cfg.register_buffers.then_some(pool);
        Ok(uring::UringEngine::new(file()?, cfg.queue_depth, reg)
            .map(|e| Box::new(e) as Box<dyn Engine>))
    };
    match cfg.engine {
        EngineChoice::Sync => Ok((sync()?, None)),
        EngineChoice::Uring => match uring()? {
            Ok(e) => Ok((e, None)),
            Err(e) => Err(WriterError::Uring {
                path: t.path.clone(),
                step: e.step,
                source: e.source,
            }),
        },
        EngineChoice::Auto if uring_disabled() => Ok((
            sync()?,
            Some("io_uring disabled by kernel.io_uring_disabled = 2".into()),
        )),
        // Any failure to set up a ring (EPERM from a sysctl or seccomp
        // filter, ENOSYS on an old kernel, ENOMEM from RLIMIT_MEMLOCK) means
        // positioned writes: the restore is correct either way.
        EngineChoice::Auto => match uring()? {
            Ok(e) => Ok((e, None)),
            Err(e) => Ok((
                sync()?,
                Some(format!(
                    "io_uring {} failed: {}",
                    e.step,
                    errno_text(&e.source)
                )),
            )),
        },
    }
}

/// "EPERM (Operation not permitted)" for an OS error, the error's text
/// otherwise.
fn errno_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let errno = nix::errno::Errno::from_raw(n);
            format!("{errno:?} ({})", errno.desc())
        }
        None => e.to_string(),
    }
}

/// `kernel.io_uring_disabled = 2` forbids io_uring to everyone.
fn uring_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|s| s.trim() == "2")
}

fn default_state_path(t: &Target, state_dir: &Path) -> PathBuf {
    match t.dev {
        Some((maj, min)) => state_dir.join(format!("blockdev-{maj}-{min}.resume")),
        None => {
            let mut s = t.path.clone().into_os_string();
            s.push(".rackcast-resume");
            PathBuf::from(s)
        }
    }
}
