//! XFS: the used blocks are every block but the free extents each
//! allocation group's by-block-number free-space B+tree lists (the XFS
//! on-disk format: superblock, AGF, `XFS_ABTB`/`XFS_ABTB_CRC` blocks).
//!
//! Read directly: the superblock, one AGF and AGFL per group and the
//! free-space tree's blocks; no maintained crate reads XFS allocation.
//! Blocks on the AG free list (kept for the trees to grow into) are free
//! too, as `xfs_db freesp` counts them; anything else stays used; a tree that
//! is malformed (a bad magic, a pointer outside its group, more blocks
//! than the group has) makes the caller capture the partition whole.

use std::io;

use super::{head, FsBlocks, ReadAt, UsedMap};

const SB_MAGIC: &[u8; 4] = b"XFSB";
const AGF_MAGIC: &[u8; 4] = b"XAGF";
const AGFL_MAGIC: &[u8; 4] = b"XAFL";
const ABTB_V4: &[u8; 4] = b"ABTB";
const ABTB_V5: &[u8; 4] = b"AB3B";

/// Marks the used blocks of the XFS at `base` (`len` bytes) in `map`;
/// returns its name and the bytes in use, or `None` when there is no XFS
/// we read there.
pub fn scan(
    disk: &dyn ReadAt,
    base: u64,
    len: u64,
    map: &mut UsedMap,
) -> io::Result<Option<(&'static str, u64)>> {
    let Some(sb) = Superblock::read(disk, base, len)? else {
        return Ok(None);
    };
    let mut used = FsBlocks::new(sb.dblocks);
    used.set(0, sb.dblocks);
    let mut block = vec![0u8; sb.block_size as usize];
    for ag in 0..sb.agcount {
        let ag_start = ag * sb.agblocks;
        let mut agf = [0u8; 64];
        disk.read_at(base + ag_start * sb.block_size + sb.sector_size, &mut agf)?;
        let ag_len = sb.agblocks.min(sb.dblocks - ag_start);
        if &agf[..4] != AGF_MAGIC || be32(&agf[8..]) != ag || be32(&agf[12..]) != ag_len {
            return Ok(None);
        }
        if !free_list(disk, base, &sb, ag_start, ag_len, &agf, &mut used)? {
            return Ok(None);
        }
        let (root, levels) = (be32(&agf[16..]), be32(&agf[28..]));
        // Depth-first over the tree; a visit budget of the group's size
        // ends any cycle a corrupt tree could hold.
        let mut stack = vec![(root, levels.saturating_sub(1))];
        let mut budget = ag_len;
        while let Some((agbno, level)) = stack.pop() {
            if agbno >= ag_len || budget == 0 || levels == 0 || levels > 16 {
                return Ok(None);
            }
            budget -= 1;
            disk.read_at(base + (ag_start + agbno) * sb.block_size, &mut block)?;
            let hdr = match &block[..4] {
                m if m == ABTB_V4 => 16,
                m if m == ABTB_V5 => 56,
                _ => return Ok(None),
            };
            let (lvl, n) = (be16(&block[4..]), be16(&block[6..]) as usize);
            if lvl != level {
                return Ok(None);
            }
            if level == 0 {
                if hdr + 8 * n > block.len() {
                    return Ok(None);
                }
                for r in block[hdr..hdr + 8 * n].chunks_exact(8) {
                    let (start, count) = (be32(r), be32(&r[4..]));
                    if start.saturating_add(count) > ag_len {
                        return Ok(None);
                    }
                    used.unset(ag_start + start, count);
                }
            } else {
                // Keys (8 bytes each) for the block's capacity, then pointers.
                let max = (block.len() - hdr) / 12;
                if n > max {
                    return Ok(None);
                }
                let ptrs = hdr + 8 * max;
                for p in block[ptrs..ptrs + 4 * n].chunks_exact(4) {
                    stack.push((be32(p), level - 1));
                }
            }
        }
    }
    Ok(Some(("xfs", used.commit(map, base, len, sb.block_size))))
}

/// Frees the blocks on group `ag_start`'s free list (AGFL, the sector after
/// the AGI): `agf_flcount` entries from `agf_flfirst`, wrapping. `false`
/// when the list is malformed.
fn free_list(
    disk: &dyn ReadAt,
    base: u64,
    sb: &Superblock,
    ag_start: u64,
    ag_len: u64,
    agf: &[u8],
    used: &mut FsBlocks,
) -> io::Result<bool> {
    let (first, count) = (be32(&agf[40..]), be32(&agf[48..]));
    let mut sector = vec![0u8; sb.sector_size as usize];
    disk.read_at(
        base + ag_start * sb.block_size + 3 * sb.sector_size,
        &mut sector,
    )?;
    // v5 AGFLs start with a header: magic, seqno, uuid, lsn, crc.
    let hdr = if &sector[..4] == AGFL_MAGIC { 36 } else { 0 };
    let slots = (sector.len() - hdr) as u64 / 4;
    if count > slots || first >= slots.max(1) {
        return Ok(false);
    }
    for k in 0..count {
        let at = hdr + 4 * ((first + k) % slots) as usize;
        let agbno = be32(&sector[at..]);
        if agbno >= ag_len {
            return Ok(false);
        }
        used.unset(ag_start + agbno, 1);
    }
    Ok(true)
}

/// What the scan needs from the superblock, checked.
struct Superblock {
    block_size: u64,
    sector_size: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
}

impl Superblock {
    fn read(disk: &dyn ReadAt, base: u64, len: u64) -> io::Result<Option<Superblock>> {
        let Some(b) = head::<0x70>(disk, base, len)? else {
            return Ok(None);
        };
        if &b[..4] != SB_MAGIC {
            return Ok(None);
        }
        let block_size = be32(&b[4..]);
        let dblocks = be64(&b[8..]);
        let agblocks = be32(&b[0x54..]);
        let agcount = be32(&b[0x58..]);
        let sector_size = be16(&b[0x66..]);
        let ok = block_size.is_power_of_two()
            && (512..=65536).contains(&block_size)
            && sector_size.is_power_of_two()
            && (512..=block_size).contains(&sector_size)
            && agblocks >= 16
            && agcount > 0
            && dblocks > 0
            && agcount.saturating_mul(agblocks) >= dblocks
            && (agcount - 1) * agblocks < dblocks
            && dblocks.checked_mul(block_size).is_some_and(|b| b <= len);
        if !ok {
            return Ok(None);
        }
        Ok(Some(Superblock {
            block_size,
            sector_size,
            dblocks,
            agblocks,
            agcount,
        }))
    }
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}
