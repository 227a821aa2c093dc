//! Delta restores: only chunks that differ on the target are written.

use std::os::unix::fs::FileExt;
use std::path::Path;

use rackcast_engine::image::ChunkData;
use rackcast_writer::EngineChoice;

use crate::common::*;

const SIZE: usize = 20 << 20;
const CHUNK: usize = 256 * 1024;

/// Damages 5% of the chunks on the target (one 4 KiB block each, at a
/// random place); returns how many were data chunks and how many zero.
fn change_five_percent(f: &Fixture, dest: &Path) -> (u64, u64) {
    let r = f.reader();
    let entries = &r.index().entries;
    let mut chunks: Vec<u64> = (0..entries.len() as u64).collect();
    let mut rng = Rng(1234);
    rng.shuffle(&mut chunks);
    let changed = &chunks[..entries.len() * 5 / 100];
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .expect("open target");
    let (mut data, mut zero) = (0, 0);
    for &i in changed {
        let block = rng.below((CHUNK / 4096) as u64) as usize;
        let junk: Vec<u8> = (0..4096).map(|_| rng.next() as u8 | 1).collect();
        file.write_all_at(&junk, i * CHUNK as u64 + (block * 4096) as u64)
            .expect("damage");
        match entries[i as usize].data {
            ChunkData::Zero => zero += 1,
            _ => data += 1,
        }
    }
    file.sync_all().expect("sync");
    (data, zero)
}

fn check(f: &Fixture, dest: &Path) {
    let count = f.reader().index().entries.len() as u64;
    let (data, zero) = change_five_percent(f, dest);
    assert!(
        data + zero >= count / 25,
        "changed {} of {count}",
        data + zero
    );
    let mut cfg = restore_config(EngineChoice::Auto, f.dir.path());
    cfg.delta = true;
    let rep = restore_to(f, dest, &cfg);
    let w = &rep.write;
    assert_eq!(
        w.chunks_written, data,
        "data chunks written by the delta restore"
    );
    assert_eq!(
        w.zero_bytes_discarded,
        zero * CHUNK as u64,
        "zero chunks re-zeroed"
    );
    assert_eq!(w.chunks_matched, count - data - zero, "chunks skipped");
    assert_eq!(w.bytes_matched, (count - data - zero) * CHUNK as u64);
    assert_same(
        &read_prefix(dest, SIZE),
        &f.src,
        "target after delta restore",
    );
}

#[test]
fn delta_restore_writes_only_changed_chunks_of_a_file() {
    let f = Fixture::new(SIZE, CHUNK as u32, 31);
    let dest = f.path("dest");
    restore_to(&f, &dest, &restore_config(EngineChoice::Auto, f.dir.path()));
    check(&f, &dest);
}

#[test]
fn delta_restore_writes_only_changed_chunks_of_a_loop_device() {
    let f = Fixture::new(SIZE, CHUNK as u32, 32);
    let Some(lo) = LoopDev::new(&f.path("loop.bin"), SIZE as u64) else {
        return;
    };
    restore_to(
        &f,
        &lo.dev,
        &restore_config(EngineChoice::Uring, f.dir.path()),
    );
    check(&f, &lo.dev);
}
