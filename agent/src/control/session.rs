//! One agent's conversation with the server: registration, polls, reports,
//! each retried through a lost server, and the task in hand.

use std::fmt::Display;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use rackcast_engine::sched::api::{
    Directive, Inventory, PollRequest, Progress, RegisterRequest, ReportAck, ReportRequest,
    TaskRef, TaskReport, Work, LOCAL_ENV,
};

use super::backoff::Backoff;
use super::client::{classify, Client, Failure};
use super::tasks::{TaskContext, TaskHandle};
use super::{boot, inventory, AgentConfig, Outcome, RebootMode, VERSION};
use crate::error::{AgentError, Result};

/// While a task runs, the server is polled this often (without a hold) so a
/// cancellation or a new directive reaches the agent.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// An idle poll that comes back sooner than this is not repeated at once.
const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why the loop stops early.
enum Exit {
    /// The server stayed away for the give-up time.
    GaveUp { after: Duration, last_error: String },
    /// Retrying cannot help.
    Fatal(AgentError),
}

impl From<AgentError> for Exit {
    fn from(e: AgentError) -> Exit {
        Exit::Fatal(e)
    }
}

type Step<T> = std::result::Result<T, Exit>;

/// When the server went away, and why.
struct Lost {
    since: Instant,
    last_error: String,
}

pub(super) struct Session {
    cfg: AgentConfig,
    client: Client,
    backoff: Backoff,
    lost: Option<Lost>,
    /// The server's hold for an idle poll.
    poll_wait: u64,
    inventory: Inventory,
    tag: String,
    last_directive: Option<&'static str>,
}

impl Session {
    pub(super) fn new(cfg: AgentConfig) -> Session {
        let inventory = inventory::collect(cfg.disk.as_deref());
        Session {
            client: Client::new(&cfg.server),
            backoff: Backoff::from_entropy(),
            lost: None,
            poll_wait: 30,
            inventory,
            tag: format!("agent {}", cfg.mac),
            last_directive: None,
            cfg,
        }
    }

    pub(super) fn run(mut self) -> Result<Outcome> {
        let killed = super::script::reap_orphans(&self.cfg.work_dir);
        if killed > 0 {
            self.say(format_args!(
                "ended {killed} process(es) of a script an earlier agent run left running"
            ));
        }
        match self.main() {
            Ok(o) => Ok(o),
            Err(Exit::GaveUp { after, last_error }) => {
                self.say(format_args!(
                    "giving up: no server for {} s ({last_error})",
                    after.as_secs()
                ));
                Ok(Outcome::GaveUp { after, last_error })
            }
            Err(Exit::Fatal(e)) => Err(e),
        }
    }

    fn say(&self, msg: impl Display) {
        eprintln!("{}: {msg}", self.tag);
    }

    fn main(&mut self) -> Step<Outcome> {
        self.register(None)?;
        let mut next: Option<Directive> = None;
        loop {
            let polled_at = Instant::now();
            let d = match next.take() {
                Some(d) => d,
                None => self.poll(None)?,
            };
            self.announce(&d);
            match d {
                Directive::Wait => {
                    // A server that does not hold polls is not hammered.
                    let since = polled_at.elapsed();
                    if since < MIN_POLL_INTERVAL {
                        std::thread::sleep(MIN_POLL_INTERVAL - since);
                    }
                }
                Directive::Register => self.register(None)?,
                Directive::Run {
                    task,
                    work,
                    timeout,
                } => next = self.run_task(task, work, timeout)?,
                Directive::Reboot { env, task } => {
                    if let Some(t) = task {
                        self.report(
                            t,
                            TaskReport::Finished {
                                ok: true,
                                error: None,
                                summary: format!("rebooting into {env}"),
                            },
                        )?;
                    }
                    if let Some(o) = self.reboot(&env)? {
                        return Ok(o);
                    }
                }
                Directive::BootLocal => {
                    if let Some(o) = self.reboot(LOCAL_ENV)? {
                        return Ok(o);
                    }
                }
            }
        }
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
        match d {
            Directive::Wait if self.last_directive == Some("wait") => {}
            Directive::Wait => self.say("directive: wait (nothing to do)"),
            Directive::Run {
                task,
                work,
                timeout,
            } => self.say(format_args!(
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
            Directive::Reboot { env, .. } => self.say(format_args!("directive: reboot into {env}")),
            Directive::BootLocal => self.say("directive: boot the local disk (no work left)"),
            Directive::Register => self.say("directive: register again"),
        }
        self.last_directive = Some(word);
    }

    // ------------------------------------------------------------ server calls

    /// A call failed in a way worth retrying: say so once, wait, or give up.
    fn failed(&mut self, e: &AgentError) -> Step<()> {
        let now = Instant::now();
        match &mut self.lost {
            None => {
                self.say(format_args!(
                    "lost the server: {e}; retrying with back-off for up to {} s",
                    self.cfg.give_up.as_secs()
                ));
                self.lost = Some(Lost {
                    since: now,
                    last_error: e.to_string(),
                });
            }
            Some(l) => l.last_error = e.to_string(),
        }
        let since = self.lost.as_ref().map_or(now, |l| l.since);
        let gone = now.duration_since(since);
        if gone >= self.cfg.give_up {
            return Err(Exit::GaveUp {
                after: gone,
                last_error: e.to_string(),
            });
        }
        let delay = self.backoff.next_delay().min(self.cfg.give_up - gone);
        std::thread::sleep(delay);
        Ok(())
    }

    /// A call went through.
    fn reached(&mut self) {
        if let Some(l) = self.lost.take() {
            self.say(format_args!(
                "server back after {:.1} s",
                l.since.elapsed().as_secs_f64()
            ));
        }
        self.backoff.reset();
    }

    /// Registers (again), naming the task still in hand.
    fn register(&mut self, running: Option<TaskRef>) -> Step<()> {
        self.client.forget_token();
        let req = RegisterRequest {
            mac: self.cfg.mac.to_string(),
            env: self.cfg.env.clone(),
            inventory: self.inventory.clone(),
            running,
            version: VERSION.to_string(),
        };
        loop {
            match self.client.register(&self.cfg.enroll_token, &req) {
                Ok(reg) => {
                    self.reached();
                    self.poll_wait = reg.poll_wait;
                    self.say(format_args!(
                        "registered with {} in {}{}",
                        self.cfg.server,
                        self.cfg.env,
                        running.map_or(String::new(), |t| format!(
                            " (still on job {} task {} attempt {})",
                            t.job, t.task, t.attempt
                        ))
                    ));
                    return Ok(());
                }
                Err(e) => match classify(&e) {
                    Failure::Retry => self.failed(&e)?,
                    Failure::Reregister | Failure::Refused => {
                        return Err(Exit::Fatal(match e {
                            AgentError::Status {
                                status: status @ (401 | 403),
                                message,
                                ..
                            } => AgentError::Enrollment {
                                server: self.cfg.server.clone(),
                                status,
                                message,
                            },
                            e => e,
                        }))
                    }
                },
            }
        }
    }

    /// Polls for the next directive. `running`: the task in hand, if any
    /// (then the server is asked not to hold the poll).
    fn poll(&mut self, running: Option<TaskRef>) -> Step<Directive> {
        let wait = match running {
            Some(_) => 0,
            None => self.cfg.poll_wait.unwrap_or(self.poll_wait),
        };
        loop {
            let req = PollRequest {
                mac: self.cfg.mac.to_string(),
                running,
                wait: Some(wait),
            };
            match self.client.poll(&req) {
                Ok(Directive::Register) => {
                    self.reached();
                    self.say("the server does not know this boot: registering again");
                    self.register(running)?;
                }
                Ok(d) => {
                    self.reached();
                    return Ok(d);
                }
                Err(e) => match classify(&e) {
                    Failure::Retry => self.failed(&e)?,
                    Failure::Reregister => {
                        self.reached();
                        self.say("boot token refused: registering again");
                        self.register(running)?;
                    }
                    Failure::Refused => {
                        // Something about this boot's state is off: back off
                        // and start over from a fresh registration.
                        self.say(format_args!("poll refused ({e}): registering again"));
                        self.failed(&e)?;
                        self.register(running)?;
                    }
                },
            }
        }
    }

    /// Reports, retrying until the server answers. `None`: the server
    /// refused the report for good (it no longer knows the run).
    fn report(&mut self, task: TaskRef, report: TaskReport) -> Step<Option<ReportAck>> {
        let req = ReportRequest {
            mac: self.cfg.mac.to_string(),
            task,
            report,
        };
        loop {
            match self.client.report(&req) {
                Ok(ack) => {
                    self.reached();
                    return Ok(Some(ack));
                }
                Err(e) => match classify(&e) {
                    Failure::Retry => self.failed(&e)?,
                    Failure::Reregister => {
                        self.reached();
                        self.say("boot token refused: registering again");
                        self.register(Some(task))?;
                    }
                    Failure::Refused => {
                        self.say(format_args!("report refused, dropped: {e}"));
                        return Ok(None);
                    }
                },
            }
        }
    }

    // ------------------------------------------------------------ tasks

    /// Runs one task to its end. Returns a directive that arrived while it
    /// ran and replaced it, for the main loop to follow.
    fn run_task(&mut self, task: TaskRef, work: Work, timeout: u64) -> Step<Option<Directive>> {
        match self.report(task, TaskReport::Started)? {
            Some(ack) if ack.keep_going => {}
            _ => {
                self.say("the server no longer wants this run: not starting it");
                return Ok(None);
            }
        }
        let ctx = TaskContext {
            client: self.client.clone(),
            work_dir: self.cfg.work_dir.clone(),
            default_disk: self.cfg.disk.clone(),
            iface_addr: self.cfg.iface_addr,
            stall: self.cfg.stall,
            give_up: self.cfg.give_up,
            tag: self.tag.clone(),
        };
        let handle = TaskHandle::spawn(ctx, task, work, timeout);
        let mut last_poll = Instant::now();
        loop {
            let mut batch = Vec::new();
            match handle.reports().recv_timeout(Duration::from_millis(250)) {
                Ok(r) => {
                    batch.push(r);
                    batch.extend(handle.reports().try_iter());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // The worker ended without a word: it panicked.
                    let r = TaskReport::Finished {
                        ok: false,
                        error: Some("the task's thread died".into()),
                        summary: "agent error".into(),
                    };
                    self.report(task, r)?;
                    handle.join();
                    return Ok(None);
                }
            }
            let (log, progress, end) = coalesce(batch);
            let mut keep_going = true;
            if let Some(text) = log {
                keep_going &= self
                    .report(task, TaskReport::Log { text })?
                    .is_none_or(|a| a.keep_going);
            }
            if let Some(p) = progress {
                self.say(progress_line(&p));
                keep_going &= self
                    .report(task, TaskReport::Progress(p))?
                    .is_none_or(|a| a.keep_going);
            }
            if let Some(end) = end {
                match &end {
                    TaskReport::Finished { ok, summary, error } => self.say(format_args!(
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
                        self.say(format_args!("asking for a new cast session: {reason}"))
                    }
                    _ => {}
                }
                // The commit point: held until the server has it.
                self.report(task, end)?;
                handle.join();
                return Ok(None);
            }
            if !keep_going {
                self.say("the server no longer wants this run: stopping it");
                handle.stop_and_join();
                return Ok(None);
            }
            if last_poll.elapsed() >= HEARTBEAT {
                last_poll = Instant::now();
                match self.poll(Some(task))? {
                    Directive::Wait => {}
                    Directive::Run {
                        task: t, work: w, ..
                    } if t == task && w == handle.work => {}
                    other => {
                        self.say("the server moved on: stopping the task");
                        handle.stop_and_join();
                        return Ok(Some(other));
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------ reboots

    /// Carries out a reboot into `env`; `Some` ends the loop.
    fn reboot(&mut self, env: &str) -> Step<Option<Outcome>> {
        let local = env == LOCAL_ENV;
        let outcome = if local {
            Outcome::BootLocal
        } else {
            Outcome::Rebooted {
                env: env.to_string(),
            }
        };
        match self.cfg.on_reboot {
            RebootMode::Restart if local => {
                self.say("booting the local disk (a local agent: exiting)");
                Ok(Some(outcome))
            }
            RebootMode::Restart => {
                self.say(format_args!("restarting in {env} (in-process)"));
                self.cfg.env = env.to_string();
                self.inventory = inventory::collect(self.cfg.disk.as_deref());
                self.register(None)?;
                Ok(None)
            }
            RebootMode::Exit => {
                self.say(format_args!(
                    "would now reboot into {} (--on-reboot exit): exiting",
                    if local { "the local disk" } else { env }
                ));
                Ok(Some(outcome))
            }
            RebootMode::System => {
                if !local && boot::is_uefi() {
                    match boot::set_network_boot_next(Some(&self.cfg.mac.to_string())) {
                        Ok(e) => self.say(format_args!(
                            "one-time network boot set: Boot{:04X} {}",
                            e.num, e.label
                        )),
                        // The firmware's boot order may still reach the
                        // network; the server's deadline catches it if not.
                        Err(e) => self.say(format_args!("warning: {e}")),
                    }
                }
                self.say(format_args!(
                    "rebooting into {env}: {}",
                    self.cfg.reboot_command.join(" ")
                ));
                boot::reboot(&self.cfg.reboot_command)?;
                Ok(Some(outcome))
            }
        }
    }
}

/// Folds a burst of reports: the logs joined in order, the latest progress,
/// and the terminal report (always the worker's last).
fn coalesce(batch: Vec<TaskReport>) -> (Option<String>, Option<Progress>, Option<TaskReport>) {
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

fn progress_line(p: &Progress) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_of_reports_fold_in_order() {
        let p = |done| {
            TaskReport::Progress(Progress {
                done,
                total: 10,
                rate: 1.0,
                message: String::new(),
            })
        };
        let fin = TaskReport::Finished {
            ok: true,
            error: None,
            summary: "exit 0".into(),
        };
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
        let l = progress_line(&Progress {
            done: 50_000_000,
            total: 200_000_000,
            rate: 12_500_000.0,
            message: "receiving".into(),
        });
        assert_eq!(l, "progress  25.0% 50.0/200.0 MB at 12.5 MB/s  receiving");
    }
}
