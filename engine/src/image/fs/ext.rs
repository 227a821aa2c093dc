//! ext2/3/4: the used blocks, from the block bitmaps of an unmounted
//! filesystem (the kernel's on-disk layout, `Documentation/filesystems/ext4`).
//!
//! Read directly rather than through a crate or libext2fs: all a capture
//! needs is the superblock, the group descriptors and one bitmap block per
//! group, and no maintained Rust crate reads ext4 allocation.
//!
//! Conservative by construction: every block a bitmap marks, every group's
//! bitmaps and inode table, and the superblock and descriptor copies are
//! used; a group whose bitmap was never initialised (`BLOCK_UNINIT`) holds
//! only those. Anything this code does not understand (`META_BG`, an
//! external journal device, a filesystem larger than its partition, a
//! descriptor pointing outside it) makes the caller capture the partition
//! whole.

use std::io;

use super::table::le32;
use super::{FsBlocks, ReadAt, UsedMap};

const MAGIC: u16 = 0xEF53;
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Marks the used blocks of the ext filesystem at `base` (`len` bytes) in
/// `map`, and returns its name ("ext2", "ext3", "ext4") and the bytes its
/// used blocks cover; `None` when there is no ext filesystem we read
/// there (the map is then untouched).
pub fn scan(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    let Some(sb) = Superblock::read(disk, base, len)? else {
        return Ok(None);
    };
    let bs = sb.block_size;
    let descs_at = (sb.first_data_block + 1) * bs;
    let mut descs = vec![0u8; (sb.groups * sb.desc_size) as usize];
    disk.read_at(base + descs_at, &mut descs)?;
    let groups: Vec<Group> = descs
        .chunks_exact(sb.desc_size as usize)
        .map(|d| Group::parse(d, sb.desc_size))
        .collect();
    let itable_blocks = (sb.inodes_per_group * sb.inode_size).div_ceil(bs);
    if groups.iter().any(|g| {
        g.block_bitmap >= sb.blocks
            || g.inode_bitmap >= sb.blocks
            || g.inode_table.saturating_add(itable_blocks) > sb.blocks
    }) {
        return Ok(None);
    }

    // Collected first, so a bitmap that fails to read leaves `map` as it was.
    let mut used = FsBlocks::new(sb.blocks);
    // The boot block and the primary superblock (bytes 0..2048 at least).
    used.set(0, sb.first_data_block + 1);
    let gdt_blocks = (sb.groups * sb.desc_size).div_ceil(bs) + sb.reserved_gdt;
    let mut bitmap = vec![0u8; bs as usize];
    for (n, g) in groups.iter().enumerate() {
        let n = n as u64;
        let start = sb.first_data_block + n * sb.blocks_per_group;
        let count = sb.blocks_per_group.min(sb.blocks - start);
        used.set(g.block_bitmap, 1);
        used.set(g.inode_bitmap, 1);
        used.set(g.inode_table, itable_blocks);
        if sb.has_super(n) {
            used.set(start, (1 + gdt_blocks).min(count));
        }
        if sb.csum && g.flags & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        disk.read_at(base + g.block_bitmap * bs, &mut bitmap)?;
        used.set_from_bitmap(start, count, &bitmap);
    }
    Ok(Some((sb.name, used.commit(map, base, len, bs))))
}

/// What the scan needs from the superblock, checked.
struct Superblock {
    name: &'static str,
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    groups: u64,
    desc_size: u64,
    reserved_gdt: u64,
    sparse_super: bool,
    /// `sparse_super2`'s two backup groups.
    backups: Option<[u64; 2]>,
    /// Group descriptors are checksummed, so `BLOCK_UNINIT` is honoured.
    csum: bool,
}

impl Superblock {
    fn read(disk: &dyn ReadAt, base: u64, len: u64) -> io::Result<Option<Superblock>> {
        if len < 4096 {
            return Ok(None);
        }
        let mut b = [0u8; 1024];
        disk.read_at(base + 1024, &mut b)?;
        let le16 = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let le32 = |o: usize| u64::from(le32(&b[o..]));
        if le16(0x38) != u64::from(MAGIC) {
            return Ok(None);
        }
        let (compat, incompat, ro) = (le32(0x5C) as u32, le32(0x60) as u32, le32(0x64) as u32);
        let log = le32(0x18);
        if log > 6 || incompat & (INCOMPAT_META_BG | INCOMPAT_JOURNAL_DEV) != 0 {
            return Ok(None);
        }
        let block_size = 1024u64 << log;
        let wide = incompat & INCOMPAT_64BIT != 0;
        let blocks = le32(0x04) | if wide { le32(0x150) << 32 } else { 0 };
        let first_data_block = le32(0x14);
        let blocks_per_group = le32(0x20);
        let inode_size = if le32(0x4C) >= 1 { le16(0x58) } else { 128 };
        let desc_size = if wide { le16(0xFE) } else { 32 };
        let fits = blocks
            .checked_mul(block_size)
            .is_some_and(|b| b <= len && blocks > first_data_block);
        if !fits
            // mke2fs's own bounds; they also bound the descriptors read
            // (at most one per 256 blocks) whatever a superblock claims.
            || blocks_per_group < 256
            || blocks_per_group % 8 != 0
            || blocks_per_group > 8 * block_size
            || !(32..=1024).contains(&desc_size)
            || !desc_size.is_power_of_two()
            || inode_size < 128
        {
            return Ok(None);
        }
        let name = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG) != 0 {
            "ext4"
        } else if compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        };
        Ok(Some(Superblock {
            name,
            block_size,
            blocks,
            first_data_block,
            blocks_per_group,
            inodes_per_group: le32(0x28),
            inode_size,
            groups: (blocks - first_data_block).div_ceil(blocks_per_group),
            desc_size,
            reserved_gdt: le16(0xCE),
            sparse_super: ro & RO_COMPAT_SPARSE_SUPER != 0,
            backups: (compat & COMPAT_SPARSE_SUPER2 != 0).then(|| [le32(0x24C), le32(0x250)]),
            csum: ro & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
        }))
    }

    /// Whether group `g` holds a superblock copy (and descriptors after it).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if let Some(b) = self.backups {
            return b.contains(&g);
        }
        if !self.sparse_super || g == 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = g;
            while x % p == 0 {
                x /= p;
            }
            x == 1
        })
    }
}

/// One group descriptor's locations and flags.
struct Group {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    flags: u16,
}

impl Group {
    fn parse(d: &[u8], size: u64) -> Group {
        let hi = |o: usize| {
            if size >= 64 {
                u64::from(le32(&d[o..])) << 32
            } else {
                0
            }
        };
        Group {
            block_bitmap: u64::from(le32(&d[0..])) | hi(0x20),
            inode_bitmap: u64::from(le32(&d[4..])) | hi(0x24),
            inode_table: u64::from(le32(&d[8..])) | hi(0x28),
            flags: u16::from_le_bytes([d[0x12], d[0x13]]),
        }
    }
}
