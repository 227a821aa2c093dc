//! The multicast receiver's target: the [`DiskWriter`] behind the cast
//! [`ChunkSink`] interface, so that a received image is written the way a
//! restore writes one (O_DIRECT through io_uring, zero chunks as
//! BLKZEROOUT or holes, a resume bitmap, a final flush, read-back).
//!
//! ```text
//! receiver thread ─write(frame)─► decoders (N threads: BLAKE3, zstd, BLAKE3,
//!                                 into pooled aligned buffers, duplicates too)
//!                                   ─► writer thread (DiskWriter) ─► target
//! ```
//!
//! The receiver's loop never decodes or writes: it hands a verified frame
//! over and goes back to its socket. Memory is bounded by the frame channel
//! and the writer's buffer pool; when both are full, `write` waits, and the
//! backlog it reports lets the receiver's feedback slow the sender down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver as ChanReceiver, Sender as ChanSender};
use rackcast_engine::cast::sink::ChunkSink;
use rackcast_engine::cast::sink::{ReadBack, SinkStats};
use rackcast_engine::cast::CastError;
use rackcast_engine::image::{ChunkData, ChunkDecoder, ChunkIndex};

use crate::error::WriterError;
use crate::restore::{find_bad_chunks, verify_set, VerifyMode};
use crate::writer::{BufferPool, ChunkPayload, DiskWriter, WriteSummary, WriterConfig};

/// Frames queued between the receiver and the decoders.
const FRAME_QUEUE: usize = 16;

/// A received image written through the io_uring disk writer.
#[derive(Debug)]
pub struct DiskSink {
    dest: PathBuf,
    cfg: WriterConfig,
    scan: bool,
    read_back: ReadBack,
    decoders: usize,
    frames: Option<ChanSender<(u32, Bytes)>>,
    threads: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<Finished, CastError>>>,
    finishing: Arc<AtomicBool>,
    backlog: Arc<AtomicU64>,
    /// First error of a decoder thread (the writer's comes from its join).
    decode_error: Arc<Mutex<Option<CastError>>>,
    stats: SinkStats,
}

struct Finished {
    summary: WriteSummary,
    verified: u64,
}

impl DiskSink {
    /// A sink for `dest` (a file, created if missing, or a block device).
    /// With `resume`, chunks that an interrupted receive left durable (the
    /// writer's bitmap) or that already hash right on the target are not
    /// received again.
    pub fn new(dest: &Path, resume: bool, read_back: ReadBack, mut cfg: WriterConfig) -> Self {
        cfg.resume = resume;
        DiskSink {
            dest: dest.to_path_buf(),
            cfg,
            scan: resume,
            read_back,
            decoders: std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .clamp(1, 4),
            frames: None,
            threads: Vec::new(),
            writer: None,
            finishing: Arc::default(),
            backlog: Arc::default(),
            decode_error: Arc::default(),
            stats: SinkStats::default(),
        }
    }

    /// Counters: chunks resumed, bytes written, chunks read back.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Why the pipeline stopped: a decoder's error, else the writer's.
    fn stopped(&mut self) -> CastError {
        self.frames = None;
        if let Some(e) = self.decode_error.lock().ok().and_then(|mut e| e.take()) {
            return e;
        }
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => e,
            _ => CastError::Target(format!("the writer of {} stopped", self.dest.display()).into()),
        }
    }
}

/// The writer's error, kept whole: a caller can still tell a mounted target
/// from a failed write (`CastError::target_error`).
fn target_err(e: WriterError) -> CastError {
    CastError::Target(Box::new(e))
}

impl ChunkSink for DiskSink {
    fn prepare(&mut self, index: &Arc<ChunkIndex>) -> Result<Vec<u32>, CastError> {
        let root = index.root();
        let (ready_tx, ready_rx) = bounded::<Result<(Vec<u32>, BufferPool, u64), CastError>>(1);
        let (payload_tx, payload_rx) = bounded::<(u64, ChunkPayload, u64)>(self.cfg.buffers);
        let (dest, cfg, scan, finishing, backlog, verify) = (
            self.dest.clone(),
            self.cfg.clone(),
            self.scan,
            self.finishing.clone(),
            self.backlog.clone(),
            match self.read_back {
                ReadBack::Off => VerifyMode::Off,
                ReadBack::Sample => VerifyMode::Sample,
                ReadBack::Full => VerifyMode::Full,
            },
        );
        let idx = index.clone();
        let writer = std::thread::Builder::new()
            .name("cast-write".into())
            .spawn(move || {
                let w = match open(&dest, &idx, root, &cfg, scan) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Err(CastError::Target("the target did not open".into()));
                    }
                };
                let done = done_chunks(&idx, &w);
                let resumed = w.summary().chunks_resumed + w.summary().chunks_matched;
                if ready_tx.send(Ok((done, w.buffer_pool(), resumed))).is_err() {
                    w.abandon();
                    return Err(CastError::Abandoned);
                }
                drain(w, &idx, root, &payload_rx, &finishing, &backlog, verify)
            })
            .map_err(|e| {
                target_err(WriterError::io(
                    "starting the writer thread for",
                    &self.dest,
                    e,
                ))
            })?;
        let (done, pool, resumed) = match ready_rx.recv() {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = writer.join();
                return Err(e);
            }
            Err(_) => {
                self.writer = Some(writer);
                return Err(self.stopped());
            }
        };
        self.writer = Some(writer);
        self.stats.resumed_chunks = resumed;

        let mut dups: HashMap<u32, Vec<u32>> = HashMap::new();
        for (i, e) in index.entries.iter().enumerate() {
            if let ChunkData::Duplicate { of } = e.data {
                dups.entry(of as u32).or_default().push(i as u32);
            }
        }
        let dups = Arc::new(dups);
        let (frames_tx, frames_rx) = bounded::<(u32, Bytes)>(FRAME_QUEUE);
        for n in 0..self.decoders {
            let (rx, tx, pool, idx, dups, err) = (
                frames_rx.clone(),
                payload_tx.clone(),
                pool.clone(),
                index.clone(),
                dups.clone(),
                self.decode_error.clone(),
            );
            let h = std::thread::Builder::new()
                .name(format!("cast-decode-{n}"))
                .spawn(move || {
                    if let Err(e) = decode_frames(&rx, &tx, &pool, &idx, &dups) {
                        if let Ok(mut slot) = err.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                })
                .map_err(|e| {
                    target_err(WriterError::io(
                        "starting a decoder thread for",
                        &self.dest,
                        e,
                    ))
                })?;
            self.threads.push(h);
        }
        self.frames = Some(frames_tx);
        Ok(done)
    }

    fn write(&mut self, chunk: u32, frame: Bytes) -> Result<(), CastError> {
        let len = frame.len() as u64;
        let Some(tx) = self.frames.as_ref() else {
            return Err(CastError::Target("write before prepare".into()));
        };
        self.backlog.fetch_add(len, Ordering::Relaxed);
        if tx.send((chunk, frame)).is_err() {
            return Err(self.stopped());
        }
        Ok(())
    }

    fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    fn finish(&mut self) -> Result<(), CastError> {
        self.finishing.store(true, Ordering::Relaxed);
        self.frames = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        if let Some(e) = self.decode_error.lock().ok().and_then(|mut e| e.take()) {
            // The writer sees its input close without everything written
            // and keeps what is durable for a resumed receive.
            if let Some(w) = self.writer.take() {
                let _ = w.join();
            }
            return Err(e);
        }
        let Some(w) = self.writer.take() else {
            return Err(CastError::Target("finish before prepare".into()));
        };
        let f = w
            .join()
            .map_err(|_| CastError::Target("the writer thread panicked".into()))??;
        self.stats.bytes_written = f.summary.bytes_written;
        self.stats.verified_chunks = f.verified;
        Ok(())
    }
}

impl Drop for DiskSink {
    fn drop(&mut self) {
        // Not finished: close the pipeline; the writer keeps what is durable.
        self.frames = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// Opens the writer, lays down zero chunks and, when resuming onto a
/// target that may hold the image already, skips chunks that hash right.
fn open(
    dest: &Path,
    index: &Arc<ChunkIndex>,
    root: [u8; 32],
    cfg: &WriterConfig,
    scan: bool,
) -> Result<DiskWriter, CastError> {
    let mut w = DiskWriter::open(dest, index.clone(), root, cfg).map_err(target_err)?;
    if scan && !w.known_zero() {
        let todo: Vec<u64> = w
            .pending()
            .into_iter()
            .filter(|&i| index.entries[i as usize].data != ChunkData::Zero)
            .collect();
        if !todo.is_empty() {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let readers = (0..threads)
                .map(|_| w.target_reader())
                .collect::<Result<Vec<_>, _>>()
                .map_err(target_err)?;
            let bad = find_bad_chunks(index, readers, &todo).map_err(target_err)?;
            for i in todo.into_iter().filter(|i| bad.binary_search(i).is_err()) {
                w.submit(i, ChunkPayload::OnTarget).map_err(target_err)?;
            }
        }
    }
    for i in 0..index.entries.len() as u64 {
        if index.entries[i as usize].data == ChunkData::Zero && w.needs(i) {
            w.submit(i, ChunkPayload::Zero).map_err(target_err)?;
        }
    }
    Ok(w)
}

/// Chunks with frames the receiver need not fetch: written already, with
/// every duplicate of theirs (a duplicate is only written with its frame).
fn done_chunks(index: &ChunkIndex, w: &DiskWriter) -> Vec<u32> {
    let mut pending_dup = vec![false; index.entries.len()];
    for (i, e) in index.entries.iter().enumerate() {
        if let ChunkData::Duplicate { of } = e.data {
            if w.needs(i as u64) {
                pending_dup[of as usize] = true;
            }
        }
    }
    (0..index.entries.len())
        .filter(|&i| {
            index.entries[i].data.frame().is_some() && !w.needs(i as u64) && !pending_dup[i]
        })
        .map(|i| i as u32)
        .collect()
}

/// A decoder thread: checks and decodes each frame into a pooled aligned
/// buffer, for its chunk and each of the chunk's duplicates.
fn decode_frames(
    frames: &ChanReceiver<(u32, Bytes)>,
    out: &ChanSender<(u64, ChunkPayload, u64)>,
    pool: &BufferPool,
    index: &ChunkIndex,
    dups: &HashMap<u32, Vec<u32>>,
) -> Result<(), CastError> {
    let mut dec = ChunkDecoder::new();
    let mut plain = Vec::new();
    for (chunk, frame) in frames {
        let c0 = u64::from(chunk);
        let e = &index.entries[c0 as usize];
        let len = index.chunk_len(c0);
        let bytes: &[u8] = match e.data {
            // A raw frame is the chunk: one hash proves both the frame and
            // the content.
            ChunkData::Raw(f)
                if f.hash == e.hash && f.len as usize == len && frame.len() == len =>
            {
                if *blake3::hash(&frame).as_bytes() != e.hash {
                    return Err(CastError::Target(
                        format!("chunk {c0}: frame does not match its BLAKE3 hash").into(),
                    ));
                }
                &frame
            }
            _ => {
                dec.decode(index, c0, &frame, &mut plain)
                    .map_err(|err| target_err(WriterError::Image(err)))?;
                &plain
            }
        };
        // A duplicate has the same bytes (its hash is the same).
        let targets: Vec<u64> = std::iter::once(c0)
            .chain(
                dups.get(&chunk)
                    .into_iter()
                    .flatten()
                    .map(|&d| u64::from(d)),
            )
            .collect();
        for (k, &c) in targets.iter().enumerate() {
            let mut buf = pool.get();
            buf.copy_from(bytes);
            // The frame stays in the backlog until its last copy is queued.
            let freed = if k + 1 == targets.len() {
                frame.len() as u64
            } else {
                0
            };
            if out.send((c, ChunkPayload::Data(buf), freed)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The writer thread: submits payloads as they come; when the decoders are
/// done, flushes, reads back and finishes — or, when the receive was not
/// finished (abandoned, failed), keeps what is durable for a resume.
fn drain(
    mut w: DiskWriter,
    index: &ChunkIndex,
    root: [u8; 32],
    payloads: &ChanReceiver<(u64, ChunkPayload, u64)>,
    finishing: &AtomicBool,
    backlog: &AtomicU64,
    verify: VerifyMode,
) -> Result<Finished, CastError> {
    let fail = |w: DiskWriter, e: WriterError| {
        w.abandon();
        Err(target_err(e))
    };
    loop {
        let next = match payloads.try_recv() {
            Ok(p) => Some(p),
            Err(crossbeam_channel::TryRecvError::Empty) if w.in_flight() > 0 => {
                if let Err(e) = w.poll(true) {
                    return fail(w, e);
                }
                continue;
            }
            Err(crossbeam_channel::TryRecvError::Empty) => payloads.recv().ok(),
            Err(crossbeam_channel::TryRecvError::Disconnected) => None,
        };
        let Some((chunk, payload, freed)) = next else {
            break;
        };
        let r = w.submit(chunk, payload);
        backlog.fetch_sub(freed, Ordering::Relaxed);
        if let Err(e) = r {
            return fail(w, e);
        }
    }
    if !finishing.load(Ordering::Relaxed) || !w.pending().is_empty() {
        let missing = w.pending().len();
        w.abandon();
        if finishing.load(Ordering::Relaxed) {
            return Err(CastError::Target(
                format!("the receive ended with {missing} chunks not written").into(),
            ));
        }
        return Err(CastError::Abandoned);
    }
    if let Err(e) = w.flush() {
        return fail(w, e);
    }
    // Read back: success means the bytes are on the target, not just sent.
    let check = verify_set(index, &root, verify);
    let verified = if check.is_empty() {
        0
    } else {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let readers = match (0..threads)
            .map(|_| w.target_reader())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(r) => r,
            Err(e) => return fail(w, e),
        };
        let bad = match find_bad_chunks(index, readers, &check) {
            Ok(b) => b,
            Err(e) => return fail(w, e),
        };
        if let Some(&i) = bad.first() {
            for &b in &bad {
                w.mark_unwritten(b);
            }
            w.abandon();
            return Err(CastError::Target(
                format!(
                    "{} chunks do not verify after writing; the first is chunk {i} at disk offset {}",
                    bad.len(),
                    index.disk_offset(i)
                )
                .into(),
            ));
        }
        check.len() as u64
    };
    let summary = w.finish().map_err(target_err)?;
    Ok(Finished { summary, verified })
}
