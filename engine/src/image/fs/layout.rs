//! The partitions of the disk an image holds, read back from the image
//! itself (its first chunk's table, its filesystems' superblocks), with
//! what the image holds of each and what that costs in frames: what
//! `rackcast image inspect` shows, for any image, however it was captured.

use std::cell::RefCell;
use std::io;

use serde::Serialize;

use super::{scan_disk, PartitionUsage, ReadAt, TableKind};
use crate::image::index::ChunkIndex;
use crate::image::{ChunkDecoder, ImageReader};

/// One partition of an imaged disk: what the scan finds in the image
/// (its `used` is the bytes the image holds of it: its used blocks, or all
/// of it), and what those cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLayout {
    /// Where it is, its type, filesystem and the bytes held.
    #[serde(flatten)]
    pub part: PartitionUsage,
    /// The frame bytes the held bytes cost, each chunk's frame shared out
    /// by the bytes it holds in each partition.
    pub stored: u64,
}

/// The disk's table and partitions, as `img` holds them.
pub fn image_layout(img: &ImageReader) -> io::Result<(Option<TableKind>, Vec<PartitionLayout>)> {
    let idx = img.index();
    let disk = ImageDisk {
        img,
        chunk: RefCell::new(None),
    };
    let scan = scan_disk(&disk, idx.meta.source_size, idx.meta.logical_sector_size)?;
    let parts = scan
        .partitions
        .into_iter()
        .map(|mut part| {
            let (used, stored) = held(idx, part.start, part.len);
            part.used = used;
            PartitionLayout { part, stored }
        })
        .collect();
    Ok((scan.table, parts))
}

/// The bytes of `start..start + len` the image holds, and their share of
/// frame bytes.
fn held(idx: &ChunkIndex, start: u64, len: u64) -> (u64, u64) {
    let cs = u64::from(idx.meta.chunk_size);
    let end = start + len;
    let (mut used, mut stored) = (0u64, 0f64);
    for i in start / cs..end.div_ceil(cs).min(idx.entries.len() as u64) {
        let e = &idx.entries[i as usize];
        let off = idx.disk_offset(i);
        let clen = idx.chunk_len(i);
        let (mut inside, mut total) = (0u64, 0u64);
        for r in e.used.used_ranges(clen) {
            let (a, b) = (off + r.start as u64, off + r.end as u64);
            total += b - a;
            inside += b.min(end).saturating_sub(a.max(start));
        }
        used += inside;
        if let Some(f) = e.data.frame() {
            if total > 0 {
                stored += f64::from(f.len) * inside as f64 / total as f64;
            }
        }
    }
    (used, stored.round() as u64)
}

/// The image as a disk to read: one decoded chunk kept, since the scan
/// reads a few small structures, often from the same chunk.
struct ImageDisk<'a> {
    img: &'a ImageReader,
    chunk: RefCell<Option<(u64, Vec<u8>)>>,
}

impl ReadAt for ImageDisk<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let idx = self.img.index();
        let cs = u64::from(idx.meta.chunk_size);
        if offset.saturating_add(buf.len() as u64) > idx.meta.source_size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = at / cs;
            let mut cached = self.chunk.borrow_mut();
            if cached.as_ref().is_none_or(|(c, _)| *c != i) {
                let (mut frame, mut out) = (Vec::new(), Vec::new());
                self.img
                    .read_chunk(i, &mut ChunkDecoder::new(), &mut frame, &mut out)
                    .map_err(io::Error::other)?;
                // Absent chunks decode to nothing; their canonical bytes are zero.
                out.resize(idx.chunk_len(i), 0);
                *cached = Some((i, out));
            }
            let data = &cached.as_ref().map_or(&[][..], |(_, d)| d.as_slice());
            let from = (at - i * cs) as usize;
            let n = (data.len() - from).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
            done += n;
        }
        Ok(())
    }
}
