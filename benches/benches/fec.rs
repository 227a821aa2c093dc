//! The two erasure codes behind `engine::cast::fec::ErasureCode`, side by
//! side on what a cast session does per chunk: a 4 MiB chunk frame in
//! 1424-byte symbols (MTU 1500), all repair symbols encoded once, and a
//! decode after 5% of the source symbols were lost. Used to pick the default.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rackcast_engine::cast::{ErasureCode, RaptorQ, ReedSolomon};

const SYMBOL: usize = 1424;
const OBJECT: usize = 4 << 20;

fn source() -> Vec<Vec<u8>> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..OBJECT.div_ceil(SYMBOL))
        .map(|_| {
            (0..SYMBOL)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        })
        .collect()
}

fn codes(c: &mut Criterion) {
    let src = source();
    let refs: Vec<&[u8]> = src.iter().map(Vec::as_slice).collect();
    let k = refs.len() as u32;
    let codes: [&dyn ErasureCode; 2] = [&ReedSolomon, &RaptorQ];
    let mut g = c.benchmark_group("fec 4 MiB, 1424-byte symbols");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(OBJECT as u64));
    for code in codes {
        g.bench_function(BenchmarkId::new("encode all repairs", code.name()), |b| {
            b.iter(|| code.encode(&refs).expect("encode"))
        });
        let repair = code.encode(&refs).expect("encode");
        // Every 20th source symbol lost, made up (plus two) from repairs.
        let mut have: Vec<(u32, &[u8])> = (0..k)
            .filter(|i| i % 20 != 0)
            .map(|i| (i, refs[i as usize]))
            .collect();
        let missing = k as usize - have.len() + 2;
        for (j, r) in repair.iter().enumerate().take(missing) {
            have.push((k + j as u32, r.as_slice()));
        }
        g.bench_function(BenchmarkId::new("decode 5% loss", code.name()), |b| {
            b.iter(|| code.decode(k, SYMBOL, &have).expect("decode"))
        });
    }
    g.finish();
}

criterion_group!(benches, codes);
criterion_main!(benches);
