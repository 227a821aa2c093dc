//! rackcast agent: the target side of an imaging job.
//!
//! Today this is the disk writer ([`writer`]) and the restore pipeline built
//! on it ([`restore`]): chunks are decoded and checked on a pool of threads and
//! written with io_uring (or positioned writes where io_uring is unavailable),
//! each at its own offset, in any order, resumable and verified.

#![deny(unsafe_code)]

mod error;
pub mod restore;
pub mod writer;

pub use error::{AgentError, Result};
pub use restore::{
    find_bad_chunks, restore, verify_set, DecodePool, Decoded, RestoreConfig, RestoreReport,
    VerifyMode,
};

pub use writer::{
    AlignedBuf, BufferPool, ChunkPayload, DiskWriter, EngineChoice, EngineKind, TargetReader,
    WriteSummary, WriterConfig,
};
