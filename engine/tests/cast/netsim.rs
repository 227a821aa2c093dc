//! The simulated network: one sender, N receivers, per-link loss (uniform or
//! Gilbert–Elliott bursts), latency with jitter (reordering), duplication, an
//! optional rate limit (a straggler's slow port), late joins. Everything is
//! driven by a fixed seed and a virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rackcast_engine::cast::wire;
use rackcast_engine::cast::CastError;
use rackcast_engine::cast::{
    ErasureCode, FrameSource, Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats, ReedSolomon,
    Sender, SenderConfig, SenderEvent, SenderStats, SessionKey, Verdict,
};
use rackcast_engine::image::{ChunkData, ChunkDecoder, ChunkIndex};

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Loss {
    Uniform(f64),
    /// Gilbert–Elliott: enter the bad state with `enter`, leave with `exit`,
    /// lose `bad` of packets while in it.
    Bursty {
        enter: f64,
        exit: f64,
        bad: f64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct LinkSpec {
    pub loss: Loss,
    pub latency: Duration,
    pub jitter: Duration,
    pub dup: f64,
    /// Bytes per second this receiver's port can take (tbf-like, small queue).
    pub rate: Option<f64>,
    pub join_at: Duration,
}

impl LinkSpec {
    pub fn clean() -> LinkSpec {
        LinkSpec {
            loss: Loss::Uniform(0.0),
            latency: Duration::from_micros(500),
            jitter: Duration::ZERO,
            dup: 0.0,
            rate: None,
            join_at: Duration::ZERO,
        }
    }
}

struct Link {
    spec: LinkSpec,
    rng: Rng,
    bad: bool,
    tokens: f64,
    last: Option<Instant>,
}

impl Link {
    /// Delivery times for one packet of `len` bytes sent at `now`.
    fn carry(&mut self, now: Instant, len: usize, out: &mut Vec<Instant>) {
        out.clear();
        if let Some(rate) = self.spec.rate {
            let cap = 16.0 * 1500.0;
            let dt = self
                .last
                .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
            self.last = Some(now);
            self.tokens = (self.tokens + dt * rate).min(cap);
            if self.tokens < len as f64 {
                return;
            }
            self.tokens -= len as f64;
        }
        let lost = match self.spec.loss {
            Loss::Uniform(p) => self.rng.chance(p),
            Loss::Bursty { enter, exit, bad } => {
                self.bad = if self.bad {
                    !self.rng.chance(exit)
                } else {
                    self.rng.chance(enter)
                };
                self.bad && self.rng.chance(bad)
            }
        };
        if lost {
            return;
        }
        let copies = if self.rng.chance(self.spec.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let j = if self.spec.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(self.rng.next() % self.spec.jitter.as_nanos() as u64)
            };
            out.push(now + self.spec.latency + j);
        }
    }
}

pub struct MemSource {
    pub frames: Vec<Option<Bytes>>,
}

impl FrameSource for MemSource {
    fn frame(&mut self, chunk: u32) -> Result<Bytes, CastError> {
        self.frames[chunk as usize]
            .clone()
            .ok_or_else(|| CastError::Source(format!("no frame for chunk {chunk}").into()))
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Virtual seconds from the start until each receiver was done (None: never).
    pub done_at: Vec<Option<f64>>,
    /// Virtual seconds from the start until the sender started sending.
    pub started_at: Option<f64>,
    pub verdicts: Vec<(u64, Verdict)>,
    pub source_symbols: u64,
    pub repair_symbols: u64,
    /// Repair symbols the sender computed (its erasure-code work).
    pub encoded: u64,
    /// Source symbols the image's frames need, once.
    pub image_symbols: u64,
    /// Statuses the sender took (processed).
    pub statuses: u64,
    /// Status packets that reached the sender, taken or not.
    pub status_packets: u64,
    /// The most status packets that reached the sender in one virtual second.
    pub status_peak: u64,
    pub finished_at: Option<f64>,
    pub straggler_events: usize,
    pub wrong_frames: usize,
    /// Each receiver's counters at the end.
    pub rx_stats: Vec<ReceiverStats>,
    /// The sender's counters at the end.
    pub sender: SenderStats,
}

pub struct Image {
    pub index: ChunkIndex,
    pub frames: Vec<Option<Bytes>>,
    pub source: Vec<u8>,
}

/// Session settings of a simulated run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Symbol size.
    pub symbol: usize,
    /// The sender's rate ceiling, bytes per second.
    pub rate: u64,
    /// Its floor: the rate control moves between the two.
    pub min_rate: u64,
    /// The session's deadline.
    pub limit: Duration,
    /// Share the receivers' decodes (see [`SharedDecode`]).
    pub shared_decode: Option<Arc<SharedDecode>>,
}

/// The symbol size of [`run_with`].
pub const SYMBOL: usize = 1024;
/// The bytes of decodes [`SharedDecode`] keeps at most.
const SHARED_DECODE_BYTES: usize = 256 << 20;
/// An object's source symbols, decoded once.
type Decoded = Arc<Vec<Vec<u8>>>;
/// (k, symbol size, BLAKE3 of the two lowest symbols present).
type DecodeKey = (u32, usize, [u8; 32]);

/// Reed–Solomon whose decodes are shared between receivers: the decode of
/// an object is computed once and handed to every receiver that decodes the
/// same object. Any k symbols of an MDS code rebuild the same source, so the
/// receivers' fates are identical there; each receiver still chooses when to
/// decode from its own symbols and checks the result against its frame
/// hash, so a wrong share would fail the run, never pass it. (Leopard's
/// decode costs the same whatever k is; 10,000 receivers each decoding
/// every chunk they lost a symbol of would take hours.)
#[derive(Debug, Default)]
pub struct SharedDecode {
    /// The decodes kept, and their bytes.
    cache: Mutex<(HashMap<DecodeKey, Decoded>, usize)>,
    /// Decodes computed, and served from the cache.
    pub computed: AtomicU64,
    pub shared: AtomicU64,
}

impl ErasureCode for SharedDecode {
    fn name(&self) -> &'static str {
        "reed-solomon (decodes shared)"
    }

    fn encode(&self, source: &[&[u8]]) -> Result<Vec<Vec<u8>>, CastError> {
        ReedSolomon.encode(source)
    }

    fn decode(
        &self,
        k: u32,
        symbol_size: usize,
        symbols: &[(u32, &[u8])],
    ) -> Result<Vec<Vec<u8>>, CastError> {
        // The object, named by its two lowest symbols present (ids and bytes).
        let mut sorted: Vec<&(u32, &[u8])> = symbols.iter().collect();
        sorted.sort_by_key(|(id, _)| *id);
        let mut h = blake3::Hasher::new();
        for (id, b) in sorted.iter().take(2) {
            h.update(&id.to_le_bytes());
            h.update(b);
        }
        let key = (k, symbol_size, *h.finalize().as_bytes());
        if let Some(v) = self.cache.lock().unwrap().0.get(&key) {
            self.shared.fetch_add(1, Ordering::Relaxed);
            return Ok(v.as_ref().clone());
        }
        let v = ReedSolomon.decode(k, symbol_size, symbols)?;
        self.computed.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap();
        // Bounded: 1 GiB of 4 MiB chunks would otherwise keep every decode
        // of every loss pattern. A miss only costs a decode.
        let (map, bytes) = &mut *cache;
        *bytes += v.iter().map(Vec::len).sum::<usize>();
        if *bytes > SHARED_DECODE_BYTES {
            map.clear();
            *bytes = v.iter().map(Vec::len).sum();
        }
        map.insert(key, Arc::new(v.clone()));
        Ok(v)
    }
}

/// Receivers whose frames are compared byte for byte with the image's (the
/// rest are checked by their own BLAKE3 against the index, and by holding
/// every frame at the end); the first three also decode their chunks.
const COMPARED: usize = 16;
const SESSION: u64 = 0xC0FFEE;

/// A session at the default symbol size, each receiver's configuration
/// adjusted by `tune`.
pub fn run_with(
    image: &Image,
    links: &[LinkSpec],
    seed: u64,
    rate: u64,
    limit: Duration,
    tune: &dyn Fn(&mut ReceiverConfig),
) -> Outcome {
    let settings = Settings {
        seed,
        symbol: SYMBOL,
        rate,
        min_rate: rate / 50,
        limit,
        shared_decode: None,
    };
    simulate(image, links, &settings, tune)
}

/// Where a packet in flight goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    /// Every receiver on the packet's list (one shared arrival time).
    Group,
    Receiver(usize),
    /// The sender, from this receiver.
    Sender(usize),
}

struct InFlight {
    bytes: Bytes,
    /// Receivers that get it at the group arrival time.
    group: Vec<u32>,
    left: u32,
}

/// Runs one session. Work is shared only where fates are identical: a
/// multicast packet's MAC is checked once for every receiver (each receiver
/// still checks the key it was verified under), and receivers whose link
/// delivers it at the same moment are handled in one event. Every receiver
/// runs its own state machine, FEC and frame hashes.
pub fn simulate(
    image: &Image,
    links: &[LinkSpec],
    st: &Settings,
    tune: &dyn Fn(&mut ReceiverConfig),
) -> Outcome {
    let seed = st.seed;
    let t0 = Instant::now();
    let key = SessionKey::from_secret(b"simulated session key");
    let fec: Arc<dyn ErasureCode> = match &st.shared_decode {
        Some(shared) => shared.clone(),
        None => Arc::new(ReedSolomon),
    };
    let mut cfg = SenderConfig::new(SESSION, key.clone(), st.symbol);
    cfg.max_rate = st.rate;
    cfg.min_rate = st.min_rate;
    cfg.min_receivers = links.iter().filter(|l| l.join_at.is_zero()).count();
    cfg.max_wait = Duration::from_secs(10);
    cfg.deadline = st.limit;
    cfg.announce_interval = Duration::from_millis(100);
    cfg.receiver_timeout = Duration::from_secs(5);
    cfg.revisit_after = Duration::from_millis(2);
    cfg.status_lag = Duration::from_micros(1500);
    cfg.heartbeat = Duration::from_millis(100);
    cfg.report_backoff = Duration::from_millis(4);
    let mut sender = Sender::new(
        cfg,
        fec.clone(),
        image.index.clone(),
        MemSource {
            frames: image.frames.clone(),
        },
        t0,
    );
    let sender_addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let addr = |i: usize| -> SocketAddr {
        SocketAddr::from(([127, (i >> 16) as u8, (i >> 8) as u8, i as u8], 10_000))
    };
    let mut rxs: Vec<Receiver> = (0..links.len())
        .map(|i| {
            let mut c = ReceiverConfig::new(key.clone(), 1 + i as u64);
            c.status_interval = Duration::from_millis(10);
            // The agent knows its session from its directive; joining by
            // echo (the CLI's way) is covered in `hostile.rs`.
            c.session = Some(SESSION);
            c.nonce = Rng::new(seed ^ ((i as u64 + 1) * 31)).next();
            tune(&mut c);
            Receiver::new(c, fec.clone(), t0 + links[i].join_at)
        })
        .collect();
    let link = |i: usize, s: LinkSpec, salt: u64| Link {
        spec: s,
        rng: Rng::new(seed ^ ((i as u64 + 1) * salt)),
        bad: false,
        tokens: 0.0,
        last: None,
    };
    let mut down: Vec<Link> = links
        .iter()
        .enumerate()
        .map(|(i, s)| link(i, *s, 7919))
        .collect();
    let mut up: Vec<Link> = links
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut spec = *s;
            spec.rate = None;
            spec.dup = 0.0;
            // Bursts are counted in packets; statuses seconds apart would
            // stretch one burst over many seconds of a receiver's uplink.
            // Uplinks lose the same share, uniformly.
            if let Loss::Bursty { enter, exit, bad } = spec.loss {
                spec.loss = Loss::Uniform(enter / (enter + exit) * bad);
            }
            link(i, spec, 104_729)
        })
        .collect();
    let mut heap: BinaryHeap<Reverse<(Instant, u64, To, usize)>> = BinaryHeap::new();
    let mut packets: Vec<Option<InFlight>> = Vec::new();
    // Receiver timers, checked lazily: `armed[i]` is the earliest one queued.
    let mut timers: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    let mut armed: Vec<Option<Instant>> = vec![None; links.len()];
    for (i, l) in links.iter().enumerate() {
        timers.push(Reverse((t0 + l.join_at, i)));
        armed[i] = Some(t0 + l.join_at);
    }
    let mut order = 0u64;
    let mut times = Vec::new();
    let mut done_at: Vec<Option<f64>> = vec![None; links.len()];
    let mut have: Vec<Vec<bool>> = vec![Vec::new(); links.len()];
    let mut wrong_frames = 0;
    let mut straggler_events = 0;
    let mut verdicts = Vec::new();
    let mut finished_at = None;
    let mut started_at = None;
    let mut status_packets = 0u64;
    let mut per_second: Vec<u64> = Vec::new();
    let mut buf = Vec::with_capacity(2048);
    let mut now = t0;
    let mut decoder = ChunkDecoder::new();
    let mut scratch = Vec::new();
    let mut touched: Vec<usize> = Vec::new();
    let mut is_touched = vec![false; links.len()];
    let joined = |i: usize, now: Instant| now >= t0 + links[i].join_at;
    let debug = std::env::var_os("RACKCAST_SIM_DEBUG").is_some() && links.len() <= 1000;
    let mut next_debug = t0;
    for _step in 0..200_000_000u64 {
        if now > t0 + st.limit + Duration::from_secs(1) {
            break;
        }
        while let Some(Reverse((t, _, to, pkt))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            let p = packets[pkt].as_mut().expect("live packet");
            p.left -= 1;
            let bytes = p.bytes.clone();
            let group = if to == To::Group {
                std::mem::take(&mut p.group)
            } else {
                Vec::new()
            };
            if p.left == 0 {
                packets[pkt] = None;
            }
            let targets: Vec<usize> = match to {
                To::Sender(i) => {
                    status_packets += 1;
                    let sec = (now - t0).as_secs() as usize;
                    if per_second.len() <= sec {
                        per_second.resize(sec + 1, 0);
                    }
                    per_second[sec] += 1;
                    sender.handle_datagram(now, addr(i), &bytes);
                    continue;
                }
                To::Receiver(i) => vec![i],
                To::Group => group.into_iter().map(|i| i as usize).collect(),
            };
            let verified = wire::verify(&key, &bytes).expect("the sender's packets verify");
            for target in targets {
                let rx = &mut rxs[target];
                rx.handle_verified(now, sender_addr, &verified);
                while let Some(ev) = rx.poll_event() {
                    match ev {
                        ReceiverEvent::IndexReady(idx) => {
                            have[target] = vec![false; idx.entries.len()]
                        }
                        ReceiverEvent::Chunk { chunk, frame } => {
                            let want = image.frames[chunk as usize].as_ref();
                            let wrong = if target < COMPARED {
                                want != Some(&frame)
                            } else {
                                want.map(Bytes::len) != Some(frame.len())
                            };
                            wrong_frames += wrong as usize;
                            // The first receivers decode and check content for real.
                            if target < 3 {
                                decoder
                                    .decode(&image.index, chunk as u64, &frame, &mut scratch)
                                    .expect("a verified frame decodes");
                                let off = image.index.disk_offset(chunk as u64) as usize;
                                assert_eq!(&image.source[off..off + scratch.len()], &scratch[..]);
                            }
                            have[target][chunk as usize] = true;
                        }
                        ReceiverEvent::SessionEnded => {}
                    }
                }
                if rx.all_received() && !rx.is_done() {
                    rx.set_durable(now);
                    done_at[target] = Some((now - t0).as_secs_f64());
                }
                if !is_touched[target] {
                    is_touched[target] = true;
                    touched.push(target);
                }
            }
        }
        // The sender's packets go to every receiver that has joined.
        for _ in 0..64 {
            buf.clear();
            if sender
                .poll_transmit(now, &mut buf)
                .expect("sender runs")
                .is_none()
            {
                break;
            }
            let mut p = InFlight {
                bytes: Bytes::copy_from_slice(&buf),
                group: Vec::new(),
                left: 0,
            };
            let id = packets.len();
            let at = now + LinkSpec::clean().latency;
            for (i, link) in down.iter_mut().enumerate() {
                if !joined(i, now) {
                    continue;
                }
                link.carry(now, buf.len(), &mut times);
                for &t in &times {
                    if t == at && p.group.last() != Some(&(i as u32)) {
                        p.group.push(i as u32);
                    } else {
                        order += 1;
                        p.left += 1;
                        heap.push(Reverse((t, order, To::Receiver(i), id)));
                    }
                }
            }
            if !p.group.is_empty() {
                order += 1;
                p.left += 1;
                heap.push(Reverse((at, order, To::Group, id)));
            }
            packets.push((p.left > 0).then_some(p));
        }
        while let Some(Reverse((t, i))) = timers.peek().copied() {
            if t > now {
                break;
            }
            timers.pop();
            if armed[i] == Some(t) {
                armed[i] = None;
            }
            if !is_touched[i] {
                is_touched[i] = true;
                touched.push(i);
            }
        }
        for i in touched.drain(..) {
            is_touched[i] = false;
            if !joined(i, now) {
                continue;
            }
            let rx = &mut rxs[i];
            buf.clear();
            while let Some((_, _)) = rx.poll_transmit(now, &mut buf) {
                up[i].carry(now, buf.len(), &mut times);
                let id = packets.len();
                let left = times.len() as u32;
                for &t in &times {
                    order += 1;
                    heap.push(Reverse((t, order, To::Sender(i), id)));
                }
                packets.push((left > 0).then(|| InFlight {
                    bytes: Bytes::copy_from_slice(&buf),
                    group: Vec::new(),
                    left,
                }));
                buf.clear();
            }
            if let Some(t) = rx.poll_timeout() {
                let t = t.max(now + Duration::from_micros(1));
                if armed[i].is_none_or(|a| t < a) {
                    armed[i] = Some(t);
                    timers.push(Reverse((t, i)));
                }
            }
        }
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Straggler { receiver, loss } => {
                    straggler_events += 1;
                    if std::env::var_os("RACKCAST_SIM_DEBUG").is_some() {
                        eprintln!(
                            "straggler {receiver} loss {loss:.3} at {:.2}s done {:?}",
                            (now - t0).as_secs_f64(),
                            done_at[receiver as usize - 1]
                        );
                    }
                }
                SenderEvent::Started { .. } => started_at = Some((now - t0).as_secs_f64()),
                SenderEvent::Finished { verdicts: v } => {
                    verdicts = v;
                    finished_at = Some((now - t0).as_secs_f64());
                }
                _ => {}
            }
        }
        if debug && now >= next_debug {
            next_debug = now + Duration::from_secs(10);
            eprintln!(
                "t={:.1}s rate {} done {} stragglers {} stats {:?}",
                (now - t0).as_secs_f64(),
                sender.rate(),
                sender.receivers_done(),
                sender.stragglers(),
                sender.stats()
            );
        }
        if sender.is_finished() && heap.is_empty() {
            break;
        }
        let mut next = heap.peek().map(|Reverse((t, ..))| *t);
        for t in [
            sender.poll_timeout(),
            timers.peek().map(|Reverse((t, _))| *t),
        ]
        .into_iter()
        .flatten()
        {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        let Some(n) = next else { break };
        now = n.max(now + Duration::from_micros(1));
    }
    for (i, h) in have.iter().enumerate() {
        if done_at[i].is_some() {
            let missing = image
                .index
                .entries
                .iter()
                .zip(h)
                .filter(|(e, got)| e.data.frame().is_some() && !**got)
                .count();
            assert_eq!(missing, 0, "receiver {i} reported done without every frame");
        }
    }
    let s = sender.stats();
    let image_symbols = image
        .index
        .entries
        .iter()
        .filter_map(|e| e.data.frame())
        .map(|f| (f.len as usize).div_ceil(st.symbol) as u64)
        .sum::<u64>();
    Outcome {
        done_at,
        started_at,
        verdicts,
        source_symbols: s.source_symbols,
        repair_symbols: s.repair_symbols,
        encoded: s.encoded,
        image_symbols,
        statuses: s.statuses,
        status_packets,
        status_peak: per_second.iter().copied().max().unwrap_or(0),
        finished_at,
        straggler_events,
        wrong_frames,
        rx_stats: rxs.iter().map(|r| r.stats().clone()).collect(),
        sender: s.clone(),
    }
}

/// Builds a real image in memory from `source` (via the real capture path).
pub fn make_image(source: Vec<u8>, chunk_size: u32) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let img = dir.path().join("img");
    std::fs::write(&src, &source).unwrap();
    let opts = rackcast_engine::image::CreateOptions {
        chunk_size,
        threads: 2,
        ..Default::default()
    };
    rackcast_engine::image::create_image(&src, &img, &opts, &mut |_| {}).unwrap();
    let r = rackcast_engine::image::ImageReader::open(&img).unwrap();
    let index = r.index().clone();
    let frames = (0..index.entries.len() as u64)
        .map(|i| match index.entries[i as usize].data {
            ChunkData::Zstd(_) | ChunkData::Raw(_) => {
                let mut f = Vec::new();
                r.read_frame(i, &mut f).unwrap();
                Some(Bytes::from(f))
            }
            _ => None,
        })
        .collect();
    Image {
        index,
        frames,
        source,
    }
}
