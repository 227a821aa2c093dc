//! Unicast fallback, the target's side: when its cast session cannot be
//! heard, a receiver fetches the image file's bytes from the server by
//! range requests (the trailer, the index, then the frames of the chunks
//! it still needs, adjacent frames in one request) and writes them through
//! the same [`DiskSink`] a cast session feeds: the same resume state, the
//! same decoders and checks, the same read-back and layout steps.
//!
//! Nothing fetched is trusted: the index must hash to the root the task
//! pinned, and every frame to the hash the index gives it, before the sink
//! (which checks each chunk's content hash again) sees it.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rackcast_engine::cast::sink::ChunkSink;
use rackcast_engine::cast::{CastError, ReceiverStats};
use rackcast_engine::image::header::HEADER_LEN;
use rackcast_engine::image::trailer::TRAILER_LEN;
use rackcast_engine::image::{ChunkIndex, FrameRef, Trailer};

use crate::disk_sink::DiskSink;
use crate::layout::finish_layout;
use crate::receive::{CastReceive, CastReceived};

/// Where the image file's bytes come from (the server's agent API; a file
/// in tests).
pub trait RangeSource {
    /// The image file's length in bytes.
    fn file_len(&mut self) -> Result<u64, String>;
    /// `len` bytes of the image file from `offset`, exactly.
    fn read_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, String>;
}

/// How far a unicast fetch is, for the observer.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnicastProgress {
    /// Chunks with a frame that are on the target.
    pub done: u64,
    /// Chunks with a frame.
    pub total: u64,
    /// Bytes the image restores to.
    pub source_size: u64,
    /// Image bytes fetched so far.
    pub fetched: u64,
}

/// Most bytes asked for in one request: adjacent frames up to this go
/// together.
const MAX_REQUEST: u64 = 8 << 20;
/// Largest index accepted (about 40 million chunks).
const MAX_INDEX: u64 = 1 << 30;
/// Requests of one range before the fetch gives up.
const TRIES: u32 = 3;

/// Writes the image `spec.expected_root` names onto `spec.dest` from `src`:
/// every chunk the target does not already hold (resume), then the flush,
/// read-back and layout steps of [`crate::receive`]. `observe` sees the
/// progress after each request; breaking abandons the fetch
/// ([`CastError::Abandoned`]) and what is written stays for a resume.
pub fn receive_unicast(
    spec: &CastReceive,
    src: &mut dyn RangeSource,
    observe: &mut dyn FnMut(&UnicastProgress) -> ControlFlow<()>,
) -> Result<CastReceived, CastError> {
    let start = Instant::now();
    let index = Arc::new(fetch_index(spec, src)?);
    let mut sink = DiskSink::new(&spec.dest, spec.resume, spec.read_back, spec.writer.clone());
    let done: HashSet<u32> = sink.prepare(&index)?.into_iter().collect();
    let needed: Vec<(u32, FrameRef)> = index
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| Some((i as u32, *e.data.frame()?)))
        .collect();
    let mut progress = UnicastProgress {
        done: needed.iter().filter(|(i, _)| done.contains(i)).count() as u64,
        total: needed.len() as u64,
        source_size: index.meta.source_size,
        fetched: 0,
    };
    let todo: Vec<(u32, FrameRef)> = needed
        .into_iter()
        .filter(|(i, _)| !done.contains(i))
        .collect();
    for group in requests(&todo) {
        let first = group[0].1.offset;
        let last = group[group.len() - 1].1;
        let bytes = fetch(src, first, last.offset + u64::from(last.len) - first)?;
        progress.fetched += bytes.len() as u64;
        let bytes = Bytes::from(bytes);
        for (chunk, f) in group {
            let at = (f.offset - first) as usize;
            let frame = bytes.slice(at..at + f.len as usize);
            if *blake3::hash(&frame).as_bytes() != f.hash {
                return Err(source_err(format!(
                    "the frame of chunk {chunk} (image offset {}) does not hash to what the index says",
                    f.offset
                )));
            }
            sink.write(*chunk, frame)?;
            progress.done += 1;
        }
        if observe(&progress).is_break() {
            return Err(CastError::Abandoned);
        }
    }
    sink.finish()?;
    let layout = finish_layout(&index, &spec.dest, &spec.layout)
        .map_err(|e| CastError::Target(Box::new(e)))?;
    let _ = observe(&progress);
    Ok(CastReceived {
        root: index.root(),
        layout,
        rx: ReceiverStats::default(),
        sink: sink.stats().clone(),
        elapsed: start.elapsed(),
    })
}

/// The trailer, then the index it points at, checked against the root the
/// task pinned.
fn fetch_index(spec: &CastReceive, src: &mut dyn RangeSource) -> Result<ChunkIndex, CastError> {
    let len = src.file_len().map_err(source_err)?;
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(source_err(format!("the image is {len} bytes: too short")));
    }
    let at = len - TRAILER_LEN as u64;
    let bytes = fetch(src, at, TRAILER_LEN as u64)?;
    let buf: &[u8; TRAILER_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| source_err("a short trailer".into()))?;
    let trailer = Trailer::parse(buf, at).map_err(|e| CastError::Source(Box::new(e)))?;
    if spec.expected_root.is_some_and(|r| r != trailer.root) {
        return Err(source_err(format!(
            "the server's image has root {}, not the one the task pinned",
            hex(&trailer.root)
        )));
    }
    if trailer.index_len > MAX_INDEX
        || trailer.index_offset.checked_add(trailer.index_len) != Some(at)
    {
        return Err(source_err(format!(
            "the trailer puts the index at {} (+{}), not just before it at {at}",
            trailer.index_offset, trailer.index_len
        )));
    }
    let bytes = fetch(src, trailer.index_offset, trailer.index_len)?;
    if *blake3::hash(&bytes).as_bytes() != trailer.root {
        return Err(source_err(
            "the index does not hash to the image's root".into(),
        ));
    }
    ChunkIndex::parse(&bytes, trailer.index_offset, trailer.index_offset)
        .map_err(|e| CastError::Source(Box::new(e)))
}

/// `todo` (in chunk order) cut into requests: frames that follow each other
/// in the file go together, up to [`MAX_REQUEST`] bytes.
fn requests(todo: &[(u32, FrameRef)]) -> Vec<&[(u32, FrameRef)]> {
    let mut out = Vec::new();
    let mut from = 0;
    for i in 1..=todo.len() {
        let cut = i == todo.len() || {
            let (prev, next) = (&todo[i - 1].1, &todo[i].1);
            next.offset != prev.offset + u64::from(prev.len)
                || next.offset + u64::from(next.len) - todo[from].1.offset > MAX_REQUEST
        };
        if cut {
            out.push(&todo[from..i]);
            from = i;
        }
    }
    out
}

/// One range, asked again on a failure, [`TRIES`] times in all.
fn fetch(src: &mut dyn RangeSource, offset: u64, len: u64) -> Result<Vec<u8>, CastError> {
    let mut last = String::new();
    for _ in 0..TRIES {
        match src.read_at(offset, len) {
            Ok(b) if b.len() as u64 == len => return Ok(b),
            Ok(b) => last = format!("{} bytes for {len}", b.len()),
            Err(e) => last = e,
        }
    }
    Err(source_err(format!(
        "image bytes {offset}..{}: {last}",
        offset + len
    )))
}

fn source_err(e: String) -> CastError {
    CastError::Source(e.into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(offset: u64, len: u32) -> FrameRef {
        FrameRef {
            offset,
            len,
            hash: [0; 32],
        }
    }

    #[test]
    fn adjacent_frames_go_in_one_request_up_to_its_limit() {
        let todo = [
            (0, f(64, 100)),
            (1, f(164, 100)),
            // A gap (a chunk already on the target) cuts.
            (3, f(400, 100)),
            (4, f(500, MAX_REQUEST as u32 - 200)),
            // Adjacent, but it would take the request past its limit.
            (5, f(300 + MAX_REQUEST, 200)),
        ];
        let sizes: Vec<Vec<u32>> = requests(&todo)
            .iter()
            .map(|g| g.iter().map(|(c, _)| *c).collect())
            .collect();
        assert_eq!(sizes, vec![vec![0, 1], vec![3, 4], vec![5]]);
        assert!(requests(&[]).is_empty());
    }
}
