//! Changing a restored GPT (UEFI 2.10, 5.3): on a disk larger than the one
//! captured, its backup header and table move to the new end and, with
//! `grow`, the last partition extends to the new last usable sector
//! ([`fix_gpt`]); a partition is added in free space ([`add_partition`],
//! for the NoCloud seed).
//!
//! Sans-IO: both read the table through [`ReadAt`] and return the writes
//! to make, in the order to make them (the primary table and header last,
//! so an interruption leaves the old, still valid primary). Both tables and
//! headers carry recomputed CRC32s.

use std::io;

use super::table::{le32, le64, read_table, Partition, TableKind, EXTENDED};
use super::ReadAt;

/// `(byte offset, bytes)` to write to a disk, in order.
pub type DiskWrites = Vec<(u64, Vec<u8>)>;

/// What [`fix_gpt`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptFix {
    /// The writes to make.
    pub writes: DiskWrites,
    /// The last partition as it now is, when `grow` extended it.
    pub grown: Option<Partition>,
    /// The backup GPT moved to the disk's end (false for an MBR disk).
    pub backup_moved: bool,
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
    /// No free space for the partition to add.
    #[error("no {need} bytes of free space between the partitions")]
    NoSpace {
        /// What was asked for.
        need: u64,
    },
    /// The last partition is one `grow` cannot extend.
    #[error("{0}")]
    CannotGrow(String),
    /// The disk has no GPT (the seed partition needs one).
    #[error("the disk has no GPT")]
    NoGpt,
    /// Every entry of the table is in use.
    #[error("every entry of the partition table is in use")]
    TableFull,
    /// The disk is smaller than the table says it was.
    #[error("the disk ({size} bytes) is smaller than its partitions need ({need} bytes)")]
    TooSmall {
        /// The disk's size.
        size: u64,
        /// The end of the last partition, plus the backup table.
        need: u64,
    },
}

/// A GPT as read from LBA 1, checked.
struct Gpt {
    sec: u64,
    hdr: Vec<u8>,
    hsize: usize,
    table: Vec<u8>,
    esize: usize,
}

impl Gpt {
    /// The primary GPT of `disk`, or `None` without one.
    fn read(disk: &dyn ReadAt, sector: u32) -> Result<Option<Gpt>, GptFixError> {
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
        let (count, esize) = (le32(&hdr[0x50..]) as u64, le32(&hdr[0x54..]) as u64);
        if esize < 128 || esize % 128 != 0 || count * esize > 1 << 20 {
            return Err(GptFixError::BadHeader("partition entry array size"));
        }
        let mut table = vec![0u8; (count * esize) as usize];
        disk.read_at(le64(&hdr[0x48..]) * sec, &mut table)?;
        if crc32fast::hash(&table) != le32(&hdr[0x58..]) {
            return Err(GptFixError::BadHeader("partition entry array CRC32"));
        }
        Ok(Some(Gpt {
            sec,
            hdr,
            hsize,
            table,
            esize: esize as usize,
        }))
    }

    fn table_sectors(&self) -> u64 {
        (self.table.len() as u64).div_ceil(self.sec)
    }

    /// The entries in use: index, first and last LBA.
    fn used(&self) -> impl Iterator<Item = (usize, u64, u64)> + '_ {
        self.table
            .chunks_exact(self.esize)
            .enumerate()
            .filter(|(_, e)| e[..16].iter().any(|&b| b != 0))
            .map(|(i, e)| (i, le64(&e[0x20..]), le64(&e[0x28..])))
    }

    fn entry_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.table[i * self.esize..(i + 1) * self.esize]
    }

    /// Both tables and headers for a disk whose last LBA is `last` (the
    /// backup table just before it), the primary last.
    fn writes(&self, last: u64, last_usable: u64) -> DiskWrites {
        let table_crc = crc32fast::hash(&self.table);
        let header = |my: u64, alt: u64, entries: u64| {
            let mut h = self.hdr.clone();
            h[0x18..0x20].copy_from_slice(&my.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&alt.to_le_bytes());
            h[0x30..0x38].copy_from_slice(&last_usable.to_le_bytes());
            h[0x48..0x50].copy_from_slice(&entries.to_le_bytes());
            h[0x58..0x5C].copy_from_slice(&table_crc.to_le_bytes());
            let crc = header_crc(&h[..self.hsize]);
            h[0x10..0x14].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let sec = self.sec;
        let backup_at = last - self.table_sectors();
        let primary_at = le64(&self.hdr[0x48..]);
        vec![
            (backup_at * sec, self.table.clone()),
            (last * sec, header(last, 1, backup_at)),
            (primary_at * sec, self.table.clone()),
            (sec, header(1, last, primary_at)),
        ]
    }
}

/// The writes that move the backup GPT of the disk `disk` (`size` bytes,
/// `sector`-byte sectors) to its end, extending the last partition when
/// `grow` is given: `Some(0)` to the last usable sector, `Some(n)` to a
/// 1 MiB boundary at least `n` bytes before it (room for a partition made
/// after, such as a NoCloud seed). `Ok(None)` when there is nothing to do
/// (no GPT, or it already ends at the disk's end and nothing grows).
///
/// An MBR disk has no backup table: with `grow`, its last primary partition
/// extends to the disk's end (or 2^32 - 1 sectors, MBR's limit); a last
/// partition inside an extended one is refused.
pub fn fix_gpt(
    disk: &dyn ReadAt,
    size: u64,
    sector: u32,
    grow: Option<u64>,
) -> Result<Option<GptFix>, GptFixError> {
    let Some(mut gpt) = Gpt::read(disk, sector)? else {
        return match grow {
            Some(reserve) => grow_mbr(disk, size, reserve),
            None => Ok(None),
        };
    };
    let sec = gpt.sec;
    let old_alt = le64(&gpt.hdr[0x20..]);
    let table_sectors = gpt.table_sectors();
    let last = size / sec - 1;
    // The backup table takes the `table_sectors` before the backup header.
    let last_usable = last.saturating_sub(table_sectors + 1);
    let end = gpt.used().max_by_key(|&(_, _, last)| last);
    let end_lba = end.map_or(0, |e| e.2);
    if end_lba > last_usable {
        return Err(GptFixError::TooSmall {
            size,
            need: (end_lba + 1 + table_sectors + 1) * sec,
        });
    }
    let grow_to = grow.map(|reserve| match reserve {
        0 => last_usable,
        n => {
            let mib = (1 << 20) / sec;
            ((last_usable + 1).saturating_sub(n.div_ceil(sec)) / mib * mib).saturating_sub(1)
        }
    });
    let mut grown = None;
    if let (Some(to), Some((i, first, _))) = (grow_to.filter(|&to| to > end_lba), end) {
        gpt.entry_mut(i)[0x28..0x30].copy_from_slice(&to.to_le_bytes());
        grown = Some(Partition {
            number: i as u32 + 1,
            start: first * sec,
            len: (to + 1 - first) * sec,
            table_type: String::new(),
        });
    }
    if old_alt == last && grown.is_none() {
        return Ok(None);
    }
    let mut writes = gpt.writes(last, last_usable);
    let primary = writes.split_off(2);
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
    writes.extend(primary);
    Ok(Some(GptFix {
        writes,
        grown,
        backup_moved: true,
    }))
}

/// [`fix_gpt`]'s growing for an MBR disk (512-byte sectors, as MBRs count).
fn grow_mbr(disk: &dyn ReadAt, size: u64, reserve: u64) -> Result<Option<GptFix>, GptFixError> {
    if !matches!(read_table(disk, size, 512)?, Some((TableKind::Mbr, _))) {
        return Ok(None);
    }
    let mut mbr = vec![0u8; 512];
    disk.read_at(0, &mut mbr)?;
    let entry = |i: usize| {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        (e[4], u64::from(le32(&e[8..])), u64::from(le32(&e[12..])))
    };
    let Some(i) = (0..4)
        .filter(|&i| entry(i).0 != 0 && entry(i).2 != 0)
        .max_by_key(|&i| entry(i).1 + entry(i).2)
    else {
        return Ok(None);
    };
    let (ty, lba, count) = entry(i);
    if EXTENDED.contains(&ty) {
        return Err(GptFixError::CannotGrow(
            "the last partition is a logical one, inside an extended partition: \
             rackcast grows a last primary MBR partition or a GPT's last"
                .into(),
        ));
    }
    let mib = 2048;
    let mut end = size / 512;
    if reserve > 0 {
        end = end.saturating_sub(reserve.div_ceil(512)) / mib * mib;
    }
    let new_count = end.saturating_sub(lba).min(u64::from(u32::MAX));
    if new_count <= count {
        return Ok(None);
    }
    let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
    e[12..16].copy_from_slice(&(new_count as u32).to_le_bytes());
    // Past what CHS can say: the "use LBA" end, as partitioners write it.
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    Ok(Some(GptFix {
        writes: vec![(0, mbr)],
        grown: Some(Partition {
            number: i as u32 + 1,
            start: lba * 512,
            len: new_count * 512,
            table_type: format!("0x{ty:02x}"),
        }),
        backup_moved: false,
    }))
}

/// A partition of `len` bytes for the GPT of `disk`, at the end of the
/// last free gap that holds it (1 MiB aligned), or the entry already named
/// `name` when it is at least that long (so a rerun overwrites its own).
/// Returns the partition and the table writes (none when it existed).
pub fn add_partition(
    disk: &dyn ReadAt,
    sector: u32,
    len: u64,
    type_guid: [u8; 16],
    unique_guid: [u8; 16],
    name: &str,
) -> Result<(Partition, DiskWrites), GptFixError> {
    let Some(mut gpt) = Gpt::read(disk, sector)? else {
        return Err(GptFixError::NoGpt);
    };
    let sec = gpt.sec;
    let utf16: Vec<u8> = name
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .take(72)
        .collect();
    let ours = gpt.used().find(|&(i, first, last)| {
        let e = &gpt.table[i * gpt.esize..(i + 1) * gpt.esize];
        e[0x38..0x38 + utf16.len()] == utf16[..] && (last + 1 - first) * sec >= len
    });
    if let Some((i, first, last)) = ours {
        return Ok((
            Partition {
                number: i as u32 + 1,
                start: first * sec,
                len: (last + 1 - first) * sec,
                table_type: String::new(),
            },
            Vec::new(),
        ));
    }
    let (first_usable, last_usable) = (le64(&gpt.hdr[0x28..]), le64(&gpt.hdr[0x30..]));
    let mut used: Vec<(u64, u64)> = gpt.used().map(|(_, f, l)| (f, l)).collect();
    used.sort();
    // Free gaps between first_usable and last_usable, latest first.
    let mut gaps = Vec::new();
    let mut at = first_usable;
    for &(f, l) in &used {
        if f > at {
            gaps.push((at, f - 1));
        }
        at = at.max(l + 1);
    }
    if at <= last_usable {
        gaps.push((at, last_usable));
    }
    let align = (1 << 20) / sec;
    let sectors = len.div_ceil(sec);
    let place = gaps.iter().rev().find_map(|&(f, l)| {
        let start = (l + 1).checked_sub(sectors)? / align * align;
        (start >= f).then_some(start)
    });
    let Some(start) = place else {
        return Err(GptFixError::NoSpace { need: len });
    };
    let Some(slot) = (0..gpt.table.len() / gpt.esize).find(|&i| {
        gpt.table[i * gpt.esize..i * gpt.esize + 16]
            .iter()
            .all(|&b| b == 0)
    }) else {
        return Err(GptFixError::TableFull);
    };
    let e = gpt.entry_mut(slot);
    e.fill(0);
    e[..16].copy_from_slice(&type_guid);
    e[16..32].copy_from_slice(&unique_guid);
    e[0x20..0x28].copy_from_slice(&start.to_le_bytes());
    e[0x28..0x30].copy_from_slice(&(start + sectors - 1).to_le_bytes());
    e[0x38..0x38 + utf16.len()].copy_from_slice(&utf16);
    let last = le64(&gpt.hdr[0x20..]);
    let writes = gpt.writes(last, last_usable);
    Ok((
        Partition {
            number: slot as u32 + 1,
            start: start * sec,
            len: sectors * sec,
            table_type: String::new(),
        },
        writes,
    ))
}

/// CRC32 of a header with its CRC field taken as zero.
fn header_crc(h: &[u8]) -> u32 {
    let mut c = crc32fast::Hasher::new();
    c.update(&h[..0x10]);
    c.update(&[0; 4]);
    c.update(&h[0x14..]);
    c.finalize()
}
