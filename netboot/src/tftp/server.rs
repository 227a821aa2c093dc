//! The TFTP tokio shell: one listening socket for requests, and a few
//! shards (see `shard`), each a shared transfer socket whose task drives
//! every transfer of the clients it serves.
//!
//! A request is resolved on a task of its own (the file read may block, the
//! path MTU towards the client caps the blksize, the server-wide budget of
//! bytes in flight caps the windowsize) and the ready [`Transfer`] is handed
//! to its client's shard. Thousands of transfers cost thousands of small
//! state machines, not threads or sockets, and every transfer of one file
//! shares one `Bytes` buffer (a netascii transfer adds at most a window of
//! converted blocks). How many run at once is capped in total and per
//! client address (see `admission`): a request over a cap is answered with
//! an ERROR from the listening port before any work is spent on it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::admission::{Permit, Refused, TransferCaps};
use super::budget::FlightBudget;
use super::mtu::path_mtu;
use super::packet::{error_packet, ErrorCode, Packet};
use super::shard::{self, Admit, Assignment, Shard, ShardHandle};
use super::stats::TftpStats;
use super::transfer::{Transfer, TransferLimits};
use crate::error::{Error, Result};
use crate::events::{BootEvent, Events, Step};
use crate::files::FileTree;

/// A read-only TFTP server.
#[derive(Debug)]
pub struct TftpServer {
    socket: UdpSocket,
    files: FileTree,
    limits: TransferLimits,
    events: Events,
    stats: Arc<TftpStats>,
    budget: Arc<FlightBudget>,
    caps: Arc<TransferCaps>,
    handles: Vec<ShardHandle>,
    shards: Vec<Shard>,
}

/// Shared transfer sockets per server: one per core, at most four. New
/// clients fill the first before the next is used (see `shard::pick`).
fn shard_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
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
        let ip = socket.local_addr().map_err(|e| Error::Socket {
            what: "local_addr".into(),
            source: e,
        })?;
        let (handles, shards) = (0..shard_count())
            .map(|_| shard::bind(ip.ip()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::Socket {
                what: format!("bind TFTP transfer socket on {}", ip.ip()),
                source: e,
            })?
            .into_iter()
            .unzip();
        Ok(TftpServer {
            socket,
            handles,
            shards,
            files,
            budget: FlightBudget::new(limits.max_total_bytes_in_flight),
            caps: TransferCaps::new(limits.max_transfers, limits.max_transfers_per_client),
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

    /// The caps on concurrent transfers, with what is held now.
    pub fn transfer_caps(&self) -> Arc<TransferCaps> {
        self.caps.clone()
    }

    /// The shared transfer sockets' addresses (a transfer's DATA comes
    /// from one of these).
    pub fn transfer_addrs(&self) -> Vec<SocketAddr> {
        self.handles
            .iter()
            .filter_map(|h| h.sock.local_addr().ok())
            .collect()
    }

    /// Serves until the task is dropped.
    pub async fn run(mut self) -> Result<()> {
        // Dropping this future aborts the shards with it.
        let mut shards = tokio::task::JoinSet::new();
        for sh in std::mem::take(&mut self.shards) {
            shards.spawn(sh.run(self.stats.clone(), self.events.clone()));
        }
        let mut buf = vec![0u8; 65536];
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
                    let permit = match self.caps.admit(peer) {
                        Ok(p) => p,
                        Err(why) => {
                            self.refuse_over_cap(peer, why).await;
                            continue;
                        }
                    };
                    // A repetition goes where its first request went; a new
                    // client to the shard `shard::pick` packs it onto.
                    let route = permit.route().unwrap_or_else(|| {
                        let i = shard::pick(self.handles.iter().map(|h| &*h.load));
                        permit.set_route(i);
                        i
                    });
                    let Some(shard) = self.handles.get(route) else {
                        continue; // cannot happen: routes index `handles`
                    };
                    let job = Job {
                        assignment: shard.load.assign(),
                        permit,
                        peer,
                        filename: req.filename.to_string(),
                        datagram: buf[..n].to_vec(),
                        files: self.files.clone(),
                        limits: self.limits.clone(),
                        events: self.events.clone(),
                        stats: self.stats.clone(),
                        budget: self.budget.clone(),
                        shard: shard.clone(),
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

    /// Answers a request over a cap (a burst of repetitions from one port
    /// gets no answer: its first request is being served).
    async fn refuse_over_cap(&self, peer: SocketAddr, why: Refused) {
        let counter = match why {
            Refused::Repeated => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Refused::ServerFull => &self.stats.over_server_cap,
            Refused::ClientFull => &self.stats.over_client_cap,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        // RFC 1350 has no "busy" code; 0 with a message is what others send.
        let e = error_packet(ErrorCode::NotDefined, "too many transfers, try later");
        let _ = self.socket.send_to(&e, peer).await;
    }
}

struct Job {
    /// This request's place under the caps, handed on with its transfer.
    permit: Permit,
    /// Its count in its shard's load, handed on with its transfer.
    assignment: Assignment,
    peer: SocketAddr,
    filename: String,
    datagram: Vec<u8>,
    files: FileTree,
    limits: TransferLimits,
    events: Events,
    stats: Arc<TftpStats>,
    budget: Arc<FlightBudget>,
    shard: ShardHandle,
}

impl Job {
    /// Resolves the request and hands the transfer to its shard, which
    /// reports its end; a refusal is answered and reported here.
    async fn run(self) {
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        match self.start().await {
            Ok(transfer) => {
                let admit = Admit {
                    peer: self.peer,
                    filename: self.filename.clone(),
                    transfer,
                    permit: self.permit,
                    assignment: self.assignment,
                };
                if self.shard.tx.send(admit).is_err() {
                    // The server is shutting down.
                    self.stats.active.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(reason) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.stats.active.fetch_sub(1, Ordering::Release);
                self.events.emit(BootEvent {
                    mac: None,
                    peer: self.peer,
                    step: Step::TftpFailed,
                    detail: format!("{}: {reason}", self.filename),
                });
            }
        }
    }

    async fn start(&self) -> std::result::Result<Transfer, String> {
        let peer = self.peer;
        let sock = &self.shard.sock;
        let bind_ip = sock.local_addr().map_err(|e| e.to_string())?.ip();
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
        let t = match Transfer::start_within(Instant::now(), data, &req, &limits, &self.budget) {
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
            peer,
            step: Step::TftpStart,
            detail: format!(
                "{} size {} blksize {} windowsize {} ",
                self.filename,
                t.len(),
                n.blksize.unwrap_or(512),
                n.windowsize.unwrap_or(1)
            ),
        });
        Ok(t)
    }
}
