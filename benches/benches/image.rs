//! Chunk encode and decode throughput (bytes/s) for the image format, by
//! content shape, chunk size and zstd level. Used to pick the defaults.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rackcast_engine::image::{
    ChunkData, ChunkDecoder, ChunkEncoder, ChunkEntry, ChunkIndex, EncodedChunk, FrameRef,
    Metadata, UsedMask,
};

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Random bytes: incompressible.
fn random(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len).map(|_| xorshift(&mut seed) as u8).collect()
}

/// Text-like bytes from a small vocabulary: compresses like logs and binaries.
fn text(len: usize, mut seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "disk ",
        "image ",
        "rack ",
        "server ",
        "kernel ",
        "boot ",
        "0x7f3a ",
        "error ",
        "ok\n",
        "multicast ",
        "chunk ",
        "=",
        "/usr/lib/",
        "systemd ",
        "\t",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(
            WORDS[(xorshift(&mut seed) % WORDS.len() as u64) as usize].as_bytes(),
        );
    }
    out.truncate(len);
    out
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_encode");
    for &size in &[1usize << 20, 4 << 20] {
        for (shape, data) in [("random", random(size, 1)), ("text", text(size, 2))] {
            for level in [1, 3] {
                g.throughput(Throughput::Bytes(size as u64));
                let mut enc = ChunkEncoder::new(level).unwrap();
                g.bench_with_input(
                    BenchmarkId::new(format!("{shape}/L{level}"), size >> 20),
                    &data,
                    |b, d| b.iter(|| enc.encode(d)),
                );
            }
        }
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk_decode");
    for &size in &[1usize << 20, 4 << 20] {
        for (shape, data) in [("random", random(size, 1)), ("text", text(size, 2))] {
            let mut enc = ChunkEncoder::new(3).unwrap();
            let (hash, e) = enc.encode(&data);
            let (frame, zstd) = match e {
                EncodedChunk::Zstd(f) => (f, true),
                _ => (data.clone(), false),
            };
            let fref = FrameRef {
                offset: 64,
                len: frame.len() as u32,
                hash: *blake3::hash(&frame).as_bytes(),
            };
            let index = ChunkIndex {
                version: rackcast_engine::image::FORMAT_VERSION,
                meta: Metadata {
                    source_size: size as u64,
                    chunk_size: size as u32,
                    logical_sector_size: 512,
                    physical_sector_size: 4096,
                    min_target_size: size as u64,
                    created_unix: 0,
                    tool_version: String::new(),
                    labels: Default::default(),
                },
                entries: vec![ChunkEntry {
                    data: if zstd {
                        ChunkData::Zstd(fref)
                    } else {
                        ChunkData::Raw(fref)
                    },
                    hash,
                    used: UsedMask::All,
                }],
            };
            let mut dec = ChunkDecoder::new();
            let mut out = Vec::new();
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(BenchmarkId::new(shape, size >> 20), |b| {
                b.iter(|| dec.decode(&index, 0, &frame, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
