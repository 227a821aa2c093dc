//! Read-back finds exactly the chunks that are wrong on the target.

use std::os::unix::fs::FileExt;

use rackcast_writer::{find_bad_chunks, verify_set, EngineChoice, TargetReader, VerifyMode};

use crate::common::*;

#[test]
fn read_back_names_exactly_the_damaged_chunks() {
    let f = Fixture::new(6 << 20, 256 * 1024, 71);
    let dest = f.path("dest");
    let rep = restore_to(
        &f,
        &dest,
        &restore_config(EngineChoice::Uring, f.dir.path()),
    );
    let r = f.reader();
    let index = r.index();
    let all = verify_set(index, &r.root(), VerifyMode::Full);
    assert_eq!(
        rep.chunks_verified,
        all.len() as u64,
        "full verify checks every chunk"
    );
    let sample = verify_set(index, &r.root(), VerifyMode::Sample);
    assert!(
        !sample.is_empty() && sample.len() < all.len(),
        "sample of {} chunks",
        sample.len()
    );

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&dest)
        .expect("open");
    for (i, at) in [(3u64, 4096u64), (17, 100_000)] {
        file.write_all_at(b"bit rot", i * 256 * 1024 + at)
            .expect("damage");
    }
    file.sync_all().expect("sync");
    let readers = (0..2)
        .map(|_| TargetReader::open(&dest).expect("reader"))
        .collect();
    let bad = find_bad_chunks(index, readers, &all).expect("read back");
    assert_eq!(bad, vec![3, 17]);
}
