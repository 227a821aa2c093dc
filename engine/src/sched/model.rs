//! The scheduler's entities as they are persisted: one serde value per row.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use rackcast_types::MacAddr;
use serde::{Deserialize, Serialize};

use super::api::{
    BmcSettings, CastPolicy, Environment, Inventory, JobId, JobSpec, JobView, Millis, PowerState,
    Progress, SessionId, TargetRun, TargetState, TargetView,
};

/// A machine rackcast knows, keyed by MAC.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// Identity.
    pub mac: MacAddr,
    /// Name for people.
    pub name: String,
    /// Environment its agent last registered from (`local` when none).
    pub env: String,
    /// What the agent reported.
    pub inventory: Inventory,
    /// State.
    pub state: TargetState,
    /// Unix ms the agent was last heard from.
    pub last_seen: Millis,
    /// An agent has registered for it at least once.
    #[serde(default)]
    pub registered: bool,
    /// Jobs queued or running for it, in submission order.
    pub queue: Vec<JobId>,
    /// Progress of the running task (not persisted across restarts).
    #[serde(skip)]
    pub progress: Option<Progress>,
    /// Its BMC, when it has one (the server keeps the password apart).
    #[serde(default)]
    pub bmc: Option<BmcSettings>,
    /// Power as its BMC last reported it.
    #[serde(default)]
    pub power: Option<PowerState>,
    /// The BMC's last error, until a call succeeds again.
    #[serde(default)]
    pub bmc_error: Option<String>,
    /// Network boots the scheduler asked of the BMC for the current wait
    /// (reset when the agent registers).
    #[serde(default)]
    pub power_tries: u32,
    /// Unix ms the scheduler last asked the BMC for a network boot: a power
    /// change the poller sees soon after is expected, a later one happened
    /// behind rackcast's back.
    #[serde(default)]
    pub power_asked: Millis,
    /// Unix ms until which a network boot of this target means the
    /// one-time disk boot its BMC was given did not take (0: none due).
    #[serde(default)]
    pub disk_until: Millis,
    /// The operator's variables for job templates (`{rack}` in a job's
    /// cloud-init user data): see [`super::template`].
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

impl Target {
    /// A target known by MAC only.
    pub fn new(mac: MacAddr) -> Target {
        Target {
            mac,
            name: String::new(),
            env: super::api::LOCAL_ENV.to_string(),
            inventory: Inventory::default(),
            state: TargetState::Unknown,
            last_seen: 0,
            registered: false,
            queue: Vec::new(),
            progress: None,
            bmc: None,
            power: None,
            bmc_error: None,
            power_tries: 0,
            power_asked: 0,
            disk_until: 0,
            vars: BTreeMap::new(),
        }
    }

    /// The operator's view.
    pub fn view(&self) -> TargetView {
        TargetView {
            mac: self.mac,
            name: self.name.clone(),
            state: self.state.clone(),
            environment: self.env.clone(),
            inventory: self.inventory.clone(),
            last_seen: self.last_seen,
            progress: self.progress.clone(),
            jobs: self.queue.clone(),
            bmc: self.bmc.clone(),
            power: self.power,
            bmc_error: self.bmc_error.clone(),
            vars: self.vars.clone(),
        }
    }
}

/// Where one target is in one job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Not started, or between tasks.
    Queued,
    /// A task is dispatched.
    Running,
    /// Every task succeeded.
    Done,
    /// A task failed with no retries left.
    Failed,
    /// The operator cancelled the job.
    Cancelled,
}

impl RunStatus {
    /// The word used in views.
    pub fn word(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Done, failed or cancelled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Done | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// One target's run of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// Target MAC.
    pub mac: MacAddr,
    /// Status.
    pub status: RunStatus,
    /// Current task index (= number of tasks when done).
    pub task: u32,
    /// Attempt of the current task, from 1.
    pub attempt: u32,
    /// The agent has acknowledged the current attempt (it began).
    pub started: bool,
    /// Last error.
    pub error: Option<String>,
    /// Tail of the output of the job's tasks, kept in memory for the
    /// views. Never written with the job row: every line is appended to
    /// the store's log as a [`LogLine`] and the tail is rebuilt from there
    /// at start (older rows that still carry one are read).
    #[serde(default, skip_serializing)]
    pub log: String,
    /// Progress (not persisted).
    #[serde(skip)]
    pub progress: Option<Progress>,
}

/// Most bytes of task output kept per run.
pub const LOG_TAIL: usize = 64 * 1024;

impl Run {
    /// Appends output, keeping the last [`LOG_TAIL`] bytes.
    pub fn append_log(&mut self, text: &str) {
        self.log.push_str(text);
        keep_log_tail(&mut self.log);
    }
}

/// Cuts `log` to its last [`LOG_TAIL`] bytes (at a character boundary).
pub fn keep_log_tail(log: &mut String) {
    if log.len() > LOG_TAIL {
        let mut cut = log.len() - LOG_TAIL;
        while !log.is_char_boundary(cut) {
            cut += 1;
        }
        log.drain(..cut);
    }
}

/// Output of one target's run of a job, appended to the store's job log
/// as it arrives (the job row is not rewritten for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Order of appends, server-wide, from 1.
    pub seq: u64,
    /// The job.
    pub job: JobId,
    /// The target.
    pub mac: MacAddr,
    /// Task index.
    pub task: u32,
    /// Unix ms.
    pub at: Millis,
    /// The text (one or more lines).
    pub text: String,
}

/// A job: its spec and one run per target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// As submitted.
    pub spec: JobSpec,
    /// Unix ms.
    pub created: Millis,
    /// Per target, in the spec's order.
    pub runs: Vec<Run>,
    /// The root (hex) each image it distributes had when it was submitted:
    /// a later upload under the same name changes nothing this job sends.
    #[serde(default)]
    pub pinned: BTreeMap<String, String>,
}

impl Job {
    /// `running`, `done`, `failed` or `cancelled`.
    pub fn status(&self) -> &'static str {
        if self.runs.iter().any(|r| !r.status.is_final()) {
            "running"
        } else if self.runs.iter().all(|r| r.status == RunStatus::Done) {
            "done"
        } else if self.runs.iter().any(|r| r.status == RunStatus::Failed) {
            "failed"
        } else {
            "cancelled"
        }
    }

    /// The job without its runs: what the store keeps in the job's own
    /// row (each run has a row of its own, rewritten alone).
    pub fn without_runs(&self) -> Job {
        Job {
            id: self.id,
            spec: self.spec.clone(),
            created: self.created,
            runs: Vec::new(),
            pinned: self.pinned.clone(),
        }
    }

    /// The run of `mac`.
    pub fn run(&self, mac: MacAddr) -> Option<&Run> {
        self.runs.iter().find(|r| r.mac == mac)
    }

    /// The run of `mac`, mutable.
    pub fn run_mut(&mut self, mac: MacAddr) -> Option<&mut Run> {
        self.runs.iter_mut().find(|r| r.mac == mac)
    }

    /// The operator's view.
    pub fn view(&self) -> JobView {
        JobView {
            id: self.id,
            name: self.spec.name.clone(),
            status: self.status().to_string(),
            spec: self.spec.clone(),
            targets: self
                .runs
                .iter()
                .map(|r| TargetRun {
                    mac: r.mac,
                    status: r.status.word().to_string(),
                    task: r.task,
                    attempt: r.attempt,
                    error: r.error.clone(),
                    progress: r.progress.clone(),
                    log: r.log.clone(),
                })
                .collect(),
            created: self.created,
        }
    }
}

/// Where a cast session is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum SessionPhase {
    /// Collecting targets; starts at the policy's first condition.
    Forming {
        /// Unix ms the first target joined.
        first_join: Millis,
    },
    /// The sender runs; late joiners join the carousel.
    Running {
        /// Unix ms.
        started: Millis,
    },
    /// Over (finished, or interrupted by a server restart).
    Ended,
}

/// One multicast session of one image to a group of targets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CastSession {
    /// Id (also picks the port).
    pub id: SessionId,
    /// Image name.
    pub image: String,
    /// Image root (hex).
    pub root: String,
    /// Group and port.
    pub group: String,
    /// Packet MAC key (hex).
    pub key: String,
    /// Wire session id.
    pub wire_session: u64,
    /// Phase.
    pub phase: SessionPhase,
    /// The start policy (from the job that opened it).
    pub policy: CastPolicy,
    /// The job that opened it.
    pub job: JobId,
    /// Targets that joined.
    pub members: BTreeSet<MacAddr>,
    /// Targets that finished in it.
    pub done: BTreeSet<MacAddr>,
}

/// What the scheduler keeps; loaded from the store at start.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Targets.
    pub targets: Vec<Target>,
    /// Jobs.
    pub jobs: Vec<Job>,
    /// Cast sessions.
    pub sessions: Vec<CastSession>,
    /// Environments.
    pub environments: Vec<Environment>,
    /// The last event sequence number written.
    pub last_seq: u64,
    /// The last job log sequence number written.
    pub last_log: u64,
}
