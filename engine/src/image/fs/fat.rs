//! FAT12/16/32 (EFI system partitions): the used clusters, from the first
//! file allocation table (Microsoft's FAT specification, "FAT type
//! determination" by cluster count).
//!
//! Read directly: the boot sector's BPB and one table are all it takes,
//! and no maintained crate exposes cluster allocation of an unmounted FAT.
//! The reserved sectors, every FAT copy and the FAT12/16 root directory
//! are used; a cluster is used unless its entry is 0 (bad clusters count
//! as used); sectors past the last cluster are kept as they are.

use std::io;

use super::table::le32;
use super::{head, FsBlocks, ReadAt, UsedMap};

/// Entries read at a time, so a large FAT32 costs no large buffer.
const WINDOW: u64 = 1 << 20;

/// Marks the used clusters of the FAT at `base` (`len` bytes) in `map`;
/// returns its name and the bytes in use, or `None` when there is no FAT
/// we read there.
pub fn scan(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    let Some(b) = Bpb::read(disk, base, len)? else {
        return Ok(None);
    };
    let sector = b.bytes_per_sector;
    // One bit per data cluster.
    let mut used = FsBlocks::new(b.clusters);
    let fat_at = base + b.reserved * sector;
    let entry_bits: u64 = match b.kind {
        "fat12" => 12,
        "fat16" => 16,
        _ => 32,
    };
    // Entries 0 and 1 are reserved; data clusters are 2..clusters + 2.
    let last = b.clusters + 2;
    let mut n = 2u64;
    let mut buf = Vec::new();
    while n < last {
        let end = (n + WINDOW).min(last);
        // The bytes holding entries n..end (FAT12 entries straddle bytes).
        let (from, to) = (n * entry_bits / 8, (end * entry_bits).div_ceil(8) + 1);
        let to = to.min(b.fat_bytes);
        buf.resize((to - from) as usize, 0);
        disk.read_at(fat_at + from, &mut buf)?;
        for c in n..end {
            let at = (c * entry_bits / 8 - from) as usize;
            let v = match entry_bits {
                12 => {
                    let x = u16::from_le_bytes([buf[at], *buf.get(at + 1).unwrap_or(&0)]);
                    u32::from(if c % 2 == 0 { x & 0xFFF } else { x >> 4 })
                }
                16 => u32::from(u16::from_le_bytes([buf[at], buf[at + 1]])),
                _ => le32(&buf[at..]) & 0x0FFF_FFFF,
            };
            if v != 0 {
                used.set(c - 2, 1);
            }
        }
        n = end;
    }
    let cluster = b.sectors_per_cluster * sector;
    let data = base + b.data_start * sector;
    let tail = data + b.clusters * cluster;
    map.clear(base, len);
    // The reserved sectors, the FATs and the root directory; the clusters;
    // what follows the last whole cluster, to the partition's end.
    map.mark(base, data - base);
    used.mark(map, data, cluster);
    map.mark(tail, base + len - tail);
    Ok(Some((b.kind, (data - base) + used.count() * cluster)))
}

/// The BPB fields the scan needs, checked.
struct Bpb {
    kind: &'static str,
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved: u64,
    /// First data sector (after the FATs and the FAT12/16 root directory).
    data_start: u64,
    clusters: u64,
    fat_bytes: u64,
}

impl Bpb {
    fn read(disk: &dyn ReadAt, base: u64, len: u64) -> io::Result<Option<Bpb>> {
        let Some(s) = head::<512>(disk, base, len)? else {
            return Ok(None);
        };
        let le16 = |o: usize| u64::from(u16::from_le_bytes([s[o], s[o + 1]]));
        let bps = le16(0x0B);
        let spc = u64::from(s[0x0D]);
        let reserved = le16(0x0E);
        let fats = u64::from(s[0x10]);
        let root_entries = le16(0x11);
        let total = match le16(0x13) {
            0 => u64::from(le32(&s[0x20..])),
            t => t,
        };
        let fat_size = match le16(0x16) {
            0 => u64::from(le32(&s[0x24..])),
            f => f,
        };
        let plausible = matches!(s[0], 0xEB | 0xE9)
            && s[510..512] == [0x55, 0xAA]
            && matches!(bps, 512 | 1024 | 2048 | 4096)
            && spc.is_power_of_two()
            && reserved >= 1
            && (1..=4).contains(&fats)
            && fat_size > 0
            && total > 0
            && total * bps <= len;
        if !plausible {
            return Ok(None);
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + fats * fat_size + root_sectors;
        if data_start >= total {
            return Ok(None);
        }
        let clusters = (total - data_start) / spc;
        let kind = if clusters < 4085 {
            "fat12"
        } else if clusters < 65525 {
            "fat16"
        } else {
            "fat32"
        };
        let entry_bits = match kind {
            "fat12" => 12,
            "fat16" => 16,
            _ => 32,
        };
        let fat_bytes = fat_size * bps;
        // The table must hold an entry for every cluster.
        if (clusters + 2) * entry_bits > fat_bytes * 8 {
            return Ok(None);
        }
        Ok(Some(Bpb {
            kind,
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved,
            data_start,
            clusters,
            fat_bytes,
        }))
    }
}
