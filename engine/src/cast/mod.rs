//! Reliable multicast of an image: wire format, FEC, sender and receiver
//! state machines (sans-IO), pacing and rate control.
//!
//! The protocol is described in `docs/cast-protocol.md` and in [`wire`].
//! The shell that owns the sockets is the `rackcast-cast-net` crate.

pub mod fec;
pub mod rate;
pub mod receiver;
pub mod sender;
pub mod sink;
pub mod source;
pub mod wire;

pub use fec::{ErasureCode, RaptorQ, ReedSolomon};
pub use receiver::{Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats};
pub use sender::{FrameSource, Sender, SenderConfig, SenderEvent, SenderStats, Transmit, Verdict};
pub use source::ImageFrames;
pub use wire::SessionKey;

/// A cause of any type, kept whole so a caller can still tell what it was
/// (downcast it) and print its chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the cast protocol. A variant that wraps another error keeps it
/// as its `source()`; its own text says only what failed, so a chain prints
/// each cause once.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    /// A packet that does not parse.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A packet whose MAC does not verify (wrong key, forged or damaged).
    #[error("packet failed authentication")]
    BadMac,
    /// The erasure code could not encode or decode (its own words).
    #[error("FEC: {0}")]
    Fec(String),
    /// The erasure code's library failed.
    #[error("FEC: {code}")]
    Codec {
        /// The code's name.
        code: &'static str,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// The sender could not read a frame from its image.
    #[error("reading the image")]
    Source(#[source] BoxError),
    /// A socket operation failed.
    #[error("network: {what}")]
    Net {
        /// What was being done (`send`, `poll`, `joining 239.255.42.1`).
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The receiver could not write or verify its target: the sink's error,
    /// whole (for the disk writer, a `rackcast_writer::WriterError`; see
    /// [`CastError::target_error`]).
    #[error("target")]
    Target(#[source] BoxError),
    /// No authenticated packet of the session arrived for the receive's idle
    /// limit: the sender is gone or unreachable. What was written stays.
    #[error("no packet of the session for {idle_secs} s, with {done} of {total} chunks received")]
    Stalled {
        /// The idle limit, in seconds.
        idle_secs: u64,
        /// Chunks received (or already on the target).
        done: u32,
        /// Chunks that travel.
        total: u32,
    },
    /// The receive ran out of its time limit.
    #[error("timed out after {secs}s with {done} of {total} chunks")]
    TimedOut {
        /// The limit, in seconds.
        secs: u64,
        /// Chunks received (or already on the target).
        done: u32,
        /// Chunks that travel.
        total: u32,
    },
    /// The sender ended the session before this receiver had every chunk.
    #[error("the sender ended the session with {done} of {total} chunks received")]
    EndedEarly {
        /// Chunks received (or already on the target).
        done: u32,
        /// Chunks that travel.
        total: u32,
    },
    /// The receive was abandoned by its caller (the observer asked to stop).
    #[error("the receive was abandoned")]
    Abandoned,
}

impl CastError {
    /// A socket error with what was being done.
    pub fn net(what: impl Into<String>, source: std::io::Error) -> CastError {
        CastError::Net {
            what: what.into(),
            source,
        }
    }

    /// The sink's own error behind a [`CastError::Target`].
    pub fn target_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            CastError::Target(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}
