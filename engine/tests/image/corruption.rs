//! Flipping any byte of an image is caught, and the error names the right
//! place; restore never writes a bad chunk.

use std::os::unix::fs::FileExt;

use rackcast_engine::image::header::HEADER_LEN;
use rackcast_engine::image::trailer::TRAILER_LEN;
use rackcast_engine::image::{restore_image, ImageError, ImageReader, RestoreOptions};

use crate::data::{capture, mixed, opts};

fn flip(path: &std::path::Path, at: u64) -> u8 {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    b[0]
}

fn put(path: &std::path::Path, at: u64, v: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[v], at).unwrap();
}

fn open_and_verify(path: &std::path::Path) -> Result<(), ImageError> {
    ImageReader::open(path)?.verify(2, &|_| {}).map(|_| ())
}

#[test]
fn any_flipped_byte_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (img, s) = capture(dir.path(), "src", &mixed(10, 3000), &opts(65536));
    let len = std::fs::metadata(&img).unwrap().len();
    let index_start = len - TRAILER_LEN as u64 - s.index.emit().len() as u64;
    // Which chunk owns each frame byte.
    let mut frames: Vec<(u64, u64, u64)> = s
        .index
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            e.data
                .frame()
                .map(|f| (f.offset, f.offset + f.len as u64, i as u64))
        })
        .collect();
    frames.sort();
    let mut checked = 0;
    for at in 0..len {
        let in_frames = at >= HEADER_LEN as u64 && at < index_start;
        // Every structural byte; frame bytes sampled (and each frame's ends).
        let edge = frames.iter().any(|&(a, b, _)| at == a || at + 1 == b);
        if in_frames && at % 61 != 0 && !edge {
            continue;
        }
        let old = flip(&img, at);
        let err = open_and_verify(&img).expect_err(&format!("flip at byte {at} went unnoticed"));
        put(&img, at, old);
        checked += 1;
        match err {
            ImageError::BadMagic { .. }
            | ImageError::UnsupportedVersion { part: "header", .. }
            | ImageError::CorruptStructure { part: "header", .. }
                if at < HEADER_LEN as u64 => {}
            ImageError::CorruptChunk {
                chunk,
                disk_offset,
                image_offset,
                ..
            } if in_frames => {
                let &(a, _, owner) = frames.iter().find(|&&(a, b, _)| at >= a && at < b).unwrap();
                assert_eq!(chunk, owner, "flip at {at}");
                assert_eq!(disk_offset, owner * 65536);
                assert_eq!(image_offset, a);
                let msg = ImageError::CorruptChunk {
                    chunk,
                    disk_offset,
                    image_offset,
                    detail: String::new(),
                }
                .to_string();
                assert!(msg.contains(&format!("chunk {owner}")) && msg.contains(&format!("{a}")));
            }
            ImageError::RootMismatch { offset, .. }
                if at >= index_start && at < len - TRAILER_LEN as u64 =>
            {
                assert_eq!(offset, index_start);
            }
            ImageError::Truncated { .. }
            | ImageError::UnsupportedVersion {
                part: "trailer", ..
            }
            | ImageError::CorruptStructure {
                part: "trailer", ..
            } if at >= len - TRAILER_LEN as u64 => {}
            other => panic!("flip at byte {at} gave an unexpected error: {other}"),
        }
    }
    assert!(checked > 500, "only {checked} flips checked");
    open_and_verify(&img).unwrap();
}

#[test]
fn truncation_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = capture(dir.path(), "src", &mixed(4, 0), &opts(65536));
    let full = std::fs::read(&img).unwrap();
    for cut in [0, 10, 63, 64, 200, full.len() / 2, full.len() - 1] {
        std::fs::write(&img, &full[..cut]).unwrap();
        let e = ImageReader::open(&img).expect_err("truncated image accepted");
        assert!(
            matches!(
                e,
                ImageError::Truncated { .. } | ImageError::BadMagic { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
}

#[test]
fn unknown_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = capture(dir.path(), "src", &mixed(2, 0), &opts(65536));
    put(&img, 8, 9);
    let e = ImageReader::open(&img).unwrap_err();
    assert!(
        matches!(e, ImageError::UnsupportedVersion { found: 9, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("version 9"));
}

#[test]
fn restore_refuses_a_bad_chunk_before_writing_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = mixed(12, 0);
    let (img, s) = capture(dir.path(), "src", &data, &opts(65536));
    // Damage the frame of a chunk in the middle (chunk 7: random, stored raw).
    let f = *s.index.entries[7]
        .data
        .frame()
        .expect("chunk 7 has a frame");
    flip(&img, f.offset + f.len as u64 / 2);
    let dest = dir.path().join("dest");
    std::fs::write(&dest, vec![0x55u8; data.len()]).unwrap();
    let r = ImageReader::open(&img).unwrap();
    let e = restore_image(&r, &dest, &RestoreOptions { threads: 2 }, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, ImageError::CorruptChunk { chunk: 7, .. }),
        "{e}"
    );
    let back = std::fs::read(&dest).unwrap();
    assert!(
        back[7 * 65536..8 * 65536].iter().all(|&b| b == 0x55),
        "bad chunk was written"
    );
}
