//! Generated sources of every shape.

use std::path::{Path, PathBuf};

use rackcast_engine::image::{create_image, CreateOptions, CreateSummary};

pub fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

pub fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&xorshift(&mut s).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ", "disk ", "image ", "rack ", "server ", "kernel ", "boot\n", "0x7f3a ", "chunk ",
    ];
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[(xorshift(&mut s) % WORDS.len() as u64) as usize].as_bytes());
    }
    out.truncate(len);
    out
}

/// A source of `n` 64 KiB chunks: random, text, zero, duplicate of chunk 0,
/// repeating, with a short tail.
pub fn mixed(n: usize, tail: usize) -> Vec<u8> {
    const C: usize = 64 * 1024;
    let mut out = Vec::new();
    let first = random(C, 99);
    for i in 0..n {
        match i % 4 {
            0 if i == 0 => out.extend_from_slice(&first),
            0 => out.extend_from_slice(&first),
            1 => out.extend_from_slice(&text(C, i as u64)),
            2 => out.extend(std::iter::repeat_n(0u8, C)),
            _ => out.extend_from_slice(&random(C, i as u64 + 1000)),
        }
    }
    out.extend_from_slice(&text(tail, 7));
    out
}

pub fn opts(chunk_size: u32) -> CreateOptions {
    CreateOptions {
        chunk_size,
        threads: 2,
        ..CreateOptions::default()
    }
}

/// Writes `data` to `dir/name.src` and captures it to `dir/name.rcimg`.
pub fn capture(dir: &Path, name: &str, data: &[u8], o: &CreateOptions) -> (PathBuf, CreateSummary) {
    let src = dir.join(format!("{name}.src"));
    let img = dir.join(format!("{name}.rcimg"));
    std::fs::write(&src, data).unwrap();
    let s = create_image(&src, &img, o, &mut |_| {}).unwrap();
    (img, s)
}
