//! The agent's control loop as a sans-IO state machine: what to ask the
//! server next, what to do with its answers, when to retry, when a task
//! starts, stops or ends, and when the agent is done. It owns no socket,
//! thread or clock: every input carries `now`, and what it wants done comes
//! out of [`Machine::poll_action`]. The shell (`control::shell`) performs
//! the HTTP calls, runs task workers and carries out reboots.
//!
//! One call is in flight at a time. When none is, the next one follows from
//! the state, in this order: register (when the server must learn this
//! boot), reports (task output and results, in the order they happened,
//! each held until the server has it), a pending reboot, the next
//! directive, a heartbeat poll while a task runs, an idle long poll.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rackcast_client::CallError;
use rackcast_engine::sched::api::{
    Directive, Inventory, PollRequest, Progress, RegisterRequest, Registered, ReportAck,
    ReportRequest, TaskRef, TaskReport, Work, LOCAL_ENV,
};
use rackcast_types::{ErrorChain, MacAddr};

use super::backoff::Backoff;
use super::client::{classify, Failure};
use super::{Outcome, RebootMode, VERSION};
use crate::error::AgentError;

/// While a task runs, the server is polled this often (without a hold) so a
/// cancellation or a new directive reaches the agent.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// An idle poll that comes back sooner than this is not repeated at once.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the machine needs to know of its configuration.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The target's identity.
    pub mac: MacAddr,
    /// The environment the agent runs in.
    pub env: String,
    /// The server URL (for messages).
    pub server: String,
    /// The hold to ask for an idle poll (`None`: the server's).
    pub poll_wait: Option<u64>,
    /// How long to keep retrying a lost server.
    pub give_up: Duration,
    /// What a reboot directive does.
    pub on_reboot: RebootMode,
}

/// Something the shell must do.
#[derive(Debug)]
pub enum Action {
    /// A line for the log.
    Say(String),
    /// Make this call and hand its answer to [`Machine::handle_answer`].
    Call(Call),
    /// Start a worker for this run.
    StartTask {
        /// Which run.
        task: TaskRef,
        /// What it does.
        work: Work,
        /// Its timeout in seconds (0: none).
        timeout: u64,
    },
    /// Stop the worker and wait for it; what it still reports is dropped.
    StopTask,
    /// The worker sent its last report: wait for its thread.
    JoinTask,
    /// The agent restarted in another environment (in-process): collect the
    /// inventory again and hand it to [`Machine::set_inventory`].
    RefreshInventory,
    /// Reboot the machine for real into `env` (set a one-time network boot
    /// first when `env` is not the local disk), then end with `outcome`.
    SystemReboot {
        /// The environment.
        env: String,
        /// How the agent ends once the reboot command returned.
        outcome: Outcome,
    },
    /// The agent is done.
    Finish(Outcome),
    /// The agent stops on an error retrying cannot fix.
    Fail(AgentError),
}

/// A call to the agent API.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `POST /agent/v1/register` with the enrollment token.
    Register(RegisterRequest),
    /// `POST /agent/v1/poll`.
    Poll(PollRequest),
    /// `POST /agent/v1/report`.
    Report(ReportRequest),
}

/// What a call answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// To a register.
    Registered(Registered),
    /// To a poll.
    Directive(Directive),
    /// To a report.
    Ack(ReportAck),
}

/// See the module doc.
#[derive(Debug)]
pub struct Machine {
    cfg: MachineConfig,
    inventory: Inventory,
    now: Instant,
    /// The server's hold for an idle poll.
    poll_wait: u64,
    backoff: Backoff,
    lost: Option<Lost>,
    /// The server must learn this boot (again), naming the task in hand.
    register: Option<Option<TaskRef>>,
    /// The call in flight and when it was sent.
    in_flight: Option<(Call, Instant)>,
    /// A failed call is retried at this instant.
    retry_at: Option<Instant>,
    /// The next idle poll goes out no sooner than this.
    poll_not_before: Option<Instant>,
    /// Reports to deliver, in order.
    outbox: VecDeque<Outgoing>,
    /// What the worker said since the last delivery.
    inbox: Vec<TaskReport>,
    /// A directive to follow next.
    next: Option<Directive>,
    /// The task in hand.
    task: Option<Running>,
    /// A reboot to carry out once the outbox is empty.
    reboot: Option<String>,
    actions: VecDeque<Action>,
    last_directive: Option<&'static str>,
    done: bool,
}

/// When the server went away, and why.
#[derive(Debug)]
struct Lost {
    since: Instant,
    last_error: String,
}

#[derive(Debug)]
struct Running {
    task: TaskRef,
    work: Work,
    last_heartbeat: Instant,
    /// The worker sent its terminal report.
    ended: bool,
}

/// A report and what its answer decides.
#[derive(Debug)]
struct Outgoing {
    task: TaskRef,
    report: TaskReport,
    then: Then,
}

#[derive(Debug)]
enum Then {
    /// `Started` for a Run directive: start the worker if the server still
    /// wants the run.
    Start { work: Work, timeout: u64 },
    /// Output or progress: stop the worker if the server no longer wants it.
    Stream,
    /// The worker's terminal report: the task is over.
    End,
    /// Nothing follows (the report of a task that ends in a reboot).
    Nothing,
}

impl Machine {
    /// A machine that registers first.
    pub fn new(
        cfg: MachineConfig,
        inventory: Inventory,
        backoff: Backoff,
        now: Instant,
    ) -> Machine {
        Machine {
            cfg,
            inventory,
            now,
            poll_wait: 30,
            backoff,
            lost: None,
            register: Some(None),
            in_flight: None,
            retry_at: None,
            poll_not_before: None,
            outbox: VecDeque::new(),
            inbox: Vec::new(),
            next: None,
            task: None,
            reboot: None,
            actions: VecDeque::new(),
            last_directive: None,
            done: false,
        }
    }

    /// The environment the agent is in now.
    pub fn env(&self) -> &str {
        &self.cfg.env
    }

    /// The task in hand.
    pub fn task(&self) -> Option<TaskRef> {
        self.task.as_ref().map(|r| r.task)
    }

    /// The inventory collected again after [`Action::RefreshInventory`].
    pub fn set_inventory(&mut self, inventory: Inventory) {
        self.inventory = inventory;
    }

    /// The next thing to do, or `None` until an input arrives.
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() && !self.done && self.in_flight.is_none() {
            self.advance();
        }
        self.actions.pop_front()
    }

    /// When [`Machine::handle_timeout`] is due (`None`: only when an answer
    /// or a task report arrives).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done || self.in_flight.is_some() {
            return None;
        }
        if let Some(t) = self.retry_at {
            return Some(t);
        }
        match &self.task {
            Some(r) if self.outbox.is_empty() && self.inbox.is_empty() => {
                Some(r.last_heartbeat + HEARTBEAT)
            }
            Some(_) => Some(self.now),
            None => Some(self.poll_not_before.unwrap_or(self.now)),
        }
    }

    /// Whether the worker's reports should be read now. Not while a call
    /// waits to be retried: the worker's bounded channel and its own cap on
    /// held output then bound what piles up while the server is away.
    pub fn accepts_reports(&self) -> bool {
        self.retry_at.is_none()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        if self.poll_not_before.is_some_and(|t| now >= t) {
            self.poll_not_before = None;
        }
    }

    /// The worker reported (output, progress, or its end).
    pub fn handle_task_report(&mut self, now: Instant, report: TaskReport) {
        self.now = now;
        let Some(r) = &mut self.task else {
            return; // a stopped worker's last words
        };
        if matches!(
            report,
            TaskReport::Finished { .. } | TaskReport::Rejoin { .. }
        ) {
            r.ended = true;
        }
        self.inbox.push(report);
    }

    /// The worker ended without a terminal report: it died.
    pub fn handle_task_gone(&mut self, now: Instant) {
        self.now = now;
        if let Some(r) = &mut self.task {
            if !r.ended {
                r.ended = true;
                self.inbox.push(TaskReport::Finished {
                    ok: false,
                    error: Some("the task's thread died".into()),
                    summary: "agent error".into(),
                    root: None,
                    transport: None,
                });
            }
        }
    }

    /// The answer to the call [`Action::Call`] asked for.
    pub fn handle_answer(&mut self, now: Instant, answer: Result<Answer, AgentError>) {
        self.now = now;
        let Some((call, sent)) = self.in_flight.take() else {
            return;
        };
        match (call, answer) {
            (Call::Register(req), Ok(Answer::Registered(reg))) => {
                self.reached();
                self.poll_wait = reg.poll_wait;
                self.register = None;
                self.say(format!(
                    "registered with {} in {}{}",
                    self.cfg.server,
                    self.cfg.env,
                    req.running.map_or(String::new(), |t| format!(
                        " (still on job {} task {} attempt {})",
                        t.job, t.task, t.attempt
                    ))
                ));
            }
            (Call::Register(_), Err(e)) => match classify(&e) {
                Failure::Retry => self.failed(&e),
                Failure::Reregister | Failure::Refused => self.fail(match e {
                    AgentError::Api(CallError::Status {
                        status: status @ (401 | 403),
                        message,
                        ..
                    }) => AgentError::Enrollment {
                        server: self.cfg.server.clone(),
                        status,
                        message,
                    },
                    e => e,
                }),
            },
            (Call::Poll(req), Ok(Answer::Directive(d))) => {
                self.reached();
                self.polled(req.running, sent, d);
            }
            (Call::Poll(req), Err(e)) => match classify(&e) {
                Failure::Retry => self.failed(&e),
                Failure::Reregister => {
                    self.reached();
                    self.say("boot token refused: registering again");
                    self.register = Some(req.running);
                }
                Failure::Refused => {
                    // Something about this boot's state is off: back off and
                    // start over from a fresh registration.
                    self.say(format!(
                        "poll refused ({}): registering again",
                        ErrorChain(&e)
                    ));
                    self.failed(&e);
                    self.register = Some(req.running);
                }
            },
            (Call::Report(_), Ok(Answer::Ack(ack))) => {
                self.reached();
                self.delivered(Some(ack));
            }
            (Call::Report(req), Err(e)) => match classify(&e) {
                Failure::Retry => self.failed(&e),
                Failure::Reregister => {
                    self.reached();
                    self.say("boot token refused: registering again");
                    self.register = Some(Some(req.task));
                }
                Failure::Refused => {
                    self.say(format!("report refused, dropped: {}", ErrorChain(&e)));
                    self.delivered(None);
                }
            },
            (call, Ok(other)) => {
                // The shell pairs each call with its own answer: another
                // kind is a bug there, not the server's doing.
                let e = AgentError::Config(format!("{other:?} in answer to {call:?}"));
                self.fail(e);
            }
        }
    }

    // ------------------------------------------------------------ deciding

    /// Queues what follows from the state when nothing is in flight.
    fn advance(&mut self) {
        if self.retry_at.is_some() {
            return;
        }
        if let Some(running) = self.register {
            let req = RegisterRequest {
                mac: self.cfg.mac.to_string(),
                env: self.cfg.env.clone(),
                inventory: self.inventory.clone(),
                running,
                version: VERSION.to_string(),
            };
            return self.call(Call::Register(req));
        }
        if self.outbox.is_empty() && !self.inbox.is_empty() {
            self.collect_reports();
        }
        if let Some(o) = self.outbox.front() {
            let req = ReportRequest {
                mac: self.cfg.mac.to_string(),
                task: o.task,
                report: o.report.clone(),
            };
            return self.call(Call::Report(req));
        }
        if let Some(env) = self.reboot.take() {
            return self.reboot(env);
        }
        if let Some(d) = self.next.take() {
            return self.follow(d);
        }
        if let Some(r) = &self.task {
            if self.now >= r.last_heartbeat + HEARTBEAT {
                let task = r.task;
                return self.call(Call::Poll(PollRequest {
                    mac: self.cfg.mac.to_string(),
                    running: Some(task),
                    wait: Some(0),
                }));
            }
            return;
        }
        if self.poll_not_before.is_some() {
            return;
        }
        let wait = self.cfg.poll_wait.unwrap_or(self.poll_wait);
        self.call(Call::Poll(PollRequest {
            mac: self.cfg.mac.to_string(),
            running: None,
            wait: Some(wait),
        }));
    }

    fn call(&mut self, c: Call) {
        self.in_flight = Some((c.clone(), self.now));
        self.actions.push_back(Action::Call(c));
    }

    /// A poll answered `d`.
    fn polled(&mut self, running: Option<TaskRef>, sent: Instant, d: Directive) {
        if d == Directive::Register {
            self.say("the server does not know this boot: registering again");
            self.register = Some(running);
            return;
        }
        match (&mut self.task, running) {
            // A heartbeat: the task goes on unless the server moved on.
            (Some(r), Some(_)) => {
                r.last_heartbeat = self.now;
                let same = match &d {
                    Directive::Wait => true,
                    Directive::Run { task, work, .. } => *task == r.task && *work == r.work,
                    _ => false,
                };
                if !same {
                    self.say("the server moved on: stopping the task");
                    self.stop_task();
                    self.next = Some(d);
                }
            }
            _ => {
                if d == Directive::Wait {
                    self.announce(&d);
                    // A server that does not hold polls is not hammered.
                    self.poll_not_before = Some(sent + MIN_POLL_INTERVAL).filter(|t| *t > self.now);
                } else {
                    self.next = Some(d);
                }
            }
        }
    }

    /// Follows a directive.
    fn follow(&mut self, d: Directive) {
        self.announce(&d);
        match d {
            Directive::Wait => {}
            Directive::Register => self.register = Some(None),
            Directive::Run {
                task,
                work,
                timeout,
            } => self.outbox.push_back(Outgoing {
                task,
                report: TaskReport::Started,
                then: Then::Start { work, timeout },
            }),
            Directive::Reboot { env, task } => {
                if let Some(t) = task {
                    self.outbox.push_back(Outgoing {
                        task: t,
                        report: TaskReport::Finished {
                            ok: true,
                            error: None,
                            summary: format!("rebooting into {env}"),
                            root: None,
                            transport: None,
                        },
                        then: Then::Nothing,
                    });
                }
                self.reboot = Some(env);
            }
            Directive::BootLocal => self.reboot = Some(LOCAL_ENV.to_string()),
        }
    }

    /// The report at the front of the outbox reached the server (`None`:
    /// it refused the report for good).
    fn delivered(&mut self, ack: Option<ReportAck>) {
        let Some(o) = self.outbox.pop_front() else {
            return;
        };
        let keep_going = ack.as_ref().is_some_and(|a| a.keep_going);
        match o.then {
            Then::Start { work, timeout } => {
                if keep_going {
                    self.task = Some(Running {
                        task: o.task,
                        work: work.clone(),
                        last_heartbeat: self.now,
                        ended: false,
                    });
                    self.actions.push_back(Action::StartTask {
                        task: o.task,
                        work,
                        timeout,
                    });
                } else {
                    self.say("the server no longer wants this run: not starting it");
                }
            }
            // A refused report of output does not stop the task, and one
            // that has ended already still delivers its result.
            Then::Stream
                if ack.is_some() && !keep_going && !self.task.as_ref().is_some_and(|r| r.ended) =>
            {
                self.say("the server no longer wants this run: stopping it");
                self.stop_task();
            }
            Then::Stream | Then::Nothing => {}
            Then::End => {
                self.task = None;
                self.actions.push_back(Action::JoinTask);
            }
        }
    }

    /// Folds what the worker said since the last delivery into reports: the
    /// output joined in order, the latest progress, the terminal report
    /// (always the worker's last).
    fn collect_reports(&mut self) {
        let Some(task) = self.task.as_ref().map(|r| r.task) else {
            self.inbox.clear();
            return;
        };
        let (log, progress, end) = coalesce(std::mem::take(&mut self.inbox));
        if let Some(text) = log {
            self.outbox.push_back(Outgoing {
                task,
                report: TaskReport::Log { text },
                then: Then::Stream,
            });
        }
        if let Some(p) = progress {
            self.say(progress_line(&p));
            self.outbox.push_back(Outgoing {
                task,
                report: TaskReport::Progress(p),
                then: Then::Stream,
            });
        }
        if let Some(end) = end {
            match &end {
                TaskReport::Finished {
                    ok, summary, error, ..
                } => self.say(format!(
                    "finished job {} task {}: {}{}",
                    task.job,
                    task.task,
                    if *ok { "ok, " } else { "FAILED, " },
                    if *ok {
                        summary.clone()
                    } else {
                        error.clone().unwrap_or_else(|| summary.clone())
                    }
                )),
                TaskReport::Rejoin { reason } => {
                    self.say(format!("asking for a new cast session: {reason}"))
                }
                _ => {}
            }
            // The commit point: held until the server has it.
            self.outbox.push_back(Outgoing {
                task,
                report: end,
                then: Then::End,
            });
        }
    }

    fn stop_task(&mut self) {
        if self.task.take().is_some() {
            self.actions.push_back(Action::StopTask);
        }
        self.inbox.clear();
        self.outbox
            .retain(|o| !matches!(o.then, Then::Stream | Then::End));
    }

    /// Carries out a reboot into `env`.
    fn reboot(&mut self, env: String) {
        let local = env == LOCAL_ENV;
        let outcome = if local {
            Outcome::BootLocal
        } else {
            Outcome::Rebooted { env: env.clone() }
        };
        match self.cfg.on_reboot {
            RebootMode::Restart if local => {
                self.say("booting the local disk (a local agent: exiting)");
                self.finish(Action::Finish(outcome));
            }
            RebootMode::Restart => {
                self.say(format!("restarting in {env} (in-process)"));
                self.cfg.env = env;
                self.actions.push_back(Action::RefreshInventory);
                self.register = Some(None);
            }
            RebootMode::Exit => {
                self.say(format!(
                    "would now reboot into {} (--on-reboot exit): exiting",
                    if local { "the local disk" } else { &env }
                ));
                self.finish(Action::Finish(outcome));
            }
            RebootMode::System => self.finish(Action::SystemReboot { env, outcome }),
        }
    }

    // ------------------------------------------------------------ the server

    /// A call failed in a way worth retrying: say so once, then wait, or
    /// give up.
    fn failed(&mut self, e: &AgentError) {
        let now = self.now;
        match &mut self.lost {
            None => {
                self.say(format!(
                    "lost the server: {}; retrying with back-off for up to {} s",
                    ErrorChain(e),
                    self.cfg.give_up.as_secs()
                ));
                self.lost = Some(Lost {
                    since: now,
                    last_error: ErrorChain(e).to_string(),
                });
            }
            Some(l) => l.last_error = ErrorChain(e).to_string(),
        }
        let gone = now.duration_since(self.lost.as_ref().map_or(now, |l| l.since));
        if gone >= self.cfg.give_up {
            let last_error = ErrorChain(e).to_string();
            self.say(format!(
                "giving up: no server for {} s ({last_error})",
                gone.as_secs()
            ));
            return self.finish(Action::Finish(Outcome::GaveUp {
                after: gone,
                last_error,
            }));
        }
        let delay = self.backoff.next_delay().min(self.cfg.give_up - gone);
        self.retry_at = Some(now + delay);
    }

    /// A call went through.
    fn reached(&mut self) {
        if let Some(l) = self.lost.take() {
            self.say(format!(
                "server back after {:.1} s",
                self.now.duration_since(l.since).as_secs_f64()
            ));
        }
        self.backoff.reset();
    }

    fn fail(&mut self, e: AgentError) {
        self.finish(Action::Fail(e));
    }

    /// The last action. A worker still running is left to end with the
    /// process (a script it started is ended by the next agent run).
    fn finish(&mut self, last: Action) {
        self.task = None;
        self.actions.push_back(last);
        self.done = true;
    }

    fn say(&mut self, line: impl Into<String>) {
        self.actions.push_back(Action::Say(line.into()));
    }

    /// One line per directive (a run of `wait`s is one line).
    fn announce(&mut self, d: &Directive) {
        let word = match d {
            Directive::Wait => "wait",
            Directive::Run { .. } => "run",
            Directive::Reboot { .. } => "reboot",
            Directive::BootLocal => "boot-local",
            Directive::Register => "register",
        };
        let line = match d {
            Directive::Wait if self.last_directive == Some("wait") => None,
            Directive::Wait => Some("directive: wait (nothing to do)".to_string()),
            Directive::Run {
                task,
                work,
                timeout,
            } => Some(format!(
                "directive: run {} (job {} task {} attempt {}, timeout {})",
                describe(work),
                task.job,
                task.task,
                task.attempt,
                if *timeout == 0 {
                    "none".to_string()
                } else {
                    format!("{timeout} s")
                }
            )),
            Directive::Reboot { env, .. } => Some(format!("directive: reboot into {env}")),
            Directive::BootLocal => Some("directive: boot the local disk (no work left)".into()),
            Directive::Register => Some("directive: register again".into()),
        };
        if let Some(l) = line {
            self.say(l);
        }
        self.last_directive = Some(word);
    }
}

/// Folds a burst of reports: the logs joined in order, the latest progress,
/// and the terminal report (always the worker's last).
pub fn coalesce(batch: Vec<TaskReport>) -> (Option<String>, Option<Progress>, Option<TaskReport>) {
    let mut log: Option<String> = None;
    let mut progress = None;
    let mut end = None;
    for r in batch {
        match r {
            TaskReport::Log { text } => log.get_or_insert_with(String::new).push_str(&text),
            TaskReport::Progress(p) => progress = Some(p),
            TaskReport::Started => {}
            r => end = Some(r),
        }
    }
    (log, progress, end)
}

fn describe(w: &Work) -> String {
    match w {
        Work::Create { image, disk } => format!(
            "create {image} from {}",
            disk.as_deref().unwrap_or("the default disk")
        ),
        Work::Distribute { image, disk, .. } => format!(
            "distribute {image} to {}",
            disk.as_deref().unwrap_or("the default disk")
        ),
        Work::Script { interpreter, .. } => format!("script ({interpreter})"),
    }
}

/// The log line of a progress report.
pub fn progress_line(p: &Progress) -> String {
    let pct = if p.total > 0 {
        format!("{:5.1}% ", p.done as f64 * 100.0 / p.total as f64)
    } else {
        String::new()
    };
    format!(
        "progress {pct}{:.1}/{:.1} MB at {:.1} MB/s  {}",
        p.done as f64 / 1e6,
        p.total as f64 / 1e6,
        p.rate / 1e6,
        p.message
    )
}
