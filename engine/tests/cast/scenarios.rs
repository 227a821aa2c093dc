//! The simulation table: up to 10,000 receivers x loss x bursts x reordering
//! x late joins x a straggler, on an image long enough to reach steady state
//! (300 chunks, tens of virtual seconds). Every receiver must finish with
//! every frame; the table of feedback load, sender work, repair overhead and
//! completion time is kept as a snapshot (`sim_table.txt`; set
//! RACKCAST_UPDATE_SNAPSHOTS=1 to rewrite it).

use std::time::Duration;

use crate::netsim::{make_image, Image, LinkSpec, Loss, Rng};
use crate::table::{self, case, healthy_time, overhead, status_rate, uniform, Case, Session};

/// 300 chunks of 64 KiB: each a random run of 3 to 9 KiB (four bits a
/// byte) then zeros, so frames are about 12 to 36 symbols of 128 bytes; every tenth chunk is zero and
/// every sixteenth repeats an earlier one (neither travels).
fn long_image() -> Image {
    let mut rng = Rng::new(42);
    let mut src = Vec::new();
    let mut first = Vec::new();
    for i in 0..300 {
        let mut chunk = vec![0u8; 65536];
        if i % 10 != 9 {
            // Four random bits a byte: data that zstd halves (full-entropy
            // bytes would be stored raw, the whole 64 KiB).
            let len = 3072 + (rng.next() % 6144) as usize;
            for b in &mut chunk[..len] {
                *b = (rng.next() % 16) as u8;
            }
        }
        if i == 1 {
            first = chunk.clone();
        }
        if i % 16 == 15 {
            chunk = first.clone();
        }
        src.extend_from_slice(&chunk);
    }
    make_image(src, 65536)
}

/// Symbol size of the table: small, so the frames are many symbols (as a
/// real 4 MiB chunk is thousands) while the thousands of receivers' hashing
/// stays cheap.
const SYMBOL: usize = 128;
/// About 20 virtual seconds for one pass of the image.
const RATE: u64 = 60_000;
const LIMIT: Duration = Duration::from_secs(600);

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for &n in &[1usize, 100, 1000, 10_000] {
        for &p in &[0.0, 0.01, 0.05, 0.20] {
            let name = format!("uniform {:>2}%", (p * 100.0) as u32);
            v.push(case(&name, n, 1, uniform(p)));
        }
    }
    v.push(case("bursty GE ~5%", 1000, 2, |_| LinkSpec {
        loss: Loss::Bursty {
            enter: 0.01,
            exit: 0.2,
            bad: 0.9,
        },
        ..LinkSpec::clean()
    }));
    v.push(case("reorder+dup 1%", 1000, 3, |_| LinkSpec {
        loss: Loss::Uniform(0.01),
        jitter: Duration::from_millis(3),
        dup: 0.02,
        ..LinkSpec::clean()
    }));
    v.push(case("late joiners", 1000, 4, |i| LinkSpec {
        loss: Loss::Uniform(0.01),
        join_at: if i % 5 == 0 {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        },
        ..LinkSpec::clean()
    }));
    let mut s = case("straggler 1%", 1000, 5, |i| LinkSpec {
        loss: Loss::Uniform(0.01),
        rate: (i == 0).then_some(RATE as f64 / 10.0),
        ..LinkSpec::clean()
    });
    s.straggler = Some(0);
    v.push(s);
    v
}

#[test]
fn simulated_sessions_complete_and_match_the_snapshot() {
    let image = long_image();
    if std::env::var_os("RACKCAST_SIM_DEBUG").is_some() {
        let frames: Vec<u32> = image
            .index
            .entries
            .iter()
            .filter_map(|e| e.data.frame())
            .map(|f| f.len)
            .collect();
        eprintln!(
            "{} framed of {}, {} bytes, first {:?}",
            frames.len(),
            image.index.entries.len(),
            frames.iter().map(|&f| f as u64).sum::<u64>(),
            &frames[..8]
        );
    }
    // RACKCAST_SIM_MAX_N=1000 runs the smaller rows only, and
    // RACKCAST_SIM_ONLY="20% 10000" the rows whose "name N" contains it;
    // either prints its rows and checks no goal (to explore a change).
    let max_n: Option<usize> = std::env::var("RACKCAST_SIM_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut all = cases();
    let only = std::env::var("RACKCAST_SIM_ONLY").ok();
    all.retain(|c| max_n.is_none_or(|m| c.n <= m));
    all.retain(|c| {
        only.as_ref()
            .is_none_or(|o| format!("{} {}", c.name, c.n).contains(o.as_str()))
    });
    let session = Session {
        symbol: SYMBOL,
        rate: RATE,
        limit: LIMIT,
    };
    let rows = table::run_all(&image, &all, session);
    let table = table::format(&rows);
    print!("{table}");
    table::debug_spread(&rows);
    if max_n.is_some() || only.is_some() {
        return;
    }

    // Goals from the performance issue, in virtual time.
    for r in &rows {
        assert!(
            status_rate(r) <= 2000.0,
            "{} N={}: {:.0} status packets per second at the sender",
            r.name,
            r.n,
            status_rate(r)
        );
    }
    let row = |name: &str, n: usize| rows.iter().find(|r| r.name == name && r.n == n).unwrap();
    let ratio = |name: &str| healthy_time(row(name, 10_000)) / healthy_time(row(name, 1));
    assert!(
        ratio("uniform  1%") <= 1.15,
        "10,000 receivers at 1% loss take {:.2}x one receiver",
        ratio("uniform  1%")
    );
    assert!(
        ratio("uniform 20%") <= 1.6,
        "10,000 receivers at 20% loss take {:.2}x one receiver",
        ratio("uniform 20%")
    );
    for n in [1, 100, 1000, 10_000] {
        let (clean, lossy) = (row("uniform  0%", n), row("uniform  1%", n));
        let x = (1.0 + overhead(lossy)) / (1.0 + overhead(clean));
        assert!(
            x <= 1.2,
            "N={n}: 1% loss sends {x:.3}x the loss-free symbols"
        );
    }
    let straggler = rows.last().unwrap();
    assert!(
        straggler.out.done_at[0].is_some(),
        "the straggler never finished"
    );
    let held = healthy_time(straggler) / healthy_time(row("uniform  1%", 1000));
    assert!(held <= 1.5, "a straggler held the group back: {held:.2}x");

    let snap = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cast/sim_table.txt");
    if std::env::var_os("RACKCAST_UPDATE_SNAPSHOTS").is_some() || !snap.exists() {
        std::fs::write(&snap, &table).unwrap();
    } else {
        let want = std::fs::read_to_string(&snap).unwrap();
        assert_eq!(
            table, want,
            "simulation table changed; review and rerun with RACKCAST_UPDATE_SNAPSHOTS=1"
        );
    }
}
