//! The TFTP tokio shell: one listening socket, and per transfer a small task
//! with its own ephemeral socket (its transfer ID) driving a [`Transfer`].
//!
//! Tasks are cheap green threads on the runtime's few worker threads, so
//! thousands of transfers cost thousands of small futures, not threads, and
//! every transfer of one file shares one `Bytes` buffer. A window of DATA
//! goes out in one GSO send (see `batch`), and each transfer keeps one timer
//! that it moves about once per timeout rather than once per packet.
//!
//! The transfer socket is not connected: every datagram's source is checked,
//! and one from anyone but the transfer's client is answered with ERROR 5
//! "Unknown transfer ID" and otherwise ignored (RFC 1350 section 4), where a
//! connected socket would leave the kernel to answer with ICMP. The blksize
//! granted is capped by the path MTU towards the client, and the windowsize by
//! a budget of bytes in flight all transfers share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::batch::Batch;
use super::budget::FlightBudget;
use super::packet::{error_packet, ErrorCode, Packet};
use super::transfer::{Outcome, Transfer, TransferLimits, Transmit};
use crate::error::{Error, Result};
use crate::events::{BootEvent, Events, Step};
use crate::files::FileTree;

/// Counters of the TFTP server.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Read requests received.
    pub requests: AtomicU64,
    /// Transfers acknowledged to the last block.
    pub completed: AtomicU64,
    /// Transfers ended by the client's ERROR or by its silence.
    pub aborted: AtomicU64,
    /// Requests refused (not found, traversal, write, bad mode).
    pub refused: AtomicU64,
    /// Datagrams that did not parse; dropped.
    pub malformed: AtomicU64,
    /// Transfers running now.
    pub active: AtomicU64,
    /// Datagrams that reached a transfer's port from another address than
    /// its client (answered with ERROR 5, unless they were an ERROR).
    pub stray: AtomicU64,
    /// Transfers granted a smaller windowsize because of the server-wide cap
    /// on bytes in flight.
    pub window_capped: AtomicU64,
    /// Transfers whose blksize the path MTU towards the client lowered.
    pub blksize_capped_by_mtu: AtomicU64,
}

/// A read-only TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    socket: UdpSocket,
    files: FileTree,
    limits: TransferLimits,
    events: Events,
    stats: Arc<TftpStats>,
    budget: Arc<FlightBudget>,
}

impl TftpServer {
    /// Binds the listening socket (port 69 in production, 0 in tests).
    pub async fn bind(
        addr: SocketAddr,
        files: FileTree,
        limits: TransferLimits,
        events: Events,
    ) -> Result<Self> {
        let socket = UdpSocket::bind(addr).await.map_err(|e| Error::Socket {
            what: format!("bind TFTP {addr}"),
            source: e,
        })?;
        Ok(TftpServer {
            socket,
            files,
            budget: FlightBudget::new(limits.max_total_bytes_in_flight),
            limits,
            events,
            stats: Arc::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.socket.local_addr().map_err(|e| Error::Socket {
            what: "local_addr".into(),
            source: e,
        })
    }

    /// The counters, shared with the running server.
    pub fn stats(&self) -> Arc<TftpStats> {
        self.stats.clone()
    }

    /// The bytes in flight all transfers share, with what is reserved now.
    pub fn flight_budget(&self) -> Arc<FlightBudget> {
        self.budget.clone()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) -> Result<()> {
        let mut buf = vec![0u8; 65536];
        let local_ip = self.local_addr()?.ip();
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                // ICMP errors from earlier sends surface here; keep serving.
                Err(_) => continue,
            };
            let pkt = match Packet::parse(&buf[..n]) {
                Ok(p) => p,
                Err(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match pkt {
                Packet::Rrq(req) => {
                    self.stats.requests.fetch_add(1, Ordering::Relaxed);
                    let job = Job {
                        peer,
                        local_ip,
                        filename: req.filename.to_string(),
                        datagram: buf[..n].to_vec(),
                        files: self.files.clone(),
                        limits: self.limits.clone(),
                        events: self.events.clone(),
                        stats: self.stats.clone(),
                        budget: self.budget.clone(),
                    };
                    tokio::spawn(job.run());
                }
                Packet::Wrq(_) => {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let e = error_packet(ErrorCode::AccessViolation, "read-only server");
                    let _ = self.socket.send_to(&e, peer).await;
                }
                // Stray DATA/ACK/ERROR on port 69 belong to no transfer.
                _ => {}
            }
        }
    }
}

struct Job {
    peer: SocketAddr,
    local_ip: std::net::IpAddr,
    filename: String,
    datagram: Vec<u8>,
    files: FileTree,
    limits: TransferLimits,
    events: Events,
    stats: Arc<TftpStats>,
    budget: Arc<FlightBudget>,
}

impl Job {
    async fn run(self) {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        let result = self.transfer().await;
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        let (counter, step, detail) = match result {
            Ok((Outcome::Complete, len)) => (
                &self.stats.completed,
                Step::TftpDone,
                format!("{} ({len} bytes)", self.filename),
            ),
            Ok((Outcome::ClientError { code, message }, _)) => (
                &self.stats.aborted,
                Step::TftpFailed,
                format!(
                    "{}: client error {code} {message:?}{}",
                    self.filename,
                    if code == 8 {
                        " (size probe, normal)"
                    } else {
                        ""
                    }
                ),
            ),
            Ok((Outcome::TimedOut, _)) => (
                &self.stats.aborted,
                Step::TftpFailed,
                format!("{}: client went silent", self.filename),
            ),
            Err(reason) => (
                &self.stats.refused,
                Step::TftpFailed,
                format!("{}: {reason}", self.filename),
            ),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.events.emit(BootEvent {
            mac: None,
            peer: self.peer,
            step,
            detail,
        });
    }

    async fn transfer(&self) -> std::result::Result<(Outcome, usize), String> {
        let bind_ip = if self.local_ip.is_unspecified() {
            match self.peer {
                SocketAddr::V4(_) => std::net::IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => std::net::IpAddr::from([0u16; 8]),
            }
        } else {
            self.local_ip
        };
        let sock = UdpSocket::bind((bind_ip, 0))
            .await
            .map_err(|e| format!("bind: {e}"))?;
        let peer = self.peer;
        let limits = match path_mtu(bind_ip, peer) {
            Ok(mtu) => {
                let l = self.limits.clamped_to_mtu(mtu, peer.is_ipv6());
                if l.max_blksize < self.limits.max_blksize {
                    self.stats
                        .blksize_capped_by_mtu
                        .fetch_add(1, Ordering::Relaxed);
                }
                l
            }
            Err(e) => {
                tracing::debug!(%peer, "no path MTU ({e}); blksize capped by the limits only");
                self.limits.clone()
            }
        };
        let Ok(Packet::Rrq(req)) = Packet::parse(&self.datagram) else {
            return Err("unparsable request".into());
        };
        let files = self.files.clone();
        let name = self.filename.clone();
        let data = tokio::task::spawn_blocking(move || files.read(&name))
            .await
            .map_err(|e| e.to_string())?;
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let (code, msg) = match &e {
                    Error::NotFound(_) => (ErrorCode::FileNotFound, "file not found"),
                    Error::PathRefused(_) => (ErrorCode::AccessViolation, "access violation"),
                    _ => (ErrorCode::NotDefined, "read error"),
                };
                let _ = sock.send_to(&error_packet(code, msg), peer).await;
                return Err(e.to_string());
            }
        };
        let mut t = match Transfer::start_within(Instant::now(), data, &req, &limits, &self.budget)
        {
            Ok(t) => t,
            Err(r) => {
                let _ = sock.send_to(&error_packet(r.code, &r.message), peer).await;
                return Err(r.message);
            }
        };
        if t.window_lowered_by_global_cap() {
            self.stats.window_capped.fetch_add(1, Ordering::Relaxed);
        }
        let n = t.negotiated();
        self.events.emit(BootEvent {
            mac: None,
            peer: self.peer,
            step: Step::TftpStart,
            detail: format!(
                "{} size {} blksize {} windowsize {} ",
                self.filename,
                t.len(),
                n.blksize.unwrap_or(512),
                n.windowsize.unwrap_or(1)
            ),
        });
        let mut batch = Batch::new(&sock, 4 + usize::from(n.blksize.unwrap_or(512)), peer);
        let mut inbuf = vec![0u8; 65536];
        // One timer per transfer, moved only when the deadline comes earlier
        // or the timer has fired: in a steady transfer every ACK pushes the
        // deadline later, and an early wake-up is harmless (the transfer
        // ignores it), so the timer is touched about once per timeout
        // instead of once per packet.
        let idle = Duration::from_secs(1);
        let mut armed = Instant::now() + idle;
        let mut fired = false;
        let timer = tokio::time::sleep_until(armed.into());
        tokio::pin!(timer);
        loop {
            let mut now = Instant::now();
            // A window goes out as one batch; the OACK alone.
            while let Some(tx) = t.poll_transmit(now) {
                let len = match &tx {
                    Transmit::Data { payload, .. } => 4 + payload.len(),
                    Transmit::Control(_) => usize::MAX,
                };
                if !batch.fits(len) {
                    batch.flush(&sock).await;
                    now = Instant::now();
                }
                batch.push(|out| tx.append_to(out));
            }
            batch.flush(&sock).await;
            now = Instant::now();
            if let Some(o) = t.outcome() {
                return Ok((o.clone(), t.len()));
            }
            let deadline = t.poll_timeout();
            let rearm = match deadline {
                Some(d) => (fired || d < armed).then_some(d),
                None => fired.then(|| now + idle),
            };
            if let Some(d) = rearm {
                armed = d;
                fired = false;
                timer.as_mut().reset(d.into());
            }
            // Alone, a transfer waits for its ACK by polling the socket for
            // a moment first (see `spin_recv`); otherwise, and after that, it
            // sleeps until the socket is readable or the timer fires.
            let spun = if self.stats.active.load(Ordering::Relaxed) <= 1 {
                spin_recv(&sock, &mut inbuf)
            } else {
                None
            };
            let got = match spun {
                Some(r) => Some(r),
                None => tokio::select! {
                    biased;
                    r = sock.recv_from(&mut inbuf) => Some(r),
                    _ = &mut timer => None,
                },
            };
            match got {
                Some(Ok((len, from))) if from == peer => match Packet::parse(&inbuf[..len]) {
                    Ok(p) => t.handle_packet(Instant::now(), &p),
                    Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Some(Ok((len, from))) => self.answer_stray(&sock, &inbuf[..len], from).await,
                Some(Err(_)) => {}
                None => {
                    fired = true;
                    t.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// RFC 1350 section 4: a datagram from another transfer ID gets ERROR 5
    /// and leaves the transfer alone. An ERROR is not answered, so that two
    /// confused peers cannot bounce errors forever.
    async fn answer_stray(&self, sock: &UdpSocket, datagram: &[u8], from: SocketAddr) {
        self.stats.stray.fetch_add(1, Ordering::Relaxed);
        if matches!(Packet::parse(datagram), Ok(Packet::Error { .. })) {
            return;
        }
        let e = error_packet(ErrorCode::UnknownTid, "Unknown transfer ID");
        let _ = sock.send_to(&e, from).await;
    }
}

/// The kernel's path MTU towards `peer`, read from a throwaway socket
/// connected to it (connecting a UDP socket sends nothing; it only picks the
/// route). IPv4 only: nix has no safe `IPV6_MTU` and this crate forbids
/// unsafe code, so IPv6 transfers are capped by the limits alone.
fn path_mtu(bind_ip: std::net::IpAddr, peer: SocketAddr) -> std::io::Result<u32> {
    if peer.is_ipv6() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "IPv6 path MTU not read",
        ));
    }
    let probe = std::net::UdpSocket::bind((bind_ip, 0))?;
    probe.connect(peer)?;
    let mtu = nix::sys::socket::getsockopt(&probe, nix::sys::socket::sockopt::IpMtu)?;
    u32::try_from(mtu).map_err(|_| std::io::Error::other(format!("path MTU {mtu}")))
}

/// How long a lone transfer polls its socket for the next ACK before it
/// sleeps. Without a window TFTP is one round trip per block, and a sleeping
/// thread is woken by the kernel tens of microseconds after the ACK arrives
/// (an inter-processor wake-up, measured at about half of an 80 µs loopback
/// round trip on this project's 2-core VM): for one transfer that wake-up is
/// half its speed. Only a transfer running alone polls, so a busy server
/// never spends a core spinning; the poll gives up after this long.
const SPIN: Duration = Duration::from_micros(200);

/// Polls `sock` without sleeping for up to [`SPIN`]. Reads the descriptor
/// directly: tokio's `try_recv_from` answers from readiness that only the
/// (sleeping) reactor updates.
fn spin_recv(sock: &UdpSocket, buf: &mut [u8]) -> Option<std::io::Result<(usize, SocketAddr)>> {
    use std::os::fd::AsRawFd;
    let until = Instant::now() + SPIN;
    loop {
        match nix::sys::socket::recvfrom::<nix::sys::socket::SockaddrStorage>(sock.as_raw_fd(), buf)
        {
            Ok((n, Some(from))) => {
                let from = from
                    .as_sockaddr_in()
                    .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                    .or_else(|| {
                        from.as_sockaddr_in6()
                            .map(|a| SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                    })?;
                return Some(Ok((n, from)));
            }
            Ok((_, None)) => return None,
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < until => std::hint::spin_loop(),
            Err(nix::errno::Errno::EAGAIN) => return None,
            Err(e) => return Some(Err(e.into())),
        }
    }
}
