//! The scheduler and its store at datacenter size (issue 16, item 6): N
//! targets (default 10,000) in racks of 100 through one Run Script job, on
//! a virtual clock, every change written to a real PostgreSQL (a cluster of
//! its own in a temporary directory, `rackcast_tests::pg`) the way the
//! server's `Shared::mutate` writes it: one transaction per agent request.
//!
//! A rack powers on together: its 100 agents register, poll and get the
//! task, report it started, send a line of output, report it finished and
//! are sent to their disks. Then the next rack.
//!
//! Prints database rows and bytes written per target-task by kind, `job
//! show` (the job's view serialized, as `GET /api/v1/jobs/{id}` does) p50
//! and p99 as the job grows, and events stored per second of wall time.
//!
//! ```sh
//! cargo bench -p rackcast-server --bench sched_scale            # 10,000 targets
//! SCALE_TARGETS=1000 cargo bench -p rackcast-server --bench sched_scale
//! ```

use std::time::{Duration, Instant};

use rackcast_engine::sched::api::{
    CastPolicy, Directive, Environment, Inventory, JobSpec, TaskKind, TaskReport, TaskSpec,
};
use rackcast_engine::sched::{Change, MacAddr, SchedConfig, Scheduler, State};
use rackcast_server::store::Store;
use rackcast_tests::pg::Postgres;

/// Targets per rack: agents that come up together.
const RACK: usize = 100;

/// What the store was asked to write.
#[derive(Debug, Default)]
struct Written {
    transactions: u64,
    /// Rows and bytes (of the JSON `data` column, or the text) by kind.
    rows: [(u64, u64); 5],
    store_time: Duration,
}

/// `job` counts a job written whole and a run written alone.
const KINDS: [&str; 5] = ["target", "job", "event", "log", "other"];

impl Written {
    fn count(&mut self, changes: &[Change]) {
        for c in changes {
            let (kind, bytes) = match c {
                Change::Target(t) => (0, serde_json::to_vec(t).map_or(0, |v| v.len())),
                Change::Job(j) => (1, serde_json::to_vec(j).map_or(0, |v| v.len())),
                Change::Run { run, .. } => (1, serde_json::to_vec(run).map_or(0, |v| v.len())),
                Change::Event(e) if e.seq == 0 => continue,
                Change::Event(e) => (2, e.record().detail.to_string().len()),
                Change::Log(l) => (3, l.text.len()),
                Change::Session(_) | Change::Environment(_) => (4, 0),
            };
            self.rows[kind].0 += 1;
            self.rows[kind].1 += bytes as u64;
        }
    }
}

fn mac(i: usize) -> MacAddr {
    let b = (i as u32).to_be_bytes();
    MacAddr([0x52, 0x54, 0, b[1], b[2], b[3]])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    let n: usize = std::env::var("SCALE_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let Some(pg) = Postgres::start() else {
        eprintln!("SKIP: PostgreSQL is not installed (scripts/deps.sh test)");
        return;
    };
    let url = pg.create_db("scale");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(Store::open_postgres(&url))
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));

    let mut now = 1_700_000_000_000u64;
    let mut s = Scheduler::new(SchedConfig::default(), State::default(), now);
    let mut w = Written::default();
    let commit = |s: &mut Scheduler, now: u64, w: &mut Written| {
        let changes = s.drain_changes();
        w.count(&changes);
        let t = Instant::now();
        rt.block_on(store.apply(&changes, now))
            .unwrap_or_else(|e| panic!("{e}"));
        w.store_time += t.elapsed();
        w.transactions += 1;
    };

    let env = SchedConfig::default().default_env;
    s.put_environment(
        now,
        Environment {
            name: env.clone(),
            kernel: Some("k/vmlinuz".into()),
            initrd: Some("k/initrd.img".into()),
            cmdline: String::new(),
            boot_file: None,
        },
    )
    .expect("environment");
    for i in 0..n {
        s.add_target(now, mac(i), &format!("r{:03}-u{:02}", i / RACK, i % RACK))
            .expect("target");
    }
    let id = s
        .submit(
            now,
            JobSpec {
                name: "scale".into(),
                targets: (0..n).map(|i| mac(i).to_string()).collect(),
                cast: CastPolicy::default(),
                tasks: vec![TaskSpec {
                    kind: TaskKind::Script {
                        script: "true".into(),
                        interpreter: None,
                        expect_exit: 0,
                    },
                    env: None,
                    timeout: None,
                    retries: 0,
                }],
                origin: None,
            },
        )
        .expect("submit");
    commit(&mut s, now, &mut w);
    let setup = std::mem::take(&mut w);
    eprintln!(
        "{n} targets enrolled and one job submitted: {} rows in {:.2} s",
        setup.rows.iter().map(|r| r.0).sum::<u64>(),
        setup.store_time.as_secs_f64()
    );

    let start = Instant::now();
    let inventory = Inventory {
        cpus: 64,
        memory: 256 << 30,
        ..Inventory::default()
    };
    for rack in 0..n.div_ceil(RACK) {
        let macs: Vec<MacAddr> = (rack * RACK..n.min((rack + 1) * RACK)).map(mac).collect();
        let mut refs = Vec::new();
        for &m in &macs {
            now += 1;
            s.register(now, m, &env, inventory.clone(), None)
                .expect("register");
            commit(&mut s, now, &mut w);
        }
        for &m in &macs {
            now += 1;
            match s.poll(now, m, None) {
                Directive::Run { task, .. } => refs.push((m, task)),
                other => panic!("{m}: {other:?}"),
            }
            commit(&mut s, now, &mut w);
        }
        for &(m, r) in &refs {
            let reports = [
                TaskReport::Started,
                TaskReport::Log {
                    text: "ok\n".into(),
                },
                TaskReport::Finished {
                    ok: true,
                    error: None,
                    summary: "exit 0".into(),
                    root: None,
                    transport: None,
                },
            ];
            for report in reports {
                now += 1;
                s.report(now, m, r, report).expect("report");
                commit(&mut s, now, &mut w);
            }
        }
        for &m in &macs {
            now += 1;
            let d = s.poll(now, m, None);
            assert!(matches!(d, Directive::BootLocal), "{m}: {d:?}");
            commit(&mut s, now, &mut w);
        }
        if (rack + 1) % 10 == 0 {
            eprintln!(
                "{} targets done, {:.1} s, store {:.1} s",
                (rack + 1) * RACK,
                start.elapsed().as_secs_f64(),
                w.store_time.as_secs_f64()
            );
        }
    }
    let wall = start.elapsed();
    let status = s.job(id).map(|j| j.view().status).unwrap_or_default();
    assert_eq!(status, "done");
    // `job show` at full size: the job's view, serialized, as the handler
    // answers it (under the server's lock).
    let mut shows: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let v = s.job(id).map(|j| j.view()).expect("job");
            std::hint::black_box(serde_json::to_vec(&v).expect("json"));
            t.elapsed()
        })
        .collect();
    shows.sort();

    println!("sched_scale: {n} targets in racks of {RACK}, one Run Script task each, PostgreSQL");
    println!(
        "  transactions {} ({:.1} per target-task), wall {:.1} s, of it in the store {:.1} s",
        w.transactions,
        w.transactions as f64 / n as f64,
        wall.as_secs_f64(),
        w.store_time.as_secs_f64()
    );
    let mut total = (0, 0);
    for (k, (rows, bytes)) in KINDS.iter().zip(w.rows) {
        if rows == 0 {
            continue;
        }
        total.0 += rows;
        total.1 += bytes;
        println!(
            "  {k:<6} rows {rows:>9} ({:>5.2} per target-task), {:>12} bytes ({:>10.0} per target-task)",
            rows as f64 / n as f64,
            bytes,
            bytes as f64 / n as f64
        );
    }
    println!(
        "  all    rows {:>9} ({:>5.2} per target-task), {:>12} bytes ({:>10.0} per target-task)",
        total.0,
        total.0 as f64 / n as f64,
        total.1,
        total.1 as f64 / n as f64
    );
    println!(
        "  job show at {n} targets: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
        percentile(&shows, 0.5).as_secs_f64() * 1e3,
        percentile(&shows, 0.99).as_secs_f64() * 1e3,
        shows.len()
    );
    println!(
        "  events stored {} , {:.0} per second of wall time",
        w.rows[2].0,
        w.rows[2].0 as f64 / wall.as_secs_f64()
    );
}
