//! A table of simulated sessions: the cases (N receivers, each on its own
//! link), run on two threads, checked (every receiver done with every
//! frame, nothing wrong), and printed as feedback load, sender work, repair
//! overhead and completion time. Shared by the CI snapshot
//! (`scenarios.rs`) and the release bench at 1 GiB
//! (`benches/benches/cast_sim.rs`).

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use rackcast_engine::cast::Verdict;

use crate::netsim::{simulate, Image, LinkSpec, Loss, Outcome, Settings, SharedDecode};

/// One row to run: `n` receivers, receiver `i` on `link(i)`.
pub struct Case {
    pub name: String,
    pub n: usize,
    pub seed: u64,
    pub link: Box<dyn Fn(usize) -> LinkSpec + Send + Sync>,
    /// The receiver whose port is slow, if any; its completion does not
    /// count toward the group's.
    pub straggler: Option<usize>,
}

/// A case without a straggler.
pub fn case(
    name: &str,
    n: usize,
    seed: u64,
    f: impl Fn(usize) -> LinkSpec + Send + Sync + 'static,
) -> Case {
    Case {
        name: name.to_string(),
        n,
        seed,
        link: Box::new(f),
        straggler: None,
    }
}

/// Every receiver loses `p` of its packets, independently.
pub fn uniform(p: f64) -> impl Fn(usize) -> LinkSpec + Send + Sync {
    move |_| LinkSpec {
        loss: Loss::Uniform(p),
        ..LinkSpec::clean()
    }
}

/// The settings every row of a table shares.
#[derive(Debug, Clone, Copy)]
pub struct Session {
    pub symbol: usize,
    /// Bytes per second.
    pub rate: u64,
    pub limit: Duration,
}

pub struct Row {
    pub name: String,
    pub n: usize,
    pub out: Outcome,
    pub straggler: Option<usize>,
}

/// Runs the cases on two threads (the largest first), in table order; every
/// receiver must end `Done` with every frame right.
pub fn run_all(image: &Image, cases: &[Case], session: Session) -> Vec<Row> {
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cases[i].n));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let shared = Arc::new(SharedDecode::default());
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&i) = order.get(k) else { break };
                let row = run_case(image, &cases[i], session, &shared);
                rows.lock().unwrap().push((i, row));
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

fn run_case(image: &Image, c: &Case, session: Session, shared: &Arc<SharedDecode>) -> Row {
    let links: Vec<LinkSpec> = (0..c.n).map(&c.link).collect();
    let settings = Settings {
        seed: c.seed,
        symbol: session.symbol,
        rate: session.rate,
        // Pinned, except where a receiver's port is slower than the rest:
        // the AIMD control reads loss above 5% as congestion, and over tens
        // of virtual seconds it would slow every row with uniform (random,
        // not congestive) loss to its floor. Pinned, those rows compare the
        // feedback and repair protocol alone.
        min_rate: if c.straggler.is_some() {
            session.rate / 50
        } else {
            session.rate
        },
        limit: session.limit,
        shared_decode: Some(shared.clone()),
    };
    let out = simulate(image, &links, &settings, &|_| {});
    let name = &c.name;
    assert_eq!(out.wrong_frames, 0, "{name}: a receiver got a wrong frame");
    assert_eq!(
        out.verdicts.len(),
        c.n,
        "{name}: the sender lost track of receivers"
    );
    for (id, v) in &out.verdicts {
        if *v != Verdict::Done || (*id == 1 && std::env::var_os("RACKCAST_SIM_DEBUG").is_some()) {
            eprintln!(
                "{name}: sender {:?}\nreceiver {id}: {:?}",
                out.sender,
                out.rx_stats[*id as usize - 1]
            );
        }
        assert_eq!(*v, Verdict::Done, "{name}: receiver {id} ended {v:?}");
    }
    Row {
        name: name.clone(),
        n: c.n,
        out,
        straggler: c.straggler,
    }
}

/// Virtual seconds from the sender's start until the last healthy receiver
/// was done.
pub fn healthy_time(r: &Row) -> f64 {
    let start = r.out.started_at.expect("the sender started");
    r.out
        .done_at
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != r.straggler)
        .map(|(i, t)| t.unwrap_or_else(|| panic!("{}: receiver {i} never finished", r.name)))
        .fold(0.0, f64::max)
        - start
}

/// Symbols sent beyond the image's own, as a share of them.
pub fn overhead(r: &Row) -> f64 {
    (r.out.source_symbols + r.out.repair_symbols) as f64 / r.out.image_symbols as f64 - 1.0
}

/// Status packets per second at the sender over the session.
pub fn status_rate(r: &Row) -> f64 {
    r.out.status_packets as f64 / r.out.finished_at.expect("the session ended").max(1e-3)
}

/// The table: one line per row, completion compared with the row of the
/// same name at N = 1 where there is one.
pub fn format(rows: &[Row]) -> String {
    let single = |name: &str| {
        rows.iter()
            .find(|r| r.name == name && r.n == 1)
            .map(healthy_time)
            .unwrap_or(f64::NAN)
    };
    let mut table = String::new();
    writeln!(
        table,
        "{:<16} {:>6} {:>9} {:>8} {:>11} {:>9} {:>9} {:>8} {:>7} {:>10}",
        "scenario",
        "N",
        "status/s",
        "peak/s",
        "processed/s",
        "encoded",
        "overhead",
        "done s",
        "vs N=1",
        "stragglers"
    )
    .unwrap();
    for r in rows {
        let span = r.out.finished_at.expect("the session ended").max(1e-3);
        let t = healthy_time(r);
        let vs = t / single(&r.name);
        let vs = if vs.is_nan() {
            "-".to_string()
        } else {
            format!("{vs:.2}x")
        };
        writeln!(
            table,
            "{:<16} {:>6} {:>9.1} {:>8} {:>11.1} {:>8.2}x {:>8.1}% {:>8.2} {:>7} {:>10}",
            r.name,
            r.n,
            status_rate(r),
            r.out.status_peak,
            r.out.statuses as f64 / span,
            r.out.encoded as f64 / r.out.image_symbols as f64,
            overhead(r) * 100.0,
            t,
            vs,
            r.out.straggler_events
        )
        .unwrap();
    }
    table
}

/// With RACKCAST_SIM_DEBUG: each row's spread of completion times, and the
/// receivers far behind the rest.
pub fn debug_spread(rows: &[Row]) {
    if std::env::var_os("RACKCAST_SIM_DEBUG").is_none() {
        return;
    }
    for r in rows {
        let start = r.out.started_at.unwrap_or(0.0);
        let mut d: Vec<f64> = r.out.done_at.iter().flatten().map(|t| t - start).collect();
        d.sort_by(f64::total_cmp);
        let q = |p: f64| d[((d.len() - 1) as f64 * p) as usize];
        eprintln!(
            "{} {}: done p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            r.name,
            r.n,
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
        for (i, t) in r.out.done_at.iter().enumerate() {
            if t.is_some_and(|t| t - start > q(0.99) + 1.0) {
                eprintln!(
                    "  late {i}: {:.2} {:?}",
                    t.unwrap() - start,
                    r.out.rx_stats[i]
                );
            }
        }
    }
}
