//! Targets with a BMC on the virtual clock: booted for their work when no
//! agent is there, booted again at each missed deadline up to
//! `power_tries`, held with the BMC's words, a disk boot once work is done,
//! and power changes recorded as expected or not.

use rackcast_engine::sched::api::{BmcSettings, Directive, PowerState, TargetState};
use rackcast_engine::sched::{Action, PowerPlan, SchedConfig, Scheduler};

use super::{finished, mac, register, run_ref, sched, script, Db};

fn bmc() -> Option<BmcSettings> {
    Some(BmcSettings {
        addr: "redfish://10.0.1.7".into(),
        user: Some("admin".into()),
        insecure: false,
    })
}

fn actions(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn netboot(m: rackcast_engine::sched::MacAddr) -> Action {
    Action::Power {
        mac: m,
        plan: PowerPlan::Netboot,
    }
}

fn error_of(s: &Scheduler, m: rackcast_engine::sched::MacAddr) -> String {
    match &s.target(m).unwrap().state {
        TargetState::Failed { error, .. } => error.clone(),
        other => panic!("not failed: {other:?}"),
    }
}

#[test]
fn a_silent_target_is_booted_for_its_job_again_at_each_deadline_then_held() {
    let mut s = sched();
    let cfg = SchedConfig::default();
    let (m, plain) = (mac(1), mac(2));
    for t in [m, plain] {
        s.add_target(0, t, "").unwrap();
    }
    s.set_bmc(0, m, bmc()).unwrap();
    assert!(actions(&mut s).is_empty(), "no work, no power");
    s.submit(1_000, script(&[m, plain], 0, 600)).unwrap();
    assert_eq!(
        actions(&mut s),
        vec![netboot(m)],
        "only the target with a BMC"
    );
    let deadline = match s.target(m).unwrap().state {
        TargetState::RebootingTo { ref env, deadline } => {
            assert_eq!(env, super::ENV);
            deadline
        }
        ref other => panic!("{other:?}"),
    };
    assert_eq!(deadline, 1_000 + cfg.boot_timeout);
    s.power_done(1_500, m, PowerPlan::Netboot, Ok(PowerState::On));
    s.handle_timeout(deadline - 1);
    assert!(actions(&mut s).is_empty());
    // Missed: booted again, until power_tries, then held.
    let mut now = deadline;
    for _ in 1..cfg.power_tries {
        s.handle_timeout(now);
        assert_eq!(actions(&mut s), vec![netboot(m)]);
        now += cfg.boot_timeout;
    }
    s.handle_timeout(now);
    assert!(actions(&mut s).is_empty());
    let e = error_of(&s, m);
    assert!(
        e.contains(&format!(
            "after {} network boots through its BMC",
            cfg.power_tries
        )),
        "{e}"
    );
    // The target without a BMC waits for its agent.
    assert_eq!(s.target(plain).unwrap().state, TargetState::Unknown);
}

#[test]
fn an_unreachable_bmc_is_tried_again_sooner_and_a_refused_login_holds_at_once() {
    let mut s = sched();
    let cfg = SchedConfig::default();
    let (a, b) = (mac(1), mac(2));
    for t in [a, b] {
        s.add_target(0, t, "").unwrap();
        s.set_bmc(0, t, bmc()).unwrap();
    }
    s.submit(1_000, script(&[a, b], 0, 600)).unwrap();
    assert_eq!(actions(&mut s).len(), 2);
    s.power_done(
        2_000,
        a,
        PowerPlan::Netboot,
        Err(("the BMC did not answer: timed out".into(), true)),
    );
    let t = s.target(a).unwrap();
    assert_eq!(
        t.bmc_error.as_deref(),
        Some("the BMC did not answer: timed out")
    );
    match t.state {
        TargetState::RebootingTo { deadline, .. } => {
            assert_eq!(deadline, 2_000 + cfg.power_backoff)
        }
        ref other => panic!("{other:?}"),
    }
    s.handle_timeout(2_000 + cfg.power_backoff);
    assert_eq!(actions(&mut s), vec![netboot(a)]);

    s.power_done(
        2_000,
        b,
        PowerPlan::Netboot,
        Err(("the BMC refused the login: 401".into(), false)),
    );
    let e = error_of(&s, b);
    assert!(e.contains("its BMC refused the network boot"), "{e}");
    assert!(e.contains("401"), "{e}");
}

#[test]
fn done_work_sets_the_disk_and_a_change_nobody_asked_for_is_unexpected() {
    let mut s = sched();
    let mut db = Db::default();
    let m = mac(1);
    s.add_target(0, m, "").unwrap();
    s.set_bmc(0, m, bmc()).unwrap();
    register(&mut s, 10, m, super::ENV);
    // A live agent takes the work itself: no power action.
    s.submit(20, script(&[m], 0, 600)).unwrap();
    assert!(actions(&mut s).is_empty());
    let d = s.poll(30, m, None);
    assert!(s.report(40, m, run_ref(&d), finished(true)).unwrap());
    assert_eq!(s.poll(50, m, None), Directive::BootLocal);
    assert_eq!(
        actions(&mut s),
        vec![Action::Power {
            mac: m,
            plan: PowerPlan::Disk
        }]
    );
    // The poller reads "on", later "off" that nobody asked for.
    s.power_observed(60, m, Ok(PowerState::On));
    s.power_observed(10_000_000, m, Ok(PowerState::Off));
    s.power_observed(10_000_500, m, Ok(PowerState::Off));
    db.take(&mut s);
    let changes: Vec<_> = db
        .events
        .iter()
        .filter(|e| e.kind == "target.power")
        .map(|e| (e.detail["power"].clone(), e.detail["expected"].clone()))
        .collect();
    assert_eq!(
        changes,
        vec![
            (serde_json::json!("on"), serde_json::json!(false)),
            (serde_json::json!("off"), serde_json::json!(false)),
        ]
    );
    assert_eq!(s.target(m).unwrap().view().power, Some(PowerState::Off));
}

#[test]
fn a_disk_boot_that_did_not_take_is_cycled_once_and_only_while_due() {
    use rackcast_engine::sched::BootChoice;
    let cfg = SchedConfig::default();
    let mut s = sched();
    let (m, wol) = (mac(1), mac(2));
    for t in [m, wol] {
        s.add_target(0, t, "").unwrap();
        register(&mut s, 10, t, super::ENV);
    }
    s.set_bmc(0, m, bmc()).unwrap();
    let wake_only = BmcSettings {
        addr: "wol".into(),
        user: None,
        insecure: false,
    };
    s.set_bmc(0, wol, Some(wake_only)).unwrap();
    s.submit(20, script(&[m, wol], 0, 600)).unwrap();
    for t in [m, wol] {
        let d = s.poll(30, t, None);
        assert!(s.report(40, t, run_ref(&d), finished(true)).unwrap());
        assert_eq!(s.poll(50, t, None), Directive::BootLocal);
    }
    actions(&mut s);
    // Before its reboot, and for Wake-on-LAN (which cannot pick a disk),
    // nothing is held.
    assert_eq!(
        s.boot_choice(m),
        BootChoice::HoldForDisk {
            until: 50 + cfg.boot_timeout
        }
    );
    assert_eq!(s.boot_choice(wol), BootChoice::Local);
    s.disk_missed(60, wol);
    assert!(actions(&mut s).is_empty());
    // Its reboot fetched a script: cycled into its disk, once.
    s.disk_missed(20_000, m);
    let cycle = Action::Power {
        mac: m,
        plan: PowerPlan::DiskCycle,
    };
    assert_eq!(actions(&mut s), vec![cycle]);
    assert_eq!(s.boot_choice(m), BootChoice::Local);
    s.disk_missed(20_100, m);
    assert!(actions(&mut s).is_empty(), "once per disk boot");
    // The cycle's own off and on are expected.
    s.power_done(25_000, m, PowerPlan::DiskCycle, Ok(PowerState::On));
    s.power_observed(30_000, m, Ok(PowerState::Off));
    let mut db = Db::default();
    db.take(&mut s);
    assert!(db
        .events
        .iter()
        .filter(|e| e.kind == "target.power")
        .all(|e| e.detail["expected"] == serde_json::json!(true)));
    // Next job's disk boot: a network boot long after it is not a miss.
    s.submit(40_000, script(&[m], 0, 600)).unwrap();
    let d = s.poll(40_010, m, None);
    assert!(s.report(40_020, m, run_ref(&d), finished(true)).unwrap());
    assert_eq!(s.poll(40_030, m, None), Directive::BootLocal);
    actions(&mut s);
    s.disk_missed(40_030 + cfg.boot_timeout, m);
    assert!(
        actions(&mut s).is_empty(),
        "too late to be this boot's miss"
    );
}

#[test]
fn a_power_task_runs_through_the_bmc_without_the_agent_and_fails_without_one() {
    use rackcast_engine::sched::api::{JobSpec, PowerOp, TaskKind, TaskSpec};
    let mut s = sched();
    let (m, plain) = (mac(1), mac(2));
    for t in [m, plain] {
        s.add_target(0, t, "").unwrap();
        register(&mut s, 10, t, super::ENV);
    }
    s.set_bmc(0, m, bmc()).unwrap();
    let mut spec: JobSpec = script(&[m, plain], 0, 600);
    spec.tasks.push(TaskSpec {
        kind: TaskKind::Power { op: PowerOp::Off },
        env: None,
        timeout: None,
        retries: 0,
    });
    let id = s.submit(20, spec).unwrap();
    for t in [m, plain] {
        let d = s.poll(30, t, None);
        assert!(s.report(40, t, run_ref(&d), finished(true)).unwrap());
    }
    // The next poll finds the power task: the agent waits, the server acts.
    assert_eq!(s.poll(50, m, None), Directive::Wait);
    assert_eq!(
        actions(&mut s),
        vec![Action::Power {
            mac: m,
            plan: PowerPlan::Task(PowerOp::Off)
        }]
    );
    s.poll(50, plain, None);
    let e = error_of(&s, plain);
    assert!(e.contains("a power task needs the target's BMC"), "{e}");
    s.power_done(60, m, PowerPlan::Task(PowerOp::Off), Ok(PowerState::Off));
    let j = s.job(id).unwrap().view();
    let run = j.targets.iter().find(|r| r.mac == m).unwrap();
    assert_eq!(run.status, "done", "{run:?}");
    assert!(run.log.contains("power off: now off"), "{}", run.log);
    assert_eq!(s.target(m).unwrap().power, Some(PowerState::Off));
}
