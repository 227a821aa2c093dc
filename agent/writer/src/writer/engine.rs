//! The I/O engine interface the writer drives, and the positioned-write
//! (pwrite) engine used where io_uring is disabled or fails to set up.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::buffer::AlignedBuf;

/// Which engine a writer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring with O_DIRECT, registered file and (where memlock allows)
    /// registered buffers.
    Uring {
        /// Whether the chunk buffers are registered with the ring.
        registered_buffers: bool,
    },
    /// Positioned writes (O_DIRECT), one at a time.
    Sync,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineKind::Uring {
                registered_buffers: true,
            } => f.write_str("io_uring (registered buffers)"),
            EngineKind::Uring {
                registered_buffers: false,
            } => f.write_str("io_uring"),
            EngineKind::Sync => f.write_str("sync pwrite"),
        }
    }
}

/// One write out of a chunk's buffer: `buf[buf_off..buf_off + len]` goes to
/// `disk_off`. Offsets and length are aligned for O_DIRECT by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteOp {
    pub buf_off: usize,
    pub disk_off: u64,
    pub len: usize,
}

/// A submission whose writes have all finished (or one failed).
#[derive(Debug)]
pub(crate) struct Completed {
    pub tag: u64,
    pub buf: AlignedBuf,
    pub result: Result<(), (WriteOp, io::Error)>,
}

/// What the writer needs from an engine. A submission is one buffer and the
/// writes out of it; the engine owns the buffer until the submission
/// completes, so memory under an in-flight write can never be reused.
pub(crate) trait Engine: Send {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;
    /// Starts the writes of `ops` out of `buf`; completion is reported by
    /// [`Engine::reap`] under `tag`.
    fn submit(&mut self, tag: u64, buf: AlignedBuf, ops: Vec<WriteOp>) -> io::Result<()>;
    /// Moves finished submissions to `out`, in whatever order they finished.
    /// With `wait`, blocks until at least one finishes (if any is in flight).
    fn reap(&mut self, wait: bool, out: &mut Vec<Completed>) -> io::Result<()>;
    /// Submissions not yet reaped.
    fn in_flight(&self) -> usize;
}

/// Positioned writes on the caller's thread: every submission is complete
/// when `submit` returns. The reference the ring is measured against.
#[derive(Debug)]
pub(crate) struct SyncEngine {
    file: File,
    done: VecDeque<Completed>,
}

impl SyncEngine {
    pub fn new(file: File) -> SyncEngine {
        SyncEngine {
            file,
            done: VecDeque::new(),
        }
    }
}

impl Engine for SyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }

    fn submit(&mut self, tag: u64, buf: AlignedBuf, ops: Vec<WriteOp>) -> io::Result<()> {
        let data = buf.as_slice();
        let mut result = Ok(());
        for op in ops {
            // write_all_at retries short writes and EINTR.
            if let Err(e) = self
                .file
                .write_all_at(&data[op.buf_off..op.buf_off + op.len], op.disk_off)
            {
                result = Err((op, e));
                break;
            }
        }
        self.done.push_back(Completed { tag, buf, result });
        Ok(())
    }

    fn reap(&mut self, _wait: bool, out: &mut Vec<Completed>) -> io::Result<()> {
        out.extend(self.done.drain(..));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
