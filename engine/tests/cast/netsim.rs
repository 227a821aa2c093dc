//! The simulated network: one sender, N receivers, per-link loss (uniform or
//! Gilbert–Elliott bursts), latency with jitter (reordering), duplication, an
//! optional rate limit (a straggler's slow port), late joins. Everything is
//! driven by a fixed seed and a virtual clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rackcast_engine::cast::CastError;
use rackcast_engine::cast::{
    FrameSource, Receiver, ReceiverConfig, ReceiverEvent, ReceiverStats, ReedSolomon, Sender,
    SenderConfig, SenderEvent, SessionKey, Verdict,
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
    pub verdicts: Vec<(u64, Verdict)>,
    pub source_symbols: u64,
    pub repair_symbols: u64,
    /// Source symbols the image's frames and index need, once.
    pub image_symbols: u64,
    pub statuses: u64,
    pub finished_at: Option<f64>,
    pub straggler_events: usize,
    pub wrong_frames: usize,
    /// Each receiver's counters at the end.
    pub rx_stats: Vec<ReceiverStats>,
}

pub struct Image {
    pub index: ChunkIndex,
    pub frames: Vec<Option<Bytes>>,
    pub source: Vec<u8>,
}

const SYMBOL: usize = 1024;
/// Heap targets at or above this go to the sender, from receiver `t - TO_SENDER`.
const TO_SENDER: usize = 1 << 40;

pub fn run(image: &Image, links: &[LinkSpec], seed: u64, rate: u64, limit: Duration) -> Outcome {
    run_with(image, links, seed, rate, limit, &|_| {})
}

/// [`run`], with each receiver's configuration adjusted by `tune`.
pub fn run_with(
    image: &Image,
    links: &[LinkSpec],
    seed: u64,
    rate: u64,
    limit: Duration,
    tune: &dyn Fn(&mut ReceiverConfig),
) -> Outcome {
    let t0 = Instant::now();
    let key = SessionKey::from_secret(b"simulated session key");
    let fec = Arc::new(ReedSolomon);
    let mut cfg = SenderConfig::new(0xC0FFEE, key.clone(), SYMBOL);
    cfg.max_rate = rate;
    cfg.min_rate = rate / 50;
    cfg.min_receivers = links.iter().filter(|l| l.join_at.is_zero()).count();
    cfg.max_wait = Duration::from_secs(2);
    cfg.deadline = limit;
    cfg.announce_interval = Duration::from_millis(20);
    cfg.receiver_timeout = Duration::from_secs(5);
    cfg.revisit_after = Duration::from_millis(2);
    cfg.status_lag = Duration::from_micros(1500);
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
    let addr = |i: usize| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)) };
    let mut rxs: Vec<Receiver> = (0..links.len())
        .map(|i| {
            let mut c = ReceiverConfig::new(key.clone(), 1 + i as u64);
            c.status_interval = Duration::from_millis(10);
            c.nonce = Rng::new(seed ^ ((i as u64 + 1) * 31)).next();
            tune(&mut c);
            Receiver::new(c, fec.clone(), t0)
        })
        .collect();
    let mut down: Vec<Link> = links
        .iter()
        .enumerate()
        .map(|(i, s)| Link {
            spec: *s,
            rng: Rng::new(seed ^ ((i as u64 + 1) * 7919)),
            bad: false,
            tokens: 0.0,
            last: None,
        })
        .collect();
    let mut up: Vec<Link> = links
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut spec = *s;
            spec.rate = None;
            spec.dup = 0.0;
            Link {
                spec,
                rng: Rng::new(seed ^ ((i as u64 + 1) * 104_729)),
                bad: false,
                tokens: 0.0,
                last: None,
            }
        })
        .collect();
    // (time, order, target: usize::MAX = sender, bytes)
    let mut heap: BinaryHeap<Reverse<(Instant, u64, usize, usize)>> = BinaryHeap::new();
    let mut packets: Vec<Option<Bytes>> = Vec::new();
    let mut order = 0u64;
    let mut times = Vec::new();
    let mut done_at: Vec<Option<f64>> = vec![None; links.len()];
    let mut have: Vec<Vec<bool>> = vec![Vec::new(); links.len()];
    let mut wrong_frames = 0;
    let mut straggler_events = 0;
    let mut verdicts = Vec::new();
    let mut finished_at = None;
    let mut buf = Vec::with_capacity(2048);
    let mut now = t0;
    let mut decoder = ChunkDecoder::new();
    let mut scratch = Vec::new();
    let mut refcount: Vec<u32> = Vec::new();
    for _step in 0..50_000_000u64 {
        if now > t0 + limit + Duration::from_secs(1) {
            break;
        }
        while let Some(Reverse((t, _, target, pkt))) = heap.peek().copied() {
            if t > now {
                break;
            }
            heap.pop();
            let bytes = packets[pkt].clone().expect("live packet");
            refcount[pkt] -= 1;
            if refcount[pkt] == 0 {
                packets[pkt] = None;
            }
            if target >= TO_SENDER {
                sender.handle_datagram(now, addr(target - TO_SENDER), &bytes);
                continue;
            }
            let rx = &mut rxs[target];
            rx.handle_datagram(now, sender_addr, &bytes);
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::IndexReady(idx) => have[target] = vec![false; idx.entries.len()],
                    ReceiverEvent::Chunk { chunk, frame } => {
                        if image.frames[chunk as usize].as_ref() != Some(&frame) {
                            wrong_frames += 1;
                        }
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
        }
        // The sender's packets go to every receiver that has joined.
        for _ in 0..64 {
            buf.clear();
            match sender.poll_transmit(now, &mut buf).expect("sender runs") {
                Some(_) => {
                    let id = packets.len();
                    packets.push(Some(Bytes::copy_from_slice(&buf)));
                    refcount.push(0);
                    for (i, link) in down.iter_mut().enumerate() {
                        if now < t0 + link.spec.join_at {
                            continue;
                        }
                        link.carry(now, buf.len(), &mut times);
                        for &t in &times {
                            order += 1;
                            refcount[id] += 1;
                            heap.push(Reverse((t, order, i, id)));
                        }
                    }
                    if refcount[id] == 0 {
                        packets[id] = None;
                    }
                }
                None => break,
            }
        }
        for (i, rx) in rxs.iter_mut().enumerate() {
            if now < t0 + links[i].join_at {
                continue;
            }
            buf.clear();
            while let Some((_, _)) = rx.poll_transmit(now, &mut buf) {
                up[i].carry(now, buf.len(), &mut times);
                let id = packets.len();
                packets.push(Some(Bytes::copy_from_slice(&buf)));
                refcount.push(0);
                for &t in &times {
                    order += 1;
                    refcount[id] += 1;
                    heap.push(Reverse((t, order, TO_SENDER + i, id)));
                }
                if refcount[id] == 0 {
                    packets[id] = None;
                }
                buf.clear();
            }
        }
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Straggler { .. } => straggler_events += 1,
                SenderEvent::Finished { verdicts: v } => {
                    verdicts = v;
                    finished_at = Some((now - t0).as_secs_f64());
                }
                _ => {}
            }
        }
        if sender.is_finished() && heap.is_empty() {
            break;
        }
        let mut next = heap.peek().map(|Reverse((t, ..))| *t);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(sender.poll_timeout());
        for (i, rx) in rxs.iter().enumerate() {
            let join = t0 + links[i].join_at;
            if now < join {
                consider(Some(join));
            } else {
                consider(rx.poll_timeout());
            }
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
        .map(|f| (f.len as usize).div_ceil(SYMBOL) as u64)
        .sum::<u64>();
    Outcome {
        done_at,
        verdicts,
        source_symbols: s.source_symbols,
        repair_symbols: s.repair_symbols,
        image_symbols,
        statuses: s.statuses,
        finished_at,
        straggler_events,
        wrong_frames,
        rx_stats: rxs.iter().map(|r| r.stats().clone()).collect(),
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
