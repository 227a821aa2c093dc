//! One multicast receive into a file or block device: the receiver state
//! machine, its socket and a resuming [`DiskSink`] (the io_uring disk
//! writer), wired together. Shared by
//! `rackcast cast recv` and the agent's Distribute Disk Image task.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackcast_cast_net::{self as net, NetConfig, ReceiveLimits};
use rackcast_engine::cast::sink::{ReadBack, SinkStats};
use rackcast_engine::cast::{CastError, Receiver, ReceiverConfig, ReceiverStats, ReedSolomon};
use rackcast_engine::cast::{ErasureCode, SessionKey};
use rackcast_engine::sched::api::VerifyMode as ApiVerifyMode;

use crate::disk_sink::DiskSink;
use crate::layout::{finish_layout, LayoutOptions, LayoutReport};
use crate::writer::WriterConfig;

/// What to receive, from where, into what.
#[derive(Debug, Clone)]
pub struct CastReceive {
    /// Target: a file (created if missing) or a block device.
    pub dest: PathBuf,
    /// Multicast group and port.
    pub group: SocketAddrV4,
    /// Address of the interface to join on.
    pub iface_addr: Ipv4Addr,
    /// Packet authentication key.
    pub key: SessionKey,
    /// This receiver's id (stable per target, so a restart is the same
    /// receiver to the sender).
    pub receiver: u64,
    /// Only this wire session (otherwise the first one announced).
    pub session: Option<u64>,
    /// Only an image with this root.
    pub expected_root: Option<[u8; 32]>,
    /// Skip chunks already correct on the target.
    pub resume: bool,
    /// Read-back after the final flush.
    pub read_back: ReadBack,
    /// Overall and idle limits.
    pub limits: ReceiveLimits,
    /// The disk writer's settings (engine, queue depth, resume state).
    pub writer: WriterConfig,
    /// After the chunks: the image's unused blocks, the backup GPT at a
    /// larger target's end, growing (see [`crate::layout`]).
    pub layout: LayoutOptions,
}

/// What a completed receive did.
#[derive(Debug, Clone)]
pub struct CastReceived {
    /// Root of the image written.
    pub root: [u8; 32],
    /// What happened after the chunks.
    pub layout: LayoutReport,
    /// Receiver counters.
    pub rx: ReceiverStats,
    /// Target counters (bytes written, chunks resumed, chunks read back).
    pub sink: SinkStats,
    /// Wall time.
    pub elapsed: Duration,
}

/// The sink's read-back for the API's verify mode.
pub fn read_back_for(mode: ApiVerifyMode) -> ReadBack {
    match mode {
        ApiVerifyMode::Off => ReadBack::Off,
        ApiVerifyMode::Sample => ReadBack::Sample,
        ApiVerifyMode::Full => ReadBack::Full,
    }
}

/// Joins the group and receives until the target is written, flushed and
/// verified. `observe` sees the receiver at least every 100 ms; breaking
/// abandons the receive ([`CastError::Abandoned`]); what is on the target
/// stays for a resumed receive.
pub fn receive(
    spec: &CastReceive,
    observe: &mut dyn FnMut(&Receiver) -> ControlFlow<()>,
) -> Result<CastReceived, CastError> {
    let mut cfg = ReceiverConfig::new(spec.key.clone(), spec.receiver);
    cfg.session = spec.session;
    cfg.expected_root = spec.expected_root;
    let netcfg = NetConfig {
        group: spec.group,
        iface_addr: spec.iface_addr,
        ttl: 1,
        buffer: 32 << 20,
    };
    let sock = net::receiver_socket(&netcfg)?;
    let fec: Arc<dyn ErasureCode> = Arc::new(ReedSolomon);
    let start = Instant::now();
    let mut rx = Receiver::new(cfg, fec, start);
    let mut sink = DiskSink::new(&spec.dest, spec.resume, spec.read_back, spec.writer.clone());
    net::run_receiver_with(&mut rx, &sock, &mut sink, spec.limits, observe)?;
    let index = rx
        .index()
        .cloned()
        .ok_or(CastError::Target("finished without an index".into()))?;
    let layout = finish_layout(&index, &spec.dest, &spec.layout)
        .map_err(|e| CastError::Target(Box::new(e)))?;
    Ok(CastReceived {
        root: index.root(),
        layout,
        rx: rx.stats().clone(),
        sink: sink.stats().clone(),
        elapsed: start.elapsed(),
    })
}
