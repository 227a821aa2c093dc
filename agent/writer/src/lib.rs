//! rackcast writer: images onto target disks, usable without the agent.
//!
//! - [`DiskWriter`]: decoded, verified chunks in any order, each at its own
//!   disk offset, written with io_uring (or positioned writes where
//!   io_uring is unavailable), resumable, durable only after a final flush.
//! - [`restore()`]: an image file onto a disk: chunks decoded and checked on
//!   a pool of threads, then written by the [`DiskWriter`]; `--delta` and
//!   read-back verification ([`verify_set`], [`find_bad_chunks`]).
//! - [`DiskSink`] and [`receive()`]: the same writer behind the cast
//!   protocol's `ChunkSink`, and one resuming multicast receive into a file
//!   or device (used by `rackcast cast recv` and the agent's Distribute Disk
//!   Image task).

#![deny(unsafe_code)]

pub mod disk_sink;
mod error;
pub mod layout;
pub mod receive;
pub mod restore;
pub mod seed;
pub mod unicast;
pub mod writer;

pub use disk_sink::DiskSink;
pub use error::{Result, WriterError};
pub use layout::{finish_layout, growable, LayoutOptions, LayoutReport};
pub use receive::{receive, CastReceive, CastReceived};
pub use restore::{
    find_bad_chunks, restore, verify_set, DecodePool, Decoded, RestoreConfig, RestoreReport,
    VerifyMode,
};
pub use seed::{write_seed, NoCloudSeed};
pub use writer::{
    AlignedBuf, BufferPool, ChunkPayload, DiskWriter, EngineChoice, EngineKind, TargetReader,
    UringSetupStep, WriteSummary, WriterConfig,
};
