//! What the scheduler records: one typed [`Event`] per thing that happened.
//! It becomes the wire's [`EventRecord`] (a `kind` word and a JSON
//! `detail`) only at the boundary, in [`Event::record`], where the store
//! appends it and the API streams it.

use rackcast_types::MacAddr;
use serde::Serialize;

use super::api::{EventRecord, JobId, Millis, Progress, SessionId, TargetState};

/// Who caused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// An operator, through the API.
    Operator,
    /// A target's agent.
    Agent,
    /// The scheduler itself (deadlines, planning).
    Scheduler,
    /// The server (cast senders, restarts).
    Server,
}

impl Actor {
    /// The word the event log uses.
    pub fn word(self) -> &'static str {
        match self {
            Actor::Operator => "operator",
            Actor::Agent => "agent",
            Actor::Scheduler => "scheduler",
            Actor::Server => "server",
        }
    }
}

/// One thing that happened, with what it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Sequence number, from 1, gap-free; 0 for a transient event
    /// (progress, log lines) that is broadcast but never stored.
    pub seq: u64,
    /// Unix ms.
    pub at: Millis,
    /// Who caused it.
    pub actor: Actor,
    /// What it concerns.
    pub about: Subject,
    /// What happened.
    pub what: EventKind,
}

/// What an event concerns: a target, a job, a task of a target's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subject {
    /// The target.
    pub target: Option<MacAddr>,
    /// The job.
    pub job: Option<JobId>,
    /// The task (index in the job).
    pub task: Option<u32>,
}

impl Subject {
    /// A target alone.
    pub fn target(mac: MacAddr) -> Subject {
        Subject {
            target: Some(mac),
            ..Subject::default()
        }
    }

    /// A job alone.
    pub fn job(job: JobId) -> Subject {
        Subject {
            job: Some(job),
            ..Subject::default()
        }
    }

    /// A target's run of a job.
    pub fn run(mac: MacAddr, job: JobId) -> Subject {
        Subject {
            target: Some(mac),
            job: Some(job),
            task: None,
        }
    }

    /// One task of a target's run.
    pub fn task(mac: MacAddr, job: JobId, task: u32) -> Subject {
        Subject {
            target: Some(mac),
            job: Some(job),
            task: Some(task),
        }
    }
}

/// What happened. Each variant's fields are its `detail` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum EventKind {
    /// `agent.registered`: an agent registered from `env` (it was in `was`).
    AgentRegistered {
        /// Environment it runs in.
        env: String,
        /// Environment it was in before.
        was: String,
    },
    /// `agent.refused`: a registration was refused (a token claimed twice,
    /// another MAC's token, a live session taken over with the enrollment
    /// token). Recorded so an operator sees the attempt.
    RegistrationRefused {
        /// Why, without the token.
        reason: String,
        /// Where it came from.
        peer: String,
    },
    /// `agent.reset`: an operator dropped a target's agent session, so an
    /// agent may register for it again.
    AgentReset {},
    /// `target.bmc`: a BMC was set for a target (`addr`), or removed (`None`).
    BmcSet {
        /// The BMC's address, never its password.
        addr: Option<String>,
    },
    /// `target.power-action`: rackcast asked a target's BMC for something
    /// (`netboot`: a one-time network boot and power on or cycle; `disk`: a
    /// one-time disk boot; `on`, `off`, `cycle`, `boot-once pxe|disk`).
    PowerAction {
        /// What was asked.
        action: String,
        /// Why (a job's need, a missed deadline, an operator).
        why: String,
        /// The BMC's error, when it failed.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// `target.power`: the power state the BMC reports changed.
    PowerChanged {
        /// Before (absent: never read).
        #[serde(skip_serializing_if = "Option::is_none")]
        was: Option<super::api::PowerState>,
        /// Now.
        power: super::api::PowerState,
        /// rackcast asked for a power action shortly before; `false` means
        /// the change happened behind the server's back.
        expected: bool,
    },
    /// `target.wrong-env`: a target came up in another environment than
    /// its next task needs.
    WrongEnv {
        /// The environment the task needs.
        want: String,
        /// The one it came up in.
        got: String,
    },
    /// `target.state`: a target changed state.
    TargetState {
        /// The state's word before.
        from: &'static str,
        /// The new state.
        #[serde(flatten)]
        state: TargetState,
    },
    /// `target.added`: an operator enrolled a target.
    TargetAdded {
        /// Its name.
        name: String,
    },
    /// `target.vars`: an operator set or removed template variables (their
    /// names only: values can be long, and are the target's to show).
    TargetVars {
        /// Names set.
        set: Vec<String>,
        /// Names removed.
        unset: Vec<String>,
    },
    /// `task.started` or, for an attempt that had begun before, `task.resumed`.
    TaskStarted {
        /// The attempt, from 1.
        attempt: u32,
        /// The task kind's word.
        kind: &'static str,
        /// The agent had begun this attempt before (it restarted).
        #[serde(skip)]
        resumed: bool,
    },
    /// `task.progress` (transient).
    TaskProgress(Progress),
    /// `task.log` (transient): output of a script.
    TaskLog {
        /// The text.
        text: String,
    },
    /// `task.rejoin`: a receiver asked for a new cast session.
    TaskRejoin {
        /// Why.
        reason: String,
    },
    /// `task.stale-report`: a finished report of a run the server no longer
    /// wants (cancelled, timed out, retried).
    StaleReport {
        /// Its attempt.
        attempt: u32,
        /// Whether it succeeded.
        ok: bool,
    },
    /// `task.finished`: a task succeeded.
    TaskFinished {
        /// Its attempt.
        attempt: u32,
        /// Always true (a failure is `task.retry` or `task.failed`).
        ok: bool,
        /// The agent's summary.
        summary: String,
    },
    /// `task.retry`: an attempt failed and another follows.
    TaskRetry {
        /// The failed attempt.
        attempt: u32,
        /// Why it failed.
        error: String,
        /// The next attempt.
        next: u32,
    },
    /// `task.failed`: the last attempt failed.
    TaskFailed {
        /// The failed attempt.
        attempt: u32,
        /// Why it failed.
        error: String,
    },
    /// `run.done`: a target finished every task of a job.
    RunDone {},
    /// `job.submitted`.
    JobSubmitted {
        /// The job's name.
        name: String,
        /// How many targets.
        targets: usize,
        /// How many tasks.
        tasks: usize,
    },
    /// `job.cancelled`.
    JobCancelled {},
    /// `job.retried`: its failed targets run again.
    JobRetried {
        /// How many targets.
        targets: usize,
    },
    /// `job.finished`.
    JobFinished {
        /// `done`, `failed` or `cancelled`.
        status: &'static str,
    },
    /// `environment.put`.
    EnvironmentPut {
        /// Its name.
        name: String,
    },
    /// `image.added`.
    ImageAdded {
        /// Its name.
        name: String,
        /// Its root (hex).
        root: String,
    },
    /// `cast.forming`: a session opened for its first target.
    CastForming {
        /// The session.
        session: SessionId,
        /// The image.
        image: String,
        /// Its group and port.
        group: String,
    },
    /// `cast.started`.
    CastStarted {
        /// The session.
        session: SessionId,
        /// Targets that had joined.
        receivers: usize,
        /// Why it started now.
        why: String,
    },
    /// `cast.ended`.
    CastEnded {
        /// The session.
        session: SessionId,
        /// Why it ended.
        why: String,
        /// Targets done.
        done: usize,
        /// Targets that had joined.
        members: usize,
        /// The sender's figures (empty when it never ran).
        #[serde(flatten)]
        stats: serde_json::Map<String, serde_json::Value>,
    },
}

impl EventKind {
    /// The word on the wire and in the store.
    pub fn word(&self) -> &'static str {
        match self {
            EventKind::AgentRegistered { .. } => "agent.registered",
            EventKind::RegistrationRefused { .. } => "agent.refused",
            EventKind::AgentReset {} => "agent.reset",
            EventKind::BmcSet { .. } => "target.bmc",
            EventKind::PowerAction { .. } => "target.power-action",
            EventKind::PowerChanged { .. } => "target.power",
            EventKind::WrongEnv { .. } => "target.wrong-env",
            EventKind::TargetState { .. } => "target.state",
            EventKind::TargetAdded { .. } => "target.added",
            EventKind::TargetVars { .. } => "target.vars",
            EventKind::TaskStarted { resumed: false, .. } => "task.started",
            EventKind::TaskStarted { resumed: true, .. } => "task.resumed",
            EventKind::TaskProgress(_) => "task.progress",
            EventKind::TaskLog { .. } => "task.log",
            EventKind::TaskRejoin { .. } => "task.rejoin",
            EventKind::StaleReport { .. } => "task.stale-report",
            EventKind::TaskFinished { .. } => "task.finished",
            EventKind::TaskRetry { .. } => "task.retry",
            EventKind::TaskFailed { .. } => "task.failed",
            EventKind::RunDone {} => "run.done",
            EventKind::JobSubmitted { .. } => "job.submitted",
            EventKind::JobCancelled {} => "job.cancelled",
            EventKind::JobRetried { .. } => "job.retried",
            EventKind::JobFinished { .. } => "job.finished",
            EventKind::EnvironmentPut { .. } => "environment.put",
            EventKind::ImageAdded { .. } => "image.added",
            EventKind::CastForming { .. } => "cast.forming",
            EventKind::CastStarted { .. } => "cast.started",
            EventKind::CastEnded { .. } => "cast.ended",
        }
    }
}

impl Event {
    /// The wire form: what the store appends and the API streams.
    pub fn record(&self) -> EventRecord {
        EventRecord {
            seq: self.seq,
            at: self.at,
            actor: self.actor.word().into(),
            kind: self.what.word().into(),
            target: self.about.target,
            job: self.about.job,
            task: self.about.task,
            detail: serde_json::to_value(&self.what)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail(what: EventKind) -> (String, serde_json::Value) {
        let e = Event {
            seq: 1,
            at: 5,
            actor: Actor::Scheduler,
            about: Subject::job(JobId(3)),
            what,
        };
        let r = e.record();
        (r.kind, r.detail)
    }

    #[test]
    fn details_keep_their_wire_shape() {
        assert_eq!(
            detail(EventKind::RunDone {}),
            ("run.done".into(), serde_json::json!({}))
        );
        assert_eq!(
            detail(EventKind::TaskStarted {
                attempt: 2,
                kind: "script",
                resumed: true
            }),
            (
                "task.resumed".into(),
                serde_json::json!({"attempt": 2, "kind": "script"})
            )
        );
        let (k, d) = detail(EventKind::TargetState {
            from: "waiting",
            state: TargetState::Local,
        });
        assert_eq!(k, "target.state");
        assert_eq!(d, serde_json::json!({"from": "waiting", "state": "local"}));
        let mut stats = serde_json::Map::new();
        stats.insert("bytes".into(), 9.into());
        let (k, d) = detail(EventKind::CastEnded {
            session: SessionId(4),
            why: "the sender finished".into(),
            done: 2,
            members: 3,
            stats,
        });
        assert_eq!(k, "cast.ended");
        assert_eq!(
            d,
            serde_json::json!({"session": 4, "why": "the sender finished", "done": 2, "members": 3, "bytes": 9})
        );
    }
}
