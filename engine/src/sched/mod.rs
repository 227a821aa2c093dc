//! Jobs, tasks, targets and cast sessions: the scheduler (sans-IO, time as
//! an input) and the wire types of the server's APIs.
//!
//! The target state machine (every transient state has a deadline):
//!
//! ```text
//! unknown -> waiting(E) -> [task needs E'] rebooting-to(E') -> waiting(E')
//!         -> running(job, task, attempt) -> ... -> local
//!                      \-> failed (held until retry or release)
//! ```
//!
//! A task is done only when its agent reports it finished (the commit
//! point), never on a DHCP packet or a timer.

pub use rackcast_types::{ErrorChain, MacAddr, MacParseError};

pub mod api;
pub mod event;
pub mod model;
pub mod scheduler;
pub mod template;

pub use event::{Actor, Event, EventKind, Subject};
pub use model::{CastSession, Job, LogLine, Run, RunStatus, SessionPhase, State, Target};
pub use scheduler::{
    receiver_id, valid_name, Action, BootChoice, Change, PowerPlan, SchedConfig, Scheduler,
};

/// Errors of the scheduler: what an operator or agent asked for is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// Not a MAC address.
    #[error(transparent)]
    BadMac(#[from] MacParseError),
    /// A MAC rackcast does not know.
    #[error("unknown target {0}: enroll it (rackcast target add) or let its agent register")]
    UnknownTarget(MacAddr),
    /// An image not in the library.
    #[error("unknown image {0:?}: upload it first (rackcast image upload)")]
    UnknownImage(String),
    /// No such job.
    #[error("unknown job {0}")]
    UnknownJob(api::JobId),
    /// A request that does not make sense.
    #[error("{0}")]
    Invalid(String),
    /// A report that can be taken only once something else has happened
    /// (the cast sender has not yet recorded the receiver done): retry it.
    #[error("{0}")]
    NotYet(String),
}
