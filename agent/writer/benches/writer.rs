//! Benches of the writer's two hot paths: the decode pool (read frame,
//! BLAKE3, zstd, BLAKE3, copy into an aligned buffer) and the ring (O_DIRECT
//! writes of ready chunks at several queue depths, against positioned
//! writes). Throughput in bytes per second of restored disk.
//!
//! Files go to `RACKCAST_BENCH_DIR` (default /var/tmp: a real disk, not tmpfs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rackcast_engine::image::{create_image, CreateOptions, ImageReader};
use rackcast_writer::{
    BufferPool, ChunkPayload, DecodePool, DiskWriter, EngineChoice, WriterConfig,
};

const SIZE: usize = 256 << 20;

fn bench_dir() -> PathBuf {
    let base = std::env::var_os("RACKCAST_BENCH_DIR").map_or("/var/tmp".into(), PathBuf::from);
    let d = base.join(format!("rackcast-writer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("bench dir");
    d
}

/// Half random, a quarter text-like, a quarter zeros, in 1 MiB runs.
fn sample(dir: &Path, name: &str, random_only: bool) -> PathBuf {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut v = vec![0u8; SIZE];
    for run in v.chunks_mut(1 << 20) {
        match if random_only { 0 } else { next() % 4 } {
            0 | 1 => run
                .chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&next().to_le_bytes()[..c.len()])),
            2 => run
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = b"the quick brown fox "[i % 20]),
            _ => {}
        }
    }
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, &v).expect("write sample");
    let img = dir.join(format!("{name}.rcimg"));
    create_image(&raw, &img, &CreateOptions::default(), &mut |_| {}).expect("create");
    std::fs::remove_file(&raw).expect("remove raw");
    img
}

fn decode_pool(c: &mut Criterion) {
    let dir = bench_dir();
    let mut g = c.benchmark_group("decode_pool");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(SIZE as u64));
    for shape in ["mixed", "random"] {
        let img = ImageReader::open(&sample(&dir, shape, shape == "random")).expect("open");
        let chunks: Vec<u64> = (0..img.index().entries.len() as u64).collect();
        let pool = BufferPool::new(16, img.index().meta.chunk_size as usize);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        g.bench_function(BenchmarkId::new(shape, threads), |b| {
            b.iter(|| {
                DecodePool::run(
                    &img,
                    &chunks,
                    &pool,
                    (0..threads).map(|_| None).collect(),
                    |rx| {
                        for d in rx.iter() {
                            if let Ok(ChunkPayload::Data(buf)) = d.result {
                                pool.put(buf);
                            }
                        }
                    },
                )
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn ring(c: &mut Criterion) {
    let dir = bench_dir();
    let img = ImageReader::open(&sample(&dir, "ring", true)).expect("open");
    let index = Arc::new(img.index().clone());
    let count = index.entries.len() as u64;
    let dest = dir.join("dest");
    let mut g = c.benchmark_group("ring");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes(SIZE as u64));
    let mut cases: Vec<(String, EngineChoice, u32)> = [16u32, 32, 64]
        .iter()
        .map(|&qd| (format!("uring-qd{qd}"), EngineChoice::Uring, qd))
        .collect();
    cases.push(("sync".into(), EngineChoice::Sync, 1));
    for (name, engine, qd) in cases {
        let cfg = WriterConfig {
            engine,
            queue_depth: qd,
            // The same 16 chunk buffers for every case: only the depth varies.
            buffers: 16,
            resume: false,
            ..WriterConfig::default()
        };
        g.bench_function(&name, |b| {
            b.iter(|| {
                let mut w = DiskWriter::open(&dest, index.clone(), img.root(), &cfg).expect("open");
                for i in 0..count {
                    let mut buf = w.buffer().expect("buffer");
                    let len = index.chunk_len(i);
                    buf.fill(len)[..8].copy_from_slice(&i.to_le_bytes());
                    w.submit(i, ChunkPayload::Data(buf)).expect("submit");
                }
                w.finish().expect("finish")
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, decode_pool, ring);
criterion_main!(benches);
