//! An interrupted restore resumes from the persisted bitmap of durable
//! chunks, and a bitmap for another image is never trusted.

use std::sync::Arc;

use rackcast_engine::image::{ChunkData, ChunkDecoder};
use rackcast_writer::{ChunkPayload, DiskWriter, EngineChoice};

use crate::common::*;

const SIZE: usize = 8 << 20;

#[test]
fn interrupted_writer_resumes_from_its_bitmap() {
    let f = Fixture::new(SIZE, 256 * 1024, 51);
    let dest = f.path("dest");
    let r = f.reader();
    let index = Arc::new(r.index().clone());
    let count = index.entries.len() as u64;
    let cfg = writer_config(EngineChoice::Uring, f.dir.path());
    let mut dec = ChunkDecoder::new();
    let (mut frame, mut out) = (Vec::new(), Vec::new());
    let mut send = |w: &mut DiskWriter, i: u64| {
        let p = match index.entries[i as usize].data {
            ChunkData::Zero => ChunkPayload::Zero,
            _ => {
                r.read_chunk(i, &mut dec, &mut frame, &mut out)
                    .expect("decode");
                let mut b = w.buffer().expect("buffer");
                b.copy_from(&out);
                ChunkPayload::Data(b)
            }
        };
        w.submit(i, p).expect("submit");
    };
    // First run: the even chunks, flushed, then the process "dies".
    let mut w = DiskWriter::open(&dest, index.clone(), r.root(), &cfg).expect("open");
    let state = w.state_path().expect("resume on").to_path_buf();
    for i in (0..count).step_by(2) {
        send(&mut w, i);
    }
    w.flush().expect("flush");
    drop(w);
    assert!(state.exists(), "no resume bitmap at {}", state.display());

    // Second run: only the odd chunks are still wanted.
    let mut w = DiskWriter::open(&dest, index.clone(), r.root(), &cfg).expect("reopen");
    assert_eq!(w.summary().chunks_resumed, count.div_ceil(2));
    assert_eq!(w.pending(), (1..count).step_by(2).collect::<Vec<_>>());
    for i in 0..count {
        send(&mut w, i);
    }
    let s = w.finish().expect("finish");
    assert_eq!(
        s.duplicates_dropped,
        count.div_ceil(2),
        "resumed chunks were written again"
    );
    assert!(
        !state.exists(),
        "resume bitmap left after a complete restore"
    );
    assert_same(
        &std::fs::read(&dest).expect("read"),
        &f.src,
        "resumed restore vs source",
    );
}

#[test]
fn bitmap_of_another_image_is_ignored() {
    let a = Fixture::new(SIZE, 256 * 1024, 52);
    let b = Fixture::new(SIZE, 256 * 1024, 53);
    let dest = a.path("dest");
    let ra = a.reader();
    let cfg = writer_config(EngineChoice::Sync, a.dir.path());
    let mut w =
        DiskWriter::open(&dest, Arc::new(ra.index().clone()), ra.root(), &cfg).expect("open");
    for i in 0..4 {
        w.submit(i, ChunkPayload::Zero).expect("submit");
    }
    w.flush().expect("flush");
    drop(w);
    let rb = b.reader();
    let w = DiskWriter::open(&dest, Arc::new(rb.index().clone()), rb.root(), &cfg).expect("open");
    assert_eq!(
        w.summary().chunks_resumed,
        0,
        "a bitmap for another image was trusted"
    );
    assert_eq!(w.pending().len(), rb.index().entries.len());
}

#[test]
fn bitmap_outliving_its_file_is_not_trusted() {
    let f = Fixture::new(SIZE, 256 * 1024, 54);
    let dest = f.path("dest");
    let r = f.reader();
    let index = Arc::new(r.index().clone());
    let cfg = writer_config(EngineChoice::Sync, f.dir.path());
    let mut w = DiskWriter::open(&dest, index.clone(), r.root(), &cfg).expect("open");
    for i in 0..4 {
        w.submit(i, ChunkPayload::Zero).expect("submit");
    }
    w.flush().expect("flush");
    let state = w.state_path().expect("resume on").to_path_buf();
    drop(w);
    std::fs::remove_file(&dest).expect("remove target");
    let mut w = DiskWriter::open(&dest, index.clone(), r.root(), &cfg).expect("reopen");
    assert_eq!(
        w.summary().chunks_resumed,
        0,
        "resumed into a new, empty file"
    );
    w.flush().expect("flush");
    drop(w);
    // The stale bits must not have been carried into the new bitmap either.
    let w = DiskWriter::open(&dest, index, r.root(), &cfg).expect("reopen");
    assert_eq!(w.summary().chunks_resumed, 0, "stale bits saved again");
    assert!(state.exists());
}
