//! Shared fixtures: an in-process netboot on its own runtime thread, tool
//! discovery, and network namespaces cleaned up in `Drop`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackcast_netboot::files::FileTree;
use rackcast_netboot::tftp::{FlightBudget, TftpServer, TftpStats, TransferLimits};
use rackcast_netboot::{BootAction, BootEvent, Events, StaticPolicy, Step};

/// True when `bin` is on PATH; otherwise prints why the test is skipped.
pub fn have(bin: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {bin} not installed");
    }
    ok
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("SKIP: needs root for network namespaces");
    }
    ok
}

/// Runs a command with a hard time limit; returns (success, stdout+stderr).
pub fn run_limited(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&out.stderr));
            return (status.success(), s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TFTP server on 127.0.0.1 (or another loopback address) on its own
/// runtime, stopped on drop.
pub struct TftpFixture {
    pub addr: SocketAddr,
    /// The shared sockets transfers are served from.
    pub transfer_addrs: Vec<SocketAddr>,
    pub stats: Arc<TftpStats>,
    pub budget: Arc<FlightBudget>,
    /// Every boot event the server emitted, in order.
    pub events: Arc<Mutex<Vec<BootEvent>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TftpFixture {
    pub fn start(root: &Path, limits: TransferLimits) -> Self {
        Self::start_in(None, root, limits)
    }

    /// Like [`TftpFixture::start`], on the loopback of namespace `ns`.
    pub fn start_in(ns: Option<&str>, root: &Path, limits: TransferLimits) -> Self {
        Self::start_at(ns, "127.0.0.1:0".parse().unwrap(), root, limits)
    }

    /// Like [`TftpFixture::start_in`], bound to `bind` (`[::1]:0` for IPv6).
    pub fn start_at(
        ns: Option<&str>,
        bind: SocketAddr,
        root: &Path,
        limits: TransferLimits,
    ) -> Self {
        let ns = ns.map(str::to_string);
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let policy = Arc::new(StaticPolicy::with_default(BootAction::Ignore));
        let files = FileTree::new(root, policy).unwrap();
        let events = Events::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // Runtime threads inherit the namespace of the thread building them.
            if let Some(ns) = &ns {
                enter(ns);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut feed = events.subscribe();
                let srv = TftpServer::bind(bind, files, limits, events).await.unwrap();
                tx.send((
                    srv.local_addr().unwrap(),
                    srv.transfer_addrs(),
                    srv.stats(),
                    srv.flight_budget(),
                ))
                .unwrap();
                // Runs as long as the server; a lagging feed only loses events.
                let record = async move {
                    loop {
                        match feed.recv().await {
                            Ok(e) => sink.lock().unwrap().push(e),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                };
                tokio::select! {
                    _ = srv.run() => {}
                    _ = record => {}
                    _ = stop_rx => {}
                }
            });
        });
        let (addr, transfer_addrs, stats, budget) =
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TftpFixture {
            addr,
            transfer_addrs,
            stats,
            budget,
            events: log,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until no transfer is running.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.stats.active.load(Ordering::Acquire) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Details of the events of `step` so far.
    pub fn details(&self, step: Step) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.step == step)
            .map(|e| e.detail.clone())
            .collect()
    }
}

impl Drop for TftpFixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are <= 15 chars).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` with arguments, panicking with its output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (by PID), then delete the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Enters `ns` on the current thread (for a thread that then binds sockets).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// A UDP datagram or TCP segment seen on the wire, by its IPv4 and
/// Ethernet headers.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
    /// True for TCP, false for UDP.
    pub tcp: bool,
    pub payload: Vec<u8>,
}

/// Reads a classic pcap file of Ethernet frames (as QEMU's `filter-dump`
/// writes) and returns its IPv4 UDP datagrams and TCP segments in order.
/// A record cut short (QEMU killed mid-write) ends the list; anything else
/// malformed is an error.
pub fn read_pcap(path: &Path) -> Result<Vec<Seen>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header = bytes.get(..24).ok_or("shorter than a pcap header")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a classic pcap file: magic {magic:02x?}")),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let linktype = u32_at(header, 20);
    if linktype != 1 {
        return Err(format!("link type {linktype}, not Ethernet"));
    }
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(rec) = bytes.get(at..at + 16) {
        let caplen = u32_at(rec, 8) as usize;
        let Some(frame) = bytes.get(at + 16..at + 16 + caplen) else {
            break;
        };
        out.extend(parse_frame(frame));
        at += 16 + caplen;
    }
    Ok(out)
}

/// Ethernet (optionally one VLAN tag), IPv4 (first fragments only), UDP or TCP.
fn parse_frame(f: &[u8]) -> Option<Seen> {
    let src_mac: [u8; 6] = f.get(6..12)?.try_into().ok()?;
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    if ethertype == 0x8100 {
        at += 4;
        ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    }
    if ethertype != 0x0800 {
        return None;
    }
    let ip = f.get(at + 2..)?;
    let (ver, ihl) = (ip.first()? >> 4, usize::from(ip.first()? & 0xf) * 4);
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let frag_offset = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
    if ver != 4 || ihl < 20 || total < ihl || frag_offset != 0 {
        return None;
    }
    let ip = ip.get(..total)?;
    let src_ip = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..];
    let port = |i: usize| Some(u16::from_be_bytes([*l4.get(i)?, *l4.get(i + 1)?]));
    let (tcp, payload) = match ip[9] {
        17 => {
            let len = usize::from(port(4)?);
            (false, l4.get(8..len.max(8))?)
        }
        6 => {
            let off = usize::from(l4.get(12)? >> 4) * 4;
            (true, l4.get(off..)?)
        }
        _ => return None,
    };
    Some(Seen {
        src_mac,
        src: std::net::SocketAddrV4::new(src_ip, port(0)?),
        dst: std::net::SocketAddrV4::new(dst_ip, port(2)?),
        tcp,
        payload: payload.to_vec(),
    })
}

/// A BOOTP/DHCP message's fields the tests look at.
#[derive(Debug, Clone)]
pub struct Dhcp {
    /// 1 request, 2 reply.
    pub op: u8,
    pub yiaddr: std::net::Ipv4Addr,
    pub chaddr: [u8; 6],
    /// The `file` field up to its first NUL.
    pub file: String,
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Dhcp {
    /// Parses a BOOTP message with the DHCP magic cookie; `None` if malformed.
    pub fn parse(b: &[u8]) -> Option<Dhcp> {
        if b.get(236..240)? != [99, 130, 83, 99] {
            return None;
        }
        let file = b.get(108..236)?;
        let file = &file[..file.iter().position(|&c| c == 0).unwrap_or(file.len())];
        let mut options = Vec::new();
        let mut at = 240;
        while let Some(&code) = b.get(at) {
            match code {
                0 => at += 1,
                255 => break,
                _ => {
                    let len = usize::from(*b.get(at + 1)?);
                    options.push((code, b.get(at + 2..at + 2 + len)?.to_vec()));
                    at += 2 + len;
                }
            }
        }
        Some(Dhcp {
            op: b[0],
            yiaddr: std::net::Ipv4Addr::new(b[16], b[17], b[18], b[19]),
            chaddr: b.get(28..34)?.try_into().ok()?,
            file: String::from_utf8_lossy(file).into_owned(),
            options,
        })
    }

    /// The value of option `code`, if present.
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    /// The DHCP message type (option 53).
    pub fn kind(&self) -> Option<u8> {
        self.option(53).and_then(|v| v.first().copied())
    }
}

#[test]
fn pcap_reader_parses_a_udp_frame_and_stops_at_a_cut_record() {
    let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
    f.extend([0u8; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(1u32.to_le_bytes());
    let mut frame = vec![0xff; 6];
    frame.extend([0x52, 0x54, 0, 1, 2, 3, 0x08, 0x00]);
    let udp_payload = b"hello";
    let ip_len = 20 + 8 + udp_payload.len() as u16;
    frame.extend([
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    frame.extend([10, 0, 0, 1, 10, 0, 0, 2]);
    frame.extend([0, 68, 0, 67, 0, 13, 0, 0]);
    frame.extend(udp_payload);
    for _ in 0..2 {
        f.extend([0u8; 8]);
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend((frame.len() as u32).to_le_bytes());
        f.extend(&frame);
    }
    f.truncate(f.len() - 3);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pcap");
    std::fs::write(&p, &f).unwrap();
    let seen = read_pcap(&p).unwrap();
    assert_eq!(seen.len(), 1, "the cut second record is dropped");
    assert_eq!(seen[0].src.to_string(), "10.0.0.1:68");
    assert_eq!(seen[0].dst.to_string(), "10.0.0.2:67");
    assert_eq!(seen[0].payload, b"hello");
    assert_eq!(seen[0].src_mac, [0x52, 0x54, 0, 1, 2, 3]);
    std::fs::write(&p, b"garbage").unwrap();
    assert!(read_pcap(&p).is_err());
}
