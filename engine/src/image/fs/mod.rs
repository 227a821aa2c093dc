//! Filesystem-aware capture: which 4 KiB blocks of a disk are worth storing.
//!
//! [`scan_disk`] reads the partition table (GPT or MBR; none means the
//! disk may be one bare filesystem) and, for each partition, the
//! allocation of the filesystems it knows: ext2/3/4 from their block
//! bitmaps, NTFS from its volume bitmap, FAT12/16/32 from the allocation
//! table, XFS from its free-space trees, Linux swap as its header page only. Everything else (the
//! tables, the gaps, unknown partitions) stays used, so what the scan does
//! not understand is captured whole. The result is a [`UsedMap`] the
//! capture turns into each chunk's used-block mask.

mod ext;
mod fat;
mod gpt;
mod layout;
mod ntfs;
pub mod table;
mod xfs;

use std::io;
use std::ops::Range;

use serde::Serialize;

pub use gpt::{add_partition, fix_gpt, DiskWrites, GptFix, GptFixError};
pub use layout::{image_layout, PartitionLayout};
pub use table::{Partition, TableKind};

use super::index::UsedMask;
use super::BLOCK_SIZE;

/// Positioned reads, so the scanners are tested on byte slices.
pub trait ReadAt {
    /// Fills `buf` from byte `offset`, or fails (short reads are errors).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for &[u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match self.get(start..start.saturating_add(buf.len())) {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// One bit per 4 KiB block of the disk: set when the block is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedMap {
    bits: Vec<u64>,
    size: u64,
}

impl UsedMap {
    /// Every block of a `size`-byte disk in use.
    pub fn all(size: u64) -> UsedMap {
        let blocks = size.div_ceil(BLOCK_SIZE as u64);
        let mut bits = vec![u64::MAX; blocks.div_ceil(64) as usize];
        if blocks % 64 != 0 {
            if let Some(last) = bits.last_mut() {
                *last = (1 << (blocks % 64)) - 1;
            }
        }
        UsedMap { bits, size }
    }

    /// Marks every block that overlaps `start..start + len` used.
    pub fn mark(&mut self, start: u64, len: u64) {
        let bs = BLOCK_SIZE as u64;
        let end = start.saturating_add(len).min(self.size);
        if end <= start {
            return;
        }
        self.set_blocks(start / bs..end.div_ceil(bs), true);
    }

    /// Clears the blocks that lie wholly inside `start..start + len` (a
    /// block shared with a neighbour stays used).
    pub fn clear(&mut self, start: u64, len: u64) {
        let bs = BLOCK_SIZE as u64;
        let end = start.saturating_add(len).min(self.size);
        let first = start.div_ceil(bs);
        // The disk's last, partial block belongs wholly to whoever ends there.
        let last = if end == self.size {
            end.div_ceil(bs)
        } else {
            end / bs
        };
        if last > first {
            self.set_blocks(first..last, false);
        }
    }

    fn set_blocks(&mut self, blocks: Range<u64>, on: bool) {
        for b in blocks {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if on {
                self.bits[w] |= 1 << bit;
            } else {
                self.bits[w] &= !(1 << bit);
            }
        }
    }

    /// Whether block `b` (of 4 KiB) is used.
    pub fn is_used(&self, b: u64) -> bool {
        self.bits
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }

    /// The bytes the used blocks cover.
    pub fn used_bytes(&self) -> u64 {
        let bs = BLOCK_SIZE as u64;
        let blocks = self.size.div_ceil(bs);
        let full: u64 = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        // The last block may be partial.
        if blocks > 0 && self.is_used(blocks - 1) {
            full * bs - (blocks * bs - self.size)
        } else {
            full * bs
        }
    }

    /// The mask of the chunk at byte `start`, `len` bytes (4 KiB aligned).
    pub fn chunk_mask(&self, start: u64, len: usize) -> UsedMask {
        let first = start / BLOCK_SIZE as u64;
        let n = len.div_ceil(BLOCK_SIZE);
        if (0..n as u64).all(|b| self.is_used(first + b)) {
            return UsedMask::All;
        }
        let mut m = vec![0u8; n.div_ceil(8)];
        for b in 0..n {
            if self.is_used(first + b as u64) {
                m[b / 8] |= 1 << (b % 8);
            }
        }
        UsedMask::Blocks(m)
    }
}

/// A bitmap of a filesystem's own blocks (or clusters), which the
/// scanners fill and then mark on the disk's [`UsedMap`].
pub(crate) struct FsBlocks {
    bits: Vec<u64>,
    len: u64,
}

impl FsBlocks {
    pub(crate) fn new(len: u64) -> FsBlocks {
        FsBlocks {
            bits: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    /// Marks blocks `start..start + count` used (clipped to the filesystem).
    pub(crate) fn set(&mut self, start: u64, count: u64) {
        self.fill(start, count, true);
    }

    /// Marks blocks `start..start + count` free (clipped to the filesystem).
    pub(crate) fn unset(&mut self, start: u64, count: u64) {
        self.fill(start, count, false);
    }

    fn fill(&mut self, start: u64, count: u64, on: bool) {
        let end = start.saturating_add(count).min(self.len);
        let mut b = start;
        while b < end {
            let (w, bit) = ((b / 64) as usize, b % 64);
            let n = (64 - bit).min(end - b);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if on {
                self.bits[w] |= mask;
            } else {
                self.bits[w] &= !mask;
            }
            b += n;
        }
    }

    /// Blocks `start..start + count` as one group's bitmap says.
    pub(crate) fn set_from_bitmap(&mut self, start: u64, count: u64, bitmap: &[u8]) {
        for i in 0..count.min(bitmap.len() as u64 * 8) {
            if bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                self.set(start + i, 1);
            }
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Makes these blocks (of `bs` bytes, from `base`) the partition's
    /// (`base..base + len`) whole story in `map`: the partition cleared,
    /// each used block marked, and whatever follows the filesystem's last
    /// block kept as it is. Returns the bytes the used blocks cover.
    pub(crate) fn commit(&self, map: &mut UsedMap, base: u64, len: u64, bs: u64) -> u64 {
        map.clear(base, len);
        self.mark(map, base, bs);
        let end = (self.len * bs).min(len);
        map.mark(base + end, len - end);
        self.count() * bs
    }

    /// Marks each run of used blocks in the disk's map.
    pub(crate) fn mark(&self, map: &mut UsedMap, base: u64, bs: u64) {
        let mut b = 0;
        while b < self.len {
            if self.bits[(b / 64) as usize] & (1 << (b % 64)) == 0 {
                b += 1;
                continue;
            }
            let run = b;
            while b < self.len && self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0 {
                b += 1;
            }
            map.mark(base + run * bs, (b - run) * bs);
        }
    }
}

/// What the scan found in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionUsage {
    /// 1-based number; 0 for a disk that is one bare filesystem.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The table's type (`0x83`, a GPT type GUID), empty without a table.
    pub table_type: String,
    /// The filesystem read (`ext4`, `swap`, ...), or `None`: captured whole.
    pub fs: Option<String>,
    /// The bytes its used blocks cover (`len` when captured whole).
    pub used: u64,
}

/// A disk's scan.
#[derive(Debug, Clone)]
pub struct DiskScan {
    /// Its partition table, if any.
    pub table: Option<TableKind>,
    /// Each partition (or the bare filesystem) and what was found in it.
    pub partitions: Vec<PartitionUsage>,
    /// The blocks to store.
    pub map: UsedMap,
}

/// Scans a disk of `size` bytes with `sector`-byte logical sectors.
pub fn scan_disk(disk: &dyn ReadAt, size: u64, sector: u32) -> io::Result<DiskScan> {
    let mut map = UsedMap::all(size);
    let (table, parts) = match table::read_table(disk, size, sector)? {
        Some((kind, parts)) => (Some(kind), parts),
        // No table: perhaps a partition captured alone.
        None => (
            None,
            vec![Partition {
                number: 0,
                start: 0,
                len: size,
                table_type: String::new(),
            }],
        ),
    };
    let mut partitions = Vec::new();
    for p in parts {
        let found = scan_partition(disk, &p, &mut map)?;
        if table.is_none() && found.is_none() {
            break;
        }
        partitions.push(PartitionUsage {
            number: p.number,
            start: p.start,
            len: p.len,
            table_type: p.table_type,
            fs: found.map(|(n, _)| n.to_string()),
            used: found.map_or(p.len, |(_, u)| u),
        });
    }
    Ok(DiskScan {
        table,
        partitions,
        map,
    })
}

/// The first filesystem that recognises partition `p`: its name and used
/// bytes (having marked them in `map`), or `None` (the map untouched).
/// The first `N` bytes of the partition at `base` (`len` bytes), or
/// `None` when it is too small to hold any filesystem the scanners read
/// (64 KiB): where FAT, NTFS and XFS find their boot sector or superblock.
pub(crate) fn head<const N: usize>(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
) -> io::Result<Option<[u8; N]>> {
    if len < 64 * 1024 {
        return Ok(None);
    }
    let mut b = [0u8; N];
    disk.read_at(base, &mut b)?;
    Ok(Some(b))
}

fn scan_partition(
    disk: &dyn ReadAt,
    p: &Partition,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    type Scanner =
        fn(&dyn ReadAt, u64, u64, &mut UsedMap) -> io::Result<Option<(&'static str, u64)>>;
    let scanners: [Scanner; 5] = [ext::scan, ntfs::scan, fat::scan, xfs::scan, swap];
    for scan in scanners {
        if let Some(found) = scan(disk, p.start, p.len, map)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Linux swap: its signature ends the first page (4, 16 or 64 KiB pages).
/// Only that page is kept; the rest is scratch the kernel rewrites.
fn swap(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    for page in [4096u64, 16384, 65536] {
        if len < 2 * page {
            break;
        }
        let mut sig = [0u8; 10];
        disk.read_at(base + page - 10, &mut sig)?;
        if &sig == b"SWAPSPACE2" || &sig == b"SWAP-SPACE" {
            map.clear(base, len);
            map.mark(base, page);
            return Ok(Some(("swap", page)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_keeps_shared_blocks_and_masks_chunks() {
        let mut m = UsedMap::all(10 * 4096 + 100);
        assert_eq!(m.used_bytes(), 10 * 4096 + 100);
        // 1.5 blocks to 8.5 blocks: blocks 2..8 cleared, 1 and 8 shared.
        m.clear(6144, 7 * 4096);
        assert!(m.is_used(1) && !m.is_used(2) && !m.is_used(7) && m.is_used(8));
        m.mark(5 * 4096 + 1, 1);
        assert!(m.is_used(5) && !m.is_used(4));
        assert_eq!(m.chunk_mask(0, 2 * 4096), UsedMask::All);
        assert_eq!(
            m.chunk_mask(0, 8 * 4096),
            UsedMask::Blocks(vec![0b0010_0011])
        );
        // The partial last block ends the disk, so a range to the end clears it.
        m.clear(9 * 4096, 4096 + 100);
        assert!(!m.is_used(9) && !m.is_used(10));
        assert_eq!(m.used_bytes(), 4 * 4096);
    }

    #[test]
    fn swap_keeps_its_header_page() {
        let mut d = vec![0xA5u8; 1 << 20];
        d[4086..4096].copy_from_slice(b"SWAPSPACE2");
        let s = scan_disk(&d.as_slice(), d.len() as u64, 512).unwrap();
        assert_eq!(s.table, None);
        assert_eq!(s.partitions.len(), 1);
        assert_eq!(s.partitions[0].fs.as_deref(), Some("swap"));
        assert_eq!(s.map.used_bytes(), 4096);
    }

    #[test]
    fn a_disk_with_nothing_we_read_is_captured_whole() {
        let d = vec![0x11u8; 1 << 20];
        let s = scan_disk(&d.as_slice(), d.len() as u64, 512).unwrap();
        assert!(s.partitions.is_empty());
        assert_eq!(s.map, UsedMap::all(1 << 20));
    }
}
