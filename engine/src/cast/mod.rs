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

/// Errors of the cast protocol.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    /// A packet that does not parse.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A packet whose MAC does not verify (wrong key, forged or damaged).
    #[error("packet failed authentication")]
    BadMac,
    /// The erasure code could not encode or decode.
    #[error("FEC: {0}")]
    Fec(String),
    /// The sender could not read a frame from its image.
    #[error("reading the image: {0}")]
    Source(String),
    /// A socket operation failed.
    #[error("network: {0}")]
    Net(String),
    /// The receiver could not write or verify its target.
    #[error("target: {0}")]
    Target(String),
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
