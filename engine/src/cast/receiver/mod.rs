//! The receiver: a sans-IO state machine. The shell feeds it datagrams from
//! the group and the time; it hands back verified chunk frames to write and
//! status packets to send to the sender.
//!
//! Nothing reaches the shell unchecked: packets are authenticated, the index
//! must hash to the announced (or expected) root, and every rebuilt frame must
//! match its BLAKE3 from the index before it is handed out.
//!
//! A MAC proves a key holder sent a packet once, not that it is live: a
//! receiver with no pinned session adopts one only from an announce that
//! echoes its own fresh nonce (`join.rs`), and from then on listens to that
//! sender's address alone. Memory for partly received objects is bounded in
//! bytes (`ReceiverConfig::max_partial_bytes`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fec::{source_symbols, ErasureCode, MAX_SOURCE_SYMBOLS};
use super::wire::{self, Announce, Header, PacketType, SessionKey, Status, Verified, INDEX_OBJECT};
use super::CastError;
use crate::image::{ChunkData, ChunkIndex};

mod join;
mod report;

use join::Candidate;
pub use join::MAX_CANDIDATES;
use report::Reports;

/// Default of [`ReceiverConfig::max_partial_bytes`]: the automation
/// environment runs from RAM, beside the disk writer's own buffers.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 128 << 20;

/// Fewest sender packets a loss figure is measured over...
const MIN_LOSS_WINDOW: u64 = 64;
/// ...unless its window has been open this long.
const MAX_LOSS_WINDOW: Duration = Duration::from_millis(500);

/// Decode attempts per object before its symbols are thrown away: a code
/// that is not MDS may need a symbol or two beyond `k`.
const MAX_DECODE_ATTEMPTS: u8 = 4;

/// Receiver configuration.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Packet authentication key.
    pub key: SessionKey,
    /// This receiver's id.
    pub id: u64,
    /// Only accept this session. Otherwise the receiver joins: it sends its
    /// nonce to each sender it hears and adopts the first session whose
    /// announce echoes it.
    pub session: Option<u64>,
    /// Only accept an image with this root.
    pub expected_root: Option<[u8; 32]>,
    /// The shortest heartbeat period (the sender announces the one it wants,
    /// scaled to its group), and four times the shortest gap between two
    /// deficit reports.
    pub status_interval: Duration,
    /// Most chunks held partly received at once (a straggler collects the
    /// lowest-numbered chunks it needs first).
    pub max_partial: usize,
    /// Most bytes of symbols held in partly received objects, index
    /// included; an index larger than this is refused.
    pub max_partial_bytes: usize,
    /// Random per run: the join nonce, and the incarnation the sender counts
    /// this receiver's status sequence numbers within.
    pub nonce: u64,
}

impl ReceiverConfig {
    /// Defaults.
    pub fn new(key: SessionKey, id: u64) -> ReceiverConfig {
        ReceiverConfig {
            key,
            id,
            session: None,
            expected_root: None,
            status_interval: Duration::from_millis(100),
            max_partial: 256,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
            nonce: random_nonce(),
        }
    }
}

/// A fresh nonce from the OS (tests set [`ReceiverConfig::nonce`] from their seed).
fn random_nonce() -> u64 {
    // Without OS randomness a predictable nonce still joins the live
    // sender; it only weakens replay protection, so it is no reason to fail.
    getrandom::u64().unwrap_or(0)
}

/// Something for the shell to act on.
#[derive(Debug, Clone)]
pub enum ReceiverEvent {
    /// The verified index: the shell sets up the target, and may report
    /// chunks already on disk with [`Receiver::mark_done`].
    IndexReady(Arc<ChunkIndex>),
    /// A chunk's stored frame, rebuilt and matched against its hash. The shell
    /// decodes it and writes it (and its duplicates) at its offset.
    Chunk {
        /// Chunk number.
        chunk: u32,
        /// The frame bytes.
        frame: Bytes,
    },
    /// The sender ended the session.
    SessionEnded,
}

/// Counters for the summary.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    /// Datagrams accepted.
    pub packets: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Dropped: failed authentication.
    pub bad_mac: u64,
    /// Dropped: did not parse.
    pub malformed: u64,
    /// Dropped: another session, or not an announce before one is adopted.
    pub wrong_session: u64,
    /// Dropped: from an address other than the adopted sender's.
    pub wrong_source: u64,
    /// Announces heard before joining that did not echo this receiver's
    /// nonce (a replay, or a sender that has not yet heard the join).
    pub unechoed: u64,
    /// Partly received chunks thrown away to stay within the memory bound.
    pub evicted: u64,
    /// Symbols dropped because the memory bound was reached.
    pub over_budget: u64,
    /// Most bytes ever held in partly received objects.
    pub peak_partial_bytes: u64,
    /// Symbols for objects already complete or not needed.
    pub redundant: u64,
    /// Packets missing from the sender's sequence.
    pub lost: u64,
    /// Objects that needed FEC decoding.
    pub decoded: u64,
    /// Statuses sent (joins not included).
    pub reports: u64,
    /// Deficit reports not sent: the sender's echo, or the object back on
    /// the air, already answered them.
    pub suppressed: u64,
    /// Rebuilt frames that failed their hash (never handed out).
    pub bad_frames: u64,
}

#[derive(Debug)]
struct Assembly {
    k: u32,
    len: usize,
    symbols: BTreeMap<u32, Vec<u8>>,
    /// Decodes tried and failed.
    attempts: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Not carried on the network (zero, absent, duplicate).
    Local,
    Needed,
    Done,
}

/// The receiver state machine.
#[derive(Debug)]
pub struct Receiver {
    cfg: ReceiverConfig,
    fec: Arc<dyn ErasureCode>,
    /// The adopted session, and the sender's address, pinned by the
    /// announce that adopted it.
    session: Option<u64>,
    sender: Option<SocketAddr>,
    /// Senders heard announcing before a session was adopted.
    candidates: Vec<Candidate>,
    announce: Option<Announce>,
    index: Option<Arc<ChunkIndex>>,
    states: Vec<ChunkState>,
    needed_left: u32,
    done_count: u32,
    assemblies: BTreeMap<u32, Assembly>,
    /// Symbol bytes held in `assemblies`.
    partial_bytes: usize,
    durable: bool,
    ended: bool,
    acked: bool,
    backlog: u64,
    // Loss accounting over the sender's sequence numbers since the last status.
    window_first: Option<u64>,
    window_opened: Option<Instant>,
    window_max: u64,
    window_got: u64,
    highest_seq: u64,
    last_loss_ppm: u32,
    /// When to report (see `report.rs`).
    reports: Reports,
    /// The first announce heard said the session was already running: the
    /// chunks sent before this receiver joined must be asked for.
    late: bool,
    /// The key's fingerprint, for packets verified by the caller.
    key_id: [u8; 8],
    /// The latest time the shell gave (timers set without one use it).
    clock: Instant,
    /// The object the sender was last heard sending.
    current_object: Option<u32>,
    status_seq: u64,
    events: VecDeque<ReceiverEvent>,
    stats: ReceiverStats,
}

impl Receiver {
    /// A receiver that has heard nothing yet.
    pub fn new(cfg: ReceiverConfig, fec: Arc<dyn ErasureCode>, now: Instant) -> Receiver {
        Receiver {
            // A pinned session is only adopted, with its sender's address, by
            // its first announce.
            session: None,
            reports: Reports::new(cfg.id, cfg.nonce, cfg.status_interval, now),
            late: false,
            key_id: cfg.key.fingerprint(),
            clock: now,
            cfg,
            fec,
            sender: None,
            candidates: Vec::new(),
            announce: None,
            index: None,
            states: Vec::new(),
            needed_left: 0,
            done_count: 0,
            assemblies: BTreeMap::new(),
            partial_bytes: 0,
            durable: false,
            ended: false,
            acked: false,
            backlog: 0,
            window_first: None,
            window_opened: None,
            window_max: 0,
            window_got: 0,
            highest_seq: 0,
            last_loss_ppm: 0,
            current_object: None,
            status_seq: 0,
            events: VecDeque::new(),
            stats: ReceiverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// The verified index, once received.
    pub fn index(&self) -> Option<&Arc<ChunkIndex>> {
        self.index.as_ref()
    }

    /// The session this receiver follows, once adopted.
    pub fn session(&self) -> Option<u64> {
        self.session
    }

    /// The sender's address, pinned when the session was adopted.
    pub fn sender(&self) -> Option<SocketAddr> {
        self.sender
    }

    /// Bytes of symbols held in partly received objects now.
    pub fn partial_bytes(&self) -> usize {
        self.partial_bytes
    }

    /// Whether every chunk that travels has been received.
    pub fn all_received(&self) -> bool {
        self.index.is_some() && self.needed_left == 0
    }

    /// Chunks received (or already on disk).
    pub fn chunks_done(&self) -> u32 {
        self.done_count
    }

    /// Chunks that travel on the network.
    pub fn chunks_needed_total(&self) -> u32 {
        self.states
            .iter()
            .filter(|s| **s != ChunkState::Local)
            .count() as u32
    }

    /// Whether the sender said the session is over.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The sender recorded this receiver as done (after [`Receiver::set_durable`]):
    /// it may leave.
    pub fn acked(&self) -> bool {
        self.acked
    }

    /// The loss measured over the last status interval, in ppm.
    pub fn loss_ppm(&self) -> u32 {
        self.last_loss_ppm
    }

    /// The shell reports bytes decoded but not yet durable.
    pub fn set_write_backlog(&mut self, bytes: u64) {
        self.backlog = bytes;
    }

    /// The shell reports that everything is written and flushed: the next
    /// status says done.
    pub fn set_durable(&mut self, now: Instant) {
        if self.all_received() && !self.durable {
            self.durable = true;
            self.report_spread(now);
        }
    }

    /// Whether the receiver has reported (or will report) completion.
    pub fn is_done(&self) -> bool {
        self.durable
    }

    /// The shell already has `chunk` on disk (resume) or wrote it.
    pub fn mark_done(&mut self, chunk: u32) {
        if let Some(s) = self.states.get_mut(chunk as usize) {
            if *s == ChunkState::Needed {
                *s = ChunkState::Done;
                self.needed_left -= 1;
                self.done_count += 1;
                self.drop_assembly(chunk);
            }
        }
    }

    /// The shell could not use `chunk` (e.g. its write failed): get it again.
    pub fn mark_needed(&mut self, chunk: u32) {
        if let Some(s) = self.states.get_mut(chunk as usize) {
            if *s == ChunkState::Done {
                *s = ChunkState::Needed;
                self.needed_left += 1;
                self.done_count -= 1;
                self.durable = false;
                self.acked = false;
            }
        }
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    /// When the receiver next wants to run (its next status or join).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.sender {
            Some(_) => self.next_report(),
            None => self.next_join(),
        }
    }

    /// Writes a status packet (or, before a session is adopted, a join) if
    /// one is due: returns where to send it and its length (appended to
    /// `buf`). Call it until it returns `None`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Option<(SocketAddr, usize)> {
        let (Some(to), Some(session)) = (self.sender, self.session) else {
            return self.poll_join(now, buf);
        };
        if !self.report_due(now) {
            return None;
        }
        let st = self.status(now);
        self.reported(now);
        Some((to, self.emit_status(session, &st, buf)))
    }

    /// Appends a status packet; returns its length. Every status, joins
    /// included, takes the next sequence number: the sender ignores any
    /// that is not newer than the last it took from this run.
    fn emit_status(&mut self, session: u64, st: &Status, buf: &mut Vec<u8>) -> usize {
        let h = Header {
            kind: PacketType::Status,
            session,
            seq: self.status_seq,
            object: 0,
            symbol: 0,
        };
        self.status_seq += 1;
        let start = buf.len();
        wire::emit(&self.cfg.key, &h, &st.emit(), buf);
        buf.len() - start
    }

    fn status(&mut self, now: Instant) -> Status {
        if let Some(first) = self.window_first {
            let expected = self.window_max - first + 1;
            // A window of a few packets says little (4 lost of 5 is not 80%
            // loss): keep counting until it holds enough, and say the last
            // full window's figure meanwhile; but not for long, or a slow
            // stream would report an old figure (and keep its rate cut).
            let old = self
                .window_opened
                .is_some_and(|t| now.saturating_duration_since(t) >= MAX_LOSS_WINDOW);
            if expected >= MIN_LOSS_WINDOW || old {
                let lost = expected.saturating_sub(self.window_got);
                self.last_loss_ppm = (lost * 1_000_000 / expected.max(1)) as u32;
                self.window_first = None;
                self.window_got = 0;
            }
        }
        let mut needed = Vec::new();
        let mut truncated = false;
        let mut run: Option<(u32, u32)> = None;
        for (i, s) in self.states.iter().enumerate() {
            if *s == ChunkState::Needed {
                run = match run {
                    Some((a, n)) if a + n == i as u32 => Some((a, n + 1)),
                    Some(r) => {
                        if needed.len() == Status::MAX_NEEDED {
                            truncated = true;
                            break;
                        }
                        needed.push(r);
                        Some((i as u32, 1))
                    }
                    None => Some((i as u32, 1)),
                };
            }
        }
        if let Some(r) = run {
            if !truncated {
                if needed.len() == Status::MAX_NEEDED {
                    truncated = true;
                } else {
                    needed.push(r);
                }
            }
        }
        // The objects whose visits ended short come first: they are why a
        // deficit report goes out. Then partly received chunks, lowest first.
        let mut deficits: Vec<(u32, u32)> = self
            .nack_objects()
            .filter(|&c| c != INDEX_OBJECT)
            .map(|c| (c, self.deficit(c)))
            .take(Status::MAX_DEFICITS)
            .collect();
        for (&c, a) in &self.assemblies {
            if deficits.len() == Status::MAX_DEFICITS {
                break;
            }
            if c != INDEX_OBJECT && !deficits.iter().any(|&(d, _)| d == c) {
                deficits.push((c, a.k.saturating_sub(a.symbols.len() as u32)));
            }
        }
        Status {
            receiver: self.cfg.id,
            nonce: self.cfg.nonce,
            joining: false,
            has_index: self.index.is_some(),
            done: self.durable,
            chunks_done: self.done_count,
            loss_ppm: self.last_loss_ppm,
            write_backlog: self.backlog,
            highest_seq: self.highest_seq,
            needed,
            needed_truncated: truncated,
            deficits,
        }
    }

    /// Feeds a datagram from the group (or anything else arriving on the socket).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        match wire::verify(&self.cfg.key, bytes) {
            Ok(p) => self.handle_verified(now, from, &p),
            Err(CastError::BadMac) => self.stats.bad_mac += 1,
            Err(_) => self.stats.malformed += 1,
        }
    }

    /// Feeds a packet already verified by [`wire::verify`] (one check can
    /// serve many receivers); one verified under another key is dropped as
    /// a bad MAC.
    pub fn handle_verified(&mut self, now: Instant, from: SocketAddr, p: &Verified<'_>) {
        self.clock = self.clock.max(now);
        if !p.under(&self.key_id) {
            self.stats.bad_mac += 1;
            return;
        }
        let (h, payload) = (p.header, p.payload);
        if h.kind == PacketType::Status {
            // Another receiver's unicast status cannot reach us; a multicast
            // one is not for us either.
            self.stats.malformed += 1;
            return;
        }
        let Some(session) = self.session else {
            // Nothing but an announce is looked at before a session is
            // adopted, and only an announce can adopt one.
            if h.kind == PacketType::Announce {
                self.before_adoption(now, from, &h, payload);
            } else {
                self.stats.wrong_session += 1;
            }
            return;
        };
        if session != h.session {
            self.stats.wrong_session += 1;
            return;
        }
        if self.sender != Some(from) {
            // The session's packets replayed (or relayed) from elsewhere.
            self.stats.wrong_source += 1;
            return;
        }
        self.stats.packets += 1;
        self.stats.bytes += payload.len() as u64;
        self.count_seq(now, h.seq);
        match h.kind {
            PacketType::Announce => self.on_announce(now, payload),
            PacketType::Symbol => self.on_symbol(now, &h, payload),
            PacketType::End => {
                if !self.ended {
                    self.ended = true;
                    self.events.push_back(ReceiverEvent::SessionEnded);
                }
            }
            PacketType::Repairs => match wire::parse_repairs(payload) {
                Ok(list) => self.on_repairs(&list),
                Err(_) => self.stats.malformed += 1,
            },
            PacketType::Acked => {
                if let Ok(ids) = wire::parse_acked(payload) {
                    if ids.contains(&self.cfg.id) && self.durable {
                        self.acked = true;
                    }
                } else {
                    self.stats.malformed += 1;
                }
            }
            PacketType::Status => {}
        }
    }

    fn count_seq(&mut self, now: Instant, seq: u64) {
        self.highest_seq = self.highest_seq.max(seq);
        match self.window_first {
            None => {
                // Continue from the previous window so losses at its edge count.
                let first = if self.window_max > 0 && seq > self.window_max {
                    self.window_max + 1
                } else {
                    seq
                };
                self.window_first = Some(first);
                self.window_opened = Some(now);
                self.window_max = seq;
                self.window_got = 1;
            }
            Some(first) => {
                if seq >= first {
                    self.window_got += 1;
                    if seq > self.window_max {
                        self.stats.lost += seq - self.window_max - 1;
                        self.window_max = seq;
                    }
                }
            }
        }
    }

    fn on_announce(&mut self, now: Instant, payload: &[u8]) {
        let Some(a) = self.check_announce(payload) else {
            return;
        };
        if self.announce.is_none() {
            // First contact: tell the sender we are here, within the
            // group's spread.
            self.take_feedback_params(now, &a);
            self.report_spread(now);
            self.late = a.running;
        }
        self.take_feedback_params(now, &a);
        if a.ended.is_some() && a.ended == self.current_object {
            // The sender went quiet after this visit: it is over.
            self.current_object = None;
            if let Some(o) = a.ended {
                self.visit_ended(now, o);
            }
        }
        match &self.announce {
            Some(old)
                if (old.root, old.symbol_size, old.index_len)
                    != (a.root, a.symbol_size, a.index_len) =>
            {
                self.stats.malformed += 1;
            }
            _ => self.announce = Some(a),
        }
    }

    /// An announce this receiver could follow, or `None` (counted).
    fn check_announce(&mut self, payload: &[u8]) -> Option<Announce> {
        let Ok(a) = Announce::parse(payload) else {
            self.stats.malformed += 1;
            return None;
        };
        if self.cfg.expected_root.is_some_and(|r| r != a.root) {
            self.stats.wrong_session += 1;
            return None;
        }
        let index_k = source_symbols(a.index_len as usize, a.symbol_size as usize);
        if index_k > MAX_SOURCE_SYMBOLS || a.index_len as usize > self.cfg.max_partial_bytes {
            // Beyond what the code can rebuild, or than this receiver may hold.
            self.stats.malformed += 1;
            return None;
        }
        Some(a)
    }

    fn on_symbol(&mut self, now: Instant, h: &Header, payload: &[u8]) {
        // The sender moved on: if the previous object is still short here, a
        // deficit report follows (after a backoff, unless answered first).
        if self.current_object != Some(h.object) {
            let prev = self.current_object.replace(h.object);
            self.visit_began(h.object);
            if let Some(prev) = prev {
                self.visit_ended(now, prev);
            }
        }
        let Some((symbol_size, index_len)) =
            self.announce.as_ref().map(|a| (a.symbol_size, a.index_len))
        else {
            self.stats.redundant += 1;
            return;
        };
        let s = symbol_size as usize;
        if payload.len() != s {
            self.stats.malformed += 1;
            return;
        }
        let (len, k) = if h.object == INDEX_OBJECT {
            if self.index.is_some() {
                self.stats.redundant += 1;
                return;
            }
            (index_len as usize, source_symbols(index_len as usize, s))
        } else {
            let Some(idx) = &self.index else {
                self.stats.redundant += 1;
                return;
            };
            if self.states.get(h.object as usize) != Some(&ChunkState::Needed) {
                self.stats.redundant += 1;
                return;
            }
            let len = match idx.entries[h.object as usize].data {
                ChunkData::Zstd(f) | ChunkData::Raw(f) => f.len as usize,
                _ => 0,
            };
            (len, source_symbols(len, s))
        };
        if k > MAX_SOURCE_SYMBOLS {
            // No code here rebuilds such an object; the sender cannot send it.
            self.stats.malformed += 1;
            return;
        }
        if h.symbol >= k + self.fec.repair_count(k) {
            self.stats.malformed += 1;
            return;
        }
        if self
            .assemblies
            .get(&h.object)
            .is_some_and(|a| a.symbols.contains_key(&h.symbol))
        {
            self.stats.redundant += 1;
            return;
        }
        if !self.make_room(h.object, s) {
            return;
        }
        let asm = self.assemblies.entry(h.object).or_insert(Assembly {
            k,
            len,
            symbols: BTreeMap::new(),
            attempts: 0,
        });
        asm.symbols.insert(h.symbol, payload.to_vec());
        self.partial_bytes += s;
        self.stats.peak_partial_bytes =
            self.stats.peak_partial_bytes.max(self.partial_bytes as u64);
        if asm.symbols.len() as u32 >= asm.k {
            self.complete(now, h.object, s);
        }
    }

    /// Makes room for one more symbol of `object` within both bounds, by
    /// evicting the highest-numbered partial chunks above it. False (the
    /// symbol is dropped, counted) when there is nothing to evict.
    ///
    /// Keeping the lowest-numbered chunks rather than the newest matches the
    /// sender, which repairs the lowest deficits first; evicting the oldest
    /// instead would, for a receiver further behind than its budget, throw
    /// every chunk away before the carousel came round to it again.
    fn make_room(&mut self, object: u32, s: usize) -> bool {
        let new = !self.assemblies.contains_key(&object);
        loop {
            let chunks_held = self
                .assemblies
                .keys()
                .filter(|&&o| o != INDEX_OBJECT)
                .count();
            let over_count = new && object != INDEX_OBJECT && chunks_held >= self.cfg.max_partial;
            let over_bytes = self.partial_bytes + s > self.cfg.max_partial_bytes;
            if !over_count && !over_bytes {
                return true;
            }
            let victim = self
                .assemblies
                .keys()
                .rfind(|&&o| o != INDEX_OBJECT && o != object)
                .copied()
                .filter(|&v| v > object || object == INDEX_OBJECT);
            let Some(v) = victim else {
                if over_bytes {
                    self.stats.over_budget += 1;
                } else {
                    self.stats.redundant += 1;
                }
                return false;
            };
            self.drop_assembly(v);
            self.stats.evicted += 1;
        }
    }

    fn drop_assembly(&mut self, object: u32) -> Option<Assembly> {
        let asm = self.assemblies.remove(&object)?;
        let held: usize = asm.symbols.values().map(Vec::len).sum();
        self.partial_bytes -= held;
        Some(asm)
    }

    /// An object has `k` symbols (or more, after a failed decode): rebuild,
    /// check and hand it out.
    fn complete(&mut self, now: Instant, object: u32, s: usize) {
        let asm = &self.assemblies[&object];
        let systematic = (0..asm.k).all(|i| asm.symbols.contains_key(&i));
        let data: Vec<u8> = if systematic {
            let mut d = Vec::with_capacity(asm.k as usize * s);
            for i in 0..asm.k {
                d.extend_from_slice(&asm.symbols[&i]);
            }
            d
        } else {
            let have: Vec<(u32, &[u8])> = asm
                .symbols
                .iter()
                .map(|(&i, b)| (i, b.as_slice()))
                .collect();
            match self.fec.decode(asm.k, s, &have) {
                Ok(v) => {
                    self.stats.decoded += 1;
                    v.concat()
                }
                Err(_) => {
                    // Keep the symbols: a code that is not MDS may succeed
                    // with one more. Bounded, so a bad object cannot make
                    // every later symbol cost a decode.
                    self.stats.bad_frames += 1;
                    let asm = self.assemblies.get_mut(&object).expect("present");
                    asm.attempts += 1;
                    if asm.attempts >= MAX_DECODE_ATTEMPTS {
                        self.drop_assembly(object);
                    }
                    return;
                }
            }
        };
        let asm = self.drop_assembly(object).expect("present");
        let mut data = data;
        data.truncate(asm.len);
        if object == INDEX_OBJECT {
            self.on_index(now, data);
            return;
        }
        let idx = self.index.as_ref().expect("chunks only after the index");
        let want = idx.entries[object as usize].data.frame().map(|f| f.hash);
        if want != Some(*blake3::hash(&data).as_bytes()) {
            self.stats.bad_frames += 1;
            return;
        }
        self.mark_done(object);
        self.events.push_back(ReceiverEvent::Chunk {
            chunk: object,
            frame: Bytes::from(data),
        });
    }

    fn on_index(&mut self, now: Instant, data: Vec<u8>) {
        let Some(a) = &self.announce else { return };
        if *blake3::hash(&data).as_bytes() != a.root {
            self.stats.bad_frames += 1;
            return;
        }
        let Ok(idx) = ChunkIndex::parse(&data, 0, u64::MAX) else {
            self.stats.bad_frames += 1;
            return;
        };
        self.states = idx
            .entries
            .iter()
            .map(|e| match e.data {
                ChunkData::Zstd(_) | ChunkData::Raw(_) => ChunkState::Needed,
                _ => ChunkState::Local,
            })
            .collect();
        self.needed_left = self
            .states
            .iter()
            .filter(|s| **s == ChunkState::Needed)
            .count() as u32;
        let idx = Arc::new(idx);
        self.index = Some(idx.clone());
        self.events.push_back(ReceiverEvent::IndexReady(idx));
        self.index_arrived(now);
    }
}
