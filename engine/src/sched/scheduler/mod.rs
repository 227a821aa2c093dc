//! The scheduler: targets, jobs of tasks, the target state machine and the
//! cast-session planner. Sans-IO: every input carries `now` (Unix ms), every
//! output is a value (a directive, an action for the server, changes to
//! persist). The server calls it under one lock and persists
//! [`Scheduler::drain_changes`] before it answers anyone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::api::{
    CastJoin, CastPolicy, CastTransport, Directive, Environment, Inventory, JobId, JobSpec, Millis,
    SeedValues, SessionId, TargetState, TaskKind, TaskRef, TaskReport, Transport, VarsUpdate, Work,
    LOCAL_ENV,
};
use super::event::{Actor, Event, EventKind, Subject};
use super::model::{CastSession, Job, LogLine, Run, RunStatus, SessionPhase, State, Target};
use super::SchedError;
use rackcast_types::MacAddr;

mod agents;
mod logs;
mod operator;
mod power;
mod sessions;

pub use logs::LOG_MIN_COST;

/// Scheduler settings (validated by the server's config).
#[derive(Debug, Clone)]
pub struct SchedConfig {
    /// Environment of tasks that name none.
    pub default_env: String,
    /// How long a target may take to come back from a reboot (ms).
    pub boot_timeout: Millis,
    /// Default attempt timeouts (ms) per kind.
    pub create_timeout: Millis,
    /// Distribute Disk Image.
    pub distribute_timeout: Millis,
    /// Run Script.
    pub script_timeout: Millis,
    /// Multicast group of cast sessions.
    pub cast_group: std::net::Ipv4Addr,
    /// Port of the first session; session `n` uses `cast_port + n % 1000`.
    pub cast_port: u16,
    /// Grace given to every deadline when the server starts again (ms).
    pub restart_grace: Millis,
    /// Secret the session keys are derived from (random per server start).
    pub key_secret: [u8; 32],
    /// Task output kept per target, bytes/s; more is dropped (and counted).
    pub log_rate: u64,
    /// Task output a target may send at once before `log_rate` holds it back.
    pub log_burst: u64,
    /// An agent not heard from in this long is presumed gone (ms): a target
    /// with a BMC and work is then booted through its BMC.
    pub agent_silence: Millis,
    /// Network boots through the BMC per wait before the target is failed.
    pub power_tries: u32,
    /// Wait after a failed BMC call before the next (ms), doubled each try.
    pub power_backoff: Millis,
    /// A power change seen within this long of rackcast's own power action
    /// is expected (ms).
    pub power_expect: Millis,
    /// Seconds of silence from its cast session after which a receiver
    /// fetches what it still needs by unicast (HTTP range requests from the
    /// server); `None`: never.
    pub unicast_after: Option<u32>,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            default_env: "linux-x64".into(),
            boot_timeout: 15 * 60_000,
            create_timeout: 4 * 3_600_000,
            distribute_timeout: 4 * 3_600_000,
            script_timeout: 3_600_000,
            cast_group: std::net::Ipv4Addr::new(239, 255, 42, 1),
            cast_port: 7400,
            restart_grace: 120_000,
            key_secret: [7; 32],
            log_rate: 16 * 1024,
            log_burst: 1 << 20,
            agent_silence: 120_000,
            power_tries: 3,
            power_backoff: 10_000,
            power_expect: 120_000,
            unicast_after: Some(5),
        }
    }
}

/// Something the server must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start multicasting `session`'s image.
    StartSender {
        /// The session (see [`Scheduler::session`]).
        session: SessionId,
        /// Targets that joined before the start: the sender waits for them.
        receivers: usize,
        /// Rate ceiling, bytes/s (None: the server's).
        rate: Option<u64>,
    },
    /// Ask `mac`'s BMC for `plan`, then report with [`Scheduler::power_done`].
    Power {
        /// The target.
        mac: MacAddr,
        /// What to ask.
        plan: PowerPlan,
    },
}

/// What the scheduler asks of a target's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerPlan {
    /// A one-time network boot, then power on (or a cycle when on).
    Netboot,
    /// A one-time boot from the local disk (the agent reboots it).
    Disk,
    /// A one-time boot from the local disk, then power on or a cycle: the
    /// agent's own reboot came back to the network instead.
    DiskCycle,
    /// A job's power task.
    Task(rackcast_types::PowerOp),
}

/// Longest a power task waits for its BMC (ms), unless the task says.
const POWER_TASK_TIMEOUT: Millis = 5 * 60_000;

impl PowerPlan {
    /// The word events use.
    pub fn word(self) -> &'static str {
        match self {
            PowerPlan::Netboot => "netboot",
            PowerPlan::Disk => "disk",
            PowerPlan::DiskCycle => "disk-cycle",
            PowerPlan::Task(op) => op.word(),
        }
    }
}

/// A row to persist (the current value) or an event to append.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Upsert a target.
    Target(Target),
    /// Upsert a job, with all its runs (submitted, cancelled, retried).
    Job(Job),
    /// Upsert one run of a job: a target's progress through it rewrites
    /// that run, not the whole job (whose size grows with its targets).
    Run {
        /// The job.
        job: JobId,
        /// The run's place in the job (the spec's target order).
        index: usize,
        /// The job's status with this run as it is now.
        status: &'static str,
        /// The run.
        run: Run,
    },
    /// Upsert a cast session.
    Session(CastSession),
    /// Upsert an environment.
    Environment(Environment),
    /// Append an event (seq > 0) or broadcast a transient one (seq 0: progress).
    Event(Event),
    /// Append output to a job's log (the job's row is not rewritten for it).
    Log(LogLine),
}

/// What a MAC should boot, for the netboot policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// No pending work (or unknown): its own disk.
    Local,
    /// Pending work in this environment.
    Env(String),
    /// No work, and its one-time disk boot did not take: its network boot
    /// waits while its BMC cycles it into its disk (until this Unix ms;
    /// after that, its disk as for `Local`).
    HoldForDisk {
        /// Unix ms.
        until: Millis,
    },
}

/// The scheduler. See the module doc.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    targets: BTreeMap<MacAddr, Target>,
    jobs: BTreeMap<JobId, Job>,
    sessions: BTreeMap<SessionId, CastSession>,
    environments: BTreeMap<String, Environment>,
    image_roots: BTreeMap<String, String>,
    next_job: JobId,
    next_session: SessionId,
    last_seq: u64,
    last_log: u64,
    dirty_targets: BTreeSet<MacAddr>,
    dirty_jobs: BTreeSet<JobId>,
    /// Runs changed alone (their job is written whole only when it is in
    /// `dirty_jobs`).
    dirty_runs: BTreeSet<(JobId, MacAddr)>,
    dirty_sessions: BTreeSet<SessionId>,
    dirty_envs: BTreeSet<String>,
    events: Vec<Event>,
    logs: Vec<LogLine>,
    /// Each target's output budget (see `logs`).
    log_buckets: BTreeMap<MacAddr, logs::LogBucket>,
    actions: VecDeque<Action>,
}

/// A name usable for images and environments: `[A-Za-z0-9._-]`, 1..=64, not
/// starting with a dot.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The receiver id a target uses in every cast session.
pub fn receiver_id(mac: MacAddr) -> u64 {
    let h = blake3::hash(mac.to_string().as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

impl Scheduler {
    /// A scheduler over persisted `state` (empty for a new server). Sessions
    /// that were running died with the old process: they are ended, and
    /// their targets rejoin a new one. Every deadline gets the restart grace.
    pub fn new(cfg: SchedConfig, state: State, now: Millis) -> Scheduler {
        let mut s = Scheduler {
            next_job: JobId(state.jobs.iter().map(|j| j.id.0).max().unwrap_or(0) + 1),
            next_session: SessionId(state.sessions.iter().map(|j| j.id.0).max().unwrap_or(0) + 1),
            last_seq: state.last_seq,
            last_log: state.last_log,
            targets: state.targets.into_iter().map(|t| (t.mac, t)).collect(),
            jobs: state.jobs.into_iter().map(|j| (j.id, j)).collect(),
            sessions: state.sessions.into_iter().map(|x| (x.id, x)).collect(),
            environments: state
                .environments
                .into_iter()
                .map(|e| (e.name.clone(), e))
                .collect(),
            image_roots: BTreeMap::new(),
            cfg,
            dirty_targets: BTreeSet::new(),
            dirty_jobs: BTreeSet::new(),
            dirty_runs: BTreeSet::new(),
            dirty_sessions: BTreeSet::new(),
            dirty_envs: BTreeSet::new(),
            events: Vec::new(),
            logs: Vec::new(),
            log_buckets: BTreeMap::new(),
            actions: VecDeque::new(),
        };
        let live: Vec<SessionId> = s
            .sessions
            .values()
            .filter(|x| x.phase != SessionPhase::Ended)
            .map(|x| x.id)
            .collect();
        for id in live {
            s.end_session(
                now,
                id,
                Actor::Server,
                "the server restarted",
                serde_json::json!({}),
            );
        }
        let grace = now + s.cfg.restart_grace;
        for t in s.targets.values_mut() {
            match &mut t.state {
                TargetState::RebootingTo { deadline, .. }
                | TargetState::Running { deadline, .. }
                    if *deadline < grace =>
                {
                    *deadline = grace;
                    s.dirty_targets.insert(t.mac);
                }
                _ => {}
            }
        }
        s
    }

    // ------------------------------------------------------------ views

    /// Every target.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// One target.
    pub fn target(&self, mac: MacAddr) -> Option<&Target> {
        self.targets.get(&mac)
    }

    /// Every job.
    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// One cast session.
    pub fn session(&self, id: SessionId) -> Option<&CastSession> {
        self.sessions.get(&id)
    }

    /// Every cast session, newest last.
    pub fn sessions(&self) -> impl Iterator<Item = &CastSession> {
        self.sessions.values()
    }

    /// The sequence number of the last stored event (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Every environment.
    pub fn environments(&self) -> impl Iterator<Item = &Environment> {
        self.environments.values()
    }

    /// One environment.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.get(name)
    }

    /// What `mac` should boot now: its pending work's environment, or its disk.
    pub fn boot_choice(&self, mac: MacAddr) -> BootChoice {
        let Some(t) = self.targets.get(&mac) else {
            return BootChoice::Local;
        };
        match &t.state {
            TargetState::RebootingTo { env, .. } if env != LOCAL_ENV => {
                return BootChoice::Env(env.clone())
            }
            TargetState::Failed { .. } => return BootChoice::Local,
            _ => {}
        }
        match self.current(mac) {
            Some((job, run)) => {
                let spec = &job.spec.tasks[run.task as usize];
                let env = match &spec.kind {
                    TaskKind::Reboot { to } if to != LOCAL_ENV => to.clone(),
                    _ => self.task_env(spec),
                };
                BootChoice::Env(env)
            }
            None if t.state == TargetState::Local && t.disk_until > 0 && t.bmc.is_some() => {
                BootChoice::HoldForDisk {
                    until: t.disk_until,
                }
            }
            None => BootChoice::Local,
        }
    }

    /// The task `mac` would boot for now (job, task index): what a boot
    /// token is bound to, so it cannot register for other work.
    pub fn pending_task(&self, mac: MacAddr) -> Option<(JobId, u32)> {
        self.current(mac).map(|(j, r)| (j.id, r.task))
    }

    // ------------------------------------------------------------ agents

    /// Deadlines: reboots that never came back, attempts that ran too long,
    /// cast sessions whose start time came.
    pub fn handle_timeout(&mut self, now: Millis) {
        let expired: Vec<(MacAddr, String)> = self
            .targets
            .values()
            .filter_map(|t| match &t.state {
                TargetState::RebootingTo { env, deadline } if *deadline <= now => Some((
                    t.mac,
                    format!(
                        "did not come back in environment {env} within {} s of the reboot",
                        self.cfg.boot_timeout / 1000
                    ),
                )),
                TargetState::Running { deadline, .. } if *deadline <= now => {
                    Some((t.mac, "timed out".to_string()))
                }
                _ => None,
            })
            .collect();
        for (mac, why) in expired {
            if self.power_retry(now, mac) {
                continue;
            }
            let why = match self.power_gave_up(mac) {
                Some(more) => format!("{why}, {more}"),
                None => why,
            };
            self.fail_attempt(now, mac, &why);
        }
        let with_bmc: Vec<MacAddr> = self
            .targets
            .values()
            .filter(|t| t.bmc.is_some())
            .map(|t| t.mac)
            .collect();
        for mac in with_bmc {
            self.wake(now, mac);
        }
        self.plan(now);
    }

    /// When [`Scheduler::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let t = self.targets.values().filter_map(|t| match &t.state {
            TargetState::RebootingTo { deadline, .. } | TargetState::Running { deadline, .. } => {
                Some(*deadline)
            }
            _ => None,
        });
        let s = self.sessions.values().filter_map(|s| match s.phase {
            SessionPhase::Forming { first_join } => {
                let a = s.policy.max_wait.map(|w| first_join + w * 1000);
                let b = s.policy.start_at.map(|t| t * 1000);
                match (a, b) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        });
        t.chain(s).min()
    }

    /// The next thing the server must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Everything changed since the last call, to persist (and broadcast)
    /// before answering.
    pub fn drain_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        for m in std::mem::take(&mut self.dirty_targets) {
            if let Some(t) = self.targets.get(&m) {
                out.push(Change::Target(t.clone()));
            }
        }
        let whole = std::mem::take(&mut self.dirty_jobs);
        for id in &whole {
            if let Some(j) = self.jobs.get(id) {
                out.push(Change::Job(j.clone()));
            }
        }
        for (id, mac) in std::mem::take(&mut self.dirty_runs) {
            let Some(j) = self.jobs.get(&id).filter(|_| !whole.contains(&id)) else {
                continue;
            };
            if let Some(index) = j.runs.iter().position(|r| r.mac == mac) {
                out.push(Change::Run {
                    job: id,
                    index,
                    status: j.status(),
                    run: j.runs[index].clone(),
                });
            }
        }
        for id in std::mem::take(&mut self.dirty_sessions) {
            if let Some(s) = self.sessions.get(&id) {
                out.push(Change::Session(s.clone()));
            }
        }
        for n in std::mem::take(&mut self.dirty_envs) {
            if let Some(e) = self.environments.get(&n) {
                out.push(Change::Environment(e.clone()));
            }
        }
        out.extend(self.events.drain(..).map(Change::Event));
        out.extend(self.logs.drain(..).map(Change::Log));
        out
    }

    // ------------------------------------------------------------ internals

    fn check_env(&self, env: &str) -> Result<(), String> {
        if env == self.cfg.default_env || self.environments.contains_key(env) {
            Ok(())
        } else {
            Err(format!("unknown environment {env:?}"))
        }
    }

    fn task_env(&self, spec: &super::api::TaskSpec) -> String {
        spec.env
            .clone()
            .unwrap_or_else(|| self.cfg.default_env.clone())
    }

    /// The first job in `mac`'s queue that still has work for it.
    fn current(&self, mac: MacAddr) -> Option<(&Job, &Run)> {
        let t = self.targets.get(&mac)?;
        t.queue.iter().find_map(|id| {
            let j = self.jobs.get(id)?;
            let r = j.run(mac)?;
            (!r.status.is_final()).then_some((j, r))
        })
    }

    fn resumable(&self, job: JobId, task: u32) -> bool {
        self.jobs
            .get(&job)
            .and_then(|j| j.spec.tasks.get(task as usize))
            .is_some_and(|t| matches!(t.kind, TaskKind::Distribute { .. }))
    }

    fn timeout_for(&self, spec: &super::api::TaskSpec) -> Millis {
        spec.timeout.map(|s| s * 1000).unwrap_or(match spec.kind {
            TaskKind::Create { .. } => self.cfg.create_timeout,
            TaskKind::Distribute { .. } => self.cfg.distribute_timeout,
            TaskKind::Script { .. } => self.cfg.script_timeout,
            TaskKind::Reboot { .. } => self.cfg.boot_timeout,
            TaskKind::Power { .. } => POWER_TASK_TIMEOUT,
        })
    }

    /// A waiting target: start its next task, or send it where it must be.
    fn next_work(&mut self, now: Millis, mac: MacAddr) -> Directive {
        let Some((job, run)) = self.current(mac) else {
            let t = self.targets.get(&mac).expect("target exists");
            // A target that ran work and has none left boots its disk; one
            // that never had any just waits for some.
            if t.queue.is_empty() && !self.jobs.values().any(|j| j.run(mac).is_some()) {
                return Directive::Wait;
            }
            if self.targets.get(&mac).map(|t| &t.state) != Some(&TargetState::Local) {
                self.boot_disk(now, mac);
            }
            self.set_state(now, mac, TargetState::Local, Actor::Scheduler);
            return Directive::BootLocal;
        };
        let (job_id, task, attempt) = (job.id, run.task, run.attempt);
        let spec = job.spec.tasks[task as usize].clone();
        let r = TaskRef {
            job: job_id,
            task,
            attempt,
        };
        let here = self
            .targets
            .get(&mac)
            .map(|t| t.env.clone())
            .unwrap_or_default();
        if let TaskKind::Power { .. } = &spec.kind {
            self.start_power_task(now, mac);
            return Directive::Wait;
        }
        if let TaskKind::Reboot { to } = &spec.kind {
            self.start_run(now, mac, r, now + self.timeout_for(&spec));
            return Directive::Reboot {
                env: to.clone(),
                task: Some(r),
            };
        }
        let want = self.task_env(&spec);
        if want != here {
            let deadline = now + self.cfg.boot_timeout;
            self.set_state(
                now,
                mac,
                TargetState::RebootingTo {
                    env: want.clone(),
                    deadline,
                },
                Actor::Scheduler,
            );
            return Directive::Reboot {
                env: want,
                task: None,
            };
        }
        self.start_run(now, mac, r, now + self.timeout_for(&spec));
        self.dispatch(now, mac, r)
    }

    /// `mac` is now running `r` until `deadline`.
    fn start_run(&mut self, now: Millis, mac: MacAddr, r: TaskRef, deadline: Millis) {
        let st = TargetState::Running {
            job: r.job,
            task: r.task,
            attempt: r.attempt,
            deadline,
        };
        self.set_state(now, mac, st, Actor::Scheduler);
        self.set_run(r.job, mac, RunStatus::Running);
    }

    /// What a NoCloud template names, for `mac` in `job`: its name (else
    /// the hostname its agent reported, else `rackcast-` and the MAC with
    /// dashes), and the IPv4 address its agent reported on the NIC with
    /// that MAC.
    fn seed_values(&self, mac: MacAddr, job: JobId) -> SeedValues {
        let t = self.targets.get(&mac);
        let hostname = [t.map(|t| &t.name), t.map(|t| &t.inventory.hostname)]
            .into_iter()
            .flatten()
            .find(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("rackcast-{}", mac.to_string().replace(':', "-")));
        let ip = t
            .and_then(|t| {
                t.inventory
                    .nics
                    .iter()
                    .find(|n| n.mac.eq_ignore_ascii_case(&mac.to_string()))
            })
            .and_then(|n| n.ipv4.first())
            .map_or(String::new(), |a| {
                a.split('/').next().unwrap_or("").to_string()
            });
        SeedValues {
            hostname,
            mac,
            ip,
            job,
            vars: t.map(|t| t.vars.clone()).unwrap_or_default(),
        }
    }

    /// The directive for a running task (first dispatch or again).
    fn dispatch(&mut self, now: Millis, mac: MacAddr, r: TaskRef) -> Directive {
        let Some(job) = self.jobs.get(&r.job) else {
            return Directive::Wait;
        };
        let spec = job.spec.tasks[r.task as usize].clone();
        let timeout = self.timeout_for(&spec) / 1000;
        let policy = job.spec.cast.clone();
        let work = match spec.kind {
            TaskKind::Create { image, disk } => Work::Create { image, disk },
            TaskKind::Script {
                script,
                interpreter,
                expect_exit,
            } => Work::Script {
                script,
                interpreter: interpreter.unwrap_or_else(|| "/bin/sh".into()),
                expect_exit,
            },
            TaskKind::Reboot { to } => {
                return Directive::Reboot {
                    env: to,
                    task: Some(r),
                }
            }
            // The server runs it through the BMC; the agent waits.
            TaskKind::Power { .. } => return Directive::Wait,
            TaskKind::Distribute {
                image,
                disk,
                verify,
                unused,
                grow,
                cloud_init,
            } => {
                let seed = cloud_init.map(|c| Box::new(c.render(&self.seed_values(mac, r.job))));
                let Some(root) = self
                    .jobs
                    .get(&r.job)
                    .and_then(|j| j.pinned.get(&image))
                    .or_else(|| self.image_roots.get(&image))
                    .cloned()
                else {
                    return Directive::Wait;
                };
                // Unicast only: no session, no sender; the target fetches
                // the image from the server at once.
                if policy.transport == CastTransport::Unicast {
                    return Directive::Run {
                        task: r,
                        work: Work::Distribute {
                            image,
                            root,
                            disk,
                            verify,
                            unused,
                            grow,
                            seed,
                            cast: CastJoin::unicast(receiver_id(mac)),
                        },
                        timeout,
                    };
                }
                let Some(sid) = self.join_session(now, mac, &image, &root, r.job, &policy) else {
                    return Directive::Wait;
                };
                // This target may be the one that fills the session.
                self.plan(now);
                let s = &self.sessions[&sid];
                match s.phase {
                    SessionPhase::Running { .. } => Work::Distribute {
                        image,
                        root: s.root.clone(),
                        disk,
                        verify,
                        unused,
                        grow,
                        seed,
                        cast: CastJoin {
                            group: s.group.clone(),
                            key: s.key.clone(),
                            session: s.wire_session,
                            receiver: receiver_id(mac),
                            unicast_after: self.cfg.unicast_after,
                        },
                    },
                    _ => return Directive::Wait,
                }
            }
        };
        Directive::Run {
            task: r,
            work,
            timeout,
        }
    }

    fn mark_started(&mut self, now: Millis, mac: MacAddr, r: TaskRef) {
        let started = self
            .jobs
            .get(&r.job)
            .and_then(|j| j.run(mac))
            .is_some_and(|r| r.started);
        if !started {
            let _ = self.report(now, mac, r, TaskReport::Started);
        }
    }

    fn set_run(&mut self, job: JobId, mac: MacAddr, st: RunStatus) {
        if let Some(run) = self.jobs.get_mut(&job).and_then(|j| j.run_mut(mac)) {
            if run.status != st {
                run.status = st;
                self.dirty_runs.insert((job, mac));
            }
        }
    }

    fn task_done(&mut self, now: Millis, mac: MacAddr, r: TaskRef, summary: &str) {
        if !summary.is_empty() {
            self.append_log(
                now,
                mac,
                r.job,
                r.task,
                &format!("task {}: {summary}\n", r.task + 1),
            );
        }
        let Some(job) = self.jobs.get_mut(&r.job) else {
            return;
        };
        let ntasks = job.spec.tasks.len() as u32;
        let kind = job.spec.tasks[r.task as usize].kind.clone();
        let Some(run) = job.run_mut(mac) else { return };
        run.task += 1;
        run.attempt = 1;
        run.started = false;
        run.progress = None;
        let finished = run.task >= ntasks;
        if finished {
            run.status = RunStatus::Done;
        } else {
            run.status = RunStatus::Queued;
        }
        let status = job.status();
        self.dirty_runs.insert((r.job, mac));
        self.event(
            now,
            Actor::Agent,
            Subject::task(mac, r.job, r.task),
            EventKind::TaskFinished {
                attempt: r.attempt,
                ok: true,
                summary: summary.to_string(),
            },
        );
        if let TaskKind::Distribute { .. } = kind {
            for s in self.sessions.values_mut() {
                if s.members.contains(&mac) && s.phase != SessionPhase::Ended {
                    s.done.insert(mac);
                    self.dirty_sessions.insert(s.id);
                }
            }
        }
        if finished {
            self.event(
                now,
                Actor::Scheduler,
                Subject::run(mac, r.job),
                EventKind::RunDone {},
            );
            if let Some(t) = self.targets.get_mut(&mac) {
                t.queue.retain(|j| *j != r.job);
                t.progress = None;
            }
            if status != "running" {
                self.event(
                    now,
                    Actor::Scheduler,
                    Subject::job(r.job),
                    EventKind::JobFinished { status },
                );
            }
        }
        let next = match kind {
            TaskKind::Reboot { to } if to == LOCAL_ENV => TargetState::Local,
            TaskKind::Reboot { to } => TargetState::RebootingTo {
                env: to,
                deadline: now + self.cfg.boot_timeout,
            },
            _ => idle_state(self.targets.get(&mac).expect("target exists")),
        };
        self.set_state(now, mac, next, Actor::Agent);
    }

    fn fail_attempt(&mut self, now: Millis, mac: MacAddr, error: &str) {
        self.leave_sessions(mac);
        let Some((job, run)) = self.current(mac) else {
            let st = idle_state(self.targets.get(&mac).expect("target exists"));
            self.set_state(now, mac, st, Actor::Scheduler);
            return;
        };
        let (id, task, attempt) = (job.id, run.task, run.attempt);
        let retries = job.spec.tasks[task as usize].retries;
        let run = self
            .jobs
            .get_mut(&id)
            .and_then(|j| j.run_mut(mac))
            .expect("current run exists");
        run.error = Some(error.to_string());
        run.started = false;
        run.progress = None;
        self.dirty_runs.insert((id, mac));
        if attempt <= retries {
            run.attempt += 1;
            run.status = RunStatus::Queued;
            self.event(
                now,
                Actor::Scheduler,
                Subject::task(mac, id, task),
                EventKind::TaskRetry {
                    attempt,
                    error: error.to_string(),
                    next: attempt + 1,
                },
            );
            let st = idle_state(self.targets.get(&mac).expect("target exists"));
            self.set_state(now, mac, st, Actor::Scheduler);
        } else {
            run.status = RunStatus::Failed;
            self.event(
                now,
                Actor::Scheduler,
                Subject::task(mac, id, task),
                EventKind::TaskFailed {
                    attempt,
                    error: error.to_string(),
                },
            );
            let status = self.jobs[&id].status();
            if status != "running" {
                self.event(
                    now,
                    Actor::Scheduler,
                    Subject::job(id),
                    EventKind::JobFinished { status },
                );
            }
            self.set_state(
                now,
                mac,
                TargetState::Failed {
                    job: id,
                    task,
                    error: error.to_string(),
                },
                Actor::Scheduler,
            );
        }
        if let Some(t) = self.targets.get_mut(&mac) {
            t.progress = None;
        }
    }

    fn set_state(&mut self, now: Millis, mac: MacAddr, st: TargetState, actor: Actor) {
        let Some(t) = self.targets.get_mut(&mac) else {
            return;
        };
        if t.state == st {
            return;
        }
        let from = t.state.word();
        t.state = st.clone();
        self.dirty_targets.insert(mac);
        let (job, task) = match &st {
            TargetState::Running { job, task, .. } | TargetState::Failed { job, task, .. } => {
                (Some(*job), Some(*task))
            }
            // A reboot or wait on the way to a job's next task belongs to that job.
            _ => self
                .current(mac)
                .map_or((None, None), |(j, r)| (Some(j.id), Some(r.task))),
        };
        let about = Subject {
            target: Some(mac),
            job,
            task,
        };
        self.event(
            now,
            actor,
            about,
            EventKind::TargetState { from, state: st },
        );
    }

    /// Appends an event to the log (the next sequence number).
    fn event(&mut self, now: Millis, actor: Actor, about: Subject, what: EventKind) {
        self.last_seq += 1;
        self.events.push(Event {
            seq: self.last_seq,
            at: now,
            actor,
            about,
            what,
        });
    }

    /// A transient event of `mac`'s run `r` (progress, output): broadcast
    /// to watchers, never stored.
    fn transient(&mut self, now: Millis, mac: MacAddr, r: TaskRef, what: EventKind) {
        self.events.push(Event {
            seq: 0,
            at: now,
            actor: Actor::Agent,
            about: Subject::task(mac, r.job, r.task),
            what,
        });
    }

    /// The agent is where it was sent: the job goes on.
    fn arrived(&mut self, now: Millis, mac: MacAddr) {
        let env = self
            .targets
            .get(&mac)
            .map(|t| t.env.clone())
            .unwrap_or_default();
        self.set_state(now, mac, idle_state_env(&env), Actor::Agent);
    }
}

fn idle_state(t: &Target) -> TargetState {
    if !t.registered {
        TargetState::Unknown
    } else {
        idle_state_env(&t.env)
    }
}

fn idle_state_env(env: &str) -> TargetState {
    TargetState::Waiting {
        env: env.to_string(),
    }
}
