//! The cast simulation at size, in release: a 1 GiB image in 4 MiB chunks
//! sent at a 10 Gbit/s virtual link in MTU-1500 symbols, to N receivers at
//! 0/1/5/20% loss, with a straggler. The same sans-IO sender and receivers,
//! network model and checks as the CI table (`engine/tests/cast/`), whose
//! image is small enough to run 10,000 receivers in minutes; this one shows
//! the protocol on real chunk sizes, where a chunk is about a thousand
//! symbols. Prints the table kept in `docs/cast-protocol.md`.
//!
//!   cargo bench -p rackcast-benches --bench cast_sim
//!   env: RACKCAST_SIM_SIZE_MIB=1024 RACKCAST_SIM_NS="1 10 100"
//!        RACKCAST_SIM_LOSSES="0 1 5 20" (percent)

#[allow(dead_code)]
#[path = "../../engine/tests/cast/netsim.rs"]
mod netsim;
#[allow(dead_code)]
#[path = "../../engine/tests/cast/table.rs"]
mod table;

use std::time::{Duration, Instant};

use netsim::{make_image, LinkSpec, Loss, Rng};
use rackcast_engine::cast::wire::symbol_size_for_mtu;
use table::{case, uniform, Case, Session};

const CHUNK: u32 = 4 << 20;
/// 10 Gbit/s, in bytes per second.
const RATE: u64 = 1_250_000_000;

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split_whitespace()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .collect()
}

/// A disk-like source: runs of 64 KiB to 8 MiB, a quarter random, a
/// quarter four-bit "text" (zstd halves it), half zeros (free space, which
/// does not travel), like `rackcast image sample --shape mixed`.
fn mixed(size: usize) -> Vec<u8> {
    let mut rng = Rng::new(7);
    let mut src = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let run = (((rng.next() % 128) + 1) as usize * 65536).min(size - at);
        let buf = &mut src[at..at + run];
        match rng.next() % 4 {
            0 => buf
                .chunks_mut(8)
                .for_each(|c| c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()])),
            1 => buf.iter_mut().for_each(|b| *b = (rng.next() % 16) as u8),
            _ => {}
        }
        at += run;
    }
    src
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not used.
    let size: usize = env_list::<usize>("RACKCAST_SIM_SIZE_MIB", "1024")[0] << 20;
    let ns: Vec<usize> = env_list("RACKCAST_SIM_NS", "1 10 100");
    let losses: Vec<u32> = env_list("RACKCAST_SIM_LOSSES", "0 1 5 20");
    let t = Instant::now();
    let image = make_image(mixed(size), CHUNK);
    let frames: Vec<u64> = image
        .index
        .entries
        .iter()
        .filter_map(|e| e.data.frame())
        .map(|f| f.len as u64)
        .collect();
    let symbol = symbol_size_for_mtu(1500);
    println!(
        "image: {} MiB in {} chunks of {} MiB, {} framed ({} MiB stored), {symbol}-byte symbols; \
         sender pinned at 10 Gbit/s; made in {:.1} s",
        size >> 20,
        image.index.entries.len(),
        CHUNK >> 20,
        frames.len(),
        frames.iter().sum::<u64>() >> 20,
        t.elapsed().as_secs_f64()
    );
    let mut cases: Vec<Case> = Vec::new();
    for &n in &ns {
        for &p in &losses {
            let name = format!("uniform {p:>2}%");
            cases.push(case(&name, n, 1, uniform(p as f64 / 100.0)));
        }
    }
    let most = ns.iter().copied().max().unwrap_or(1);
    if most > 1 {
        // One receiver's port at a tenth of the link.
        let mut s = case("straggler 1%", most, 5, |i| LinkSpec {
            loss: Loss::Uniform(0.01),
            rate: (i == 0).then_some(RATE as f64 / 10.0),
            ..LinkSpec::clean()
        });
        s.straggler = Some(0);
        cases.push(s);
    }
    let session = Session {
        symbol,
        rate: RATE,
        limit: Duration::from_secs(120),
    };
    let t = Instant::now();
    let rows = table::run_all(&image, &cases, session);
    print!("{}", table::format(&rows));
    table::debug_spread(&rows);
    println!("simulated in {:.0} s (wall)", t.elapsed().as_secs_f64());
}
