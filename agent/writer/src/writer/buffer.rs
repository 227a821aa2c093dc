//! Aligned buffers for O_DIRECT and the bounded pool they circulate in.
//!
//! O_DIRECT needs the memory, the offset and the length aligned to the
//! target's direct-I/O alignment. A buffer over-allocates by one alignment
//! and works from the first aligned byte, so no unsafe allocation is needed;
//! its heap memory never moves, which is what lets the ring register it once.

use crossbeam_channel::{Receiver, Sender};

/// Memory alignment of every buffer: a page, which satisfies every disk's
/// direct-I/O memory alignment.
pub const MEM_ALIGN: usize = 4096;

/// A zero-initialised, page-aligned buffer of fixed capacity.
pub struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    cap: usize,
    len: usize,
    id: Option<u16>,
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("cap", &self.cap)
            .field("len", &self.len)
            .field("id", &self.id)
            .finish()
    }
}

impl AlignedBuf {
    /// A buffer of `cap` bytes (rounded up to [`MEM_ALIGN`]), length 0.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = cap.div_ceil(MEM_ALIGN).max(1) * MEM_ALIGN;
        let mem = vec![0u8; cap + MEM_ALIGN];
        let start = mem.as_ptr().align_offset(MEM_ALIGN);
        AlignedBuf {
            mem,
            start,
            cap,
            len: 0,
            id: None,
        }
    }

    /// Capacity in bytes (a multiple of [`MEM_ALIGN`]).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The filled part.
    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    /// Sets the length (up to the capacity) and returns the filled part for
    /// writing. Bytes keep whatever they held before.
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(
            len <= self.cap,
            "buffer of {} bytes cannot hold {len}",
            self.cap
        );
        self.len = len;
        &mut self.mem[self.start..self.start + len]
    }

    /// Replaces the content with `data`.
    pub fn copy_from(&mut self, data: &[u8]) {
        self.fill(data.len()).copy_from_slice(data);
    }

    /// The whole capacity, for reads that round up to the alignment.
    pub fn full_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.cap]
    }

    /// Current length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index in the pool (and the ring's registered-buffer table), if pooled.
    pub fn id(&self) -> Option<u16> {
        self.id
    }

    /// Address of the first aligned byte (stable for the buffer's life).
    pub(crate) fn base_ptr(&self) -> *const u8 {
        self.mem[self.start..].as_ptr()
    }
}

/// A fixed set of chunk buffers shared by producers (decoders) and the
/// writer. Producers block in [`BufferPool::get`] when every buffer is
/// decoded-but-unwritten or in flight: that is the pipeline's back-pressure
/// and its memory bound.
#[derive(Debug, Clone)]
pub struct BufferPool {
    tx: Sender<AlignedBuf>,
    rx: Receiver<AlignedBuf>,
    count: usize,
    buf_size: usize,
    regions: std::sync::Arc<Vec<(usize, usize)>>,
}

impl BufferPool {
    /// `count` buffers of `buf_size` bytes each.
    pub fn new(count: usize, buf_size: usize) -> BufferPool {
        let (tx, rx) = crossbeam_channel::bounded(count);
        let mut regions = Vec::with_capacity(count);
        for id in 0..count {
            let mut b = AlignedBuf::new(buf_size);
            b.id = u16::try_from(id).ok();
            regions.push((b.base_ptr() as usize, b.cap));
            tx.send(b).expect("the pool holds its own receiver");
        }
        BufferPool {
            tx,
            rx,
            count,
            buf_size: buf_size.div_ceil(MEM_ALIGN) * MEM_ALIGN,
            regions: std::sync::Arc::new(regions),
        }
    }

    /// Takes a free buffer, waiting for one if all are in use.
    pub fn get(&self) -> AlignedBuf {
        self.rx.recv().expect("the pool holds its own sender")
    }

    /// Takes a free buffer, waiting for one until `stop` is set.
    pub fn get_until(&self, stop: &std::sync::atomic::AtomicBool) -> Option<AlignedBuf> {
        use std::sync::atomic::Ordering;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(b) = self.rx.recv_timeout(std::time::Duration::from_millis(50)) {
                return Some(b);
            }
        }
        None
    }

    /// Takes a free buffer if one is available now.
    pub fn try_get(&self) -> Option<AlignedBuf> {
        self.rx.try_recv().ok()
    }

    /// Returns a buffer. Buffers not from this pool are dropped.
    pub fn put(&self, mut buf: AlignedBuf) {
        if self.owns(&buf) {
            buf.len = 0;
            let _ = self.tx.try_send(buf);
        }
    }

    /// Number of buffers.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// (address, length) of every buffer, by id: what the ring registers.
    pub(crate) fn regions(&self) -> &[(usize, usize)] {
        &self.regions
    }

    /// Whether `buf` is this pool's buffer with its registered memory.
    pub(crate) fn owns(&self, buf: &AlignedBuf) -> bool {
        buf.id.is_some_and(|id| {
            self.regions.get(id as usize) == Some(&(buf.base_ptr() as usize, buf.cap))
        })
    }
}
