//! The agent's control loop on a virtual clock: every call it makes is
//! answered here, every worker report and every tick is an input, so each
//! case runs the same way every time and in no time.

use std::time::{Duration, Instant};

use rackcast_client::CallError;
use rackcast_engine::sched::api::{
    CastJoin, Directive, Inventory, Registered, ReportAck, TaskRef, TaskReport, VerifyMode, Work,
};
use rackcast_types::MacAddr;

use super::backoff::{Backoff, CAP};
use super::machine::{
    coalesce, progress_line, Action, Answer, Call, Machine, MachineConfig, HEARTBEAT,
    MIN_POLL_INTERVAL,
};
use super::{Outcome, RebootMode};
use crate::error::AgentError;

const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x42]);

/// A machine and its virtual clock.
struct Rig {
    m: Machine,
    now: Instant,
    said: Vec<String>,
    /// Actions taken from the machine but not yet looked at.
    pending: std::collections::VecDeque<Action>,
}

/// What the rig saw besides log lines.
#[derive(Debug, PartialEq)]
enum Seen {
    Register(Option<TaskRef>),
    Poll(Option<TaskRef>, Option<u64>),
    Report(TaskRef, TaskReport),
    Start(TaskRef),
    Stop,
    Join,
    Refresh,
    Reboot(String),
    Finish(Outcome),
    Fail(String),
}

impl Rig {
    fn new(on_reboot: RebootMode) -> Rig {
        let now = Instant::now();
        let cfg = MachineConfig {
            mac: MAC,
            env: "linux-x64".into(),
            server: "http://127.0.0.1:7300".into(),
            poll_wait: None,
            give_up: Duration::from_secs(60),
            on_reboot,
        };
        Rig {
            m: Machine::new(cfg, Inventory::default(), Backoff::new(7), now),
            now,
            said: Vec::new(),
            pending: Default::default(),
        }
    }

    /// The next call or effect (log lines are collected on the way).
    fn next(&mut self) -> Option<Seen> {
        loop {
            let a = match self.pending.pop_front() {
                Some(a) => a,
                None => self.m.poll_action()?,
            };
            return Some(match a {
                Action::Say(l) => {
                    self.said.push(l);
                    continue;
                }
                Action::Call(Call::Register(r)) => {
                    assert_eq!(r.mac, MAC.to_string());
                    Seen::Register(r.running)
                }
                Action::Call(Call::Poll(p)) => Seen::Poll(p.running, p.wait),
                Action::Call(Call::Report(r)) => Seen::Report(r.task, r.report),
                Action::StartTask { task, .. } => Seen::Start(task),
                Action::StopTask => Seen::Stop,
                Action::JoinTask => Seen::Join,
                Action::RefreshInventory => Seen::Refresh,
                Action::SystemReboot { env, .. } => Seen::Reboot(env),
                Action::Finish(o) => Seen::Finish(o),
                Action::Fail(e) => Seen::Fail(e.to_string()),
            });
        }
    }

    fn expect(&mut self, want: Seen) {
        assert_eq!(self.next(), Some(want), "said so far: {:#?}", self.said);
    }

    fn answer(&mut self, a: Result<Answer, AgentError>) {
        self.m.handle_answer(self.now, a);
    }

    fn registered(&mut self) {
        self.answer(Ok(Answer::Registered(Registered {
            token: "boot".into(),
            poll_wait: 30,
        })));
    }

    fn directive(&mut self, d: Directive) {
        self.answer(Ok(Answer::Directive(d)));
    }

    fn ack(&mut self, keep_going: bool) {
        self.answer(Ok(Answer::Ack(ReportAck { keep_going })));
    }

    /// Advances the clock to the machine's deadline (at most `limit`).
    fn tick(&mut self, limit: Duration) {
        let to = self
            .m
            .poll_timeout()
            .map_or(self.now + limit, |t| t.min(self.now + limit))
            .max(self.now);
        self.now = to;
        self.m.handle_timeout(to);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.m.handle_timeout(self.now);
    }

    /// Registration and the first idle poll.
    fn up(&mut self) {
        self.expect(Seen::Register(None));
        self.registered();
        self.expect(Seen::Poll(None, Some(30)));
    }

    /// Whether a log line so far contains `part` (what the machine has
    /// queued counts).
    fn said(&mut self, part: &str) -> bool {
        for _ in 0..64 {
            match self.m.poll_action() {
                Some(Action::Say(l)) => self.said.push(l),
                Some(a) => self.pending.push_back(a),
                None => break,
            }
        }
        self.said.iter().any(|l| l.contains(part))
    }
}

fn unreachable() -> AgentError {
    AgentError::Api(CallError::Unreachable {
        url: "http://127.0.0.1:7300/agent/v1/poll".into(),
        detail: "connection refused".into(),
    })
}

fn status(code: u16) -> AgentError {
    AgentError::Api(CallError::Status {
        url: "http://127.0.0.1:7300/agent/v1/x".into(),
        status: code,
        message: "no".into(),
    })
}

fn task(n: u32) -> TaskRef {
    TaskRef {
        job: rackcast_engine::sched::api::JobId(1),
        task: n,
        attempt: 1,
    }
}

fn script() -> Work {
    Work::Script {
        script: "echo hi".into(),
        interpreter: "/bin/sh".into(),
        expect_exit: 0,
    }
}

fn distribute(session: u64) -> Work {
    Work::Distribute {
        image: "golden".into(),
        root: "ab".repeat(32),
        disk: None,
        verify: VerifyMode::Sample,
        unused: Default::default(),
        grow: false,
        seed: None,
        cast: CastJoin {
            group: "239.255.42.1:7400".into(),
            key: "cd".repeat(32),
            session,
            receiver: 9,
            unicast_after: None,
        },
    }
}

fn run(t: TaskRef, work: Work) -> Directive {
    Directive::Run {
        task: t,
        work,
        timeout: 600,
    }
}

fn ok(summary: &str) -> TaskReport {
    TaskReport::Finished {
        ok: true,
        error: None,
        summary: summary.into(),
        root: None,
        transport: None,
    }
}

fn progress(done: u64) -> TaskReport {
    TaskReport::Progress(rackcast_engine::sched::api::Progress {
        done,
        total: 10,
        rate: 1.0,
        message: String::new(),
    })
}

/// Starts `work` as task `t`: the directive, `Started`, the worker.
fn start(r: &mut Rig, t: TaskRef, work: Work) {
    r.directive(run(t, work));
    r.expect(Seen::Report(t, TaskReport::Started));
    r.ack(true);
    r.expect(Seen::Start(t));
    assert_eq!(r.m.task(), Some(t));
}

#[test]
fn registers_then_long_polls_with_the_servers_hold() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    assert!(r.said("registered with http://127.0.0.1:7300 in linux-x64"));
    // Nothing more until the poll answers.
    assert_eq!(r.next(), None);
    assert_eq!(r.m.poll_timeout(), None);
    // A held poll that answers Wait after its hold is repeated at once.
    r.advance(Duration::from_secs(30));
    r.directive(Directive::Wait);
    r.expect(Seen::Poll(None, Some(30)));
    // One line for a run of waits.
    r.advance(Duration::from_secs(30));
    r.directive(Directive::Wait);
    r.expect(Seen::Poll(None, Some(30)));
    let waits = r
        .said
        .iter()
        .filter(|l| l.contains("directive: wait"))
        .count();
    assert_eq!(waits, 1, "{:#?}", r.said);
}

#[test]
fn a_server_that_does_not_hold_polls_is_not_hammered() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    r.advance(Duration::from_millis(10));
    r.directive(Directive::Wait);
    assert_eq!(r.next(), None, "polled again at once");
    let due = r.m.poll_timeout().unwrap();
    assert_eq!(due - r.now, MIN_POLL_INTERVAL - Duration::from_millis(10));
    r.tick(Duration::from_secs(5));
    r.expect(Seen::Poll(None, Some(30)));
}

#[test]
fn reports_are_retried_with_backoff_and_held_until_the_server_has_them() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    r.m.handle_task_report(r.now, ok("exit 0"));
    r.tick(Duration::ZERO);
    let mut delays = Vec::new();
    for _ in 0..6 {
        r.expect(Seen::Report(t, ok("exit 0")));
        r.answer(Err(unreachable()));
        assert_eq!(r.next(), None, "retried without waiting");
        let due = r.m.poll_timeout().unwrap();
        delays.push(due - r.now);
        r.tick(Duration::from_secs(60));
    }
    assert!(r.said("lost the server"));
    // 200 ms doubling to the 5 s cap, each within its upper quarter.
    for (i, d) in delays.iter().enumerate() {
        let nominal = Backoff::nominal(i as u32 + 1);
        assert!(*d <= nominal && *d >= nominal - nominal / 4, "{i}: {d:?}");
    }
    assert!(delays[5] <= CAP);
    // The report still goes out, unchanged, then the task is over.
    r.expect(Seen::Report(t, ok("exit 0")));
    r.ack(true);
    assert!(r.said("server back after"));
    r.expect(Seen::Join);
    assert_eq!(r.m.task(), None);
    r.expect(Seen::Poll(None, Some(30)));
}

#[test]
fn a_server_gone_for_the_give_up_time_ends_the_agent() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    // The first poll, already out, finds no server.
    r.answer(Err(unreachable()));
    let mut calls = 1;
    for _ in 0..1000 {
        match r.next() {
            Some(Seen::Poll(..)) => {
                calls += 1;
                r.answer(Err(unreachable()));
            }
            Some(Seen::Finish(Outcome::GaveUp { after, last_error })) => {
                assert!(after >= Duration::from_secs(60), "{after:?}");
                assert!(last_error.contains("connection refused"));
                break;
            }
            None => r.tick(Duration::from_secs(10)),
            other => panic!("{other:?}"),
        }
        assert!(calls < 100, "no end to the retries");
    }
    assert!(r.said("giving up"), "no end: {:#?}", r.said);
    // Never more than the cap apart: 60 s take at least 12 tries.
    assert!(calls >= 12, "{calls}");
    assert!(r.said("giving up: no server for 60 s"));
}

#[test]
fn a_restarted_server_is_registered_with_again_naming_the_task_in_hand() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, distribute(5));
    // The heartbeat poll finds the server restarted: boot token unknown.
    r.tick(HEARTBEAT);
    r.expect(Seen::Poll(Some(t), Some(0)));
    r.answer(Err(status(401)));
    r.expect(Seen::Register(Some(t)));
    r.registered();
    assert!(r.said("still on job 1 task 0 attempt 1"));
    // The heartbeat that found the server gone is asked again, and the
    // task, never stopped, goes on.
    r.expect(Seen::Poll(Some(t), Some(0)));
    r.directive(Directive::Wait);
    assert_eq!(r.m.task(), Some(t));
    r.m.handle_task_report(r.now, TaskReport::Log { text: "x\n".into() });
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, TaskReport::Log { text: "x\n".into() }));
    r.ack(true);
    // A report refused for its token re-registers and is sent again.
    r.m.handle_task_report(r.now, ok("verified"));
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, ok("verified")));
    r.answer(Err(status(401)));
    r.expect(Seen::Register(Some(t)));
    r.registered();
    r.expect(Seen::Report(t, ok("verified")));
    r.ack(true);
    r.expect(Seen::Join);
}

#[test]
fn a_register_directive_from_the_server_registers_again() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    r.directive(Directive::Register);
    r.expect(Seen::Register(None));
    r.registered();
    r.expect(Seen::Poll(None, Some(30)));
    assert!(r.said("does not know this boot"));
}

#[test]
fn a_refused_token_stops_the_agent() {
    let mut r = Rig::new(RebootMode::Exit);
    r.expect(Seen::Register(None));
    r.answer(Err(status(403)));
    match r.next() {
        Some(Seen::Fail(e)) => assert!(e.contains("refused this agent's token"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.next(), None);
}

#[test]
fn a_silent_cast_session_is_rejoined() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, distribute(5));
    // The worker heard nothing of its session: it asks for a new one.
    let rejoin = TaskReport::Rejoin {
        reason: "no packet of session 5 for 15 s".into(),
    };
    r.m.handle_task_report(r.now, rejoin.clone());
    r.m.handle_task_gone(r.now);
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, rejoin));
    r.ack(true);
    r.expect(Seen::Join);
    assert!(r.said("asking for a new cast session"));
    // The next poll brings the new session; the same run starts again on it.
    r.expect(Seen::Poll(None, Some(30)));
    start(&mut r, t, distribute(6));
    assert!(!r.said("thread died"), "{:#?}", r.said);
}

#[test]
fn a_new_directive_mid_task_stops_it_and_is_followed() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    // Heartbeats while it runs, without a hold, every HEARTBEAT.
    r.tick(Duration::from_secs(60));
    r.expect(Seen::Poll(Some(t), Some(0)));
    r.directive(run(t, script()));
    assert_eq!(r.next(), None, "the same run goes on");
    let hb = r.now;
    r.tick(Duration::from_secs(60));
    assert_eq!(r.now - hb, HEARTBEAT);
    r.expect(Seen::Poll(Some(t), Some(0)));
    // Output still queued when the server moves on is not sent.
    r.m.handle_task_report(
        r.now,
        TaskReport::Log {
            text: "late\n".into(),
        },
    );
    r.directive(Directive::BootLocal);
    r.expect(Seen::Stop);
    assert!(r.said("the server moved on"));
    r.expect(Seen::Finish(Outcome::BootLocal));
    assert!(r.said("would now reboot into the local disk"));
}

#[test]
fn a_cancelled_run_is_stopped_when_a_report_says_so() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    r.m.handle_task_report(r.now, TaskReport::Log { text: "a\n".into() });
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, TaskReport::Log { text: "a\n".into() }));
    r.ack(false);
    r.expect(Seen::Stop);
    assert_eq!(r.m.task(), None);
    r.expect(Seen::Poll(None, Some(30)));
}

#[test]
fn a_run_the_server_no_longer_wants_is_not_started() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    r.directive(run(t, script()));
    r.expect(Seen::Report(t, TaskReport::Started));
    r.ack(false);
    r.expect(Seen::Poll(None, Some(30)));
    assert!(r.said("not starting it"));
}

#[test]
fn a_worker_that_dies_fails_its_task() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    r.m.handle_task_gone(r.now);
    r.tick(Duration::ZERO);
    match r.next() {
        Some(Seen::Report(
            got,
            TaskReport::Finished {
                ok: false, error, ..
            },
        )) => {
            assert_eq!(got, t);
            assert_eq!(error.as_deref(), Some("the task's thread died"));
        }
        other => panic!("{other:?}"),
    }
    r.ack(true);
    r.expect(Seen::Join);
}

#[test]
fn output_and_progress_of_a_burst_go_as_one_report_each() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    let p = progress;
    for rep in [
        TaskReport::Log { text: "a\n".into() },
        p(1),
        TaskReport::Log { text: "b\n".into() },
        p(2),
        ok("exit 0"),
    ] {
        r.m.handle_task_report(r.now, rep);
    }
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(
        t,
        TaskReport::Log {
            text: "a\nb\n".into(),
        },
    ));
    r.ack(true);
    r.expect(Seen::Report(t, p(2)));
    r.ack(true);
    r.expect(Seen::Report(t, ok("exit 0")));
    r.ack(true);
    r.expect(Seen::Join);
}

#[test]
fn a_reboot_directive_reports_its_task_then_restarts_in_process() {
    let mut r = Rig::new(RebootMode::Restart);
    r.up();
    let t = task(1);
    r.directive(Directive::Reboot {
        env: "maintenance".into(),
        task: Some(t),
    });
    r.expect(Seen::Report(t, ok("rebooting into maintenance")));
    r.ack(true);
    r.expect(Seen::Refresh);
    r.expect(Seen::Register(None));
    assert_eq!(r.m.env(), "maintenance");
    r.registered();
    assert!(r.said("registered with http://127.0.0.1:7300 in maintenance"));
    r.expect(Seen::Poll(None, Some(30)));
    // The local disk ends a local agent.
    r.directive(Directive::BootLocal);
    r.expect(Seen::Finish(Outcome::BootLocal));
}

#[test]
fn a_system_reboot_is_left_to_the_shell() {
    let mut r = Rig::new(RebootMode::System);
    r.up();
    r.directive(Directive::Reboot {
        env: "maintenance".into(),
        task: None,
    });
    r.expect(Seen::Reboot("maintenance".into()));
    assert_eq!(r.next(), None);
}

#[test]
fn bursts_of_reports_fold_in_order() {
    let p = progress;
    let fin = ok("exit 0");
    let (log, progress, end) = coalesce(vec![
        TaskReport::Log { text: "a\n".into() },
        p(1),
        TaskReport::Log { text: "b\n".into() },
        p(2),
        fin.clone(),
    ]);
    assert_eq!(log.as_deref(), Some("a\nb\n"));
    assert_eq!(progress.map(|p| p.done), Some(2));
    assert_eq!(end, Some(fin));
    assert_eq!(coalesce(vec![]), (None, None, None));
}

#[test]
fn progress_lines_read_well() {
    let l = progress_line(&rackcast_engine::sched::api::Progress {
        done: 50_000_000,
        total: 200_000_000,
        rate: 12_500_000.0,
        message: "receiving".into(),
    });
    assert_eq!(l, "progress  25.0% 50.0/200.0 MB at 12.5 MB/s  receiving");
}

#[test]
fn an_agent_restarted_mid_task_claims_nothing_and_runs_what_the_server_says() {
    // A new agent process knows nothing of the task its predecessor ran
    // (the shell ends what that one's script left running before it
    // starts): it registers with no task in hand, and the server decides.
    let mut r = Rig::new(RebootMode::Exit);
    r.expect(Seen::Register(None));
    r.registered();
    r.expect(Seen::Poll(None, Some(30)));
    let retry = TaskRef {
        attempt: 2,
        ..task(0)
    };
    start(&mut r, retry, script());
    assert!(r.said("attempt 2"), "{:#?}", r.said);
}

#[test]
fn a_run_that_ended_still_reports_its_result_when_its_output_is_unwanted() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    r.m.handle_task_report(r.now, TaskReport::Log { text: "a\n".into() });
    r.m.handle_task_report(r.now, ok("exit 0"));
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, TaskReport::Log { text: "a\n".into() }));
    r.ack(false);
    // Not stopped: the result goes out, then the worker is joined.
    r.expect(Seen::Report(t, ok("exit 0")));
    r.ack(false);
    r.expect(Seen::Join);
}

#[test]
fn reports_wait_in_the_worker_while_a_call_waits_for_its_retry() {
    let mut r = Rig::new(RebootMode::Exit);
    r.up();
    let t = task(0);
    start(&mut r, t, script());
    assert!(r.m.accepts_reports());
    r.m.handle_task_report(r.now, TaskReport::Log { text: "a\n".into() });
    r.tick(Duration::ZERO);
    r.expect(Seen::Report(t, TaskReport::Log { text: "a\n".into() }));
    r.answer(Err(unreachable()));
    // The worker's bounded channel (and its own cap on held output) now
    // holds what it says, not the machine.
    assert!(!r.m.accepts_reports());
    r.tick(Duration::from_secs(10));
    assert!(r.m.accepts_reports());
    r.expect(Seen::Report(t, TaskReport::Log { text: "a\n".into() }));
}
