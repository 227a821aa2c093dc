//! Generated sample disks for the demo and the benchmarks: reproducible
//! (fixed seed), and shaped like real disks: runs of incompressible data
//! (compressed files, encrypted blobs), text-like data (logs, configs,
//! binaries) and zeros (free space), in runs of 64 KiB to 8 MiB.

use std::io::Write;
use std::path::Path;

/// Content shape of a sample disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// 25% random, 25% text-like, 50% zero runs.
    Mixed,
    /// All random: incompressible.
    Random,
    /// All text-like.
    Text,
}

/// Writes `size` bytes of the given shape to `path`; `seed` 0 is the
/// default sample, others differ from it and from each other.
pub fn write_sample(path: &Path, size: u64, shape: Shape, seed: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    // xorshift never leaves 0, so mixing keeps every seed's state non-zero.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    if seed == 0 {
        seed = 1;
    }
    let mut left = size;
    let mut block = vec![0u8; 8 << 20];
    while left > 0 {
        let run = ((next(&mut seed) % 128 + 1) * 64 * 1024).min(left) as usize;
        let buf = &mut block[..run];
        let kind = match shape {
            Shape::Mixed => next(&mut seed) % 4,
            Shape::Random => 0,
            Shape::Text => 1,
        };
        match kind {
            0 => buf
                .chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&next(&mut seed).to_le_bytes()[..c.len()])),
            1 => fill_text(buf, &mut seed),
            _ => buf.fill(0),
        }
        f.write_all(buf)?;
        left -= run as u64;
    }
    f.flush()?;
    Ok(())
}

fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn fill_text(buf: &mut [u8], seed: &mut u64) {
    const WORDS: &[&[u8]] = &[
        b"the ",
        b"disk ",
        b"image ",
        b"rack ",
        b"server ",
        b"kernel ",
        b"boot\n",
        b"0x7f3a ",
        b"multicast ",
        b"chunk ",
        b"/usr/lib/",
        b"systemd[1]: ",
        b"Started ",
        b"\t",
        b"eth0 ",
        b"link up ",
        b"10.0.3.17 ",
        b"ok\n",
        b"ERROR ",
        b"(pid 4711) ",
    ];
    let mut i = 0;
    while i < buf.len() {
        let w = WORDS[(next(seed) % WORDS.len() as u64) as usize];
        let n = w.len().min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[..n]);
        i += n;
    }
}
