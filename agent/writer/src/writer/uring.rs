//! The io_uring engine: O_DIRECT writes with a registered file descriptor and
//! registered (fixed) buffers, any number of writes in flight up to the queue
//! depth, completions taken in any order, and a backlog for what does not fit
//! in the submission queue.
//!
//! This is one of the two modules where unsafe code is allowed: pushing a
//! submission hands the kernel raw pointers, and registering buffers pins
//! memory. Each submission's buffer is owned by a slot here until the kernel
//! has posted a completion for every write out of it.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::buffer::{AlignedBuf, BufferPool};
use super::engine::{Completed, Engine, EngineKind, WriteOp};

/// The io_uring engine.
pub(crate) struct UringEngine {
    ring: IoUring,
    // Kept open for as long as the ring refers to it by registered index.
    _file: File,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    backlog: VecDeque<(usize, usize)>,
    ops_in_ring: usize,
    depth: usize,
    submissions: usize,
    pool: Option<BufferPool>,
    done: Vec<Completed>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("depth", &self.depth)
            .field("ops_in_ring", &self.ops_in_ring)
            .field("registered_buffers", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

/// One submission: a buffer and the writes out of it.
struct Slot {
    tag: u64,
    buf: AlignedBuf,
    ops: Vec<WriteOp>,
    /// Bytes of each op already written (short writes are continued).
    written: Vec<usize>,
    pending: usize,
    error: Option<(WriteOp, io::Error)>,
}

impl UringEngine {
    /// Sets up a ring of `depth` entries on `file`, registering the file and,
    /// when `pool` is given and RLIMIT_MEMLOCK allows, the pool's buffers,
    /// then proves the ring runs a request (a NOP) before any write
    /// depends on it.
    pub fn new(
        file: File,
        depth: u32,
        pool: Option<&BufferPool>,
    ) -> Result<UringEngine, SetupError> {
        let mut ring = IoUring::builder()
            .build(depth)
            .map_err(SetupError::at(UringSetupStep::Setup))?;
        ring.submitter()
            .register_files(&[file.as_raw_fd()])
            .map_err(SetupError::at(UringSetupStep::RegisterFile))?;
        probe_nop(&mut ring).map_err(SetupError::at(UringSetupStep::Probe))?;
        let pool = pool.filter(|p| register_pool(&ring, p).is_ok()).cloned();
        Ok(UringEngine {
            ring,
            _file: file,
            slots: Vec::new(),
            free_slots: Vec::new(),
            backlog: VecDeque::new(),
            ops_in_ring: 0,
            depth: depth as usize,
            submissions: 0,
            pool,
            done: Vec::new(),
        })
    }

    /// Builds the submission entry for the rest of op `op` of slot `s`.
    fn entry(&self, s: usize, op: usize) -> squeue::Entry {
        let slot = self.slots[s].as_ref().expect("queued op has a live slot");
        let o = slot.ops[op];
        let done = slot.written[op];
        let data = &slot.buf.as_slice()[o.buf_off + done..o.buf_off + o.len];
        let ud = ((s as u64) << 32) | op as u64;
        let fixed = self
            .pool
            .as_ref()
            .filter(|p| p.owns(&slot.buf))
            .and(slot.buf.id());
        let fd = types::Fixed(0);
        let len = data.len() as u32;
        let off = o.disk_off + done as u64;
        match fixed {
            Some(id) => opcode::WriteFixed::new(fd, data.as_ptr(), len, id)
                .offset(off)
                .build()
                .user_data(ud),
            None => opcode::Write::new(fd, data.as_ptr(), len)
                .offset(off)
                .build()
                .user_data(ud),
        }
    }

    /// Moves backlog entries into the submission queue while the ring has
    /// room (submitted-but-uncompleted ops never exceed the depth, so the
    /// completion queue cannot overflow).
    fn fill_sq(&mut self) {
        while self.ops_in_ring < self.depth {
            let Some(&(s, op)) = self.backlog.front() else {
                break;
            };
            let e = self.entry(s, op);
            // SAFETY: the entry points into `slots[s].buf`, which this engine
            // owns until the completion for this op is reaped (slots are only
            // emptied in `complete_op` once `pending` reaches zero), and the
            // buffer's heap memory does not move while it is owned. The
            // registered file index 0 is `_file`, open for the ring's life.
            let pushed = unsafe { self.ring.submission().push(&e) };
            if pushed.is_err() {
                break;
            }
            self.backlog.pop_front();
            self.ops_in_ring += 1;
        }
    }

    fn complete_op(&mut self, ud: u64, res: i32) {
        let s = (ud >> 32) as usize;
        let op = (ud & 0xffff_ffff) as usize;
        self.ops_in_ring -= 1;
        let slot = self.slots[s].as_mut().expect("completion for a live slot");
        let o = slot.ops[op];
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if matches!(
                err.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                self.backlog.push_back((s, op));
                return;
            }
            slot.error.get_or_insert((o, err));
        } else if res == 0 && slot.written[op] < o.len {
            slot.error
                .get_or_insert((o, io::Error::from(io::ErrorKind::WriteZero)));
        } else {
            slot.written[op] += res as usize;
            if slot.written[op] < o.len {
                // A short write: continue where it stopped.
                self.backlog.push_back((s, op));
                return;
            }
        }
        slot.pending -= 1;
        if slot.pending == 0 {
            let slot = self.slots[s].take().expect("live slot");
            self.free_slots.push(s);
            self.submissions -= 1;
            self.done.push(Completed {
                tag: slot.tag,
                buf: slot.buf,
                result: slot.error.map_or(Ok(()), Err),
            });
        }
    }

    fn drain_cq(&mut self) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            self.complete_op(ud, res);
        }
    }

    fn enter(&mut self, want: usize) -> io::Result<()> {
        loop {
            let r = if want > 0 {
                self.ring.submit_and_wait(want)
            } else {
                self.ring.submit()
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBUSY: completions must be reaped before more can be taken.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.drain_cq();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Uring {
            registered_buffers: self.pool.is_some(),
        }
    }

    fn submit(&mut self, tag: u64, buf: AlignedBuf, ops: Vec<WriteOp>) -> io::Result<()> {
        for o in &ops {
            assert!(
                o.buf_off + o.len <= buf.len(),
                "write op outside its buffer"
            );
            assert!(o.len <= u32::MAX as usize, "write op too long for one SQE");
        }
        if ops.is_empty() {
            self.done.push(Completed {
                tag,
                buf,
                result: Ok(()),
            });
            return Ok(());
        }
        let s = self.free_slots.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let n = ops.len();
        self.slots[s] = Some(Slot {
            tag,
            buf,
            written: vec![0; n],
            ops,
            pending: n,
            error: None,
        });
        self.submissions += 1;
        self.backlog.extend((0..n).map(|op| (s, op)));
        self.fill_sq();
        self.enter(0)
    }

    fn reap(&mut self, wait: bool, out: &mut Vec<Completed>) -> io::Result<()> {
        loop {
            self.drain_cq();
            self.fill_sq();
            if !self.done.is_empty() || !wait || self.submissions == 0 {
                self.enter(0)?;
                self.drain_cq();
                break;
            }
            self.enter(1)?;
        }
        out.append(&mut self.done);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.submissions + self.done.len()
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // Buffers must outlive the kernel's use of them: wait for every write
        // already in the ring. If the ring cannot be waited on, leak them.
        self.backlog.clear();
        while self.ops_in_ring > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                for s in self.slots.drain(..).flatten() {
                    std::mem::forget(s.buf);
                }
                return;
            }
            let cqes: Vec<u64> = self.ring.completion().map(|c| c.user_data()).collect();
            self.ops_in_ring -= cqes.len();
        }
    }
}

/// Which part of setting up a ring failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringSetupStep {
    /// `io_uring_setup`: creating the ring (EPERM where the kernel's
    /// io_uring_disabled sysctl or a seccomp filter forbids it, ENOSYS on a
    /// kernel without io_uring).
    Setup,
    /// `io_uring_register`: registering the target's descriptor.
    RegisterFile,
    /// `io_uring_enter`: running a NOP through the new ring (a filter may
    /// allow creating a ring but not using it).
    Probe,
}

impl std::fmt::Display for UringSetupStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UringSetupStep::Setup => "setup",
            UringSetupStep::RegisterFile => "file registration",
            UringSetupStep::Probe => "probe request",
        })
    }
}

/// Why a ring could not be set up.
#[derive(Debug)]
pub(crate) struct SetupError {
    pub step: UringSetupStep,
    pub source: io::Error,
}

impl SetupError {
    fn at(step: UringSetupStep) -> impl FnOnce(io::Error) -> SetupError {
        move |source| SetupError { step, source }
    }
}

/// Submits one NOP and waits for its completion.
fn probe_nop(ring: &mut IoUring) -> io::Result<()> {
    let nop = opcode::Nop::new().build().user_data(u64::MAX);
    // SAFETY: a NOP refers to no memory and no descriptor.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("submission queue full on a new ring"))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let res = ring.completion().next().map(|c| c.result());
    match res {
        Some(r) if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        Some(_) => Ok(()),
        None => Err(io::Error::other("no completion for the probe NOP")),
    }
}

/// Registers every pool buffer as a fixed buffer. Fails (and the engine runs
/// with plain writes) when RLIMIT_MEMLOCK is too low to pin them.
fn register_pool(ring: &IoUring, pool: &BufferPool) -> io::Result<()> {
    if pool.count() > u16::MAX as usize {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let iovecs: Vec<libc::iovec> = pool
        .regions()
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect();
    // SAFETY: each iovec is the aligned region of one pool buffer, live
    // heap memory of exactly that length. Registration pins the pages, so
    // the kernel never touches memory it does not hold a reference to; we
    // only name a fixed buffer for a buffer whose address still matches its
    // registered region (`BufferPool::owns`), so WriteFixed always writes the
    // bytes the caller put in that buffer.
    unsafe { ring.submitter().register_buffers(&iovecs) }
}
