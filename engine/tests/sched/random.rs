//! Random sequences of every input the scheduler takes, on a virtual clock:
//! it never panics, sequence numbers stay gap-free, no task finishes twice
//! for a target, and a target's state always agrees with its job's run.

use proptest::prelude::*;
use rackcast_engine::sched::api::{
    CastPolicy, Directive, Inventory, JobId, JobSpec, SessionId, TargetState, TaskKind, TaskRef,
    TaskReport, TaskSpec, VerifyMode,
};
use rackcast_engine::sched::{Change, MacAddr, RunStatus, SchedConfig, Scheduler, State};

#[derive(Debug, Clone)]
enum Op {
    Register(usize, bool),
    Poll(usize, bool),
    Report(usize, u8),
    Tick(u64),
    Submit(u8, u8),
    Cancel(u64),
    Retry(u64),
    Release(usize),
    SenderDone(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, any::<bool>()).prop_map(|(t, e)| Op::Register(t, e)),
        (0..4usize, any::<bool>()).prop_map(|(t, r)| Op::Poll(t, r)),
        (0..4usize, 0..5u8).prop_map(|(t, k)| Op::Report(t, k)),
        (0..200_000u64).prop_map(Op::Tick),
        (0..16u8, 0..4u8).prop_map(|(m, k)| Op::Submit(m, k)),
        (1..6u64).prop_map(Op::Cancel),
        (1..6u64).prop_map(Op::Retry),
        (0..4usize).prop_map(Op::Release),
        (1..6u64).prop_map(Op::SenderDone),
    ]
}

fn mac(i: usize) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0x20, i as u8])
}

fn task(kind: u8) -> TaskSpec {
    let kind = match kind {
        0 => TaskKind::Distribute {
            image: "golden".into(),
            disk: None,
            verify: VerifyMode::Off,
            unused: Default::default(),
            grow: false,
            cloud_init: None,
        },
        1 => TaskKind::Script {
            script: "true".into(),
            interpreter: None,
            expect_exit: 0,
        },
        2 => TaskKind::Reboot { to: "local".into() },
        _ => TaskKind::Create {
            image: "cap".into(),
            disk: None,
        },
    };
    TaskSpec {
        kind,
        env: None,
        timeout: Some(30),
        retries: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_inputs_keeps_the_scheduler_consistent(ops in proptest::collection::vec(op(), 1..120)) {
        let mut s = Scheduler::new(SchedConfig::default(), State::default(), 0);
        s.set_image("golden", Some("ab".repeat(32)));
        for i in 0..4 {
            s.add_target(0, mac(i), "").unwrap();
        }
        let mut now = 0u64;
        let mut refs: Vec<Option<TaskRef>> = vec![None; 4];
        let mut events = Vec::new();
        for o in ops {
            now += 10;
            match o {
                Op::Register(t, other_env) => {
                    let env = if other_env { "elsewhere" } else { "linux-x64" };
                    s.register(now, mac(t), env, Inventory::default(), refs[t]).unwrap();
                }
                Op::Poll(t, running) => {
                    let d = s.poll(now, mac(t), if running { refs[t] } else { None });
                    match d {
                        Directive::Run { task, .. } => refs[t] = Some(task),
                        Directive::Reboot { task: Some(task), .. } => refs[t] = Some(task),
                        _ => {}
                    }
                }
                Op::Report(t, k) => {
                    if let Some(r) = refs[t] {
                        let rep = match k {
                            0 => TaskReport::Started,
                            1 => TaskReport::Rejoin { reason: "x".into() },
                            2 => TaskReport::Log { text: "out".into() },
                            3 => TaskReport::Finished { ok: false, error: None, summary: String::new(), root: None, transport: None },
                            _ => TaskReport::Finished { ok: true, error: None, summary: String::new(), root: None, transport: None },
                        };
                        let _ = s.report(now, mac(t), r, rep);
                    }
                }
                Op::Tick(d) => {
                    now += d;
                    s.handle_timeout(now);
                }
                Op::Submit(m, k) => {
                    let targets: Vec<String> =
                        (0..4).filter(|i| m & (1 << i) != 0).map(|i| mac(i).to_string()).collect();
                    let spec = JobSpec {
                        origin: None,
                        name: String::new(),
                        targets,
                        cast: CastPolicy::default(),
                        tasks: vec![task(k), task((k + 1) % 4)],
                    };
                    let _ = s.submit(now, spec);
                }
                Op::Cancel(j) => { let _ = s.cancel(now, JobId(j)); }
                Op::Retry(j) => { let _ = s.retry(now, JobId(j)); }
                Op::Release(t) => { s.release(now, mac(t)).unwrap(); }
                Op::SenderDone(id) => s.sender_finished(now, SessionId(id), &[], serde_json::json!({})),
            }
            while s.poll_action().is_some() {}
            for c in s.drain_changes() {
                if let Change::Event(e) = c {
                    if e.seq > 0 {
                        events.push(e.record());
                    }
                }
            }
            for t in s.targets() {
                if let TargetState::Running { job, .. } = t.state {
                    let run = s.job(job).and_then(|j| j.run(t.mac));
                    prop_assert!(run.is_some_and(|r| r.status == RunStatus::Running || r.status == RunStatus::Queued),
                        "{} running job {job} whose run is {:?}", t.mac, run.map(|r| r.status));
                }
            }
        }
        for (i, e) in events.iter().enumerate() {
            prop_assert_eq!(e.seq, i as u64 + 1);
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in events.iter().filter(|e| e.kind == "task.finished") {
            let key = (e.job, e.target, e.task, e.detail["attempt"].as_u64());
            prop_assert!(seen.insert(key), "finished twice: {:?}", key);
        }
    }
}
