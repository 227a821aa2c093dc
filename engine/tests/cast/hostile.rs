//! A hostile network: replays of an earlier session under the same key,
//! stale and reordered statuses, more receivers than the sender keeps, and a
//! receiver with little memory. Virtual time, no sockets.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rackcast_engine::cast::wire::{self, Header, PacketType, Status};
use rackcast_engine::cast::{
    Receiver, ReceiverConfig, ReceiverEvent, ReedSolomon, Sender, SenderConfig, SessionKey, Verdict,
};

use crate::netsim::{make_image, run_with, Image, LinkSpec, Loss, MemSource, Rng};

const SYMBOL: usize = 1024;

fn image(seed: u64) -> Image {
    let mut rng = Rng::new(seed);
    let src: Vec<u8> = (0..8 * 65536).map(|_| (rng.next() % 64) as u8).collect();
    make_image(src, 65536)
}

/// A sender at `rate` bytes/s.
fn sender(
    image: &Image,
    session: u64,
    key: &SessionKey,
    rate: u64,
    now: Instant,
) -> Sender<MemSource> {
    let mut cfg = SenderConfig::new(session, key.clone(), SYMBOL);
    cfg.max_rate = rate;
    cfg.min_rate = 200_000;
    cfg.announce_interval = Duration::from_millis(20);
    cfg.max_wait = Duration::from_millis(50);
    cfg.deadline = Duration::from_secs(20);
    cfg.revisit_after = Duration::from_millis(2);
    cfg.status_lag = Duration::from_micros(1500);
    Sender::new(
        cfg,
        Arc::new(ReedSolomon),
        image.index.clone(),
        MemSource {
            frames: image.frames.clone(),
        },
        now,
    )
}

fn receiver(key: &SessionKey, id: u64, now: Instant) -> Receiver {
    let mut c = ReceiverConfig::new(key.clone(), id);
    c.status_interval = Duration::from_millis(10);
    c.nonce = Rng::new(id * 977).next();
    Receiver::new(c, Arc::new(ReedSolomon), now)
}

const SENDER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);
const REPLAYER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9666);

/// What one receiver ended with.
struct RxEnd {
    rx: Receiver,
    frames: Vec<Option<Bytes>>,
}

/// Runs `sender` with receivers that join at the given times over a clean
/// 200 µs network. `replay` (if any) is sprayed from another address, one
/// packet every `gap`, in a loop; `relay` sends every live packet again
/// from that address 1 ms late. Returns the receivers and every packet the
/// sender sent.
fn drive(
    mut sender: Sender<MemSource>,
    mut rxs: Vec<(Receiver, Duration)>,
    t0: Instant,
    replay: &[Bytes],
    gap: Duration,
    relay: bool,
) -> (Vec<RxEnd>, Vec<Bytes>) {
    let lat = Duration::from_micros(200);
    // (deliver at, to receiver (None: sender), from, bytes)
    let mut q: VecDeque<(Instant, Option<usize>, SocketAddr, Bytes)> = VecDeque::new();
    let mut sent = Vec::new();
    let mut frames: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); rxs.len()];
    let mut now = t0;
    let mut next_replay = t0;
    let mut replayed = 0usize;
    let mut buf = Vec::new();
    let mut verdicts_at = None;
    for _ in 0..5_000_000u32 {
        if now > t0 + Duration::from_secs(25) || verdicts_at.is_some_and(|t| now > t) {
            break;
        }
        // Deliveries due (the queue is in time order per push, so scan).
        let mut i = 0;
        while i < q.len() {
            if q[i].0 > now {
                i += 1;
                continue;
            }
            let (_, to, from, bytes) = q.remove(i).expect("present");
            match to {
                None => sender.handle_datagram(now, from, &bytes),
                Some(r) => {
                    let rx = &mut rxs[r].0;
                    rx.handle_datagram(now, from, &bytes);
                    while let Some(ev) = rx.poll_event() {
                        match ev {
                            ReceiverEvent::IndexReady(idx) => {
                                frames[r] = vec![None; idx.entries.len()]
                            }
                            ReceiverEvent::Chunk { chunk, frame } => {
                                frames[r][chunk as usize] = Some(frame)
                            }
                            ReceiverEvent::SessionEnded => {}
                        }
                    }
                    if rx.all_received() && !rx.is_done() {
                        rx.set_durable(now);
                    }
                }
            }
        }
        for _ in 0..64 {
            buf.clear();
            if sender.poll_transmit(now, &mut buf).unwrap().is_none() {
                break;
            }
            let b = Bytes::copy_from_slice(&buf);
            sent.push(b.clone());
            for (r, (_, join)) in rxs.iter().enumerate() {
                if now >= t0 + *join {
                    q.push_back((now + lat, Some(r), SENDER, b.clone()));
                    if relay {
                        q.push_back((now + lat * 5, Some(r), REPLAYER, b.clone()));
                    }
                }
            }
        }
        while !replay.is_empty() && now >= next_replay {
            let b = replay[replayed % replay.len()].clone();
            replayed += 1;
            next_replay += gap;
            for (r, (_, join)) in rxs.iter().enumerate() {
                if now >= t0 + *join {
                    q.push_back((now + lat, Some(r), REPLAYER, b.clone()));
                }
            }
        }
        for (r, (rx, join)) in rxs.iter_mut().enumerate() {
            if now < t0 + *join {
                continue;
            }
            buf.clear();
            while let Some((to, len)) = rx.poll_transmit(now, &mut buf) {
                let b = Bytes::copy_from_slice(&buf[buf.len() - len..]);
                if to == SENDER {
                    q.push_back((
                        now + lat,
                        None,
                        SocketAddr::from(([127, 0, 0, 1], 10_000 + r as u16)),
                        b,
                    ));
                }
            }
        }
        while sender.poll_event().is_some() {}
        if sender.is_finished() && verdicts_at.is_none() {
            verdicts_at = Some(now + Duration::from_millis(5));
        }
        let mut next = q.iter().map(|e| e.0).min();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(sender.poll_timeout());
        if !replay.is_empty() {
            consider(Some(next_replay));
        }
        for (rx, join) in &rxs {
            consider(Some(t0 + *join).filter(|&j| j > now).or(rx.poll_timeout()));
        }
        now = next
            .unwrap_or(now + Duration::from_millis(1))
            .max(now + Duration::from_micros(1));
    }
    let ends = rxs
        .into_iter()
        .zip(frames)
        .map(|((rx, _), frames)| RxEnd { rx, frames })
        .collect();
    (ends, sent)
}

fn assert_exact(end: &RxEnd, image: &Image, who: &str) {
    assert!(
        end.rx.is_done(),
        "{who} did not finish: {:?}",
        end.rx.stats()
    );
    for (c, want) in image.frames.iter().enumerate() {
        if want.is_some() {
            assert_eq!(
                end.frames.get(c).cloned().flatten().as_ref(),
                want.as_ref(),
                "{who}: chunk {c}"
            );
        }
    }
}

#[test]
fn an_unpinned_late_joiner_ignores_a_replayed_session_and_completes_the_live_one() {
    let key = SessionKey::from_secret(b"one key file for every session");
    let t0 = Instant::now();
    // Session 1: record everything its sender sent.
    let old = image(1);
    let (ends, recording) = drive(
        sender(&old, 0x1111, &key, 10_000_000, t0),
        vec![(receiver(&key, 1, t0), Duration::ZERO)],
        t0,
        &[],
        Duration::ZERO,
        false,
    );
    assert_exact(&ends[0], &old, "session 1's receiver");
    // Session 2, same key, another image, slow enough (about 0.4 s) that a
    // receiver 150 ms late joins a running session: two receivers at the
    // start, the late one, while session 1 is replayed at ~50k packets/s and
    // every live packet is relayed again from the replayer's address.
    let live = image(2);
    let (ends, _) = drive(
        sender(&live, 0x2222, &key, 1_000_000, t0),
        vec![
            (receiver(&key, 21, t0), Duration::ZERO),
            (receiver(&key, 22, t0), Duration::ZERO),
            (receiver(&key, 23, t0), Duration::from_millis(150)),
        ],
        t0,
        &recording,
        Duration::from_micros(20),
        true,
    );
    for (i, end) in ends.iter().enumerate() {
        assert_eq!(
            end.rx.session(),
            Some(0x2222),
            "receiver {i} followed a replay"
        );
        assert_eq!(end.rx.sender(), Some(SENDER));
        assert_exact(end, &live, &format!("receiver {i}"));
    }
    let late = ends[2].rx.stats();
    assert!(
        late.unechoed > 0,
        "the late joiner never heard a replayed announce: {late:?}"
    );
    assert!(late.wrong_session > 0, "{late:?}");
    assert!(
        late.wrong_source > 0,
        "nothing was relayed after pinning: {late:?}"
    );
    assert!(
        late.packets > 0 && ends[0].rx.stats().packets > 0,
        "the live session was heard"
    );
}

fn status_packet(key: &SessionKey, seq: u64, st: &Status) -> Vec<u8> {
    let h = Header {
        kind: PacketType::Status,
        session: 7,
        seq,
        object: 0,
        symbol: 0,
    };
    let mut b = Vec::new();
    wire::emit(key, &h, &st.emit(), &mut b);
    b
}

#[test]
fn the_sender_ignores_stale_and_replayed_statuses() {
    let key = SessionKey::from_secret(b"status key");
    let t0 = Instant::now();
    let img = image(3);
    let mut s = sender(&img, 7, &key, 10_000_000, t0);
    let from: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    let st = |nonce: u64, done: bool| Status {
        receiver: 1,
        nonce,
        has_index: true,
        done,
        ..Status::default()
    };
    s.handle_datagram(t0, from, &status_packet(&key, 5, &st(0xA, false)));
    // Reordered: an older "done" arrives after a newer "not done", and a
    // duplicate of the newer one.
    s.handle_datagram(t0, from, &status_packet(&key, 4, &st(0xA, true)));
    s.handle_datagram(t0, from, &status_packet(&key, 5, &st(0xA, true)));
    assert_eq!(s.receivers_done(), 0);
    assert_eq!(s.stats().stale, 2);
    // The receiver restarts (new nonce, numbers from 0): taken.
    s.handle_datagram(t0, from, &status_packet(&key, 0, &st(0xB, false)));
    assert_eq!(s.stats().stale, 2);
    // Its old run's statuses, replayed later: ignored.
    s.handle_datagram(t0, from, &status_packet(&key, 9, &st(0xA, true)));
    assert_eq!(s.receivers_done(), 0);
    assert_eq!(s.stats().stale, 3);
    s.handle_datagram(t0, from, &status_packet(&key, 1, &st(0xB, true)));
    assert_eq!(s.receivers_done(), 1);
    assert_eq!(s.receiver_count(), 1);
}

#[test]
fn the_sender_keeps_at_most_max_receivers() {
    let key = SessionKey::from_secret(b"table key");
    let t0 = Instant::now();
    let img = image(4);
    let mut cfg = SenderConfig::new(7, key.clone(), SYMBOL);
    cfg.max_receivers = 3;
    let mut s = Sender::new(
        cfg,
        Arc::new(ReedSolomon),
        img.index,
        MemSource { frames: img.frames },
        t0,
    );
    let from: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    for id in 1..=5u64 {
        let st = Status {
            receiver: id,
            nonce: id,
            ..Status::default()
        };
        s.handle_datagram(t0, from, &status_packet(&key, 0, &st));
    }
    assert_eq!(s.receiver_count(), 3);
    assert_eq!(s.stats().table_full, 2);
    // Known receivers are still heard.
    let st = Status {
        receiver: 2,
        nonce: 2,
        done: true,
        ..Status::default()
    };
    s.handle_datagram(t0, from, &status_packet(&key, 1, &st));
    assert_eq!(s.receivers_done(), 1);
}

#[test]
fn receivers_on_a_small_memory_budget_evict_and_still_complete() {
    let img = image(5);
    // Two chunks' worth of symbols (64 KiB chunks, 6 bits of entropy a byte).
    let budget = 2 * 52 * SYMBOL;
    let links: Vec<LinkSpec> = (0..10)
        .map(|_| LinkSpec {
            loss: Loss::Uniform(0.2),
            ..LinkSpec::clean()
        })
        .collect();
    let out = run_with(&img, &links, 9, 10_000_000, Duration::from_secs(60), &|c| {
        c.max_partial_bytes = budget;
    });
    assert_eq!(out.wrong_frames, 0);
    for (id, v) in &out.verdicts {
        assert_eq!(*v, Verdict::Done, "receiver {id}");
    }
    assert_eq!(out.verdicts.len(), 10);
    let evicted: u64 = out.rx_stats.iter().map(|s| s.evicted + s.over_budget).sum();
    assert!(evicted > 0, "the budget never bit: {:?}", out.rx_stats[0]);
    for s in &out.rx_stats {
        assert!(s.peak_partial_bytes as usize <= budget, "{s:?}");
    }
}

/// A receiver that heard none of the index's first visit (every symbol
/// lost, or sent before it followed the session) asks for the index when
/// the first chunk visit it hears ends, instead of at its heartbeat (a
/// second at this group size); the sender sends it again at once.
#[test]
fn a_receiver_that_missed_the_index_asks_for_it_before_its_heartbeat() {
    let img = image(11);
    let key = SessionKey::from_secret(b"missed index key");
    let t0 = Instant::now();
    let mut s = sender(&img, 0x1D, &key, 20_000_000, t0);
    let mut rx = receiver(&key, 1, t0);
    let lat = Duration::from_micros(200);
    let mut q: VecDeque<(Instant, bool, Bytes)> = VecDeque::new();
    let mut buf = Vec::new();
    let (mut now, mut first_chunk, mut index_at, mut done_at) = (t0, None, None, None);
    for _ in 0..2_000_000u32 {
        if now > t0 + Duration::from_secs(10) || done_at.is_some() {
            break;
        }
        while q.front().is_some_and(|e| e.0 <= now) {
            let (_, to_rx, b) = q.pop_front().expect("present");
            if !to_rx {
                s.handle_datagram(now, SocketAddr::from(([127, 0, 0, 1], 10_000)), &b);
                continue;
            }
            rx.handle_datagram(now, SENDER, &b);
            while let Some(ev) = rx.poll_event() {
                if let ReceiverEvent::IndexReady(_) = ev {
                    index_at.get_or_insert(now);
                }
            }
            if rx.all_received() && !rx.is_done() {
                rx.set_durable(now);
                done_at = Some(now);
            }
        }
        for _ in 0..64 {
            buf.clear();
            if s.poll_transmit(now, &mut buf).unwrap().is_none() {
                break;
            }
            let (h, _) = wire::parse(&key, &buf).unwrap();
            if h.kind == PacketType::Symbol && h.object != wire::INDEX_OBJECT {
                first_chunk.get_or_insert(now);
            }
            // The whole first visit of the index is lost.
            let lost = h.kind == PacketType::Symbol
                && h.object == wire::INDEX_OBJECT
                && first_chunk.is_none();
            if !lost {
                q.push_back((now + lat, true, Bytes::copy_from_slice(&buf)));
            }
        }
        buf.clear();
        while let Some((_, len)) = rx.poll_transmit(now, &mut buf) {
            let b = Bytes::copy_from_slice(&buf[buf.len() - len..]);
            q.push_back((now + lat, false, b));
        }
        while s.poll_event().is_some() {}
        let next = [q.front().map(|e| e.0), s.poll_timeout(), rx.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(1));
        now = next.max(now + Duration::from_micros(1));
    }
    let first_chunk = first_chunk.expect("chunks were sent");
    let index_at = index_at.expect("the index arrived");
    let waited = index_at - first_chunk;
    assert!(
        waited < Duration::from_millis(200),
        "the index came {waited:?} after the first chunk (the heartbeat is a second)"
    );
    assert!(done_at.is_some(), "the receiver finished: {:?}", rx.stats());
}
