//! rackcast agent: the target side of an imaging job.
//!
//! - [`control`]: the control loop `rackcast agent` runs: register with the
//!   deployment server, follow its directives (run a script, capture and
//!   upload a disk, receive a multicast image, reboot), report on them.
//! - [`receive`]: one resuming multicast receive into a file or device
//!   (shared with `rackcast cast recv`).
//! - [`writer`] and [`restore`]: the disk writer and the restore pipeline
//!   built on it: chunks are decoded and checked on a pool of threads and
//!   written with io_uring (or positioned writes where io_uring is
//!   unavailable), each at its own offset, in any order, resumable and
//!   verified.

#![deny(unsafe_code)]

pub mod control;
pub mod disk_sink;
mod error;
pub mod receive;
pub mod restore;
pub mod writer;

pub use control::{run, AgentConfig, KernelArgs, Outcome, RebootMode};
pub use disk_sink::DiskSink;
pub use error::{AgentError, Result};
pub use receive::{receive, CastReceive, CastReceived};
pub use restore::{
    find_bad_chunks, restore, verify_set, DecodePool, Decoded, RestoreConfig, RestoreReport,
    VerifyMode,
};

pub use writer::{
    AlignedBuf, BufferPool, ChunkPayload, DiskWriter, EngineChoice, EngineKind, TargetReader,
    WriteSummary, WriterConfig,
};
