//! The TFTP tokio shell: one listening socket, and per transfer a small task
//! with its own ephemeral socket (its transfer ID) driving a [`Transfer`].
//!
//! Tasks are cheap green threads on the runtime's few worker threads, so
//! thousands of transfers cost thousands of small futures, not threads, and
//! every transfer of one file shares one `Bytes` buffer. A window of DATA
//! goes out in one GSO send (see `batch`), and each transfer keeps one timer
//! that it moves about once per timeout rather than once per packet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::batch::Batch;
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
}

/// A read-only TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    socket: UdpSocket,
    files: FileTree,
    limits: TransferLimits,
    events: Events,
    stats: Arc<TftpStats>,
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
        sock.connect(self.peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
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
                let _ = sock.send(&error_packet(code, msg)).await;
                return Err(e.to_string());
            }
        };
        let mut t = match Transfer::start(Instant::now(), data, &req, &self.limits) {
            Ok(t) => t,
            Err(r) => {
                let _ = sock.send(&error_packet(r.code, &r.message)).await;
                return Err(r.message);
            }
        };
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
        let mut batch = Batch::new(&sock, 4 + usize::from(n.blksize.unwrap_or(512)));
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
            tokio::select! {
                biased;
                r = sock.recv(&mut inbuf) => {
                    if let Ok(len) = r {
                        match Packet::parse(&inbuf[..len]) {
                            Ok(p) => t.handle_packet(Instant::now(), &p),
                            Err(_) => { self.stats.malformed.fetch_add(1, Ordering::Relaxed); }
                        }
                    }
                }
                _ = &mut timer => {
                    fired = true;
                    t.handle_timeout(Instant::now());
                }
            }
        }
    }
}
