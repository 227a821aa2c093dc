//! What the TFTP server grants and refuses beyond the happy path: blksize
//! capped by a namespace's loopback MTU (IPv4 and IPv6), windowsize shrunk by the server-wide
//! cap on bytes in flight, and datagrams from a stranger on a transfer's port
//! answered with ERROR 5 while the real client's transfer goes on.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rackcast_netboot::tftp::{Packet, Request, TransferLimits};
use rackcast_netboot::Step;

use crate::tftp_interop::{content, limits, make_root, LIMIT};
use crate::util::{enter, have, root, run_limited, Netns, TftpFixture};

#[test]
fn blksize_clamped_to_loopback_mtu_1200_in_namespace() {
    if !root() || !have("ip") {
        return;
    }
    let ns = Netns::new("rtm");
    ns.exec(&["ip", "link", "set", "lo", "mtu", "1200"]);
    let n = 100_000;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start_in(Some(&ns.name), dir.path(), limits());
    // 1200 - 20 (IP) - 8 (UDP) - 4 (TFTP).
    fetch_expecting_blksize(&ns, "127.0.0.1:0", &srv, n, 1168);
    // And atftp, asking for 1468, takes the smaller grant.
    if have("atftp") {
        let out = tempfile::tempdir().unwrap();
        let local = out.path().join("got");
        let (ok, log) = run_limited(
            &mut ns.command(&[
                "atftp",
                "--trace",
                "--option",
                "blksize 1468",
                "-g",
                "-r",
                &format!("f{n}"),
                "-l",
                local.to_str().unwrap(),
                "127.0.0.1",
                &srv.addr.port().to_string(),
            ]),
            LIMIT,
        );
        assert!(ok, "atftp in the namespace: {log}");
        assert!(std::fs::read(&local).unwrap() == content(n));
        assert_eq!(
            atftp_granted(&log, "blksize").as_deref(),
            Some("1168"),
            "atftp's view: {log}"
        );
    }
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let starts = srv.details(Step::TftpStart);
    assert!(
        !starts.is_empty() && starts.iter().all(|d| d.contains("blksize 1168 ")),
        "{starts:?}"
    );
    assert_eq!(
        srv.stats.blksize_capped_by_mtu.load(Ordering::Relaxed),
        starts.len() as u64
    );
}

#[test]
fn blksize_clamped_to_loopback_mtu_1300_over_ipv6() {
    if !root() || !have("ip") {
        return;
    }
    let ns = Netns::new("rt6");
    ns.exec(&["ip", "link", "set", "lo", "mtu", "1300"]);
    // IPv6 needs lo to carry ::1; a kernel booted with ipv6.disable=1 has
    // no IPv6 at all, which is the only reason to skip.
    let name = ns.name.clone();
    let v6 = std::thread::spawn(move || {
        enter(&name);
        UdpSocket::bind("[::1]:0").is_ok()
    })
    .join()
    .unwrap();
    if !v6 {
        eprintln!("skipping: no IPv6 on loopback in a new namespace");
        return;
    }
    let n = 50_000;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start_at(
        Some(&ns.name),
        "[::1]:0".parse().unwrap(),
        dir.path(),
        limits(),
    );
    // 1300 - 40 (IPv6) - 8 (UDP) - 4 (TFTP).
    fetch_expecting_blksize(&ns, "[::1]:0", &srv, n, 1248);
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.blksize_capped_by_mtu.load(Ordering::Relaxed), 1);
}

/// Fetches `f{n}` asking for blksize 1468 with a raw client bound to
/// `client` in `ns` (it reads the OACK itself), and checks the grant is
/// `want`, no block is larger, and the bytes are right.
fn fetch_expecting_blksize(
    ns: &Netns,
    client: &'static str,
    srv: &TftpFixture,
    n: usize,
    want: usize,
) {
    let (name, addr) = (ns.name.clone(), srv.addr);
    let got = std::thread::spawn(move || {
        enter(&name);
        let sock = UdpSocket::bind(client).unwrap();
        raw_get(
            &sock,
            addr,
            &format!("f{n}"),
            &[("blksize", "1468"), ("tsize", "0")],
            |_, _| {},
        )
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(
        got.option("blksize"),
        Some(want.to_string().as_str()),
        "{:?}",
        got.oack
    );
    assert_eq!(got.largest_block, want);
    assert!(got.data == content(n), "{} bytes back", got.data.len());
}

#[test]
fn global_cap_on_bytes_in_flight_lowers_later_windows_until_released() {
    if !have("atftp") {
        return;
    }
    // Room for 100 blocks of 1468: one full window of 64 and 36 more.
    let limits = TransferLimits {
        max_total_bytes_in_flight: 100 * 1468,
        max_retries: 6,
        ..limits()
    };
    let (small, big) = (300_000, 1_000_000);
    let dir = make_root(&[small, big]);
    let srv = TftpFixture::start(dir.path(), limits);
    let want = [("blksize", "1468"), ("windowsize", "64")];
    // Two holders take the OACK and then sit on it, keeping their share.
    let a = Holder::start(srv.addr, &format!("f{big}"), &want);
    let b = Holder::start(srv.addr, &format!("f{big}"), &want);
    assert_eq!(a.windowsize, "64");
    assert_eq!(b.windowsize, "36", "the second gets what the first left");
    assert_eq!(srv.budget.in_use(), 100 * 1468);
    let out = tempfile::tempdir().unwrap();
    let fetch = |tag: &str| {
        let local = out.path().join(tag);
        let (ok, log) = run_limited(
            Command::new("atftp")
                .args(["--trace", "--option", "blksize 1468"])
                .args(["--option", "windowsize 64", "-g", "-r"])
                .arg(format!("f{small}"))
                .arg("-l")
                .arg(&local)
                .arg("127.0.0.1")
                .arg(srv.addr.port().to_string()),
            LIMIT,
        );
        assert!(ok, "atftp {tag}: {log}");
        assert!(std::fs::read(&local).unwrap() == content(small), "{tag}");
        let start = srv
            .details(Step::TftpStart)
            .into_iter()
            .rfind(|d| d.starts_with(&format!("f{small} ")))
            .unwrap_or_default();
        (start, log)
    };
    let (c, log) = fetch("c");
    assert!(c.contains("windowsize 1 "), "cap full: one block: {c}");
    assert_eq!(
        atftp_granted(&log, "windowsize").as_deref(),
        Some("1"),
        "atftp's view: {log}"
    );
    b.release();
    assert!(
        wait_for(|| srv.budget.in_use() == 64 * 1468),
        "B's share kept"
    );
    let (d, _) = fetch("d");
    assert!(d.contains("windowsize 36 "), "{d}");
    a.release();
    assert!(wait_for(|| srv.budget.in_use() == 0), "A's share kept");
    let (e, log) = fetch("e");
    assert!(e.contains("windowsize 64 "), "whole cap free again: {e}");
    assert_eq!(
        atftp_granted(&log, "windowsize").as_deref(),
        Some("64"),
        "atftp's view: {log}"
    );
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.budget.in_use(), 0, "every share given back");
    assert_eq!(
        srv.stats.window_capped.load(Ordering::Relaxed),
        3,
        "b, c, d"
    );
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 3);
}

#[test]
fn stray_on_transfer_port_gets_error_5_and_transfer_continues() {
    let n = 100_000;
    let dir = make_root(&[n]);
    let srv = TftpFixture::start(dir.path(), limits());
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stray = UdpSocket::bind("127.0.0.1:0").unwrap();
    stray
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut checked = Vec::new();
    let got = raw_get(&client, srv.addr, &format!("f{n}"), &[], |block, tid| {
        let probe: Option<Vec<u8>> = match block {
            // An ACK for the block the real client has not acknowledged yet.
            1 => Some(Packet::Ack(1).to_vec()),
            50 => Some(b"\x00\x09junk".to_vec()),
            _ => None,
        };
        if let Some(p) = probe {
            stray.send_to(&p, tid).unwrap();
            let mut buf = [0u8; 1024];
            let (len, from) = stray.recv_from(&mut buf).expect("an answer to the stray");
            assert_eq!(from, tid);
            match Packet::parse(&buf[..len]) {
                Ok(Packet::Error { code: 5, .. }) => {}
                other => panic!("stray at block {block} got {other:?}"),
            }
            // Had the server taken the stray's ACK 1 as the client's, block 2
            // would be on its way now (the retransmit timer is a second).
            client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let early = client.recv_from(&mut buf);
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            assert!(early.is_err(), "the stray moved the transfer: {early:?}");
            checked.push(block);
        }
        if block == 100 {
            // An ERROR from a stranger is counted, neither answered nor obeyed.
            let e = Packet::Error {
                code: 0,
                message: "not yours",
            };
            stray.send_to(&e.to_vec(), tid).unwrap();
            stray
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let mut buf = [0u8; 64];
            assert!(stray.recv_from(&mut buf).is_err(), "ERROR was answered");
            checked.push(block);
        }
    })
    .unwrap();
    assert_eq!(checked, [1, 50, 100]);
    assert!(got.data == content(n), "{} bytes back", got.data.len());
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.stray.load(Ordering::Relaxed), 3);
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 1);
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 0);
}

/// What a raw fetch saw.
pub(crate) struct Fetched {
    pub oack: Vec<(String, String)>,
    pub data: Vec<u8>,
    pub largest_block: usize,
}

impl Fetched {
    fn option(&self, name: &str) -> Option<&str> {
        self.oack
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A small client (RFC 1350, 2347, 7440): sends the RRQ, ACKs the OACK and
/// each window's last block, re-ACKs on silence. `hook(block, tid)` runs when
/// DATA `block` first arrives, before it is acknowledged.
pub(crate) fn raw_get(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    opts: &[(&str, &str)],
    mut hook: impl FnMut(u16, SocketAddr),
) -> Result<Fetched, String> {
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let rrq = Packet::Rrq(Request {
        filename: name,
        mode: "octet",
        options: opts.to_vec(),
    })
    .to_vec();
    sock.send_to(&rrq, server).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tid: Option<SocketAddr> = None;
    let mut got = Fetched {
        oack: Vec::new(),
        data: Vec::new(),
        largest_block: 0,
    };
    let (mut blksize, mut window) = (512usize, 1u64);
    let (mut next, mut since_ack, mut last_ack) = (1u64, 0u64, None::<u16>);
    let mut buf = vec![0u8; 65536];
    for _ in 0..1_000_000 {
        if Instant::now() > deadline {
            return Err(format!("no end after 60 s, {} bytes", got.data.len()));
        }
        let (len, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                match (tid, last_ack) {
                    (Some(t), Some(b)) => sock.send_to(&Packet::Ack(b).to_vec(), t),
                    _ => sock.send_to(&rrq, server),
                }
                .map_err(|e| e.to_string())?;
                since_ack = 0;
                continue;
            }
        };
        if tid.is_some_and(|t| t != from) {
            continue;
        }
        let ack = |b: u16| sock.send_to(&Packet::Ack(b).to_vec(), from);
        match Packet::parse(&buf[..len]) {
            Ok(Packet::Oack(o)) if tid.is_none() => {
                tid = Some(from);
                got.oack = o
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                if let Some(b) = got.option("blksize") {
                    blksize = b.parse().map_err(|_| format!("blksize {b}"))?;
                }
                if let Some(w) = got.option("windowsize") {
                    window = w.parse().map_err(|_| format!("windowsize {w}"))?;
                }
                ack(0).map_err(|e| e.to_string())?;
                last_ack = Some(0);
            }
            Ok(Packet::Data { block, data }) => {
                // Latch onto the server's transfer ID only with the first
                // block (or the OACK above): tests run side by side, and a
                // late retransmission from another test's server can reach a
                // reused port.
                if block != next as u16 || (tid.is_none() && block != 1) {
                    continue;
                }
                tid.get_or_insert(from);
                hook(block, from);
                got.data.extend_from_slice(data);
                got.largest_block = got.largest_block.max(data.len());
                next += 1;
                since_ack += 1;
                let last = data.len() < blksize;
                if last || since_ack == window {
                    ack(block).map_err(|e| e.to_string())?;
                    last_ack = Some(block);
                    since_ack = 0;
                }
                if last {
                    return Ok(got);
                }
            }
            Ok(Packet::Error { code, message }) => {
                return Err(format!("server error {code} {message:?}"))
            }
            _ => {}
        }
    }
    Err("too many datagrams".into())
}

/// A client that takes its OACK and then says nothing, holding its share of
/// the bytes in flight until it sends ERROR (or the server gives up on it).
struct Holder {
    sock: UdpSocket,
    tid: SocketAddr,
    windowsize: String,
}

impl Holder {
    fn start(server: SocketAddr, name: &str, opts: &[(&str, &str)]) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rrq = Packet::Rrq(Request {
            filename: name,
            mode: "octet",
            options: opts.to_vec(),
        });
        sock.send_to(&rrq.to_vec(), server).unwrap();
        let mut buf = [0u8; 1024];
        let (len, tid) = sock.recv_from(&mut buf).unwrap();
        let Ok(Packet::Oack(o)) = Packet::parse(&buf[..len]) else {
            panic!("expected an OACK")
        };
        let windowsize = o
            .iter()
            .find(|(k, _)| *k == "windowsize")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        Holder {
            sock,
            tid,
            windowsize,
        }
    }

    fn release(self) {
        let e = Packet::Error {
            code: 0,
            message: "done holding",
        };
        self.sock.send_to(&e.to_vec(), self.tid).unwrap();
    }
}

/// The value of option `name` in the OACK atftp's `--trace` shows, as in
/// `received OACK <blksize: 1168, windowsize: 1, >`.
fn atftp_granted(log: &str, name: &str) -> Option<String> {
    let line = log.lines().find(|l| l.starts_with("received OACK <"))?;
    line.trim_start_matches("received OACK <")
        .split([',', '>'])
        .filter_map(|kv| kv.trim().split_once(": "))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Polls `cond` for up to five seconds.
fn wait_for(cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
