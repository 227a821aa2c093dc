//! The sender: a sans-IO state machine. The shell feeds it received status
//! datagrams and the time, and asks it for packets to multicast.
//!
//! It runs a rolling carousel over the chunks, one pass and then whatever
//! receivers report they still need. On each visit of a chunk it sends fresh
//! symbols (the chunk's symbol cursor moves on through source then repair
//! ids): a whole chunk plus a loss margin on the carousel, or as many as the
//! neediest healthy receiver reported lacking plus the margin on a repair.
//! Repairs it schedules are echoed to the group (`Repairs`) so receivers
//! with no greater need stay silent. Stragglers (receivers far behind the
//! group) do not set the rate or the repair count while healthy receivers
//! still need data; they keep sampling the carousel and finish from later
//! visits, when they are all that is left.
//!
//! Work per status is constant (or the size of that status); whatever looks
//! at the whole group (stragglers, the median loss, who is lost, whether all
//! are done) runs at most every [`HEALTH_INTERVAL`] or [`SWEEP_INTERVAL`],
//! so 10,000 receivers cost the sender no more per packet than ten.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fec::{source_symbol, source_symbols, ErasureCode};
use super::rate::{Pacer, RateControl};
use super::wire::{self, Announce, Header, PacketType, SessionKey, Status, INDEX_OBJECT};
use super::CastError;
use crate::image::{ChunkData, ChunkIndex};

mod group;
mod plan;

/// Where chunk frames come from (the image file, or memory in tests).
pub trait FrameSource {
    /// The stored frame of chunk `chunk` (the bytes the index's frame hash covers).
    fn frame(&mut self, chunk: u32) -> Result<Bytes, CastError>;
}

/// Shortest gap between two `Acked` packets while acknowledgements wait.
const ACK_GAP: Duration = Duration::from_millis(2);
/// `Acked` packets that carry one done status: a lost one costs a few
/// milliseconds instead of the receiver's retry.
const ACK_REPEATS: u8 = 3;
/// Shortest gap between two `Repairs` echoes.
const REPAIRS_GAP: Duration = Duration::from_millis(1);
/// How often stragglers, the pace setters, the median loss and the rate are
/// worked out again (when statuses arrived since).
const HEALTH_INTERVAL: Duration = Duration::from_millis(50);
/// Pace setters' losses kept between two rate steps (a median of this many
/// is as good as of all; 10,000 receivers send 50 a step).
const MAX_FRESH_LOSS: usize = 1024;
/// How often silent receivers are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Shortest gap between announces sent early to echo joins: a crowd that
/// joins at once is answered in a few milliseconds, not a few intervals.
const ECHO_GAP: Duration = Duration::from_millis(2);
/// Announces that echo one join: a lost echo costs a few milliseconds
/// instead of an announce interval and a new join.
const ECHO_REPEATS: u8 = 3;
/// Earlier incarnations (nonces) remembered per receiver, whose statuses
/// are ignored if they come again.
const RETIRED_NONCES: usize = 4;
/// Default of [`SenderConfig::max_receivers`]: room for the 10,000-target
/// rack plus restarts under new ids.
pub const DEFAULT_MAX_RECEIVERS: usize = 16_384;

/// Sender configuration.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Session id (random per session).
    pub session: u64,
    /// Packet authentication key.
    pub key: SessionKey,
    /// Symbol (payload) size: even, sized to the MTU.
    pub symbol_size: usize,
    /// Rate ceiling in bytes/s of symbol payload (UDP payloads of symbol
    /// packets; headers and control packets are not counted).
    pub max_rate: u64,
    /// Rate floor in bytes/s.
    pub min_rate: u64,
    /// Start when this many receivers have joined...
    pub min_receivers: usize,
    /// ...or this long after the sender started, whichever comes first.
    pub max_wait: Duration,
    /// Give up this long after the start, with a verdict per receiver.
    pub deadline: Duration,
    /// How often session parameters are announced.
    pub announce_interval: Duration,
    /// A receiver silent this long is considered gone.
    pub receiver_timeout: Duration,
    /// Extra repair fraction on top of the healthy receivers' loss.
    pub repair_margin: f64,
    /// A chunk is not visited again until this long after its last visit
    /// (plus its send time).
    pub revisit_after: Duration,
    /// How often to look again for statuses newer than the last visits when
    /// only stale ones are at hand.
    pub status_lag: Duration,
    /// Most receivers tracked; statuses from further ones are dropped.
    pub max_receivers: usize,
    /// Shortest heartbeat period announced to receivers.
    pub heartbeat: Duration,
    /// Heartbeats per second the whole group may send: the announced period
    /// grows with the group to stay within it.
    pub heartbeat_budget: u32,
    /// Longest backoff announced to receivers before a deficit report: a
    /// few round trips, so the first report's echo silences the others.
    pub report_backoff: Duration,
}

impl SenderConfig {
    /// Defaults for a session with `key` and `symbol_size`.
    pub fn new(session: u64, key: SessionKey, symbol_size: usize) -> SenderConfig {
        SenderConfig {
            session,
            key,
            symbol_size,
            max_rate: 1_000_000_000,
            min_rate: 1_000_000,
            min_receivers: 1,
            max_wait: Duration::from_secs(30),
            deadline: Duration::from_secs(3600),
            announce_interval: Duration::from_millis(100),
            receiver_timeout: Duration::from_secs(10),
            repair_margin: 0.02,
            revisit_after: Duration::from_millis(5),
            status_lag: Duration::from_millis(5),
            max_receivers: DEFAULT_MAX_RECEIVERS,
            heartbeat: Duration::from_secs(1),
            heartbeat_budget: 500,
            report_backoff: Duration::from_millis(10),
        }
    }
}

/// A packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Length of the packet written at the end of the caller's buffer.
    pub len: usize,
}

/// What happened to one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every chunk written and verified.
    Done,
    /// Still missing chunks at the end.
    Incomplete {
        /// Chunks it had.
        chunks_done: u32,
    },
    /// Went silent.
    Lost {
        /// Chunks it had when last heard.
        chunks_done: u32,
    },
}

/// Something the operator should hear about.
#[derive(Debug, Clone, PartialEq)]
pub enum SenderEvent {
    /// A receiver sent its first status.
    Joined {
        /// Receiver id.
        receiver: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// The carousel started.
    Started {
        /// Receivers joined at the start.
        receivers: usize,
    },
    /// A receiver is far behind the group and no longer sets its pace.
    Straggler {
        /// Receiver id.
        receiver: u64,
        /// Its reported loss.
        loss: f64,
    },
    /// A receiver finished.
    ReceiverDone {
        /// Receiver id.
        receiver: u64,
    },
    /// The session is over.
    Finished {
        /// Verdict per receiver id.
        verdicts: Vec<(u64, Verdict)>,
    },
}

/// Counters for the summary.
#[derive(Debug, Clone, Default)]
pub struct SenderStats {
    /// Packets sent.
    pub packets: u64,
    /// Bytes sent (UDP payload).
    pub bytes: u64,
    /// Source symbols sent.
    pub source_symbols: u64,
    /// Repair symbols sent.
    pub repair_symbols: u64,
    /// Carousel passes begun.
    pub passes: u64,
    /// Status packets received.
    pub statuses: u64,
    /// Datagrams dropped (bad MAC, other session, malformed).
    pub dropped: u64,
    /// Statuses dropped as not newer than the last one taken from the same
    /// receiver run, or from a run it has since replaced (reordered or
    /// replayed).
    pub stale: u64,
    /// Statuses dropped from new receivers while the table was full.
    pub table_full: u64,
    /// Join nonces echoed in announces.
    pub echoes: u64,
    /// `Repairs` echoes sent.
    pub repair_echoes: u64,
    /// Repair visits (driven by reported deficits).
    pub repair_visits: u64,
    /// Visits of the index.
    pub index_visits: u64,
    /// Repair symbols computed by the erasure code (each load of an object
    /// that needs repair encodes all of its repair symbols once).
    pub encoded: u64,
}

#[derive(Debug)]
struct Rx {
    addr: SocketAddr,
    /// Smoothed loss fraction: one lossy status interval must not make a
    /// straggler out of a healthy receiver.
    loss: f64,
    last_seen: Instant,
    status: Status,
    straggler: bool,
    lost: bool,
    /// Sequence number of the last status taken from this run (`status.nonce`).
    last_seq: u64,
    /// Nonces of its earlier runs: their statuses are old by definition.
    retired: VecDeque<u64>,
    /// Its nonce waits in `echo_queue`.
    echo_queued: bool,
    /// Its id waits in `ack_queue`.
    ack_queued: bool,
    /// Statuses taken from it.
    statuses: u32,
    /// Its needs decide what is sent (active, and healthy unless only
    /// stragglers are left); worked out by the health pass.
    setter: bool,
}

#[derive(Debug)]
struct ObjectTx {
    data: Bytes,
    k: u32,
    repair: Option<Arc<Vec<Vec<u8>>>>,
    cursor: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Ending { left: u32 },
    Finished,
}

/// The sender state machine.
#[derive(Debug)]
pub struct Sender<S> {
    cfg: SenderConfig,
    fec: Arc<dyn ErasureCode>,
    index: ChunkIndex,
    index_bytes: Bytes,
    root: [u8; 32],
    source: S,
    /// Chunks that travel (have a frame), in disk order.
    framed: Vec<u32>,
    phase: Phase,
    started_at: Instant,
    running_since: Option<Instant>,
    receivers: HashMap<u64, Rx>,
    objects: HashMap<u32, ObjectTx>,
    /// Where each chunk's symbol cursor stopped, so the next visit sends
    /// fresh symbols.
    cursor_memory: HashMap<u32, u32>,
    /// Earliest time each chunk may be visited again.
    cooldown: HashMap<u32, Instant>,
    /// Sequence number of the last packet of each chunk's last visit: a
    /// receiver's status speaks for the chunk only once it has processed a
    /// later packet. Older statuses predate the symbols just sent, and acting
    /// on them would re-send blind.
    visit_end: HashMap<u32, u64>,
    /// Nothing to send before this (every needed chunk is cooling down).
    idle_until: Option<Instant>,
    /// Current visit: object and symbols left to send on it.
    visit: Option<(u32, u32)>,
    /// Chunks due a whole visit: the first pass, then chunks a fresh report
    /// says are still needed after their visit.
    carousel: BTreeSet<u32>,
    /// Chunks due a repair: the most symbols a fresh report lacks.
    repairs: BTreeMap<u32, u32>,
    /// A fresh report lacks the index.
    index_wanted: bool,
    /// The repairs grew since the last echo.
    echo_repairs: bool,
    last_repairs: Option<Instant>,
    /// The carousel's next chunk number.
    cursor: u32,
    /// The object whose visit ended last (announced).
    last_ended: Option<u32>,
    /// A visit ended and nothing followed it yet.
    quiet_after_visit: bool,
    /// Proactive repair fraction, from the pace setters' median loss.
    margin: f64,
    median_loss: f64,
    /// Pace setters counted by the last health pass.
    setters: usize,
    /// Every active receiver was done at the last health pass.
    all_done: bool,
    /// Active receivers not done at the last health pass.
    reporting: usize,
    /// The longest heartbeat announced lately, and since when.
    beat_ceiling: (Duration, Instant),
    /// Some active receiver was neither done nor a straggler then.
    healthy_left: bool,
    /// Statuses arrived since the last health pass.
    health_due: bool,
    next_health: Instant,
    /// The next step of the rate control.
    next_rate_step: Instant,
    /// The latest loss each pace setter reported since the last rate step.
    fresh_loss: HashMap<u64, f64>,
    /// Whether most pace setters' disks were behind at the last health pass.
    disks_behind: bool,
    next_sweep: Instant,
    next_announce: Instant,
    last_index_visit: Option<Instant>,
    pacer: Pacer,
    ratectl: RateControl,
    seq: u64,
    events: VecDeque<SenderEvent>,
    stats: SenderStats,
    scratch: Vec<u8>,
    /// Receivers whose done status waits to be acknowledged to the group
    /// (see [`PacketType::Acked`]), with how many acks each has left.
    ack_queue: VecDeque<(u64, u8)>,
    next_ack: Instant,
    /// Receivers asking to join whose nonce the next announces echo, with
    /// how many echoes each has left.
    echo_queue: VecDeque<(u64, u8)>,
    last_announce: Option<Instant>,
}

impl<S: FrameSource> Sender<S> {
    /// A sender for `index` (its encoded bytes must hash to the image root).
    pub fn new(
        cfg: SenderConfig,
        fec: Arc<dyn ErasureCode>,
        index: ChunkIndex,
        source: S,
        now: Instant,
    ) -> Sender<S> {
        let index_bytes = Bytes::from(index.emit());
        let root = *blake3::hash(&index_bytes).as_bytes();
        let framed = index
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.data.frame().is_some())
            .map(|(i, _)| i as u32)
            .collect();
        let initial = (cfg.max_rate / 2).max(cfg.min_rate);
        Sender {
            pacer: Pacer::new(initial, now),
            ratectl: RateControl::new(cfg.max_rate, cfg.min_rate, initial),
            cfg,
            fec,
            index,
            index_bytes,
            root,
            source,
            framed,
            phase: Phase::Waiting,
            started_at: now,
            running_since: None,
            receivers: HashMap::new(),
            objects: HashMap::new(),
            cursor_memory: HashMap::new(),
            cooldown: HashMap::new(),
            visit_end: HashMap::new(),
            idle_until: None,
            visit: None,
            carousel: BTreeSet::new(),
            repairs: BTreeMap::new(),
            index_wanted: false,
            echo_repairs: false,
            last_repairs: None,
            cursor: 0,
            last_ended: None,
            quiet_after_visit: false,
            margin: 0.0,
            median_loss: 0.0,
            setters: 0,
            all_done: false,
            reporting: 0,
            beat_ceiling: (Duration::ZERO, now),
            healthy_left: false,
            health_due: false,
            next_health: now,
            next_rate_step: now,
            fresh_loss: HashMap::new(),
            disks_behind: false,
            next_sweep: now,
            next_announce: now,
            last_index_visit: None,
            seq: 0,
            events: VecDeque::new(),
            stats: SenderStats::default(),
            scratch: Vec::new(),
            ack_queue: VecDeque::new(),
            next_ack: now,
            echo_queue: VecDeque::new(),
            last_announce: None,
        }
    }

    /// The image root being sent.
    pub fn root(&self) -> [u8; 32] {
        self.root
    }

    /// Counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// The current rate in bytes/s.
    pub fn rate(&self) -> u64 {
        self.pacer.rate()
    }

    /// Whether the session is over.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Number of receivers heard from.
    pub fn receiver_count(&self) -> usize {
        self.receivers.len()
    }

    /// Receivers counted as stragglers now.
    pub fn stragglers(&self) -> usize {
        self.receivers.values().filter(|r| r.straggler).count()
    }

    /// The mean of the receivers' smoothed loss (0 with none).
    pub fn mean_loss(&self) -> f64 {
        let n = self.receivers.len();
        if n == 0 {
            return 0.0;
        }
        self.receivers.values().map(|r| r.loss).sum::<f64>() / n as f64
    }

    /// Receivers that have reported completion.
    pub fn receivers_done(&self) -> usize {
        self.receivers.values().filter(|r| r.status.done).count()
    }

    /// Next event for the operator.
    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Feeds a datagram received on the sender's socket.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let Ok((h, payload)) = wire::parse(&self.cfg.key, bytes) else {
            self.stats.dropped += 1;
            return;
        };
        if h.session != self.cfg.session || h.kind != PacketType::Status {
            self.stats.dropped += 1;
            return;
        }
        let Ok(st) = Status::parse(payload) else {
            self.stats.dropped += 1;
            return;
        };
        let id = st.receiver;
        let was_done = self.receivers.get(&id).is_some_and(|r| r.status.done);
        match self.receivers.get_mut(&id) {
            Some(r) => {
                let newer = if st.nonce == r.status.nonce {
                    h.seq > r.last_seq
                } else {
                    // A restarted receiver (same id, new run) starts its
                    // numbers again; its old run's statuses stay old.
                    !r.retired.contains(&st.nonce)
                };
                if !newer {
                    self.stats.stale += 1;
                    return;
                }
                if st.nonce != r.status.nonce {
                    if r.retired.len() == RETIRED_NONCES {
                        r.retired.pop_front();
                    }
                    r.retired.push_back(r.status.nonce);
                }
                r.addr = from;
                r.last_seen = now;
                r.lost = false;
                r.last_seq = h.seq;
                r.loss = 0.7 * r.loss + 0.3 * (st.loss_ppm as f64 / 1e6);
                if r.setter && !st.done && self.fresh_loss.len() < MAX_FRESH_LOSS {
                    self.fresh_loss.insert(id, st.loss_ppm as f64 / 1e6);
                }
                r.status = st;
            }
            None => {
                if self.receivers.len() >= self.cfg.max_receivers {
                    self.stats.table_full += 1;
                    return;
                }
                self.events.push_back(SenderEvent::Joined {
                    receiver: id,
                    addr: from,
                });
                self.receivers.insert(
                    id,
                    Rx {
                        addr: from,
                        loss: st.loss_ppm as f64 / 1e6,
                        last_seen: now,
                        status: st,
                        straggler: false,
                        lost: false,
                        last_seq: h.seq,
                        retired: VecDeque::new(),
                        echo_queued: false,
                        ack_queued: false,
                        statuses: 0,
                        // Healthy until the health pass says otherwise: its
                        // first report counts at once.
                        setter: false,
                    },
                );
            }
        }
        self.stats.statuses += 1;
        self.idle_until = None;
        if let Some(r) = self.receivers.get_mut(&id) {
            r.statuses = r.statuses.saturating_add(1);
        }
        self.health_due = true;
        let healthy_left = self.healthy_left;
        let r = self.receivers.get_mut(&id).expect("just updated");
        if r.status.joining && !r.echo_queued {
            r.echo_queued = true;
            self.echo_queue.push_back((id, ECHO_REPEATS));
        }
        if r.status.done {
            r.setter = false;
            // Every done status is acknowledged again, so a receiver that
            // missed its acks asks again and gets them.
            if !r.ack_queued {
                r.ack_queued = true;
                self.ack_queue.push_back((id, ACK_REPEATS));
            }
            if !was_done {
                self.events
                    .push_back(SenderEvent::ReceiverDone { receiver: id });
            }
        } else if !r.straggler || !healthy_left {
            r.setter = true;
        }
        self.apply_report(id);
    }

    /// When the sender next needs to run, if it is not finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Finished => None,
            Phase::Waiting => Some(self.announce_due().min(self.started_at + self.cfg.max_wait)),
            _ => {
                let send = self.pacer.next_send(self.cfg.symbol_size + wire::OVERHEAD);
                let mut t = self.idle_until.map_or(send, |t| t.max(send));
                t = t.min(self.announce_due());
                if !self.ack_queue.is_empty() {
                    t = t.min(self.next_ack);
                }
                if self.echo_repairs {
                    t = t.min(
                        self.last_repairs
                            .map_or(self.started_at, |l| l + REPAIRS_GAP),
                    );
                }
                Some(t)
            }
        }
    }

    /// Writes the next packet due at `now` to the end of `buf`, if any.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Result<Option<Transmit>, CastError> {
        self.tick(now);
        match self.phase {
            Phase::Finished => return Ok(None),
            Phase::Ending { left } => {
                if now < self.next_announce {
                    return Ok(None);
                }
                self.next_announce = now + Duration::from_millis(20);
                let start = buf.len();
                self.emit(PacketType::End, 0, 0, &[], buf);
                self.phase = if left <= 1 {
                    let verdicts = self.verdicts();
                    self.events.push_back(SenderEvent::Finished { verdicts });
                    Phase::Finished
                } else {
                    Phase::Ending { left: left - 1 }
                };
                return Ok(Some(Transmit {
                    len: buf.len() - start,
                }));
            }
            _ => {}
        }
        if now >= self.next_ack && !self.ack_queue.is_empty() {
            // A done receiver can leave as soon as it sees its id here,
            // instead of lingering (and taking a core from those still at
            // work) until the slowest receiver is done too.
            self.next_ack = now + ACK_GAP;
            let ids = self.take_acks();
            if !ids.is_empty() {
                let start = buf.len();
                // Not charged to the pacer: at the end of a session 10,000
                // done receivers are hundreds of these, and charging them
                // held the last repairs back by seconds. One every ACK_GAP
                // at most.
                self.emit(PacketType::Acked, 0, 0, &wire::emit_acked(&ids), buf);
                return Ok(Some(Transmit {
                    len: buf.len() - start,
                }));
            }
        }
        if self.echo_repairs && self.last_repairs.is_none_or(|t| now >= t + REPAIRS_GAP) {
            self.echo_repairs = false;
            self.last_repairs = Some(now);
            let list = self.repairs_echo();
            if !list.is_empty() {
                self.stats.repair_echoes += 1;
                let start = buf.len();
                self.emit(PacketType::Repairs, 0, 0, &wire::emit_repairs(&list), buf);
                self.pacer.charge(now, buf.len() - start);
                return Ok(Some(Transmit {
                    len: buf.len() - start,
                }));
            }
        }
        if now >= self.announce_due() {
            self.next_announce = now + self.cfg.announce_interval;
            self.last_announce = Some(now);
            let echoes = self.take_echoes();
            let beat = self.heartbeat();
            self.note_heartbeat(now, beat);
            let a = Announce {
                symbol_size: self.cfg.symbol_size as u32,
                chunk_count: self.index.entries.len() as u32,
                index_len: self.index_bytes.len() as u32,
                root: self.root,
                running: self.phase == Phase::Running,
                group: self.group_size() as u32,
                heartbeat_ms: beat.as_millis().min(u32::MAX as u128) as u32,
                backoff_us: self.cfg.report_backoff.as_micros().min(u32::MAX as u128) as u32,
                ended: self.last_ended,
                echoes,
            };
            let start = buf.len();
            self.emit(PacketType::Announce, 0, 0, &a.emit(), buf);
            self.pacer.charge(now, buf.len() - start);
            return Ok(Some(Transmit {
                len: buf.len() - start,
            }));
        }
        if self.idle_until.is_some_and(|t| now < t) {
            return Ok(None);
        }
        self.idle_until = None;
        let packet = self.cfg.symbol_size + wire::OVERHEAD;
        if !self.pacer.try_send(now, packet) {
            return Ok(None);
        }
        let Some((object, symbol)) = self.next_symbol(now)? else {
            return Ok(None);
        };
        let start = buf.len();
        self.write_symbol(object, symbol, buf)?;
        Ok(Some(Transmit {
            len: buf.len() - start,
        }))
    }

    /// When the next announce goes out: at the interval, or soon when
    /// joins wait for their echo.
    fn announce_due(&self) -> Instant {
        match (self.echo_queue.is_empty(), self.last_announce) {
            (false, Some(t)) => self.next_announce.min(t + ECHO_GAP),
            _ => self.next_announce,
        }
    }

    /// The nonces the next announce echoes, as many as fit a symbol packet.
    fn take_echoes(&mut self) -> Vec<u64> {
        let max = Announce::max_echoes(self.cfg.symbol_size);
        let mut echoes = Vec::new();
        let mut again = Vec::new();
        while echoes.len() < max {
            let Some((id, left)) = self.echo_queue.pop_front() else {
                break;
            };
            let Some(r) = self.receivers.get_mut(&id) else {
                continue;
            };
            // A status without `joining` since: it has adopted the session.
            if !r.status.joining {
                r.echo_queued = false;
                continue;
            }
            echoes.push(r.status.nonce);
            if left > 1 {
                again.push((id, left - 1));
            } else {
                r.echo_queued = false;
            }
        }
        self.echo_queue.extend(again);
        self.stats.echoes += echoes.len() as u64;
        echoes
    }

    /// The ids the next `Acked` packet carries.
    fn take_acks(&mut self) -> Vec<u64> {
        let max = wire::max_list_entries(self.cfg.symbol_size);
        let mut ids = Vec::new();
        let mut again = Vec::new();
        while ids.len() < max {
            let Some((id, left)) = self.ack_queue.pop_front() else {
                break;
            };
            ids.push(id);
            if left > 1 {
                again.push((id, left - 1));
            } else if let Some(r) = self.receivers.get_mut(&id) {
                r.ack_queued = false;
            }
        }
        self.ack_queue.extend(again);
        ids
    }

    /// Receivers the announced parameters are scaled for: those still
    /// reporting (active, not done), or the expected group while it
    /// gathers. When most are done, the few left report as often as a
    /// small group would: a straggler finishing alone is heard every
    /// heartbeat of a group of one.
    fn group_size(&self) -> usize {
        let n = match self.phase {
            Phase::Waiting => self.receivers.len().max(self.cfg.min_receivers),
            _ => self.reporting,
        };
        n.max(1)
    }

    /// The heartbeat period announced: the configured one, or longer, so
    /// the whole group's heartbeats stay within the budget.
    fn heartbeat(&self) -> Duration {
        let budget = self.cfg.heartbeat_budget.max(1) as u64;
        let spread = Duration::from_millis(self.group_size() as u64 * 1000 / budget);
        self.cfg.heartbeat.max(spread)
    }

    /// Silence after which a receiver counts as gone: never less than four
    /// of the heartbeats it was told to send (each at most 1.25 periods
    /// apart), so three lost in a row do not lose it.
    fn receiver_timeout(&self) -> Duration {
        self.cfg.receiver_timeout.max(self.beat_ceiling.0 * 4)
    }

    /// Keeps the longest heartbeat announced lately: receivers still beat
    /// at an older, longer period until they hear the new one and their
    /// next beat comes, so a shrinking group must not shrink the timeout
    /// at once (it lost receivers that were on time).
    fn note_heartbeat(&mut self, now: Instant, beat: Duration) {
        let (ceiling, since) = self.beat_ceiling;
        if beat >= ceiling || now >= since + ceiling.mul_f64(1.25) + self.cfg.announce_interval {
            self.beat_ceiling = (beat, now);
        }
    }

    fn tick(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            let timeout = self.receiver_timeout();
            for r in self.receivers.values_mut() {
                if !r.lost && now.saturating_duration_since(r.last_seen) > timeout {
                    r.lost = true;
                    r.setter = false;
                    self.health_due = true;
                }
            }
        }
        if self.health_due && now >= self.next_health {
            self.health_pass(now);
        }
        if self.phase == Phase::Running && now >= self.next_rate_step {
            self.next_rate_step = now + self.ratectl.interval;
            self.rate_step(now);
        }
        match self.phase {
            Phase::Waiting => {
                // A receiver still asking for its echo has not adopted the
                // session yet: starting without it would send it nothing.
                let joined = self
                    .receivers
                    .values()
                    .filter(|r| !r.lost && !r.status.joining)
                    .count();
                if joined >= self.cfg.min_receivers.max(1)
                    || now >= self.started_at + self.cfg.max_wait
                {
                    self.phase = Phase::Running;
                    self.running_since = Some(now);
                    // The first pass: every chunk, once. Joins asked for
                    // the index before the waiting visits sent it.
                    self.carousel = self.framed.iter().copied().collect();
                    self.index_wanted = false;
                    self.health_pass(now);
                    self.events
                        .push_back(SenderEvent::Started { receivers: joined });
                }
            }
            Phase::Running => {
                let past_deadline = now >= self.started_at + self.cfg.deadline;
                if self.all_done || past_deadline {
                    self.phase = Phase::Ending { left: 5 };
                    self.next_announce = now;
                }
            }
            _ => {}
        }
    }

    fn next_symbol(&mut self, now: Instant) -> Result<Option<(u32, u32)>, CastError> {
        for _ in 0..self.framed.len() + 2 {
            if let Some((object, left)) = self.visit {
                if left > 0 {
                    self.visit = Some((object, left - 1));
                    let o = self
                        .objects
                        .get_mut(&object)
                        .expect("visited object is loaded");
                    let total = o.k + self.fec.repair_count(o.k);
                    let id = o.cursor;
                    o.cursor = (o.cursor + 1) % total;
                    return Ok(Some((object, id)));
                }
                self.visit = None;
                self.visit_end.insert(object, self.seq.saturating_sub(1));
                self.last_ended = Some(object);
                self.quiet_after_visit = true;
                if object != INDEX_OBJECT {
                    // Keep memory flat: only the index and the chunk in hand.
                    self.objects.retain(|&o, _| o == INDEX_OBJECT);
                }
            }
            if !self.plan_visit(now)? {
                if std::mem::take(&mut self.quiet_after_visit) {
                    // Nothing follows the visit just ended: say so now, or
                    // its receivers would learn it only at their heartbeat.
                    self.next_announce = now;
                }
                return Ok(None);
            }
            self.quiet_after_visit = false;
        }
        Ok(None)
    }

    fn frame_len(&self, chunk: u32) -> usize {
        match self.index.entries[chunk as usize].data {
            ChunkData::Zstd(f) | ChunkData::Raw(f) => f.len as usize,
            _ => 0,
        }
    }

    fn load(&mut self, object: u32) -> Result<(), CastError> {
        if self.objects.contains_key(&object) {
            return Ok(());
        }
        let data = if object == INDEX_OBJECT {
            self.index_bytes.clone()
        } else {
            let d = self.source.frame(object)?;
            if d.len() != self.frame_len(object) {
                return Err(CastError::Source(
                    format!(
                        "chunk {object}: frame is {} bytes, the index says {}",
                        d.len(),
                        self.frame_len(object)
                    )
                    .into(),
                ));
            }
            d
        };
        let k = source_symbols(data.len(), self.cfg.symbol_size);
        let cursor = if object == INDEX_OBJECT {
            0
        } else {
            // Continue where the last visit of this chunk stopped.
            self.cursor_memory.get(&object).copied().unwrap_or(0)
        };
        self.objects.insert(
            object,
            ObjectTx {
                data,
                k,
                repair: None,
                cursor,
            },
        );
        Ok(())
    }

    fn write_symbol(
        &mut self,
        object: u32,
        symbol: u32,
        buf: &mut Vec<u8>,
    ) -> Result<(), CastError> {
        let s = self.cfg.symbol_size;
        let o = self.objects.get_mut(&object).expect("loaded");
        if object != INDEX_OBJECT {
            self.cursor_memory.insert(object, o.cursor);
        }
        let mut payload = std::mem::take(&mut self.scratch);
        if symbol < o.k {
            source_symbol(&o.data, s, symbol, &mut payload);
            self.stats.source_symbols += 1;
        } else {
            if o.repair.is_none() {
                let src: Vec<Vec<u8>> = (0..o.k)
                    .map(|i| {
                        let mut b = Vec::new();
                        source_symbol(&o.data, s, i, &mut b);
                        b
                    })
                    .collect();
                let refs: Vec<&[u8]> = src.iter().map(Vec::as_slice).collect();
                let rep = self.fec.encode(&refs)?;
                self.stats.encoded += rep.len() as u64;
                o.repair = Some(Arc::new(rep));
            }
            let rep = o.repair.as_ref().expect("just built");
            payload.clear();
            payload.extend_from_slice(&rep[(symbol - o.k) as usize]);
            self.stats.repair_symbols += 1;
        }
        self.emit(PacketType::Symbol, object, symbol, &payload, buf);
        self.scratch = payload;
        Ok(())
    }

    fn emit(
        &mut self,
        kind: PacketType,
        object: u32,
        symbol: u32,
        payload: &[u8],
        buf: &mut Vec<u8>,
    ) {
        let h = Header {
            kind,
            session: self.cfg.session,
            seq: self.seq,
            object,
            symbol,
        };
        self.seq += 1;
        let start = buf.len();
        wire::emit(&self.cfg.key, &h, payload, buf);
        self.stats.packets += 1;
        self.stats.bytes += (buf.len() - start) as u64;
    }
}
