//! The TFTP data plane: a few shared transfer sockets, each with one task
//! driving every [`Transfer`] whose client it serves.
//!
//! RFC 1350 names a connection by the pair of transfer IDs (ports), so one
//! server port can carry transfers to many clients at once as long as no two
//! share the client's address and port. Sharing is what makes many transfers
//! cheap: a shard reads every ACK waiting for any of its transfers in one
//! `recvmmsg`, and sends every DATA they release in one `sendmmsg` (see
//! `outbox`), where a socket per transfer costs a wake-up, a read, a failed
//! read and a write for every block. Under load the shard wakes once per
//! batch of ACKs instead of once per ACK.
//!
//! Transfers are packed onto as few shards as keep up, not spread over all
//! of them (see [`pick`]): a new client goes to the first shard with room,
//! one running fewer than [`SHARD_TRANSFERS`] transfers on a thread that
//! spent under [`SPILL_CPU_PERMILLE`] of a core in its last measured window.
//! Lock-step clients make a shard's cost per byte fall with the number of
//! clients it serves: each wake-up, `recvmmsg` and `sendmmsg` serves every
//! transfer that moved since the last one. Measured with 100 windowsize-1
//! clients on 2 cores (`benches/netboot-vs-peers.sh`, case `many`), one
//! shard spent 20-25% less CPU per byte than the same clients hashed over
//! two, at no less throughput: half the ACKs per `recvmmsg` and DATA per
//! `sendmmsg`, and two threads instead of one woken and preempted. A shard
//! that is busy for real sends new clients on to the next, so a large boot
//! still spreads over several cores.
//!
//! A client address and port stays with its shard while any of its requests
//! is in hand (the route is kept with its place under the caps, see
//! `admission`), so a repeated request reaches the shard that holds the
//! first one: a repeated RRQ for the same file is dropped while its transfer
//! is healthy (a retransmission, perhaps late), and replaces the old
//! transfer when the client went quiet on it or wants another file (the
//! client restarted from the same port).
//!
//! A packet from an address and port that holds no transfer here gets ERROR
//! 5 "Unknown transfer ID" and is otherwise ignored (RFC 1350 section 4).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::admission::Permit;
use super::outbox::Outbox;
use super::packet::{error_packet, ErrorCode, Packet};
use super::stats::{finish_event, TftpStats};
use super::transfer::{Outcome, Transfer};
use crate::events::Events;

/// Datagrams read per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Receive buffer per datagram: an ACK is 4 bytes and an ERROR at most a
/// few hundred; anything longer is truncated and counted as malformed.
const RECV_BUF: usize = 1536;
/// `recvmmsg` rounds per wake-up before pending sends go out.
const RECV_ROUNDS: usize = 4;
/// Kernel socket buffers asked for: thousands of transfers share one socket.
const SOCK_BUF: usize = 8 << 20;

/// Transfers a shard takes before new clients go to the next one. One
/// wake-up reads at most this many ACKs ([`RECV_ROUNDS`] batches of
/// [`RECV_BATCH`]), so past it more clients on one shard no longer make its
/// batches bigger, only its queue longer, and another core serves better.
pub(super) const SHARD_TRANSFERS: usize = RECV_BATCH * RECV_ROUNDS;
/// A shard whose thread spent this much of a core (per mille) in its last
/// window is busy: new clients go to the next shard with room.
pub(super) const SPILL_CPU_PERMILLE: u32 = 750;
/// How long a window of CPU time is measured over.
const LOAD_WINDOW: Duration = Duration::from_millis(100);
/// Least wall time between two readings of the thread's CPU clock (a system
/// call, about half a microsecond here): a shard reads it at most this
/// often, however many times a second it wakes.
const CPU_READ_EVERY: Duration = Duration::from_millis(1);

/// How long a lone transfer polls its socket for the next ACK before it
/// sleeps. Without a window TFTP is one round trip per block, and a sleeping
/// thread is woken by the kernel tens of microseconds after the ACK arrives
/// (an inter-processor wake-up, measured at about half of an 80 µs loopback
/// round trip on this project's 2-core VM): for one transfer that wake-up is
/// half its speed. Only a transfer running alone polls, so a busy server
/// never spends a core spinning; the poll gives up after this long.
const SPIN: Duration = Duration::from_micros(200);

/// A transfer ready to run, handed from the request handler to its shard.
#[derive(Debug)]
pub(super) struct Admit {
    pub peer: SocketAddr,
    pub filename: String,
    pub transfer: Transfer,
    /// The transfer's place under the server's caps, held while it runs.
    pub permit: Permit,
    /// Its count in this shard's load, held while it runs.
    pub assignment: Assignment,
}

/// The request handler's end of a shard.
#[derive(Debug, Clone)]
pub(super) struct ShardHandle {
    pub sock: Arc<UdpSocket>,
    pub tx: mpsc::UnboundedSender<Admit>,
    pub load: Arc<ShardLoad>,
}

/// How busy a shard is, as the request handler sees it when it routes a
/// new client.
#[derive(Debug, Default)]
pub(super) struct ShardLoad {
    /// Requests routed to the shard and not yet ended: transfers it runs,
    /// and requests still being resolved on their way to it (so that a burst
    /// of requests counts before any of them runs).
    assigned: AtomicUsize,
    /// CPU time of the thread running the shard over its last window, per
    /// mille of one core; 0 while it runs no transfer.
    cpu_permille: AtomicU32,
}

impl ShardLoad {
    /// True when the shard may take another client (see [`pick`]).
    fn has_room(&self) -> bool {
        self.assigned.load(Ordering::Relaxed) < SHARD_TRANSFERS
            && self.cpu_permille.load(Ordering::Relaxed) < SPILL_CPU_PERMILLE
    }

    /// Counts a request routed here until the returned guard is dropped.
    pub(super) fn assign(self: &Arc<Self>) -> Assignment {
        self.assigned.fetch_add(1, Ordering::Relaxed);
        Assignment { load: self.clone() }
    }
}

/// A request's count in its shard's [`ShardLoad::assigned`], held by the
/// request and then by its transfer; dropping it uncounts it.
#[derive(Debug)]
pub(super) struct Assignment {
    load: Arc<ShardLoad>,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        self.load.assigned.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The index of the shard a new client goes to, given every shard's load in
/// order: the first with room, else (all busy) the least busy. Packing
/// clients onto the first shards keeps each shard's batches big (see the
/// module's documentation); the later shards serve only what the earlier
/// ones cannot.
pub(super) fn pick<'a>(loads: impl Iterator<Item = &'a ShardLoad> + Clone) -> usize {
    if let Some(i) = loads.clone().position(ShardLoad::has_room) {
        return i;
    }
    loads
        .enumerate()
        .min_by_key(|(_, l)| {
            (
                l.cpu_permille.load(Ordering::Relaxed),
                l.assigned.load(Ordering::Relaxed),
            )
        })
        .map_or(0, |(i, _)| i)
}

/// Measures the CPU time of the thread running a shard, in windows of
/// [`LOAD_WINDOW`], and publishes it in [`ShardLoad::cpu_permille`].
///
/// A reading covers everything the thread ran since the last one (other
/// tasks of the runtime too: a thread busy with them serves its shard no
/// faster). Tokio may move the shard's task to another thread between two
/// readings; that interval is left out.
struct CpuMeter {
    load: Arc<ShardLoad>,
    last: Option<(ThreadId, Duration, Instant)>,
    cpu: Duration,
    wall: Duration,
}

impl CpuMeter {
    fn new(load: Arc<ShardLoad>) -> Self {
        CpuMeter {
            load,
            last: None,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        }
    }

    /// Called on each turn of the shard's loop.
    fn tick(&mut self, now: Instant) {
        if self
            .last
            .is_some_and(|(_, _, at)| now.saturating_duration_since(at) < CPU_READ_EVERY)
        {
            return;
        }
        let Some(cpu) = thread_cpu_time() else {
            return;
        };
        let tid = std::thread::current().id();
        if let Some((last_tid, last_cpu, at)) = self.last {
            if last_tid == tid {
                self.cpu += cpu.saturating_sub(last_cpu);
                self.wall += now.saturating_duration_since(at);
            }
        }
        self.last = Some((tid, cpu, now));
        if self.wall >= LOAD_WINDOW {
            let permille = self.cpu.as_micros() * 1000 / self.wall.as_micros().max(1);
            self.load
                .cpu_permille
                .store(permille.min(u128::from(u32::MAX)) as u32, Ordering::Relaxed);
            self.cpu = Duration::ZERO;
            self.wall = Duration::ZERO;
        }
    }

    /// The shard runs no transfer: it is idle, whatever its last window said.
    fn idle(&mut self) {
        self.load.cpu_permille.store(0, Ordering::Relaxed);
        self.cpu = Duration::ZERO;
        self.wall = Duration::ZERO;
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// A shard before it runs.
#[derive(Debug)]
pub(super) struct Shard {
    sock: Arc<UdpSocket>,
    rx: mpsc::UnboundedReceiver<Admit>,
    load: Arc<ShardLoad>,
}

/// Binds a shard's socket on `ip` (port chosen by the kernel).
pub(super) fn bind(ip: std::net::IpAddr) -> io::Result<(ShardHandle, Shard)> {
    let std_sock = std::net::UdpSocket::bind((ip, 0))?;
    std_sock.set_nonblocking(true)?;
    // Without CAP_NET_ADMIN the kernel caps the plain options at
    // net.core.[rw]mem_max; take what it gives.
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&std_sock, sockopt::RcvBufForce, &SOCK_BUF).is_err() {
        let _ = setsockopt(&std_sock, sockopt::RcvBuf, &SOCK_BUF);
    }
    if setsockopt(&std_sock, sockopt::SndBufForce, &SOCK_BUF).is_err() {
        let _ = setsockopt(&std_sock, sockopt::SndBuf, &SOCK_BUF);
    }
    let sock = Arc::new(UdpSocket::from_std(std_sock)?);
    let (tx, rx) = mpsc::unbounded_channel();
    let load = Arc::new(ShardLoad::default());
    Ok((
        ShardHandle {
            sock: sock.clone(),
            tx,
            load: load.clone(),
        },
        Shard { sock, rx, load },
    ))
}

struct Slot {
    t: Transfer,
    filename: String,
    _permit: Permit,
    _assignment: Assignment,
    /// The earliest timer entry this transfer has in the heap.
    armed: Option<Instant>,
    dirty: bool,
}

struct Running {
    sock: Arc<UdpSocket>,
    stats: Arc<TftpStats>,
    events: Events,
    slots: HashMap<SocketAddr, Slot>,
    /// Retransmit deadlines. A transfer pushes an entry only when its
    /// deadline comes earlier than the one it has in the heap; in a steady
    /// transfer every ACK moves the deadline later, and a stale entry that
    /// pops is re-pushed at the current deadline, so the heap holds about
    /// one entry per transfer and is touched about once per timeout.
    timers: BinaryHeap<Reverse<(Instant, SocketAddr)>>,
    dirty: Vec<SocketAddr>,
    outbox: Outbox,
}

impl Shard {
    /// Serves until every [`ShardHandle`] is dropped and no transfer is left.
    pub(super) async fn run(self, stats: Arc<TftpStats>, events: Events) {
        let Shard { sock, mut rx, load } = self;
        let mut meter = CpuMeter::new(load);
        let mut r = Running {
            sock: sock.clone(),
            stats,
            events,
            slots: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            outbox: Outbox::default(),
        };
        let mut bufs = vec![[0u8; RECV_BUF]; RECV_BATCH];
        let mut got: Vec<(usize, SocketAddr, bool)> = Vec::with_capacity(RECV_BATCH);
        let far = || Instant::now() + Duration::from_secs(3600);
        let mut timer_at = far();
        let mut timer_fired = false;
        let timer = tokio::time::sleep_until(timer_at.into());
        tokio::pin!(timer);
        let mut open = true;
        loop {
            while let Ok(a) = rx.try_recv() {
                r.admit(a);
            }
            let now = Instant::now();
            meter.tick(now);
            r.fire_due(now);
            r.transmit(now);
            r.outbox.flush(&r.sock).await;
            if r.slots.is_empty() {
                if !open {
                    return;
                }
                meter.idle();
            }
            // One sleep for the whole shard, moved only when the earliest
            // deadline comes earlier or the sleep has fired (an early
            // wake-up is harmless).
            let next = r.timers.peek().map_or_else(far, |e| e.0 .0);
            if timer_fired || next < timer_at {
                timer_at = next;
                timer_fired = false;
                timer.as_mut().reset(next.into());
            }
            // Alone, a transfer polls for its ACK for a moment first.
            if r.slots.len() == 1 && r.stats.active.load(Ordering::Relaxed) <= 1 {
                // A lone transfer has an ACK or two to read, not a batch.
                spin_recv(&sock, &mut bufs[..4], &mut got);
            }
            if got.is_empty() {
                let wake = tokio::select! {
                    biased;
                    ready = sock.readable() => match ready {
                        Ok(()) => Wake::Readable,
                        Err(_) => Wake::Timer,
                    },
                    a = rx.recv(), if open => Wake::Admit(a.map(Box::new)),
                    _ = &mut timer => Wake::Timer,
                };
                match wake {
                    Wake::Readable => {
                        for _ in 0..RECV_ROUNDS {
                            let n = sock
                                .try_io(Interest::READABLE, || {
                                    recv_batch(&sock, &mut bufs, &mut got)
                                })
                                .unwrap_or(0);
                            r.deliver(&bufs, &got);
                            got.clear();
                            if n < RECV_BATCH {
                                break;
                            }
                        }
                    }
                    Wake::Admit(Some(a)) => r.admit(*a),
                    Wake::Admit(None) => open = false,
                    Wake::Timer => timer_fired = true,
                }
            } else {
                r.deliver(&bufs, &got);
                got.clear();
            }
        }
    }
}

enum Wake {
    Readable,
    Admit(Option<Box<Admit>>),
    Timer,
}

impl Running {
    fn admit(&mut self, a: Admit) {
        if let Some(old) = self.slots.get(&a.peer) {
            let running = old.t.outcome().is_none();
            if running && old.filename == a.filename && !old.t.stalled() {
                // The client's request again while its transfer is healthy:
                // a retransmission (maybe late, after the first blocks got
                // through). The running transfer answers it.
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.stats.active.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            // The old transfer ended and awaits retiring, or the client went
            // quiet on it (or wants another file) and asked afresh.
            let old = self.slots.remove(&a.peer).expect("just looked up");
            let why = running.then_some("superseded by a new request from the same port");
            self.end(a.peer, old, why);
        }
        self.slots.insert(
            a.peer,
            Slot {
                t: a.transfer,
                filename: a.filename,
                _permit: a.permit,
                _assignment: a.assignment,
                armed: None,
                dirty: true,
            },
        );
        self.dirty.push(a.peer);
    }

    fn mark(&mut self, peer: SocketAddr) {
        if let Some(s) = self.slots.get_mut(&peer) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(peer);
            }
        }
    }

    fn fire_due(&mut self, now: Instant) {
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(&peer) else {
                continue;
            };
            if slot.armed != Some(at) {
                continue; // superseded by an earlier entry
            }
            slot.armed = None;
            match slot.t.poll_timeout() {
                Some(d) if d <= now => {
                    slot.t.handle_timeout(now);
                    self.mark(peer);
                }
                Some(d) => {
                    slot.armed = Some(d);
                    self.timers.push(Reverse((d, peer)));
                }
                None => {}
            }
        }
    }

    /// Lets every transfer that got input send what it may, and retires
    /// the ones that ended.
    fn transmit(&mut self, now: Instant) {
        for peer in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.slots.get_mut(&peer) else {
                continue;
            };
            slot.dirty = false;
            while let Some(tx) = slot.t.poll_transmit(now) {
                self.outbox.push(peer, tx);
            }
            if slot.t.outcome().is_some() {
                let slot = self.slots.remove(&peer).expect("just looked up");
                self.end(peer, slot, None);
                continue;
            }
            if let Some(d) = slot.t.poll_timeout() {
                if slot.armed.is_none_or(|a| d < a) {
                    slot.armed = Some(d);
                    self.timers.push(Reverse((d, peer)));
                }
            }
        }
    }

    fn deliver(&mut self, bufs: &[[u8; RECV_BUF]], got: &[(usize, SocketAddr, bool)]) {
        let now = Instant::now();
        for (i, &(len, from, truncated)) in got.iter().enumerate() {
            let datagram = &bufs[i][..len];
            if from.port() == 0 {
                // No source address: nothing to answer.
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(slot) = self.slots.get_mut(&from) else {
                self.stray(datagram, from);
                continue;
            };
            match Packet::parse(datagram) {
                Ok(p) if !truncated => {
                    slot.t.handle_packet(now, &p);
                    self.mark(from);
                }
                _ => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// RFC 1350 section 4: a datagram from another transfer ID gets ERROR 5
    /// and leaves the transfers alone. An ERROR is not answered, so that two
    /// confused peers cannot bounce errors forever.
    fn stray(&mut self, datagram: &[u8], from: SocketAddr) {
        self.stats.stray.fetch_add(1, Ordering::Relaxed);
        if matches!(Packet::parse(datagram), Ok(Packet::Error { .. })) {
            return;
        }
        let e = error_packet(ErrorCode::UnknownTid, "Unknown transfer ID");
        self.outbox.push_control(from, e.into());
    }

    /// Counts and reports a transfer that ended (or was replaced).
    fn end(&mut self, peer: SocketAddr, slot: Slot, superseded: Option<&str>) {
        let len = slot.t.len();
        let result = match (superseded, slot.t.outcome()) {
            (Some(why), _) => Err(why.to_string()),
            (None, Some(o)) => Ok(o.clone()),
            (None, None) => Ok(Outcome::TimedOut),
        };
        finish_event(&self.stats, &self.events, peer, &slot.filename, len, result);
        // Counted as ended before it stops counting as active, so that
        // whoever sees `active` fall sees the outcome too.
        self.stats.active.fetch_sub(1, Ordering::Release);
    }
}

/// Reads up to [`RECV_BATCH`] datagrams without waiting; appends (length,
/// source, truncated) to `got` in the order of `bufs`.
fn recv_batch(
    sock: &UdpSocket,
    bufs: &mut [[u8; RECV_BUF]],
    got: &mut Vec<(usize, SocketAddr, bool)>,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), None);
    let res = recvmmsg(
        sock.as_raw_fd(),
        &mut hdrs,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    let mut n = 0;
    for m in res {
        n += 1;
        let from = m.address.as_ref().and_then(to_socket_addr);
        match from {
            Some(from) => got.push((m.bytes, from, m.flags.contains(MsgFlags::MSG_TRUNC))),
            // Keep indices aligned with `bufs`; an address-less datagram
            // cannot be answered and is dropped at delivery as a stray from
            // nowhere.
            None => got.push((0, SocketAddr::from(([0, 0, 0, 0], 0)), true)),
        }
    }
    Ok(n)
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    a.as_sockaddr_in()
        .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
        .or_else(|| {
            a.as_sockaddr_in6()
                .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
        })
}

/// Polls `sock` without sleeping for up to [`SPIN`]. Reads the descriptor
/// directly: tokio's `try_io` answers from readiness that only the
/// (sleeping) reactor updates.
fn spin_recv(
    sock: &UdpSocket,
    bufs: &mut [[u8; RECV_BUF]],
    got: &mut Vec<(usize, SocketAddr, bool)>,
) {
    let until = Instant::now() + SPIN;
    loop {
        match recv_batch(sock, bufs, got) {
            Ok(0) => {}
            Ok(_) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        if Instant::now() >= until {
            return;
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(n: usize) -> Vec<Arc<ShardLoad>> {
        (0..n).map(|_| Arc::new(ShardLoad::default())).collect()
    }

    fn pick_of(l: &[Arc<ShardLoad>]) -> usize {
        pick(l.iter().map(|l| &**l))
    }

    #[test]
    fn clients_are_packed_onto_the_first_shard_until_it_is_full() {
        let l = loads(3);
        let mut held: Vec<Assignment> = (0..SHARD_TRANSFERS)
            .map(|_| {
                assert_eq!(pick_of(&l), 0);
                l[0].assign()
            })
            .collect();
        assert_eq!(pick_of(&l), 1, "the first shard is full");
        held.pop();
        assert_eq!(pick_of(&l), 0, "an ended transfer makes room");
        drop(held);
        assert_eq!(l[0].assigned.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_busy_shard_spills_to_the_next_and_all_busy_picks_the_least() {
        let l = loads(3);
        l[0].cpu_permille
            .store(SPILL_CPU_PERMILLE, Ordering::Relaxed);
        assert_eq!(pick_of(&l), 1);
        l[1].cpu_permille.store(900, Ordering::Relaxed);
        assert_eq!(pick_of(&l), 2);
        l[2].cpu_permille.store(950, Ordering::Relaxed);
        assert_eq!(pick_of(&l), 0, "all busy: the least busy");
        l[2].cpu_permille
            .store(SPILL_CPU_PERMILLE, Ordering::Relaxed);
        let _a = l[0].assign();
        assert_eq!(pick_of(&l), 2, "equally busy: the one with fewer transfers");
    }

    #[test]
    fn the_meter_publishes_a_window_and_an_idle_shard_reads_zero() {
        let l = loads(1);
        let mut m = CpuMeter::new(l[0].clone());
        let t0 = Instant::now();
        m.tick(t0);
        // Burn some CPU on this thread, then close a window (wall time is
        // fed in, so the window's length does not depend on the machine).
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        m.tick(t0 + LOAD_WINDOW);
        let p = l[0].cpu_permille.load(Ordering::Relaxed);
        assert!(p > 0 && p <= 1000, "{p} per mille");
        m.idle();
        assert_eq!(l[0].cpu_permille.load(Ordering::Relaxed), 0);
    }
}
