//! Capture then restore gives back the source byte for byte.

use proptest::prelude::*;
use rackcast_engine::image::{restore_image, ChunkKind, ImageReader, RestoreOptions};

use crate::data::{capture, mixed, opts, random, text};

fn round_trip(data: &[u8], chunk_size: u32) -> rackcast_engine::image::ChunkIndex {
    let dir = tempfile::tempdir().unwrap();
    let (img, s) = capture(dir.path(), "src", data, &opts(chunk_size));
    let r = ImageReader::open(&img).unwrap();
    assert_eq!(r.root(), s.root);
    r.verify(2, &|_| {}).unwrap();
    let dest = dir.path().join("restored");
    restore_image(&r, &dest, &RestoreOptions { threads: 2 }, &mut |_| {}).unwrap();
    let back = std::fs::read(&dest).unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "restored bytes differ");
    s.index
}

#[test]
fn random_data_is_stored_raw() {
    let idx = round_trip(&random(5 * 65536 + 100, 1), 65536);
    assert_eq!(idx.histogram()[&ChunkKind::Raw], 6);
}

#[test]
fn text_is_compressed() {
    let data = text(4 << 20, 3);
    let idx = round_trip(&data, 1 << 20);
    assert_eq!(idx.histogram()[&ChunkKind::Zstd], 4);
    assert!(idx.stored_bytes() < data.len() as u64 / 2);
}

#[test]
fn zero_runs_and_duplicates_cost_no_frame() {
    let data = mixed(12, 0);
    let idx = round_trip(&data, 65536);
    let h = idx.histogram();
    assert_eq!(h[&ChunkKind::Zero], 3);
    // chunks 4 and 8 repeat chunk 0.
    assert_eq!(h[&ChunkKind::Duplicate], 2);
    assert!(matches!(
        idx.entries[4].data,
        rackcast_engine::image::ChunkData::Duplicate { of: 0 }
    ));
}

#[test]
fn size_not_a_multiple_of_the_chunk_size() {
    round_trip(&mixed(5, 12345), 65536);
    round_trip(&text(1, 1), 65536);
}

#[test]
fn empty_source() {
    let idx = round_trip(&[], 65536);
    assert!(idx.entries.is_empty());
}

#[test]
fn restore_over_a_dirty_file_clears_zero_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = mixed(8, 0);
    let (img, _) = capture(dir.path(), "src", &data, &opts(65536));
    let dest = dir.path().join("dirty");
    std::fs::write(&dest, vec![0xAAu8; data.len() + 4096]).unwrap();
    let r = ImageReader::open(&img).unwrap();
    restore_image(&r, &dest, &RestoreOptions { threads: 2 }, &mut |_| {}).unwrap();
    let back = std::fs::read(&dest).unwrap();
    assert!(back[..data.len()] == data[..]);
    // Bytes past the image are the target's own: untouched.
    assert!(back[data.len()..].iter().all(|&b| b == 0xAA));
}

#[derive(Debug, Clone)]
enum Seg {
    Random(usize, u64),
    Text(usize, u64),
    Zero(usize),
    Repeat(usize),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        (1usize..200_000, any::<u64>()).prop_map(|(n, s)| Seg::Random(n, s)),
        (1usize..200_000, any::<u64>()).prop_map(|(n, s)| Seg::Text(n, s)),
        (1usize..300_000).prop_map(Seg::Zero),
        (0usize..8).prop_map(Seg::Repeat),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_layouts_round_trip(segs in prop::collection::vec(seg(), 0..10), big in any::<bool>()) {
        let mut data: Vec<u8> = Vec::new();
        let mut made: Vec<Vec<u8>> = Vec::new();
        for s in &segs {
            let bytes = match s {
                Seg::Random(n, sd) => random(*n, *sd),
                Seg::Text(n, sd) => text(*n, *sd),
                Seg::Zero(n) => vec![0; *n],
                Seg::Repeat(k) => made.get(*k).cloned().unwrap_or_default(),
            };
            data.extend_from_slice(&bytes);
            made.push(bytes);
        }
        round_trip(&data, if big { 128 * 1024 } else { 65536 });
    }
}

#[test]
fn a_cancelled_capture_stops_early_and_leaves_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.src");
    let chunk = 64 * 1024;
    std::fs::write(&src, mixed(256, 0)).unwrap();
    let out = dir.path().join("big.rcimg");
    let cancel = Arc::new(AtomicBool::new(false));
    let o = rackcast_engine::image::CreateOptions {
        cancel: Some(cancel.clone()),
        ..opts(chunk as u32)
    };
    let mut seen = 0u64;
    let r = rackcast_engine::image::create_image(&src, &out, &o, &mut |n| {
        seen += n;
        // Cancel once the first chunks are in, as a Ctrl-C or a job cancel.
        if seen >= 4 * chunk as u64 {
            cancel.store(true, Ordering::Relaxed);
        }
    });
    match r {
        Err(rackcast_engine::image::ImageError::Cancelled { done, total }) => {
            assert_eq!(total, 256 * chunk as u64);
            assert!(
                done >= 4 * chunk as u64 && done < total / 2,
                "stopped late: {done}"
            );
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["big.src"], "a partial image was left");
}
