//! NTFS: the used clusters, from the volume bitmap (`$Bitmap`, MFT record
//! 6, its unnamed `$DATA` attribute), as the NTFS on-disk format documents
//! it (boot sector, FILE records with update sequence fixups, attribute
//! headers, data runs).
//!
//! Read directly: one MFT record and the bitmap's runs are all it takes,
//! and no maintained crate reads NTFS allocation. Everything the bitmap
//! marks is used, and everything past the last cluster (the backup boot
//! sector) too; a malformed record or run list makes the caller capture the
//! partition whole.

use std::io;

use super::table::{le32, le64};
use super::{head, FsBlocks, ReadAt, UsedMap};

/// `$Bitmap`'s MFT record number.
const BITMAP_RECORD: u64 = 6;
const ATTR_DATA: u32 = 0x80;
const ATTR_END: u32 = 0xFFFF_FFFF;

/// Marks the used clusters of the NTFS at `base` (`len` bytes) in `map`;
/// returns its name and the bytes in use, or `None` when there is no NTFS
/// we read there.
pub fn scan(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    let Some(boot) = Boot::read(disk, base, len)? else {
        return Ok(None);
    };
    let mut record = vec![0u8; boot.record_size as usize];
    let at = boot
        .mft_lcn
        .checked_mul(boot.cluster)
        .and_then(|a| a.checked_add(BITMAP_RECORD * boot.record_size));
    let Some(at) = at.filter(|a| a + boot.record_size <= len) else {
        return Ok(None);
    };
    disk.read_at(base + at, &mut record)?;
    let Some(runs) = bitmap_runs(&mut record) else {
        return Ok(None);
    };
    let bits = boot.clusters.div_ceil(8);
    let mut bitmap = Vec::with_capacity(bits as usize);
    for (lcn, count) in runs {
        let want = count
            .saturating_mul(boot.cluster)
            .min(bits - bitmap.len() as u64);
        let from = bitmap.len();
        bitmap.resize(from + want as usize, 0);
        match lcn {
            // A sparse run reads as zeros.
            None => {}
            Some(lcn) => {
                let end = lcn
                    .checked_add(count)
                    .and_then(|e| e.checked_mul(boot.cluster));
                if end.is_none_or(|e| e > len) {
                    return Ok(None);
                }
                disk.read_at(base + lcn * boot.cluster, &mut bitmap[from..])?;
            }
        }
        if bitmap.len() as u64 >= bits {
            break;
        }
    }
    if (bitmap.len() as u64) < bits {
        return Ok(None);
    }
    let mut used = FsBlocks::new(boot.clusters);
    used.set_from_bitmap(0, boot.clusters, &bitmap);
    Ok(Some(("ntfs", used.commit(map, base, len, boot.cluster))))
}

/// What the scan needs from the boot sector, checked.
struct Boot {
    cluster: u64,
    clusters: u64,
    mft_lcn: u64,
    record_size: u64,
}

impl Boot {
    fn read(disk: &dyn ReadAt, base: u64, len: u64) -> io::Result<Option<Boot>> {
        let Some(b) = head::<512>(disk, base, len)? else {
            return Ok(None);
        };
        if &b[3..11] != b"NTFS    " || b[510..512] != [0x55, 0xAA] {
            return Ok(None);
        }
        let sector = u64::from(u16::from_le_bytes([b[0x0B], b[0x0C]]));
        let spc = match b[0x0D] {
            // 2^(256 - v) sectors, for clusters past 64 KiB.
            v @ 0xF4..=0xFF => 1u64 << (256 - u32::from(v)),
            v => u64::from(v),
        };
        let cluster = sector * spc;
        let total = le64(&b[0x28..]);
        let record_size = match b[0x40] as i8 {
            v if (-31..0).contains(&v) => 1u64 << (-v),
            v if v > 0 => v as u64 * cluster,
            _ => return Ok(None),
        };
        let ok = matches!(sector, 512 | 1024 | 2048 | 4096)
            && spc.is_power_of_two()
            && (512..=(2 << 20)).contains(&cluster)
            && (1024..=65536).contains(&record_size)
            && total > 0
            && total.checked_mul(sector).is_some_and(|t| t <= len);
        if !ok {
            return Ok(None);
        }
        Ok(Some(Boot {
            cluster,
            clusters: total * sector / cluster,
            mft_lcn: le64(&b[0x30..]),
            record_size,
        }))
    }
}

/// The runs of the unnamed non-resident `$DATA` attribute of an MFT
/// record, after its fixups: `(first cluster or None when sparse, count)`.
fn bitmap_runs(rec: &mut [u8]) -> Option<Vec<(Option<u64>, u64)>> {
    if &rec[..4] != b"FILE" {
        return None;
    }
    // Update sequence: the last two bytes of every 512-byte stride hold the
    // sequence number; the real bytes are in the array after it.
    let usa = usize::from(u16::from_le_bytes([rec[4], rec[5]]));
    let count = usize::from(u16::from_le_bytes([rec[6], rec[7]]));
    if count < 2 || usa + 2 * count > rec.len() || (count - 1) * 512 > rec.len() {
        return None;
    }
    let seq = [rec[usa], rec[usa + 1]];
    for i in 1..count {
        let end = i * 512;
        if rec[end - 2..end] != seq {
            return None;
        }
        let fix = [rec[usa + 2 * i], rec[usa + 2 * i + 1]];
        rec[end - 2..end].copy_from_slice(&fix);
    }
    let mut at = usize::from(u16::from_le_bytes([rec[0x14], rec[0x15]]));
    while at + 16 <= rec.len() {
        let kind = le32(&rec[at..]);
        let alen = le32(&rec[at + 4..]) as usize;
        if kind == ATTR_END || alen < 16 || at + alen > rec.len() {
            return None;
        }
        let (non_resident, name_len) = (rec[at + 8], rec[at + 9]);
        if kind == ATTR_DATA && non_resident == 1 && name_len == 0 && alen >= 0x40 {
            let attr = &rec[at..at + alen];
            let runs_at = usize::from(u16::from_le_bytes([attr[0x20], attr[0x21]]));
            return decode_runs(attr.get(runs_at..)?);
        }
        at += alen;
    }
    None
}

/// A data-run list: each run a header byte (low nibble: bytes of length,
/// high nibble: bytes of the signed offset from the previous run's first
/// cluster; no offset bytes is a sparse run), ended by a zero byte.
fn decode_runs(mut b: &[u8]) -> Option<Vec<(Option<u64>, u64)>> {
    let mut runs = Vec::new();
    let mut lcn: i64 = 0;
    while let Some((&h, rest)) = b.split_first() {
        if h == 0 {
            return Some(runs);
        }
        let (nl, no) = (usize::from(h & 0xF), usize::from(h >> 4));
        if nl == 0 || nl > 8 || no > 8 || rest.len() < nl + no {
            return None;
        }
        let mut count = 0u64;
        for (i, &x) in rest[..nl].iter().enumerate() {
            count |= u64::from(x) << (8 * i);
        }
        if no == 0 {
            runs.push((None, count));
        } else {
            let mut off: i64 = 0;
            for (i, &x) in rest[nl..nl + no].iter().enumerate() {
                off |= i64::from(x) << (8 * i);
            }
            // Sign-extend from the top byte.
            let shift = 64 - 8 * no as u32;
            off = (off << shift) >> shift;
            lcn = lcn.checked_add(off)?;
            runs.push((Some(u64::try_from(lcn).ok()?), count));
        }
        b = &rest[nl + no..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_decode_with_signed_offsets_and_sparse_runs() {
        // 0x21: 1 length byte, 2 offset bytes: 0x18 clusters at 0x5634;
        // 0x11: 0x10 clusters at -0x10 from there; 0x01: 5 sparse; end.
        let runs = decode_runs(&[0x21, 0x18, 0x34, 0x56, 0x11, 0x10, 0xF0, 0x01, 0x05, 0x00]);
        assert_eq!(
            runs,
            Some(vec![(Some(0x5634), 0x18), (Some(0x5624), 0x10), (None, 5)])
        );
        assert_eq!(decode_runs(&[0x21, 0x18]), None, "cut short");
        assert_eq!(decode_runs(&[0x11, 0x01, 0x80]), None, "before cluster 0");
    }
}
