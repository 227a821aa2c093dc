//! A damaged frame is caught before its chunk is written: the target's bytes
//! there stay as they were.

use std::os::unix::fs::FileExt;

use rackcast_engine::image::{ChunkData, ImageError};
use rackcast_writer::{restore, EngineChoice, WriterError};

use crate::common::*;

const SIZE: usize = 8 << 20;
const CHUNK: usize = 256 * 1024;

/// Flips one byte in the frame of a stored chunk (raw or zstd, as asked) in
/// the middle of the image; returns the chunk.
fn corrupt_middle_frame(f: &Fixture, raw: bool) -> u64 {
    let r = f.reader();
    let index = r.index();
    let n = index.entries.len();
    let (i, frame) = (n / 2..n)
        .chain(0..n / 2)
        .find_map(|i| match index.entries[i].data {
            ChunkData::Raw(fr) if raw => Some((i as u64, fr)),
            ChunkData::Zstd(fr) if !raw => Some((i as u64, fr)),
            _ => None,
        })
        .expect("a stored chunk");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.img)
        .expect("open image");
    let at = frame.offset + frame.len as u64 / 2;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).expect("read");
    file.write_all_at(&[b[0] ^ 0x40], at).expect("corrupt");
    i
}

fn check(f: &Fixture, dest: &std::path::Path, engine: EngineChoice, raw: bool) {
    let bad = corrupt_middle_frame(f, raw);
    let mut cfg = restore_config(engine, f.dir.path());
    cfg.threads = 1;
    let err = restore(&f.reader(), dest, &cfg, &mut |_| {}).expect_err("corrupt image restored");
    match err {
        WriterError::Image(ImageError::CorruptChunk { chunk, .. }) => {
            assert!(
                f.reader().index().entries.iter().enumerate().any(|(i, e)| {
                    i as u64 == chunk
                        && (chunk == bad || e.data == ChunkData::Duplicate { of: bad })
                }),
                "error names chunk {chunk}, the damaged one is {bad}"
            );
        }
        e => panic!("expected a corrupt-chunk error, got {e}"),
    }
    let got = read_prefix(dest, SIZE);
    let at = bad as usize * CHUNK;
    assert!(
        got[at..at + CHUNK].iter().all(|&b| b == 0xA5),
        "bytes of the corrupt chunk {bad} changed on the target"
    );
}

#[test]
fn corrupt_frame_is_never_written_to_a_file() {
    for (engine, raw) in [
        (EngineChoice::Uring, true),
        (EngineChoice::Uring, false),
        (EngineChoice::Sync, true),
        (EngineChoice::Sync, false),
    ] {
        let f = Fixture::new(SIZE, CHUNK as u32, 21);
        let dest = f.path("dest");
        std::fs::write(&dest, vec![0xA5u8; SIZE]).expect("prefill");
        check(&f, &dest, engine, raw);
    }
}

#[test]
fn corrupt_frame_is_never_written_to_a_loop_device() {
    let f = Fixture::new(SIZE, CHUNK as u32, 22);
    let Some(lo) = LoopDev::new(&f.path("loop.bin"), SIZE as u64) else {
        return;
    };
    std::fs::write(&lo.dev, vec![0xA5u8; SIZE]).expect("prefill");
    check(&f, &lo.dev, EngineChoice::Uring, true);
}
