//! Capture: read a file or block device, encode its chunks on all cores and
//! write an image.
//!
//! Pipeline: one reader thread does large sequential reads into recycled
//! buffers; N encoder threads hash and compress; the calling thread puts
//! results back in order, drops duplicates and writes frames. Output goes to
//! `OUT.partial` and is renamed over `OUT` only once complete and durable, so a
//! killed capture never leaves something that looks like an image.
//!
//! With `filesystems` on (the default), the source is scanned first
//! ([`super::fs::scan_disk`]): unused blocks of the filesystems it reads
//! are neither read nor stored (each chunk's used-block mask says which),
//! and a chunk with no used block is `Absent`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use super::codec::{ChunkEncoder, EncodedChunk};
use super::error::{ImageError, Result};
use super::fs::{scan_disk, PartitionUsage, ReadAt, TableKind, UsedMap};
use super::header::{Header, HEADER_LEN};
use super::index::{ChunkData, ChunkEntry, ChunkIndex, FrameRef, Metadata, UsedMask};
use super::outfile::OutFile;
use super::sign::ImageSigner;
use super::source::{mounted_parts, probe_source, SourceInfo};
use super::trailer::Trailer;
use super::{check_chunk_size, DEFAULT_CHUNK_SIZE, DEFAULT_LEVEL, FORMAT_VERSION};

/// Options of a capture.
#[derive(Debug)]
pub struct CreateOptions {
    /// Logical chunk size (power of two).
    pub chunk_size: u32,
    /// zstd level.
    pub level: i32,
    /// Encoder threads.
    pub threads: usize,
    /// Sign the root with this key.
    pub signer: Option<ImageSigner>,
    /// Free-form labels recorded in the metadata.
    pub labels: BTreeMap<String, String>,
    /// Set to stop the capture: it ends within a chunk or so with
    /// [`ImageError::Cancelled`], and the partial output is removed.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Read the partition table and filesystems and store only used
    /// blocks; off, every block is stored.
    pub filesystems: bool,
    /// Capture a block device with a partition mounted read-only (one
    /// mounted read-write is always refused: its image would not be
    /// consistent).
    pub allow_mounted: bool,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: DEFAULT_LEVEL,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            signer: None,
            labels: BTreeMap::new(),
            cancel: None,
            filesystems: true,
            allow_mounted: false,
        }
    }
}

/// What a capture produced.
#[derive(Debug)]
pub struct CreateSummary {
    /// The final index (metadata, kinds, hashes).
    pub index: ChunkIndex,
    /// The image root.
    pub root: [u8; 32],
    /// Whether the root was signed.
    pub signed: bool,
    /// Size of the image file in bytes.
    pub image_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// What the filesystem scan found (`None` with `filesystems` off).
    pub scan: Option<ScanReport>,
}

/// The filesystem scan's findings, for the capture's report.
#[derive(Debug, Clone)]
pub struct ScanReport {
    /// The partition table, if any.
    pub table: Option<TableKind>,
    /// Each partition (or the bare filesystem) and what was found in it.
    pub partitions: Vec<PartitionUsage>,
    /// The bytes of the source that were read and stored (before
    /// compression).
    pub used_bytes: u64,
}

struct Work {
    i: u64,
    /// The canonical bytes (unused blocks zero); empty when `Absent`.
    buf: Vec<u8>,
    used: UsedMask,
}

struct Done {
    i: u64,
    buf: Vec<u8>,
    used: UsedMask,
    hash: [u8; 32],
    enc: Encoded,
}

enum Encoded {
    /// No block in use: nothing read, nothing stored.
    Absent,
    Zero,
    Duplicate(u64),
    /// The frame and its hash.
    Zstd(Vec<u8>, [u8; 32]),
    Raw,
}

/// Captures `src` into a new image at `out`. `progress` is called with the
/// number of source bytes done, in order, as chunks are written.
pub fn create_image(
    src: &Path,
    out: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<CreateSummary> {
    let file = File::open(src).map_err(|e| ImageError::io("opening", src, e))?;
    let info = probe_source(&file, src)?;
    if info.is_block_device {
        for m in mounted_parts(&file)? {
            if m.read_write || !opts.allow_mounted {
                return Err(ImageError::Mounted {
                    device: m.device,
                    mount_point: m.mount_point,
                    read_write: m.read_write,
                });
            }
        }
    }
    create_image_from(&file, src, info, out, opts, progress)
}

/// Captures `info.size` bytes read through `src` (a file, or an export of
/// a virtual disk: `rackcast image import`); `name` names it in errors.
pub fn create_image_from(
    src: &(dyn ReadAt + Sync),
    name: &Path,
    info: SourceInfo,
    out: &Path,
    opts: &CreateOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<CreateSummary> {
    let start = Instant::now();
    check_chunk_size(opts.chunk_size as u64)?;
    let threads = opts.threads.max(1);
    // Fail on a bad level before reading anything.
    ChunkEncoder::new(opts.level)?;
    let scan = if opts.filesystems {
        let s = scan_disk(src, info.size, info.logical_sector_size)
            .map_err(|e| ImageError::io("reading the partitions of", name, e))?;
        Some(s)
    } else {
        None
    };
    let map = scan.as_ref().map(|s| &s.map);
    let chunk_size = opts.chunk_size;
    let count = ChunkIndex::chunks_for(info.size, chunk_size);

    let partial = partial_path(out);
    let mut outf = OutFile::create(&partial)?;
    let guard = RemoveOnDrop(Some(partial.clone()));
    let header = Header {
        version: FORMAT_VERSION,
        chunk_size,
        source_size: info.size,
    };
    outf.write_all(&header.emit())?;

    // Buffers circulate reader -> encoder -> writer -> reader: at most
    // `4 * threads + 4` chunks are in memory at once, however big the disk.
    // Enough that a slow chunk (text at a high level) does not stall the
    // reader while the other encoders race ahead on zeros and noise.
    let in_flight = 4 * threads + 4;
    let (free_tx, free_rx) = bounded::<Vec<u8>>(in_flight);
    for _ in 0..in_flight {
        free_tx.send(Vec::new()).expect("channel has room");
    }
    let (work_tx, work_rx) = bounded::<Work>(in_flight);
    let (done_tx, done_rx) = bounded::<Result<Done>>(in_flight);
    let committed: Arc<Mutex<HashMap<[u8; 32], u64>>> = Arc::default();

    let mut entries: Vec<ChunkEntry> = Vec::with_capacity(count as usize);
    let mut pos = HEADER_LEN as u64;
    std::thread::scope(|s| -> Result<()> {
        // Owned here so that an early error return closes every channel and
        // lets the pipeline threads exit instead of blocking the scope.
        let (done_rx, free_tx) = (done_rx, free_tx);
        let reader_done = done_tx.clone();
        s.spawn(move || {
            if let Err(e) = read_chunks(src, name, info.size, chunk_size, map, &free_rx, &work_tx) {
                let _ = reader_done.send(Err(e));
            }
        });
        for _ in 0..threads {
            let (work_rx, done_tx, committed) =
                (work_rx.clone(), done_tx.clone(), committed.clone());
            let level = opts.level;
            s.spawn(move || encode_chunks(level, &work_rx, &done_tx, &committed));
        }
        drop(done_tx);
        drop(work_rx);

        let mut pending: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let mut done_bytes = 0u64;
        while next < count {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                // Returning closes the channels: the reader and encoders stop
                // at their next send or receive, and the guard removes the
                // partial file.
                return Err(ImageError::Cancelled {
                    done: done_bytes,
                    total: info.size,
                });
            }
            let d = match done_rx.recv() {
                Ok(d) => d?,
                Err(_) => {
                    return Err(ImageError::InvalidParameter(
                        "capture pipeline stopped early".into(),
                    ))
                }
            };
            pending.insert(d.i, d);
            while let Some(d) = pending.remove(&next) {
                let len = (info.size - d.i * chunk_size as u64).min(chunk_size as u64);
                let entry = commit(&mut outf, &mut pos, &committed, &d)?;
                entries.push(entry);
                // The reader may have finished: a closed pool is fine.
                let _ = free_tx.send(d.buf);
                done_bytes += len;
                progress(len);
                next += 1;
            }
        }
        Ok(())
    })?;

    let min_target_size = entries
        .iter()
        .rposition(|e| e.data != ChunkData::Absent)
        .map_or(0, |i| {
            (i as u64 * chunk_size as u64 + chunk_size as u64).min(info.size)
        });
    let index = ChunkIndex {
        version: FORMAT_VERSION,
        meta: Metadata {
            source_size: info.size,
            chunk_size,
            logical_sector_size: info.logical_sector_size,
            physical_sector_size: info.physical_sector_size,
            min_target_size,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            tool_version: format!("rackcast {}", env!("CARGO_PKG_VERSION")),
            labels: opts.labels.clone(),
        },
        entries,
    };
    let index_bytes = index.emit();
    let root = *blake3::hash(&index_bytes).as_bytes();
    let trailer = Trailer {
        version: FORMAT_VERSION,
        index_offset: pos,
        index_len: index_bytes.len() as u64,
        root,
        signature: opts.signer.as_ref().map(|k| k.sign_root(&root)),
    };
    outf.write_all(&index_bytes)?;
    outf.write_all(&trailer.emit())?;
    outf.finish()?;
    std::fs::rename(&partial, out).map_err(|e| ImageError::io("renaming into", out, e))?;
    guard.disarm();
    Ok(CreateSummary {
        image_bytes: pos + index_bytes.len() as u64 + super::trailer::TRAILER_LEN as u64,
        index,
        root,
        signed: trailer.signature.is_some(),
        elapsed: start.elapsed(),
        scan: scan.map(|s| ScanReport {
            table: s.table,
            used_bytes: s.map.used_bytes(),
            partitions: s.partitions,
        }),
    })
}

/// `img` -> `img.partial`.
fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    s.into()
}

/// Reads chunk after chunk: whole chunks in one positioned read each, or,
/// where `map` leaves blocks out, only the used runs (the rest stays zero,
/// as the canonical bytes have it), and nothing of a chunk with none.
fn read_chunks(
    file: &(dyn ReadAt + Sync),
    path: &Path,
    size: u64,
    chunk_size: u32,
    map: Option<&UsedMap>,
    free: &Receiver<Vec<u8>>,
    work: &Sender<Work>,
) -> Result<()> {
    let count = ChunkIndex::chunks_for(size, chunk_size);
    for i in 0..count {
        let Ok(mut buf) = free.recv() else {
            return Ok(());
        };
        let off = i * chunk_size as u64;
        let len = (size - off).min(chunk_size as u64) as usize;
        let used = map.map_or(UsedMask::All, |m| m.chunk_mask(off, len));
        let ranges = used.used_ranges(len);
        buf.clear();
        if !ranges.is_empty() {
            buf.resize(len, 0);
        }
        for r in ranges {
            let at = off + r.start as u64;
            file.read_at(at, &mut buf[r]).map_err(|e| {
                ImageError::io(
                    "reading",
                    path,
                    std::io::Error::new(e.kind(), format!("at byte offset {at}: {e}")),
                )
            })?;
        }
        if work.send(Work { i, buf, used }).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn encode_chunks(
    level: i32,
    work: &Receiver<Work>,
    done: &Sender<Result<Done>>,
    committed: &Mutex<HashMap<[u8; 32], u64>>,
) {
    let mut enc = match ChunkEncoder::new(level) {
        Ok(e) => e,
        Err(e) => {
            let _ = done.send(Err(e));
            return;
        }
    };
    for Work { i, buf, used } in work {
        // Hash first: a chunk already stored earlier is not worth compressing.
        let (hash, enc_result) = if buf.is_empty() {
            ([0; 32], Encoded::Absent)
        } else if super::codec::is_zero(&buf) {
            (enc.zero_hash(buf.len()), Encoded::Zero)
        } else {
            let hash = *blake3::hash(&buf).as_bytes();
            let seen = committed.lock().expect("dedup map").get(&hash).copied();
            match seen {
                Some(of) => (hash, Encoded::Duplicate(of)),
                None => match enc.compress(&buf) {
                    EncodedChunk::Zstd(f) => {
                        let fh = *blake3::hash(&f).as_bytes();
                        (hash, Encoded::Zstd(f, fh))
                    }
                    EncodedChunk::Raw => (hash, Encoded::Raw),
                    EncodedChunk::Zero => (hash, Encoded::Zero),
                },
            }
        };
        if done
            .send(Ok(Done {
                i,
                buf,
                used,
                hash,
                enc: enc_result,
            }))
            .is_err()
        {
            return;
        }
    }
}

/// Writes one chunk's frame (if it needs one) and returns its index entry.
/// Runs in chunk order, so a duplicate always points at an earlier chunk.
/// Frame hashes come from the encoders: a raw frame is the chunk itself, so
/// its frame hash is the content hash already computed.
fn commit(
    out: &mut OutFile,
    pos: &mut u64,
    committed: &Mutex<HashMap<[u8; 32], u64>>,
    d: &Done,
) -> Result<ChunkEntry> {
    let mut write_frame = |bytes: &[u8], hash: [u8; 32]| -> Result<FrameRef> {
        out.write_all(bytes)?;
        let f = FrameRef {
            offset: *pos,
            len: bytes.len() as u32,
            hash,
        };
        *pos += bytes.len() as u64;
        Ok(f)
    };
    let mut map = committed.lock().expect("dedup map");
    let data = match &d.enc {
        Encoded::Absent => ChunkData::Absent,
        Encoded::Zero => ChunkData::Zero,
        Encoded::Duplicate(of) => ChunkData::Duplicate { of: *of },
        Encoded::Zstd(..) | Encoded::Raw if map.contains_key(&d.hash) => {
            ChunkData::Duplicate { of: map[&d.hash] }
        }
        Encoded::Zstd(f, fh) => ChunkData::Zstd(write_frame(f, *fh)?),
        Encoded::Raw => ChunkData::Raw(write_frame(&d.buf, d.hash)?),
    };
    if matches!(data, ChunkData::Zstd(_) | ChunkData::Raw(_)) {
        map.insert(d.hash, d.i);
    }
    Ok(ChunkEntry {
        data,
        hash: d.hash,
        used: d.used.clone(),
    })
}

struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}
