//! The scheduler on a virtual clock: every transition, deadlines, retries,
//! environment switches, cast sessions with each start policy, late
//! joiners, and a restart from the persisted rows.

mod power;
mod random;

use std::collections::BTreeMap;

use rackcast_engine::sched::MacAddr;

use rackcast_engine::sched::api::{
    CastPolicy, CastTransport, Directive, Environment, EventRecord, Inventory, JobId, JobSpec,
    SessionId, TargetState, TaskKind, TaskRef, TaskReport, TaskSpec, Transport, UnusedBlocks,
    VerifyMode, Work,
};
use rackcast_engine::sched::{
    Action, BootChoice, Change, SchedConfig, SchedError, Scheduler, State,
};

const ENV: &str = "linux-x64";

/// What the store would hold: the latest row of each entity and every event.
#[derive(Default)]
struct Db {
    targets: BTreeMap<MacAddr, rackcast_engine::sched::Target>,
    jobs: BTreeMap<JobId, rackcast_engine::sched::Job>,
    sessions: BTreeMap<SessionId, rackcast_engine::sched::CastSession>,
    envs: BTreeMap<String, Environment>,
    events: Vec<EventRecord>,
    logs: Vec<rackcast_engine::sched::LogLine>,
}

impl Db {
    fn take(&mut self, s: &mut Scheduler) {
        for c in s.drain_changes() {
            match c {
                Change::Target(t) => {
                    self.targets.insert(t.mac, t);
                }
                Change::Job(j) => {
                    self.jobs.insert(j.id, j);
                }
                Change::Run {
                    job, index, run, ..
                } => {
                    let slot = self.jobs.get_mut(&job).and_then(|j| j.runs.get_mut(index));
                    *slot.expect("a run of a job already written") = run;
                }
                Change::Session(x) => {
                    self.sessions.insert(x.id, x);
                }
                Change::Environment(e) => {
                    self.envs.insert(e.name.clone(), e);
                }
                Change::Event(e) if e.seq > 0 => self.events.push(e.record()),
                Change::Event(_) => {}
                Change::Log(l) => self.logs.push(l),
            }
        }
    }

    fn state(&self) -> State {
        State {
            targets: self.targets.values().cloned().collect(),
            // As the store does: job rows carry no log, the tail comes from the job log.
            jobs: self
                .jobs
                .values()
                .map(|j| {
                    let mut j = j.clone();
                    for r in &mut j.runs {
                        r.log = self
                            .logs
                            .iter()
                            .filter(|l| l.job == j.id && l.mac == r.mac)
                            .map(|l| l.text.as_str())
                            .collect();
                        rackcast_engine::sched::model::keep_log_tail(&mut r.log);
                    }
                    j
                })
                .collect(),
            sessions: self.sessions.values().cloned().collect(),
            environments: self.envs.values().cloned().collect(),
            last_seq: self.events.last().map_or(0, |e| e.seq),
            last_log: self.logs.last().map_or(0, |l| l.seq),
        }
    }

    fn count(&self, kind: &str, mac: MacAddr) -> usize {
        self.events
            .iter()
            .filter(|e| e.kind == kind && e.target == Some(mac))
            .count()
    }
}

fn mac(i: usize) -> MacAddr {
    MacAddr([0x52, 0x54, 0, 0, 0, i as u8])
}

fn sched() -> Scheduler {
    let mut s = Scheduler::new(SchedConfig::default(), State::default(), 0);
    s.set_image("golden", Some("ab".repeat(32)));
    s
}

fn register(s: &mut Scheduler, now: u64, m: MacAddr, env: &str) {
    s.register(now, m, env, Inventory::default(), None).unwrap();
}

fn distribute(targets: &[MacAddr], cast: CastPolicy) -> JobSpec {
    JobSpec {
        origin: None,
        name: "image".into(),
        targets: targets.iter().map(MacAddr::to_string).collect(),
        cast,
        tasks: vec![TaskSpec {
            kind: TaskKind::Distribute {
                image: "golden".into(),
                disk: None,
                verify: VerifyMode::Sample,
                unused: Default::default(),
                grow: false,
                cloud_init: None,
            },
            env: None,
            timeout: Some(600),
            retries: 0,
        }],
    }
}

fn script(targets: &[MacAddr], retries: u32, timeout: u64) -> JobSpec {
    JobSpec {
        origin: None,
        name: "script".into(),
        targets: targets.iter().map(MacAddr::to_string).collect(),
        cast: CastPolicy::default(),
        tasks: vec![TaskSpec {
            kind: TaskKind::Script {
                script: "echo hi".into(),
                interpreter: None,
                expect_exit: 0,
            },
            env: None,
            timeout: Some(timeout),
            retries,
        }],
    }
}

/// `spec` with its targets written as an operator might (the scheduler
/// parses them).
fn named(mut spec: JobSpec, targets: &[&str]) -> JobSpec {
    spec.targets = targets.iter().map(|t| t.to_string()).collect();
    spec
}

fn run_ref(d: &Directive) -> TaskRef {
    match d {
        Directive::Run { task, .. } => *task,
        other => panic!("expected a Run directive, got {other:?}"),
    }
}

fn cast_of(d: &Directive) -> (String, u64) {
    match d {
        Directive::Run {
            work: Work::Distribute { cast, .. },
            ..
        } => (cast.group.clone(), cast.session),
        other => panic!("expected a Distribute directive, got {other:?}"),
    }
}

fn finished(ok: bool) -> TaskReport {
    TaskReport::Finished {
        ok,
        error: (!ok).then(|| "boom".to_string()),
        summary: String::new(),
        root: None,
        transport: None,
    }
}

/// The report of a Distribute run `d` that wrote its image, after the
/// cast sender of session `sid` recorded the receiver done.
fn written(s: &mut Scheduler, sid: SessionId, d: &Directive) -> TaskReport {
    let Directive::Run {
        work: Work::Distribute { root, cast, .. },
        ..
    } = d
    else {
        panic!("expected a Distribute directive, got {d:?}");
    };
    s.receiver_confirmed(sid, cast.receiver);
    TaskReport::Finished {
        ok: true,
        error: None,
        summary: String::new(),
        root: Some(root.clone()),
        transport: None,
    }
}

fn root_of(d: &Directive) -> String {
    match d {
        Directive::Run {
            work: Work::Distribute { root, .. },
            ..
        } => root.clone(),
        other => panic!("expected a Distribute directive, got {other:?}"),
    }
}

#[test]
fn a_distribute_success_needs_the_pinned_root_and_the_senders_record() {
    let mut s = sched();
    let (a, b) = (mac(1), mac(2));
    register(&mut s, 0, a, ENV);
    register(&mut s, 0, b, ENV);
    let pinned = "ab".repeat(32);
    let id = s
        .submit(1, distribute(&[a, b], CastPolicy::default()))
        .unwrap();
    // A re-upload under the same name after submission: the job keeps
    // sending the root it pinned.
    s.set_image("golden", Some("cd".repeat(32)));
    assert_eq!(s.poll(2, a, None), Directive::Wait);
    let db = s.poll(3, b, None);
    let da = s.poll(3, a, None);
    assert_eq!(root_of(&da), pinned);
    assert_eq!(s.session(SessionId(1)).unwrap().root, pinned);
    // A claims success before the sender saw it finish: not yet.
    let claim = TaskReport::Finished {
        ok: true,
        error: None,
        summary: String::new(),
        root: Some(pinned.clone()),
        transport: None,
    };
    assert!(matches!(
        s.report(4, a, run_ref(&da), claim),
        Err(SchedError::NotYet(_))
    ));
    assert_eq!(s.job(id).unwrap().status(), "running");
    // Once the sender recorded it, the same report stands.
    let ok = written(&mut s, SessionId(1), &da);
    assert!(s.report(5, a, run_ref(&da), ok).unwrap());
    // B names another root: its task fails, showing both.
    let mut wrong = written(&mut s, SessionId(1), &db);
    if let TaskReport::Finished { root, .. } = &mut wrong {
        *root = Some("ee".repeat(32));
    }
    assert!(s.report(6, b, run_ref(&db), wrong).unwrap());
    let j = s.job(id).unwrap();
    let run = j.run(b).unwrap();
    let e = run.error.as_deref().unwrap_or_default();
    assert!(e.contains(&"ee".repeat(32)) && e.contains(&pinned), "{e}");
    assert_eq!(j.run(a).unwrap().status.word(), "done");
}

#[test]
fn a_distribute_directive_carries_what_to_do_with_unused_blocks() {
    let mut s = sched();
    let a = mac(1);
    register(&mut s, 0, a, ENV);
    let mut spec = distribute(&[a], CastPolicy::default());
    if let TaskKind::Distribute { unused, .. } = &mut spec.tasks[0].kind {
        *unused = UnusedBlocks::Discard;
    }
    s.submit(1, spec).unwrap();
    match s.poll(2, a, None) {
        Directive::Run {
            work: Work::Distribute { unused, .. },
            ..
        } => assert_eq!(unused, UnusedBlocks::Discard),
        other => panic!("expected a Distribute directive, got {other:?}"),
    }
}

#[test]
fn a_success_the_sender_never_recorded_fails_once_the_session_ended() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let id = s
        .submit(1, distribute(&[m], CastPolicy::default()))
        .unwrap();
    let d = s.poll(2, m, None);
    s.sender_finished(3, SessionId(1), &[], serde_json::json!({}));
    let claim = TaskReport::Finished {
        ok: true,
        error: None,
        summary: String::new(),
        root: Some(root_of(&d)),
        transport: None,
    };
    assert!(s.report(4, m, run_ref(&d), claim).unwrap());
    let e = s
        .job(id)
        .unwrap()
        .run(m)
        .unwrap()
        .error
        .clone()
        .unwrap_or_default();
    assert!(e.contains("no cast sender recorded"), "{e}");
}

#[test]
fn a_unicast_success_stands_on_its_root_alone_and_a_wrong_root_still_fails() {
    let mut s = sched();
    let (a, b) = (mac(1), mac(2));
    register(&mut s, 0, a, ENV);
    register(&mut s, 0, b, ENV);
    let id = s
        .submit(1, distribute(&[a, b], CastPolicy::default()))
        .unwrap();
    assert_eq!(s.poll(2, a, None), Directive::Wait);
    let db = s.poll(2, b, None);
    let da = s.poll(2, a, None);
    // Directives say when to fall back: the scheduler's unicast_after.
    let Directive::Run {
        work: Work::Distribute { cast, .. },
        ..
    } = &da
    else {
        panic!("{da:?}");
    };
    assert_eq!(cast.unicast_after, Some(5));
    // The session never heard from A, which fetched by unicast.
    assert_eq!(s.distributing(a), Some(root_of(&da)));
    let claim = |root: String| TaskReport::Finished {
        ok: true,
        error: None,
        summary: "by unicast".into(),
        root: Some(root),
        transport: Some(Transport::Unicast),
    };
    assert!(s.report(3, a, run_ref(&da), claim(root_of(&da))).unwrap());
    assert!(s
        .report(3, b, run_ref(&db), claim("ee".repeat(32)))
        .unwrap());
    let j = s.job(id).unwrap();
    assert_eq!(j.run(a).unwrap().status.word(), "done");
    assert_eq!(s.distributing(a), None, "done: nothing more to fetch");
    let e = j.run(b).unwrap().error.clone().unwrap_or_default();
    assert!(e.contains(&"ee".repeat(32)), "{e}");
}

#[test]
fn a_unicast_job_gets_its_directive_at_once_and_opens_no_session() {
    let mut s = sched();
    let a = mac(1);
    register(&mut s, 0, a, ENV);
    let cast = CastPolicy {
        transport: CastTransport::Unicast,
        ..CastPolicy::default()
    };
    s.submit(1, distribute(&[a], cast)).unwrap();
    match s.poll(2, a, None) {
        Directive::Run {
            work: Work::Distribute { cast, root, .. },
            ..
        } => {
            assert!(cast.unicast_only(), "{cast:?}");
            assert_eq!(root, "ab".repeat(32));
        }
        other => panic!("expected a Distribute directive, got {other:?}"),
    }
    assert!(s.session(SessionId(1)).is_none(), "a session was opened");
}

#[test]
fn distribute_to_three_targets_in_one_session_then_boot_local() {
    let mut s = sched();
    let macs: Vec<MacAddr> = (1..=3).map(mac).collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let id = s
        .submit(10, distribute(&macs, CastPolicy::default()))
        .unwrap();
    // The first two wait for the session to fill.
    assert_eq!(s.poll(20, macs[0], None), Directive::Wait);
    assert_eq!(s.poll(20, macs[1], None), Directive::Wait);
    assert!(
        s.poll_action().is_none(),
        "started before every target joined"
    );
    assert!(matches!(
        s.target(macs[0]).unwrap().state,
        TargetState::Running { .. }
    ));
    // The third fills it: the sender starts for three.
    let d3 = s.poll(30, macs[2], None);
    assert_eq!(
        s.poll_action(),
        Some(Action::StartSender {
            session: SessionId(1),
            receivers: 3,
            rate: None
        })
    );
    let d1 = s.poll(31, macs[0], None);
    let d2 = s.poll(31, macs[1], None);
    assert_eq!(cast_of(&d1), cast_of(&d2));
    assert_eq!(cast_of(&d1), cast_of(&d3));
    // An agent on its task is left alone.
    assert_eq!(s.poll(32, macs[0], Some(run_ref(&d1))), Directive::Wait);
    for (&m, d) in macs.iter().zip([&d1, &d2, &d3]) {
        assert!(s.report(40, m, run_ref(d), TaskReport::Started).unwrap());
        let done = written(&mut s, SessionId(1), d);
        assert!(s.report(50, m, run_ref(d), done).unwrap());
    }
    assert_eq!(s.job(id).unwrap().status(), "done");
    for &m in &macs {
        assert_eq!(s.boot_choice(m), BootChoice::Local);
        assert_eq!(s.poll(60, m, None), Directive::BootLocal);
        assert_eq!(s.target(m).unwrap().state, TargetState::Local);
    }
}

#[test]
fn pending_work_boots_the_environment_no_work_boots_local() {
    let mut s = sched();
    let m = mac(1);
    assert_eq!(s.boot_choice(m), BootChoice::Local, "unknown MAC");
    s.add_target(0, m, "rack1-u1").unwrap();
    assert_eq!(s.boot_choice(m), BootChoice::Local, "no work");
    s.submit(1, script(&[m], 0, 60)).unwrap();
    assert_eq!(s.boot_choice(m), BootChoice::Env(ENV.into()));
    assert_eq!(s.target(m).unwrap().state, TargetState::Unknown);
    // Not registered yet: the agent must register first.
    assert_eq!(s.poll(2, m, None), Directive::Register);
}

#[test]
fn a_target_in_the_wrong_environment_is_rebooted_into_the_right_one() {
    let mut s = sched();
    s.put_environment(
        0,
        Environment {
            name: "winpe".into(),
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            boot_file: Some("winpe.efi".into()),
        },
    )
    .unwrap();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let mut spec = script(&[m], 0, 60);
    spec.tasks[0].env = Some("winpe".into());
    s.submit(1, spec).unwrap();
    assert_eq!(
        s.poll(2, m, None),
        Directive::Reboot {
            env: "winpe".into(),
            task: None
        }
    );
    assert!(matches!(
        &s.target(m).unwrap().state,
        TargetState::RebootingTo { env, .. } if env == "winpe"
    ));
    assert_eq!(s.boot_choice(m), BootChoice::Env("winpe".into()));
    // Still in the old environment: told again.
    assert!(matches!(s.poll(3, m, None), Directive::Reboot { .. }));
    register(&mut s, 10, m, "winpe");
    let d = s.poll(11, m, None);
    assert!(matches!(
        d,
        Directive::Run {
            work: Work::Script { .. },
            ..
        }
    ));
    s.report(12, m, run_ref(&d), finished(true)).unwrap();
    assert_eq!(s.poll(13, m, None), Directive::BootLocal);
}

#[test]
fn a_reboot_that_never_comes_back_fails_at_its_deadline_and_holds_the_target() {
    let mut db = Db::default();
    let mut s = sched();
    s.put_environment(
        0,
        Environment {
            name: "other".into(),
            kernel: Some("k".into()),
            initrd: Some("i".into()),
            cmdline: String::new(),
            boot_file: None,
        },
    )
    .unwrap();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let mut spec = script(&[m], 1, 60);
    spec.tasks[0].env = Some("other".into());
    let id = s.submit(1, spec).unwrap();
    assert!(matches!(s.poll(2, m, None), Directive::Reboot { .. }));
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, 2 + SchedConfig::default().boot_timeout);
    s.handle_timeout(deadline - 1);
    assert!(matches!(
        s.target(m).unwrap().state,
        TargetState::RebootingTo { .. }
    ));
    s.handle_timeout(deadline);
    // One retry: sent to reboot again.
    assert_eq!(s.job(id).unwrap().run(m).unwrap().attempt, 2);
    assert!(matches!(
        s.poll(deadline + 1, m, None),
        Directive::Reboot { .. }
    ));
    s.handle_timeout(deadline + 1 + SchedConfig::default().boot_timeout);
    let st = &s.target(m).unwrap().state;
    assert!(
        matches!(st, TargetState::Failed { error, .. } if error.contains("did not come back")),
        "{st:?}"
    );
    assert_eq!(s.job(id).unwrap().status(), "failed");
    // Held: no directive, and its next boot is its disk.
    assert_eq!(s.poll(deadline * 3, m, None), Directive::Wait);
    assert_eq!(s.boot_choice(m), BootChoice::Local);
    db.take(&mut s);
    assert_eq!(db.count("task.retry", m), 1);
    assert_eq!(db.count("task.failed", m), 1);
    // The operator retries: it runs again from the failed task.
    s.retry(deadline * 3, id).unwrap();
    assert!(matches!(
        s.poll(deadline * 3 + 1, m, None),
        Directive::Reboot { .. }
    ));
}

#[test]
fn a_task_that_times_out_is_retried_and_the_old_attempt_is_told_to_stop() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let id = s.submit(0, script(&[m], 1, 5)).unwrap();
    let d1 = s.poll(1000, m, None);
    let r1 = run_ref(&d1);
    assert_eq!(r1.attempt, 1);
    assert!(s.report(1100, m, r1, TaskReport::Started).unwrap());
    assert_eq!(s.poll_timeout(), Some(6000));
    s.handle_timeout(6000);
    let d2 = s.poll(6001, m, Some(r1));
    let r2 = run_ref(&d2);
    assert_eq!(r2.attempt, 2);
    // The first attempt's late report is refused; the job goes on.
    assert!(!s.report(6002, m, r1, finished(true)).unwrap());
    assert_eq!(s.job(id).unwrap().status(), "running");
    assert!(s.report(6003, m, r2, finished(true)).unwrap());
    assert_eq!(s.job(id).unwrap().status(), "done");
}

#[test]
fn a_failed_script_without_retries_holds_the_target_until_released() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let a = s.submit(0, script(&[m], 0, 60)).unwrap();
    let b = s.submit(0, script(&[m], 0, 60)).unwrap();
    let d = s.poll(1, m, None);
    assert_eq!(run_ref(&d).job, a);
    s.report(2, m, run_ref(&d), finished(false)).unwrap();
    assert!(
        matches!(&s.target(m).unwrap().state, TargetState::Failed { error, .. } if error == "boom")
    );
    assert_eq!(s.poll(3, m, None), Directive::Wait, "held");
    s.release(4, m).unwrap();
    let d = s.poll(5, m, None);
    assert_eq!(run_ref(&d).job, b, "the next job runs after release");
}

#[test]
fn an_agent_restarted_mid_script_fails_that_attempt_instead_of_running_it_twice() {
    let mut db = Db::default();
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    s.submit(0, script(&[m], 1, 60)).unwrap();
    let r1 = run_ref(&s.poll(1, m, None));
    s.report(2, m, r1, TaskReport::Started).unwrap();
    // The agent comes back without the task.
    register(&mut s, 3, m, ENV);
    let r2 = run_ref(&s.poll(4, m, None));
    assert_eq!(r2.attempt, 2);
    // ... but one that never received the directive just gets it again.
    register(&mut s, 5, m, ENV);
    let r3 = run_ref(&s.poll(6, m, None));
    assert_eq!(r3, r2);
    db.take(&mut s);
    assert_eq!(db.count("task.started", m), 1);
}

#[test]
fn min_targets_starts_early_and_a_late_joiner_joins_the_running_carousel() {
    let mut s = sched();
    let macs: Vec<MacAddr> = (1..=3).map(mac).collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let cast = CastPolicy {
        min_targets: Some(2),
        max_wait: None,
        start_at: None,
        rate: Some(50_000_000),
        transport: Default::default(),
    };
    s.submit(0, distribute(&macs, cast)).unwrap();
    assert_eq!(s.poll(1, macs[0], None), Directive::Wait);
    let d2 = s.poll(2, macs[1], None);
    assert_eq!(
        s.poll_action(),
        Some(Action::StartSender {
            session: SessionId(1),
            receivers: 2,
            rate: Some(50_000_000)
        })
    );
    let late = s.poll(100, macs[2], None);
    assert_eq!(
        cast_of(&late),
        cast_of(&d2),
        "late joiner gets the running session"
    );
    assert!(s.poll_action().is_none(), "no second sender");
    assert_eq!(s.session(SessionId(1)).unwrap().members.len(), 3);
}

#[test]
fn max_wait_starts_a_session_after_the_first_joined() {
    let mut s = sched();
    let macs: Vec<MacAddr> = (1..=4).map(mac).collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let cast = CastPolicy {
        min_targets: None,
        max_wait: Some(30),
        start_at: None,
        rate: None,
        transport: Default::default(),
    };
    s.submit(0, distribute(&macs, cast)).unwrap();
    assert_eq!(s.poll(1_000, macs[0], None), Directive::Wait);
    assert_eq!(s.poll_timeout(), Some(31_000));
    s.handle_timeout(30_999);
    assert!(s.poll_action().is_none());
    s.handle_timeout(31_000);
    assert_eq!(
        s.poll_action(),
        Some(Action::StartSender {
            session: SessionId(1),
            receivers: 1,
            rate: None
        })
    );
}

#[test]
fn start_at_starts_a_session_at_the_set_time() {
    let mut s = sched();
    let macs: Vec<MacAddr> = (1..=2).map(mac).collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let cast = CastPolicy {
        min_targets: Some(10),
        max_wait: None,
        start_at: Some(500),
        rate: None,
        transport: Default::default(),
    };
    s.submit(0, distribute(&macs, cast)).unwrap();
    assert_eq!(s.poll(1_000, macs[0], None), Directive::Wait);
    s.handle_timeout(499_999);
    assert!(s.poll_action().is_none());
    s.handle_timeout(500_000);
    assert!(matches!(
        s.poll_action(),
        Some(Action::StartSender { receivers: 1, .. })
    ));
}

#[test]
fn a_restarted_scheduler_ends_dead_sessions_and_resumes_without_running_a_task_twice() {
    let mut db = Db::default();
    let mut s = sched();
    let macs: Vec<MacAddr> = (1..=2).map(mac).collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let id = s
        .submit(0, distribute(&macs, CastPolicy::default()))
        .unwrap();
    s.poll(1, macs[0], None);
    let d = s.poll(2, macs[1], None);
    let (_, wire1) = cast_of(&d);
    assert!(s.poll_action().is_some());
    let r = run_ref(&d);
    s.report(3, macs[0], r, TaskReport::Started).unwrap();
    s.report(3, macs[1], r, TaskReport::Started).unwrap();
    db.take(&mut s);
    drop(s);

    // kill -9; start again from what was committed.
    let mut s = Scheduler::new(SchedConfig::default(), db.state(), 1_000);
    s.set_image("golden", Some("ab".repeat(32)));
    db.take(&mut s);
    assert!(db.events.iter().any(|e| e.kind == "cast.ended"));
    // Agents stalled on the dead session rejoin: a new session for both.
    s.report(
        5_000,
        macs[0],
        r,
        TaskReport::Rejoin {
            reason: "stalled".into(),
        },
    )
    .unwrap();
    assert_eq!(s.poll(5_001, macs[0], None), Directive::Wait);
    s.report(
        5_002,
        macs[1],
        r,
        TaskReport::Rejoin {
            reason: "stalled".into(),
        },
    )
    .unwrap();
    let d = s.poll(5_003, macs[1], None);
    let (_, wire2) = cast_of(&d);
    assert_ne!(wire1, wire2, "a new wire session");
    assert_eq!(run_ref(&d), r, "the same attempt, resumed");
    assert!(matches!(
        s.poll_action(),
        Some(Action::StartSender {
            session: SessionId(2),
            receivers: 2,
            ..
        })
    ));
    for &m in &macs {
        let d = s.poll(5_004, m, None);
        s.report(6_000, m, run_ref(&d), TaskReport::Started)
            .unwrap();
        let done = written(&mut s, SessionId(2), &d);
        s.report(7_000, m, run_ref(&d), done).unwrap();
    }
    assert_eq!(s.job(id).unwrap().status(), "done");
    db.take(&mut s);
    for &m in &macs {
        assert_eq!(db.count("task.started", m), 1, "{m} started twice");
        assert_eq!(db.count("task.finished", m), 1);
    }
    // Sequence numbers continue gap-free across the restart.
    for (i, e) in db.events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
    }
}

#[test]
fn deadlines_get_a_grace_period_after_a_restart() {
    let mut db = Db::default();
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    s.submit(0, script(&[m], 0, 10)).unwrap();
    let r = run_ref(&s.poll(0, m, None));
    db.take(&mut s);
    // Down for a minute: past the 10 s deadline.
    let mut s = Scheduler::new(SchedConfig::default(), db.state(), 60_000);
    s.handle_timeout(60_001);
    assert!(matches!(
        s.target(m).unwrap().state,
        TargetState::Running { .. }
    ));
    assert!(s.report(60_002, m, r, finished(true)).unwrap());
}

#[test]
fn bad_jobs_are_refused_and_change_nothing() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let _ = s.drain_changes();
    let cases: Vec<(JobSpec, &str)> = vec![
        (
            named(script(&[], 0, 1), &["52:54:00:00:00:99"]),
            "unknown target",
        ),
        (named(script(&[], 0, 1), &["not-a-mac"]), "not a MAC"),
        (script(&[], 0, 1), "no targets"),
        (
            named(
                script(&[], 0, 1),
                &[&m.to_string(), &m.to_string().to_uppercase()],
            ),
            "twice",
        ),
        (
            {
                let mut j = distribute(&[m], CastPolicy::default());
                j.tasks[0].kind = TaskKind::Distribute {
                    image: "nope".into(),
                    disk: None,
                    verify: VerifyMode::Off,
                    unused: Default::default(),
                    grow: false,
                    cloud_init: None,
                };
                j
            },
            "unknown image",
        ),
        (
            {
                let mut j = script(&[m], 0, 1);
                j.tasks[0].env = Some("nowhere".into());
                j
            },
            "unknown environment",
        ),
        (
            {
                let mut j = script(&[m], 0, 1);
                j.tasks.clear();
                j
            },
            "no tasks",
        ),
    ];
    for (spec, want) in cases {
        let e = s.submit(1, spec).unwrap_err();
        assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
    }
    assert!(
        s.drain_changes().is_empty(),
        "a refused job changed something"
    );
    assert!(s.jobs().next().is_none());
    assert!(matches!(
        s.report(
            1,
            mac(7),
            TaskRef {
                job: JobId(1),
                task: 0,
                attempt: 1
            },
            TaskReport::Started
        ),
        Err(SchedError::UnknownTarget(_))
    ));
}

#[test]
fn cancel_stops_the_run_and_releases_the_target() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let id = s.submit(0, script(&[m], 0, 60)).unwrap();
    let r = run_ref(&s.poll(1, m, None));
    s.cancel(2, id).unwrap();
    assert_eq!(s.job(id).unwrap().status(), "cancelled");
    assert!(
        !s.report(3, m, r, TaskReport::Started).unwrap(),
        "told to stop"
    );
    assert_eq!(s.poll(4, m, None), Directive::BootLocal);
}

#[test]
fn a_reboot_task_to_local_is_done_when_the_agent_acknowledges_it() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let mut spec = script(&[m], 0, 60);
    spec.tasks.push(TaskSpec {
        kind: TaskKind::Reboot { to: "local".into() },
        env: None,
        timeout: None,
        retries: 0,
    });
    let id = s.submit(0, spec).unwrap();
    let r = run_ref(&s.poll(1, m, None));
    s.report(2, m, r, finished(true)).unwrap();
    let d = s.poll(3, m, None);
    let Directive::Reboot {
        env,
        task: Some(rt),
    } = d
    else {
        panic!("{d:?}")
    };
    assert_eq!(env, "local");
    assert_eq!(rt.task, 1);
    s.report(4, m, rt, finished(true)).unwrap();
    assert_eq!(s.job(id).unwrap().status(), "done");
    assert_eq!(s.target(m).unwrap().state, TargetState::Local);
    assert_eq!(s.boot_choice(m), BootChoice::Local);
}

#[test]
fn progress_is_broadcast_but_not_persisted() {
    let mut s = sched();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    s.submit(0, script(&[m], 0, 60)).unwrap();
    let r = run_ref(&s.poll(1, m, None));
    s.report(2, m, r, TaskReport::Started).unwrap();
    let _ = s.drain_changes();
    s.report(
        3,
        m,
        r,
        TaskReport::Progress(rackcast_engine::sched::api::Progress {
            done: 5,
            total: 10,
            rate: 1.0,
            message: String::new(),
        }),
    )
    .unwrap();
    let ch = s.drain_changes();
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert!(matches!(&ch[0], Change::Event(e) if e.seq == 0 && e.what.word() == "task.progress"));
    assert_eq!(s.target(m).unwrap().progress.as_ref().unwrap().done, 5);
}

#[test]
fn output_over_the_log_budget_is_dropped_and_one_note_says_how_much() {
    let cfg = SchedConfig {
        log_rate: 1000,
        log_burst: 4096,
        ..SchedConfig::default()
    };
    let mut s = Scheduler::new(cfg.clone(), State::default(), 0);
    let mut db = Db::default();
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    let id = s.submit(0, script(&[m], 0, 60)).unwrap();
    let r = run_ref(&s.poll(1, m, None));
    s.report(2, m, r, TaskReport::Started).unwrap();
    db.take(&mut s);
    let log = |text: &str| TaskReport::Log { text: text.into() };

    // The burst passes: appended to the job log, the job row untouched.
    s.report(2, m, r, log(&"a".repeat(4096))).unwrap();
    let ch = s.drain_changes();
    assert!(
        ch.iter()
            .any(|c| matches!(c, Change::Log(l) if l.text.len() == 4096 && l.job == id)),
        "{ch:?}"
    );
    assert!(
        !ch.iter()
            .any(|c| matches!(c, Change::Job(_) | Change::Run { .. })),
        "a log line rewrote the job row: {ch:?}"
    );
    for c in ch {
        if let Change::Log(l) = c {
            db.logs.push(l);
        }
    }
    // Over the budget: dropped, nothing to commit at all.
    for _ in 0..10 {
        s.report(2, m, r, log(&"x".repeat(1000))).unwrap();
        assert_eq!(s.drain_changes(), vec![], "dropped output was kept");
    }
    // Three seconds refill 3000 bytes: the next output passes after one note.
    s.report(3002, m, r, log("b\n")).unwrap();
    db.take(&mut s);
    let tail = &s.job(id).unwrap().run(m).unwrap().log;
    assert!(
        tail.ends_with("[rackcast: 10000 bytes of output dropped: over the server's log budget of 1000 bytes/s]\nb\n"),
        "{:?}",
        &tail[tail.len().saturating_sub(200)..]
    );
    // More than is left (3000 - 1024 for "b\n"): the newest part passes,
    // after a note for the part dropped before it.
    s.report(3002, m, r, log(&"y".repeat(5000))).unwrap();
    // Nothing left: dropped, and the note comes when the task ends.
    s.report(3002, m, r, log(&"z".repeat(1000))).unwrap();
    s.report(3003, m, r, finished(true)).unwrap();
    db.take(&mut s);
    let tail = s.job(id).unwrap().run(m).unwrap().log.clone();
    let note = |n: u32| {
        format!("[rackcast: {n} bytes of output dropped: over the server's log budget of 1000 bytes/s]\n")
    };
    let want = format!("b\n{}{}{}", note(3024), "y".repeat(1976), note(1000));
    assert!(
        tail.ends_with(&want),
        "{:?}",
        &tail[tail.len().saturating_sub(300)..]
    );
    assert!(
        !tail.contains('x') && !tail.contains('z'),
        "dropped output kept"
    );
    assert_eq!(tail.matches("bytes of output dropped").count(), 3);
    // The job log holds it all: a restart rebuilds the same tail.
    let s2 = Scheduler::new(cfg, db.state(), 4000);
    assert_eq!(s2.job(id).unwrap().run(m).unwrap().log, tail);
}

#[test]
fn a_flood_of_tiny_reports_costs_the_minimum_each() {
    let cfg = SchedConfig {
        log_rate: 0,
        log_burst: 10 * rackcast_engine::sched::scheduler::LOG_MIN_COST,
        ..SchedConfig::default()
    };
    let mut s = Scheduler::new(cfg, State::default(), 0);
    let m = mac(1);
    register(&mut s, 0, m, ENV);
    s.submit(0, script(&[m], 0, 60)).unwrap();
    let r = run_ref(&s.poll(1, m, None));
    s.report(2, m, r, TaskReport::Started).unwrap();
    let _ = s.drain_changes();
    let mut kept = 0;
    for _ in 0..1000 {
        s.report(3, m, r, TaskReport::Log { text: "1\n".into() })
            .unwrap();
        kept += s
            .drain_changes()
            .iter()
            .filter(|c| matches!(c, Change::Log(_)))
            .count();
    }
    assert_eq!(
        kept, 10,
        "each report costs LOG_MIN_COST bytes of the burst"
    );
}

/// A target's progress through a big job writes its own run, not the job:
/// the job (and every run) is written whole only when it is submitted.
#[test]
fn a_report_writes_its_run_alone_whatever_the_size_of_the_job() {
    let mut s = Scheduler::new(SchedConfig::default(), State::default(), 0);
    let macs: Vec<MacAddr> = (0..1000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            MacAddr([0x52, 0x54, 0, 0x30, b[2], b[3]])
        })
        .collect();
    for &m in &macs {
        register(&mut s, 0, m, ENV);
    }
    let id = s.submit(0, script(&macs, 0, 60)).unwrap();
    let ch = s.drain_changes();
    let whole: Vec<_> = ch
        .iter()
        .filter_map(|c| match c {
            Change::Job(j) => Some(j.runs.len()),
            _ => None,
        })
        .collect();
    assert_eq!(whole, vec![1000], "the submit writes the job whole once");
    let m = macs[500];
    let r = run_ref(&s.poll(1, m, None));
    let _ = s.drain_changes();
    s.report(2, m, r, TaskReport::Started).unwrap();
    let ch = s.drain_changes();
    assert!(!ch.iter().any(|c| matches!(c, Change::Job(_))), "{ch:?}");
    let runs: Vec<_> = ch
        .iter()
        .filter_map(|c| match c {
            Change::Run {
                job,
                index,
                status,
                run,
            } => Some((*job, *index, *status, run.mac)),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![(id, 500, "running", m)]);
}
