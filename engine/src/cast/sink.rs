//! Where a receiver puts what it gets: the [`ChunkSink`] interface, what a
//! sink reports and how much of it is read back. The target itself is
//! `rackcast_writer::DiskSink` (the io_uring disk writer), used by
//! `rackcast cast recv` and the agent.

use std::sync::Arc;

use bytes::Bytes;

use super::CastError;
use crate::image::ChunkIndex;

/// What the sink did.
#[derive(Debug, Clone, Default)]
pub struct SinkStats {
    /// Chunks found already correct on the target at the start.
    pub resumed_chunks: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Chunks read back and verified at the end.
    pub verified_chunks: u64,
}

/// How much of the target is read back after the final flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// Nothing (every chunk was still checked before it was written).
    Off,
    /// About one chunk in sixteen, plus the first and the last.
    Sample,
    /// Every chunk.
    Full,
}

/// Where a receiver puts what it gets.
pub trait ChunkSink {
    /// The index is known: prepare the target; return chunks already correct
    /// on it (resume).
    fn prepare(&mut self, index: &Arc<ChunkIndex>) -> Result<Vec<u32>, CastError>;
    /// A verified frame for `chunk`: decode and write it (and its duplicates).
    fn write(&mut self, chunk: u32, frame: Bytes) -> Result<(), CastError>;
    /// Bytes accepted but not yet durable.
    fn backlog(&self) -> u64;
    /// Everything is in: write what is left, flush, verify. Called once.
    fn finish(&mut self) -> Result<(), CastError>;
}
