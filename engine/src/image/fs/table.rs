//! Partition tables: GPT (primary header at LBA 1) and MBR (four primary
//! entries). What the capture needs is where each partition lies and what
//! its table says it is; everything else is captured whole anyway.

use std::io;

use super::ReadAt;

/// One partition as its table describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based number, as `/dev/sda1` counts.
    pub number: u32,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// The table's type: a GPT type GUID (as Linux prints it) or `0xNN`.
    pub table_type: String,
}

/// Which table the disk has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A GUID partition table.
    Gpt,
    /// A DOS (MBR) partition table.
    Mbr,
}

/// The partitions of a disk of `size` bytes with `sector`-byte logical
/// sectors, or `None` when it has no table we read (a bare filesystem, or
/// nothing). Entries that do not fit the disk are left out.
pub fn read_table(
    disk: &dyn ReadAt,
    size: u64,
    sector: u32,
) -> io::Result<Option<(TableKind, Vec<Partition>)>> {
    let sector = u64::from(sector.max(512));
    if size < 2 * sector {
        return Ok(None);
    }
    let mut mbr = [0u8; 512];
    disk.read_at(0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let entries: Vec<(u8, u64, u64)> = (0..4)
        .map(|i| {
            let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
            (e[4], u64::from(le32(&e[8..])), u64::from(le32(&e[12..])))
        })
        .collect();
    // A filesystem's boot sector (FAT, NTFS) ends in 55 AA too: its bytes
    // where the entries would be are code or zeros. An MBR's entries have
    // a status of 0 or 0x80, and at least one is in use.
    let status_ok = (0..4).all(|i| matches!(mbr[446 + 16 * i], 0 | 0x80));
    if !status_ok || entries.iter().all(|e| e.0 == 0 || e.2 == 0) {
        return Ok(None);
    }
    if entries.iter().any(|e| e.0 == 0xEE) {
        if let Some(parts) = read_gpt(disk, size, sector)? {
            return Ok(Some((TableKind::Gpt, parts)));
        }
    }
    let mut parts = Vec::new();
    for (i, &(ty, lba, count)) in entries.iter().enumerate() {
        if ty == 0 || ty == 0xEE || count == 0 {
            continue;
        }
        let (start, len) = (lba * 512, count * 512);
        if start.checked_add(len).is_none_or(|end| end > size) {
            continue;
        }
        if EXTENDED.contains(&ty) {
            // The container itself is no filesystem: its logical partitions
            // are (its EBRs, outside them, stay captured).
            logical(disk, lba, count, size, &mut parts)?;
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len,
            table_type: format!("0x{ty:02x}"),
        });
    }
    Ok(Some((TableKind::Mbr, parts)))
}

/// MBR types of an extended partition (CHS, LBA, Linux).
pub(super) const EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// Logical partitions read at most: bounds a looping EBR chain.
const MAX_LOGICAL: u32 = 128;

/// The logical partitions of the extended partition at sector `ext`
/// (`count` sectors), numbered from 5 as Linux does: each EBR's first
/// entry is one (its start relative to that EBR), its second the next EBR
/// (relative to `ext`).
fn logical(
    disk: &dyn ReadAt,
    ext: u64,
    count: u64,
    size: u64,
    parts: &mut Vec<Partition>,
) -> io::Result<()> {
    let mut ebr_at = ext;
    for n in 0..MAX_LOGICAL {
        let mut ebr = [0u8; 512];
        disk.read_at(ebr_at * 512, &mut ebr)?;
        if ebr[510..512] != [0x55, 0xAA] {
            return Ok(());
        }
        let e = |i: usize| {
            let e = &ebr[446 + 16 * i..446 + 16 * (i + 1)];
            (e[4], u64::from(le32(&e[8..])), u64::from(le32(&e[12..])))
        };
        let (ty, rel, len) = e(0);
        let (start, bytes) = ((ebr_at + rel) * 512, len * 512);
        let inside = ebr_at + rel + len <= ext + count && start + bytes <= size;
        if ty != 0 && len != 0 && inside {
            parts.push(Partition {
                number: 5 + n,
                start,
                len: bytes,
                table_type: format!("0x{ty:02x}"),
            });
        }
        let (next_ty, next_rel, _) = e(1);
        if !EXTENDED.contains(&next_ty) || next_rel == 0 || next_rel >= count {
            return Ok(());
        }
        ebr_at = ext + next_rel;
    }
    Ok(())
}

/// The GPT entries; `None` when the header is missing or malformed.
fn read_gpt(disk: &dyn ReadAt, size: u64, sector: u64) -> io::Result<Option<Vec<Partition>>> {
    let mut h = [0u8; 92];
    disk.read_at(sector, &mut h)?;
    if &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    let entries_lba = le64(&h[0x48..]);
    let count = le32(&h[0x50..]);
    let entry_len = le32(&h[0x54..]) as usize;
    // The spec's bounds: at least 128 bytes an entry, a multiple of 128;
    // a table larger than 1 MiB is not one we trust.
    if entry_len < 128 || entry_len % 128 != 0 || count as usize * entry_len > 1 << 20 {
        return Ok(None);
    }
    let table_at = entries_lba.saturating_mul(sector);
    let mut table = vec![0u8; count as usize * entry_len];
    if table_at.saturating_add(table.len() as u64) > size {
        return Ok(None);
    }
    disk.read_at(table_at, &mut table)?;
    let mut parts = Vec::new();
    for (i, e) in table.chunks_exact(entry_len).enumerate() {
        let ty = &e[..16];
        if ty.iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (le64(&e[0x20..]), le64(&e[0x28..]));
        let (Some(start), Some(end)) = (
            first.checked_mul(sector),
            last.checked_add(1).and_then(|l| l.checked_mul(sector)),
        ) else {
            continue;
        };
        if end <= start || end > size {
            continue;
        }
        parts.push(Partition {
            number: i as u32 + 1,
            start,
            len: end - start,
            table_type: guid(ty),
        });
    }
    Ok(Some(parts))
}

/// A GUID in its mixed-endian on-disk form, printed as `sfdisk` prints it.
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

pub(super) fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

pub(super) fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_disk(entries: &[(u8, u32, u32)], size: usize) -> Vec<u8> {
        let mut d = vec![0u8; size];
        for (i, &(ty, lba, n)) in entries.iter().enumerate() {
            let e = &mut d[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = ty;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_entries_that_fit_the_disk() {
        let d = mbr_disk(&[(0x83, 2048, 2048), (0x82, 4096, 1 << 20)], 4 << 20);
        let (kind, parts) = read_table(&d.as_slice(), d.len() as u64, 512)
            .unwrap()
            .unwrap();
        assert_eq!(kind, TableKind::Mbr);
        assert_eq!(
            parts,
            vec![Partition {
                number: 1,
                start: 1 << 20,
                len: 1 << 20,
                table_type: "0x83".into()
            }],
            "the second entry runs past the disk's end"
        );
    }

    #[test]
    fn a_boot_sector_is_not_a_table() {
        // No entry in use (a FAT boot sector with zeros there).
        let d = mbr_disk(&[], 1 << 20);
        assert!(read_table(&d.as_slice(), d.len() as u64, 512)
            .unwrap()
            .is_none());
        // Boot code where the entries would be: a status that is not 0 or 0x80.
        let mut d = mbr_disk(&[(0x83, 2048, 2048)], 4 << 20);
        d[446] = b'T';
        assert!(read_table(&d.as_slice(), d.len() as u64, 512)
            .unwrap()
            .is_none());
    }

    #[test]
    fn no_signature_no_table() {
        let d = vec![0u8; 1 << 20];
        assert!(read_table(&d.as_slice(), d.len() as u64, 512)
            .unwrap()
            .is_none());
    }

    #[test]
    fn gpt_behind_a_protective_mbr() {
        let size = 8usize << 20;
        let mut d = mbr_disk(&[(0xEE, 1, (size / 512 - 1) as u32)], size);
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 0x48..512 + 0x50].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 0x50..512 + 0x54].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 0x54..512 + 0x58].copy_from_slice(&128u32.to_le_bytes());
        // Entry 2 (number 2): the Linux filesystem type, LBAs 2048..=4095.
        let e = 1024 + 128;
        let linux = [
            0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47,
            0x7D, 0xE4,
        ];
        d[e..e + 16].copy_from_slice(&linux);
        d[e + 0x20..e + 0x28].copy_from_slice(&2048u64.to_le_bytes());
        d[e + 0x28..e + 0x30].copy_from_slice(&4095u64.to_le_bytes());
        let (kind, parts) = read_table(&d.as_slice(), size as u64, 512)
            .unwrap()
            .unwrap();
        assert_eq!(kind, TableKind::Gpt);
        assert_eq!(
            parts,
            vec![Partition {
                number: 2,
                start: 1 << 20,
                len: 1 << 20,
                table_type: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into()
            }]
        );
    }
}
