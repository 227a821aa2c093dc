//! The capture's disk scan (partition tables, ext2/3/4, swap) on a disk
//! that starts with the input: never panics, stays within the disk, and
//! marks no more than the disk holds. A target's disk is what the agent
//! scans when it captures, so its bytes are anyone's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackcast_engine::image::fs::scan_disk;

const DISK: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut disk = vec![0u8; DISK];
    let n = data.len().min(DISK);
    disk[..n].copy_from_slice(&data[..n]);
    for sector in [512, 4096] {
        let Ok(s) = scan_disk(&disk.as_slice(), DISK as u64, sector) else {
            continue;
        };
        assert!(s.map.used_bytes() <= DISK as u64);
        for p in &s.partitions {
            assert!(p.start + p.len <= DISK as u64, "{p:?}");
            assert!(p.used <= p.len, "{p:?}");
        }
    }
});
