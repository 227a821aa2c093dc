//! The one error type of the netboot crate.

use std::path::PathBuf;

/// Everything that can go wrong in netboot, with the context needed to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A datagram could not be parsed; it is dropped and counted, never answered.
    #[error("malformed {protocol} packet: {reason}")]
    Malformed {
        /// Which protocol's parser refused it (`dhcp`, `tftp`).
        protocol: &'static str,
        /// What was wrong, for the drop counter's debug log.
        reason: String,
    },
    /// A requested path is outside the served root or not a plain relative name.
    #[error("path refused: {0:?}")]
    PathRefused(String),
    /// A requested file does not exist under the root.
    #[error("file not found: {0:?}")]
    NotFound(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be opened, bound or configured.
    #[error("socket {what}: {source}")]
    Socket {
        /// What we were doing (e.g. `bind 0.0.0.0:67 on eth0`).
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration (command line or policy file) is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The interface named to serve on cannot be used.
    #[error(transparent)]
    Interface(#[from] rackcast_types::InterfaceError),
    /// A MAC in the configuration does not parse.
    #[error(transparent)]
    Mac(#[from] rackcast_types::MacParseError),
    /// The lease state file is unreadable or corrupt.
    #[error("lease file {path}: {reason}")]
    LeaseFile {
        /// The state file.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },
}

/// Result alias of the netboot crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-packet error for `protocol`.
    pub fn malformed(protocol: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed {
            protocol,
            reason: reason.into(),
        }
    }
}
