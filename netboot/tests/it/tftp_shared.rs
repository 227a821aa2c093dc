//! Transfers share a few server sockets (a connection is the pair of ports,
//! RFC 1350): many clients are served from the same port at once, a
//! repeated request from a client's port does not start a second transfer,
//! and a new request from that port after progress replaces the old one.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackcast_netboot::tftp::{Packet, Request, TransferLimits};
use rackcast_netboot::Step;

use crate::tftp_interop::{content, limits, make_root};
use crate::tftp_limits::raw_get;
use crate::util::TftpFixture;

fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
    Packet::Rrq(Request {
        filename: name,
        mode: "octet",
        options: opts.to_vec(),
    })
    .to_vec()
}

#[test]
fn forty_concurrent_clients_are_served_from_the_shared_ports() {
    let n = 300_000;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start(dir.path(), limits());
    assert!(!srv.transfer_addrs.is_empty() && srv.transfer_addrs.len() <= 4);
    let seen: Arc<Mutex<HashMap<usize, BTreeSet<SocketAddr>>>> = Arc::default();
    let threads: Vec<_> = (0..40)
        .map(|i| {
            let (addr, seen) = (srv.addr, seen.clone());
            std::thread::spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                // Half with windows, half lockstep, all at once.
                let opts: &[(&str, &str)] = if i % 2 == 0 {
                    &[("blksize", "1428"), ("windowsize", "8")]
                } else {
                    &[]
                };
                let got = raw_get(&sock, addr, &format!("f{n}"), opts, |_, from| {
                    seen.lock().unwrap().entry(i).or_default().insert(from);
                })
                .unwrap();
                assert!(
                    got.data == content(n),
                    "client {i}: {} bytes",
                    got.data.len()
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 40);
    let ports: BTreeSet<SocketAddr> = seen.values().flatten().copied().collect();
    for (i, from) in seen.iter() {
        assert_eq!(from.len(), 1, "client {i} heard DATA from {from:?}");
    }
    assert!(
        ports.iter().all(|p| srv.transfer_addrs.contains(p)),
        "{ports:?} vs {:?}",
        srv.transfer_addrs
    );
    assert!(ports.len() <= srv.transfer_addrs.len(), "{ports:?}");
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 40);
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 0);
}

#[test]
fn repeated_request_from_the_same_port_is_one_transfer() {
    let n = 200_000;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start(dir.path(), limits());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let opts = [("blksize", "1428"), ("tsize", "0")];
    // A client whose first request seemed lost sends it again; raw_get's own
    // request is the repeat.
    sock.send_to(&rrq(&format!("f{n}"), &opts), srv.addr)
        .unwrap();
    let mut oacks = 0;
    let stats = srv.stats.clone();
    let got = raw_get(&sock, srv.addr, &format!("f{n}"), &opts, |block, _| {
        // Hold block 1's ACK (inside the timeout) until the shard has seen
        // the repeat, so that it meets a running transfer on a busy machine.
        let t0 = std::time::Instant::now();
        while block == 1
            && stats.duplicates.load(Ordering::Relaxed) == 0
            && t0.elapsed() < Duration::from_millis(800)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .unwrap();
    assert!(got.data == content(n));
    // Nothing else is on its way: a second transfer would still be sending
    // its OACK (retransmitted every second) to this port.
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        if matches!(Packet::parse(&buf[..len]), Ok(Packet::Oack(_))) {
            oacks += 1;
        }
    }
    assert_eq!(oacks, 0, "a second transfer answered");
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.requests.load(Ordering::Relaxed), 2);
    assert_eq!(srv.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 0);
}

/// DATA from `sock`: (block, payload, source).
fn recv_data(sock: &UdpSocket) -> (u16, Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (len, from) = sock.recv_from(&mut buf).expect("DATA");
    match Packet::parse(&buf[..len]) {
        Ok(Packet::Data { block, data }) => (block, data.to_vec(), from),
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// Blocks `blocks` in lockstep, each acknowledged; their bytes.
fn lockstep(sock: &UdpSocket, blocks: std::ops::RangeInclusive<u16>) -> Vec<u8> {
    let mut data = Vec::new();
    for want in blocks {
        let (block, chunk, tid) = recv_data(sock);
        assert_eq!(block, want);
        data.extend_from_slice(&chunk);
        sock.send_to(&Packet::Ack(block).to_vec(), tid).unwrap();
    }
    data
}

/// A lockstep transfer (no options) of a 6-block file just requested.
struct Lockstep {
    n: usize,
    srv: TftpFixture,
    sock: UdpSocket,
    name: String,
    _dir: tempfile::TempDir,
}

impl Lockstep {
    fn start(limits: TransferLimits) -> Lockstep {
        let n = 512 * 5 + 100;
        let dir = make_root(&[n]);
        let srv = TftpFixture::start(dir.path(), limits);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = format!("f{n}");
        sock.send_to(&rrq(&name, &[]), srv.addr).unwrap();
        Lockstep {
            n,
            srv,
            sock,
            name,
            _dir: dir,
        }
    }
}

/// The last block of a file of `n` bytes in 512-byte blocks.
fn last_block(n: usize) -> u16 {
    (n / 512 + 1) as u16
}

#[test]
fn late_repeat_of_the_request_leaves_a_healthy_transfer_alone() {
    // A retransmit timer slow enough that block 3 can wait for the repeat to
    // be seen on a busy machine without being sent again.
    let Lockstep {
        n,
        srv,
        sock,
        name,
        _dir,
    } = Lockstep::start(TransferLimits {
        initial_timeout: Duration::from_secs(5),
        max_timeout: Duration::from_secs(5),
        ..limits()
    });
    let mut data = lockstep(&sock, 1..=2);
    // The request again, as if a retransmission of it had been delayed in
    // the network past the first blocks: the transfer goes on at block 3.
    sock.send_to(&rrq(&name, &[]), srv.addr).unwrap();
    // Block 3 waits unanswered (inside the 5 s timeout) until the shard has
    // seen the repeat.
    let t0 = std::time::Instant::now();
    while srv.stats.duplicates.load(Ordering::Relaxed) == 0 && t0.elapsed() < Duration::from_secs(4)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    data.extend(lockstep(&sock, 3..=last_block(n)));
    assert!(data == content(n), "{} bytes", data.len());
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 0);
}

#[test]
fn new_request_after_the_client_went_quiet_replaces_the_transfer() {
    // Take blocks 1 and 2, leave block 3 unanswered until the server sends
    // it again, then ask afresh from the same port, as a client that
    // restarted.
    let Lockstep {
        n,
        srv,
        sock,
        name,
        _dir,
    } = Lockstep::start(limits());
    lockstep(&sock, 1..=2);
    assert_eq!(recv_data(&sock).0, 3);
    assert_eq!(recv_data(&sock).0, 3, "the retransmission");
    sock.send_to(&rrq(&name, &[]), srv.addr).unwrap();
    // The file again from block 1, to the end.
    let data = lockstep(&sock, 1..=last_block(n));
    assert!(data == content(n), "{} bytes", data.len());
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 1);
    // Events reach the fixture's log through a channel: wait (bounded).
    let t0 = std::time::Instant::now();
    let mut failed = srv.details(Step::TftpFailed);
    while failed.is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
        failed = srv.details(Step::TftpFailed);
    }
    assert!(
        failed.len() == 1 && failed[0].contains("superseded"),
        "{failed:?}"
    );
}

#[test]
fn a_thousand_concurrent_transfers_on_a_few_sockets() {
    const CLIENTS: usize = 1000;
    // One socket per client here; the server itself needs only a few.
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4 * CLIENTS as u64 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8 * CLIENTS as u64), hard).unwrap();
    }
    let n = 512 * 40 + 7;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start(dir.path(), limits());
    let want = content(n);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stats, peak2) = (srv.stats.clone(), peak.clone());
    let watcher = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            let a = stats.active.load(Ordering::Relaxed);
            peak2.fetch_max(a, Ordering::Relaxed);
            if stats.completed.load(Ordering::Relaxed) >= CLIENTS as u64 {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let (addr, name) = (srv.addr, format!("f{n}"));
    let results: Vec<Result<(Vec<u8>, SocketAddr), String>> = rt.block_on(async {
        // Every client holds its ACK of block 1 until all have block 1: a
        // thousand transfers running at once, by construction.
        let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (name, barrier) = (name.clone(), barrier.clone());
                tokio::spawn(async move {
                    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                    lockstep_async(&sock, addr, &name, &barrier).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    watcher.join().unwrap();
    let mut ports = BTreeSet::new();
    for (i, r) in results.into_iter().enumerate() {
        let (data, tid) = r.unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert!(data == want, "client {i}: {} bytes", data.len());
        ports.insert(tid);
    }
    assert!(
        ports.iter().all(|p| srv.transfer_addrs.contains(p)),
        "{ports:?} vs {:?}",
        srv.transfer_addrs
    );
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), CLIENTS as u64);
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak >= CLIENTS as u64 / 2,
        "at most {peak} transfers ran at once"
    );
}

/// A lockstep fetch (no options) with retransmission of the RRQ or the last
/// ACK on silence, waiting at `barrier` before acknowledging block 1; the
/// bytes and the server's transfer ID.
async fn lockstep_async(
    sock: &tokio::net::UdpSocket,
    server: SocketAddr,
    name: &str,
    barrier: &tokio::sync::Barrier,
) -> Result<(Vec<u8>, SocketAddr), String> {
    let req = rrq(name, &[]);
    sock.send_to(&req, server)
        .await
        .map_err(|e| e.to_string())?;
    let (mut data, mut next, mut tid) = (Vec::new(), 1u16, None::<SocketAddr>);
    let mut buf = [0u8; 1024];
    for _ in 0..10_000 {
        let got = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await;
        let (len, from) = match got {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => {
                // Silence: ask again, or acknowledge the last block again.
                match tid {
                    None => sock.send_to(&req, server).await,
                    Some(t) => sock.send_to(&Packet::Ack(next - 1).to_vec(), t).await,
                }
                .map_err(|e| e.to_string())?;
                continue;
            }
        };
        match Packet::parse(&buf[..len]) {
            Ok(Packet::Data { block, data: d })
                if block == next && tid.is_none_or(|t| t == from) =>
            {
                tid = Some(from);
                data.extend_from_slice(d);
                if block == 1 {
                    barrier.wait().await;
                }
                sock.send_to(&Packet::Ack(block).to_vec(), from)
                    .await
                    .map_err(|e| e.to_string())?;
                if d.len() < 512 {
                    return Ok((data, from));
                }
                next += 1;
            }
            Ok(Packet::Error { code, message }) => return Err(format!("error {code} {message:?}")),
            _ => {}
        }
    }
    Err("too many datagrams".into())
}
