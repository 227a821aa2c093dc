//! What a stranger on the network can make netboot hold (issue 14): 200
//! netascii transfers of a 64 MiB file keep a separate netboot process
//! under 256 MiB resident while a PXE client still gets its proxy offer and
//! its file; TFTP requests over the per-client cap are refused.
//!
//! The server runs in a child process (this test binary again, entering
//! [`child_netboot_server`]) so that its resident memory is its own, and so
//! that it can be killed the moment it passes the bound instead of taking
//! the machine with it.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable};
use rackcast_netboot::http::HttpLimits;
use rackcast_netboot::tftp::{Packet, Request, TransferLimits};
use rackcast_netboot::{BootAction, Mode, Netboot, NetbootConfig, StaticPolicy};

use crate::tftp_limits::raw_get;

/// Set in the child's environment: the root it serves.
const CHILD_ROOT: &str = "RACKCAST_IT_NETBOOT_CHILD_ROOT";
/// Set in the child's environment: its TFTP per-client cap.
const CHILD_PER_CLIENT: &str = "RACKCAST_IT_NETBOOT_CHILD_PER_CLIENT";

const BIG: u64 = 64 << 20;
const RSS_LIMIT_KIB: u64 = 256 * 1024;
const CLIENTS: usize = 200;

/// Not a test of its own: the netboot server the tests here run as a child
/// process. Returns at once unless started by [`NetbootChild::spawn`]; then
/// serves on loopback, prints its addresses and exits when its stdin closes
/// (the parent died or is done).
#[test]
fn child_netboot_server() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let per_client = std::env::var(CHILD_PER_CLIENT)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TransferLimits::default().max_transfers_per_client);
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = NetbootConfig {
            iface: None,
            server_ip: Ipv4Addr::LOCALHOST,
            root: root.into(),
            mode: Mode::Proxy,
            style: Default::default(),
            allow_vendor: vec![],
            dhcp_ports: vec![0],
            tftp: "127.0.0.1:0".parse().unwrap(),
            http: "127.0.0.1:0".parse().unwrap(),
            tftp_limits: TransferLimits {
                max_transfers_per_client: per_client,
                ..TransferLimits::default()
            },
            http_limits: HttpLimits::default(),
            script_peer: Default::default(),
        };
        let policy = StaticPolicy::with_default(BootAction::ChainFile("small.bin".into()));
        let nb = Netboot::bind(cfg, Arc::new(policy)).await.unwrap();
        let line = format!(
            "READY tftp={} dhcp={}\n",
            nb.tftp_addr().unwrap(),
            nb.dhcp_addrs()[0]
        );
        let mut out = std::io::stdout();
        out.write_all(line.as_bytes()).unwrap();
        out.flush().unwrap();
        nb.run().await.unwrap();
    });
}

/// A netboot child process, killed on drop.
struct NetbootChild {
    child: Child,
    tftp: SocketAddr,
    dhcp: SocketAddr,
}

impl NetbootChild {
    fn spawn(root: &std::path::Path, per_client: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "resource_bounds::child_netboot_server"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD_ROOT, root)
            .env(CHILD_PER_CLIENT, per_client.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the netboot child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().take(100) {
                let Ok(line) = line else { break };
                // libtest's "test ... " may precede it on the line.
                if let Some((_, rest)) = line.split_once("READY ") {
                    let _ = tx.send(rest.to_string());
                    break;
                }
            }
        });
        let mut this = NetbootChild {
            child,
            tftp: "0.0.0.0:0".parse().unwrap(),
            dhcp: "0.0.0.0:0".parse().unwrap(),
        };
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child reports its addresses");
        for kv in ready.split_whitespace() {
            match kv.split_once('=') {
                Some(("tftp", a)) => this.tftp = a.parse().unwrap(),
                Some(("dhcp", a)) => this.dhcp = a.parse().unwrap(),
                _ => {}
            }
        }
        this
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NetbootChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// netascii of `data` (RFC 764), the reference the server's output is held to.
fn netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 2);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

/// The start of the big file: text with LF and CR, some at block edges.
fn big_head() -> Vec<u8> {
    (0..2_000_000u32)
        .map(|i| match i % 97 {
            0 => b'\n',
            50 => b'\r',
            n => b'a' + (n % 26) as u8,
        })
        .collect()
}

/// A netascii client: takes the OACK, then `windows` windows (ACKing each),
/// waits for everyone at `barrier`, then ends with an ERROR. Returns the
/// bytes it got.
fn netascii_reader(
    server: SocketAddr,
    windows: usize,
    barrier: &Barrier,
) -> Result<Vec<u8>, String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let rrq = Packet::Rrq(Request {
        filename: "big.txt",
        mode: "netascii",
        options: vec![("blksize", "1428"), ("windowsize", "16"), ("tsize", "0")],
    })
    .to_vec();
    sock.send_to(&rrq, server).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let (n, tid) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("no OACK: {e}"))?;
    let window = match Packet::parse(&buf[..n]) {
        Ok(Packet::Oack(o)) => {
            if o.iter().any(|(k, _)| *k == "tsize") {
                return Err(format!("tsize granted for netascii: {o:?}"));
            }
            o.iter()
                .find(|(k, _)| *k == "windowsize")
                .and_then(|(_, v)| v.parse::<u16>().ok())
                .ok_or("no windowsize")?
        }
        other => return Err(format!("expected an OACK, got {other:?}")),
    };
    let ack = |b: u16| sock.send_to(&Packet::Ack(b).to_vec(), tid);
    ack(0).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut next: u16 = 1;
    let mut in_window = 0;
    let mut done_windows = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_windows < windows {
        if Instant::now() > deadline {
            return Err("no progress in 60 s".into());
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => {
                // Lost something: ask again from what we have.
                ack(next - 1).map_err(|e| e.to_string())?;
                in_window = 0;
                continue;
            }
        };
        if from != tid {
            continue;
        }
        if let Ok(Packet::Data { block, data }) = Packet::parse(&buf[..n]) {
            if block != next {
                continue;
            }
            got.extend_from_slice(data);
            next += 1;
            in_window += 1;
            if in_window == window {
                ack(block).map_err(|e| e.to_string())?;
                in_window = 0;
                done_windows += 1;
            }
        }
    }
    // Everyone holds a running transfer at this point.
    barrier.wait();
    let e = Packet::Error {
        code: 0,
        message: "enough",
    };
    sock.send_to(&e.to_vec(), tid).map_err(|e| e.to_string())?;
    Ok(got)
}

/// A PXE client's DISCOVER (arch 7) from `from`; true when an OFFER comes back.
fn pxe_offer(from: &UdpSocket, server: SocketAddr) -> bool {
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    let mut m = Message::new(
        Ipv4Addr::LOCALHOST,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_xid(0x1234_5678);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003016".to_vec(),
    ));
    o.insert(DhcpOption::ClientSystemArchitecture(7u16.into()));
    from.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        from.send_to(&m.to_vec().unwrap(), server).unwrap();
        if let Ok((n, _)) = from.recv_from(&mut buf) {
            if let Ok(r) = Message::decode(&mut Decoder::new(&buf[..n])) {
                if r.xid() == 0x1234_5678 && r.opts().msg_type() == Some(MessageType::Offer) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn two_hundred_netascii_transfers_of_64_mib_stay_under_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let head = big_head();
    {
        let mut f = std::fs::File::create(dir.path().join("big.txt")).unwrap();
        f.write_all(&head).unwrap();
        f.set_len(BIG).unwrap(); // the rest is a hole: zeros
    }
    let small: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.path().join("small.bin"), &small).unwrap();
    let srv = NetbootChild::spawn(dir.path(), CLIENTS + 10);
    let pid = srv.pid();
    let idle = rss_kib(pid).expect("the child's VmRSS");
    // Watch the child's memory; past the bound it is killed at once.
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(300) {
                let Some(kib) = rss_kib(pid) else { return };
                peak.fetch_max(kib, Ordering::Relaxed);
                if kib > RSS_LIMIT_KIB {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let windows = 8;
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (b, addr) = (barrier.clone(), srv.tftp);
            std::thread::spawn(move || {
                let r = netascii_reader(addr, windows, &b);
                if r.is_err() {
                    // Release the others; this one failed anyway.
                    b.wait();
                }
                r
            })
        })
        .collect();
    // While all 200 run: a PXE client's offer and its file.
    let dhcp_client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let offered = pxe_offer(
        &dhcp_client,
        SocketAddr::from(([127, 0, 0, 1], srv.dhcp.port())),
    );
    let file_client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fetched = raw_get(
        &file_client,
        srv.tftp,
        "small.bin",
        &[("blksize", "1428")],
        |_, _| {},
    );
    barrier.wait();
    let want = netascii(&head);
    let mut failures = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        match r.join().unwrap() {
            Ok(got) => {
                assert_eq!(got.len(), windows * 16 * 1428, "client {i}");
                assert!(got[..] == want[..got.len()], "client {i}: netascii differs");
            }
            Err(e) => failures.push(format!("client {i}: {e}")),
        }
    }
    let peak_during = peak.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    eprintln!(
        "netboot child VmRSS: {} MiB idle, {} MiB peak with {CLIENTS} netascii transfers of 64 MiB",
        idle / 1024,
        peak_during / 1024
    );
    assert!(
        peak_during <= RSS_LIMIT_KIB,
        "resident {} MiB, over 256 MiB",
        peak_during / 1024
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(offered, "no proxy offer while the transfers ran");
    let fetched = fetched.expect("the PXE client's file");
    assert!(fetched.data == small, "{} bytes", fetched.data.len());
}

#[test]
fn requests_over_the_per_client_cap_get_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.bin"), vec![7u8; 100_000]).unwrap();
    let srv = NetbootChild::spawn(dir.path(), 2);
    let rrq = Packet::Rrq(Request {
        filename: "small.bin",
        mode: "octet",
        options: vec![("blksize", "1428")],
    })
    .to_vec();
    // Three ports of one address ask; each takes its OACK and sits on it.
    let socks: Vec<UdpSocket> = (0..3)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.send_to(&rrq, srv.tftp).unwrap();
            s
        })
        .collect();
    let mut answers = Vec::new();
    for s in &socks {
        let mut buf = [0u8; 1024];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        answers.push((Packet::parse(&buf[..n]).unwrap().to_vec(), from));
    }
    let kinds: Vec<String> = answers
        .iter()
        .map(|(p, _)| match Packet::parse(p) {
            Ok(Packet::Oack(_)) => "oack".to_string(),
            Ok(Packet::Error { code, message }) => format!("error {code} {message}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "oack").count(),
        2,
        "{kinds:?}"
    );
    let refused = answers
        .iter()
        .find(|(p, _)| matches!(Packet::parse(p), Ok(Packet::Error { .. })))
        .expect("one refusal");
    assert_eq!(refused.1, srv.tftp, "refused from the listening port");
    assert!(
        kinds.iter().any(|k| k.starts_with("error 0 too many")),
        "{kinds:?}"
    );
    // A repeated request from a port holding a transfer is not refused.
    let first = &socks[kinds.iter().position(|k| k == "oack").unwrap()];
    first.send_to(&rrq, srv.tftp).unwrap();
    first
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1024];
    if let Ok((n, _)) = first.recv_from(&mut buf) {
        assert!(
            !matches!(Packet::parse(&buf[..n]), Ok(Packet::Error { .. })),
            "a repetition was refused"
        );
    }
    // Another client address is served (127.0.0.2 is loopback too).
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    let got = raw_get(&other, srv.tftp, "small.bin", &[], |_, _| {}).unwrap();
    assert_eq!(got.data.len(), 100_000);
    // Once a holder ends, the refused port is served.
    let (_, tid) = &answers[kinds.iter().position(|k| k == "oack").unwrap()];
    let e = Packet::Error {
        code: 0,
        message: "done",
    };
    first.send_to(&e.to_vec(), *tid).unwrap();
    let third = &socks[kinds.iter().position(|k| k != "oack").unwrap()];
    let mut served = None;
    for _ in 0..50 {
        if let Ok(f) = raw_get(third, srv.tftp, "small.bin", &[], |_, _| {}) {
            served = Some(f);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        served.expect("served once a place freed").data.len(),
        100_000
    );
}
