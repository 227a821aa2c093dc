//! What a receiver's target reports and how much of it is read back. The
//! target itself is the agent's `DiskSink` (the io_uring disk writer behind
//! [`super::net::ChunkSink`]), used by `rackcast cast recv` and the agent.

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
