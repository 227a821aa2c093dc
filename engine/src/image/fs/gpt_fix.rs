//! A restored GPT on a disk larger than the one captured: its backup header
//! and table belong at the new end (UEFI 2.10, 5.3.1), and with `grow` the
//! last partition extends to the new last usable sector.
//!
//! Sans-IO: [`fix_gpt`] reads the restored table through [`ReadAt`] and
//! returns the writes to make, in the order to make them (the primary
//! table and header last, so an interruption leaves the old, still valid
//! primary). Both tables and headers carry recomputed CRC32s.

use std::io;

use super::table::{le32, le64, Partition};
use super::ReadAt;

/// What [`fix_gpt`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptFix {
    /// `(byte offset, bytes)` to write, in order.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The last partition as it now is, when `grow` extended it.
    pub grown: Option<Partition>,
}

/// Why the table cannot be fixed.
#[derive(Debug, thiserror::Error)]
pub enum GptFixError {
    /// Reading the disk failed.
    #[error("reading the restored partition table: {0}")]
    Io(#[from] io::Error),
    /// The primary header is missing or fails its checks.
    #[error("no valid primary GPT header at LBA 1: {0}")]
    BadHeader(&'static str),
    /// The disk is smaller than the table says it was.
    #[error("the disk ({size} bytes) is smaller than its partitions need ({need} bytes)")]
    TooSmall {
        /// The disk's size.
        size: u64,
        /// The end of the last partition, plus the backup table.
        need: u64,
    },
}

/// The writes that move the backup GPT of the disk `disk` (`size` bytes,
/// `sector`-byte sectors) to its end, extending the last partition when
/// `grow`. `Ok(None)` when there is nothing to do (no GPT, or it already
/// ends at the disk's end and nothing grows).
pub fn fix_gpt(
    disk: &dyn ReadAt,
    size: u64,
    sector: u32,
    grow: bool,
) -> Result<Option<GptFix>, GptFixError> {
    let sec = u64::from(sector.max(512));
    let mut hdr = vec![0u8; sec as usize];
    disk.read_at(sec, &mut hdr)?;
    if &hdr[..8] != b"EFI PART" {
        return Ok(None);
    }
    let hsize = le32(&hdr[0x0C..]) as usize;
    if !(92..=sec as usize).contains(&hsize) {
        return Err(GptFixError::BadHeader("header size"));
    }
    if le32(&hdr[0x10..]) != header_crc(&hdr[..hsize]) {
        return Err(GptFixError::BadHeader("header CRC32"));
    }
    let (old_alt, entries_lba) = (le64(&hdr[0x20..]), le64(&hdr[0x48..]));
    let (count, esize) = (le32(&hdr[0x50..]) as u64, le32(&hdr[0x54..]) as u64);
    if esize < 128 || esize % 128 != 0 || count * esize > 1 << 20 {
        return Err(GptFixError::BadHeader("partition entry array size"));
    }
    let mut table = vec![0u8; (count * esize) as usize];
    disk.read_at(entries_lba * sec, &mut table)?;
    if crc32fast::hash(&table) != le32(&hdr[0x58..]) {
        return Err(GptFixError::BadHeader("partition entry array CRC32"));
    }
    let table_sectors = (count * esize).div_ceil(sec);
    let last = size / sec - 1;
    // The backup table takes the `table_sectors` before the backup header.
    let last_usable = last.saturating_sub(table_sectors + 1);
    // The entry that ends last.
    let (mut end_idx, mut end_lba) = (None, 0u64);
    for (i, e) in table.chunks_exact(esize as usize).enumerate() {
        if e[..16].iter().any(|&b| b != 0) && le64(&e[0x28..]) >= end_lba {
            (end_idx, end_lba) = (Some(i), le64(&e[0x28..]));
        }
    }
    if end_lba > last_usable {
        return Err(GptFixError::TooSmall {
            size,
            need: (end_lba + 1 + table_sectors + 1) * sec,
        });
    }
    let mut grown = None;
    if let (true, Some(i)) = (grow && end_lba < last_usable, end_idx) {
        let e = &mut table[i * esize as usize..(i + 1) * esize as usize];
        e[0x28..0x30].copy_from_slice(&last_usable.to_le_bytes());
        let first = le64(&e[0x20..]);
        grown = Some(Partition {
            number: i as u32 + 1,
            start: first * sec,
            len: (last_usable + 1 - first) * sec,
            table_type: String::new(),
        });
    }
    if old_alt == last && grown.is_none() {
        return Ok(None);
    }
    let table_crc = crc32fast::hash(&table);
    let backup_at = last - table_sectors;
    let header = |my: u64, alt: u64, entries: u64| {
        let mut h = hdr.clone();
        h[0x18..0x20].copy_from_slice(&my.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&alt.to_le_bytes());
        h[0x30..0x38].copy_from_slice(&last_usable.to_le_bytes());
        h[0x48..0x50].copy_from_slice(&entries.to_le_bytes());
        h[0x58..0x5C].copy_from_slice(&table_crc.to_le_bytes());
        let crc = header_crc(&h[..hsize]);
        h[0x10..0x14].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut writes = vec![
        (backup_at * sec, table.clone()),
        (last * sec, header(last, 1, backup_at)),
    ];
    // The old backup header, now inside free space or the grown partition,
    // must not be found by a tool scanning for one.
    if old_alt != last && old_alt > 1 && old_alt < last {
        writes.push((old_alt * sec, vec![0u8; sec as usize]));
    }
    // The protective MBR's partition covers the disk (capped at 2^32 - 1).
    let mut mbr = vec![0u8; 512];
    disk.read_at(0, &mut mbr)?;
    if let Some(i) = (0..4).find(|&i| mbr[446 + 16 * i + 4] == 0xEE) {
        let n = (last.min(u64::from(u32::MAX))) as u32;
        mbr[446 + 16 * i + 12..446 + 16 * i + 16].copy_from_slice(&n.to_le_bytes());
        writes.push((0, mbr));
    }
    writes.push((entries_lba * sec, table));
    writes.push((sec, header(1, last, entries_lba)));
    Ok(Some(GptFix { writes, grown }))
}

/// CRC32 of a header with its CRC field taken as zero.
fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..0x10]);
    c.update(&[0; 4]);
    c.update(&h[0x14..]);
    c.finalize()
}
