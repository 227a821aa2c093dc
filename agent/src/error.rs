//! Errors of the agent's control loop: server calls, tasks, reboots. The
//! disk writer's errors ([`WriterError`]) and the cast protocol's
//! ([`CastError`]) are kept whole as causes.

use std::path::PathBuf;

use rackcast_engine::cast::CastError;
use rackcast_engine::image::ImageError;
use rackcast_writer::WriterError;

/// Everything that can go wrong running a task on a target.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Writing, reading or verifying the target failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// An image could not be read or a chunk failed its checks.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// An I/O error on the target or a state file, with what we were doing.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("opening", "flushing", ...).
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A call to the server failed (unreachable, an error answer, an
    /// answer that does not parse); [`crate::control::client::classify`]
    /// says whether retrying helps.
    #[error(transparent)]
    Api(#[from] rackcast_client::CallError),
    /// The CA certificate given to trust the server's HTTPS is unusable.
    #[error(transparent)]
    Ca(#[from] rackcast_client::CaError),
    /// The registration token was refused: retrying cannot help.
    #[error("the server at {server} refused this agent's token (HTTP {status}): {message}")]
    Enrollment {
        /// The server URL.
        server: String,
        /// 401 or 403.
        status: u16,
        /// The server's reason.
        message: String,
    },
    /// A cast receive failed (socket, authentication, target write or
    /// verification).
    #[error(transparent)]
    Cast(#[from] CastError),
    /// A program (script interpreter, efibootmgr, reboot command) could not
    /// be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Setting the one-time network boot failed.
    #[error("setting the one-time network boot: {0}")]
    BootNext(String),
    /// The reboot command returned instead of rebooting.
    #[error("reboot command `{command}` failed: {detail}")]
    Reboot {
        /// The command line.
        command: String,
        /// Its exit status and output.
        detail: String,
    },
    /// A directive could not be carried out as given (bad key, bad group
    /// address, no disk named).
    #[error("bad directive: {0}")]
    BadDirective(String),
}

impl AgentError {
    /// Wraps an I/O error with context.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AgentError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the agent.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
