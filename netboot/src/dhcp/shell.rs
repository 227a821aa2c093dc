//! The DHCP socket shell: ports 67 and 4011 bound to one interface, each
//! datagram handed to the shared [`DhcpServer`] core and the reply sent from
//! the socket (and so the interface and port) it came in on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::{DhcpServer, Received};
use crate::error::{Error, Result};
use crate::events::{BootEvent, Events};
use crate::metrics::NetbootMetrics;

/// A running DHCP front end.
#[derive(Debug)]
pub struct DhcpService {
    core: Arc<Mutex<DhcpServer>>,
    sockets: Vec<(u16, UdpSocket)>,
    events: Events,
    lease_file: Option<PathBuf>,
    metrics: NetbootMetrics,
}

impl DhcpService {
    /// Binds `ports` on `iface` (all interfaces when `None`).
    pub fn bind(
        core: DhcpServer,
        iface: Option<&str>,
        bind_ip: Ipv4Addr,
        ports: &[u16],
        events: Events,
        lease_file: Option<PathBuf>,
    ) -> Result<Self> {
        let mut sockets = Vec::new();
        for &port in ports {
            let what = format!("bind {bind_ip}:{port} on {}", iface.unwrap_or("*"));
            let err = |e| Error::Socket {
                what: what.clone(),
                source: e,
            };
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
            s.set_reuse_address(true).map_err(err)?;
            s.set_broadcast(true).map_err(err)?;
            if let Some(i) = iface {
                // Binding to the device makes replies, broadcasts included,
                // leave by the interface the request came in on.
                s.bind_device(Some(i.as_bytes())).map_err(err)?;
            }
            s.set_nonblocking(true).map_err(err)?;
            s.bind(&SocketAddr::V4(SocketAddrV4::new(bind_ip, port)).into())
                .map_err(err)?;
            let s = UdpSocket::from_std(s.into()).map_err(err)?;
            sockets.push((port, s));
        }
        Ok(DhcpService {
            core: Arc::new(Mutex::new(core)),
            sockets,
            events,
            lease_file,
            metrics: NetbootMetrics::default(),
        })
    }

    /// Counts its decisions in `m`.
    pub fn with_metrics(mut self, m: NetbootMetrics) -> Self {
        self.metrics = m;
        self
    }

    /// The bound addresses, one per port.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(_, s)| s.local_addr().ok())
            .collect()
    }

    /// Serves until dropped.
    pub async fn run(self) -> Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (port, sock) in self.sockets {
            let core = self.core.clone();
            let events = self.events.clone();
            let lease_file = self.lease_file.clone();
            let metrics = self.metrics.clone();
            tasks.spawn(serve(port, sock, core, events, lease_file, metrics));
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) = r {
                return Err(e);
            }
        }
        Ok(())
    }
}

async fn serve(
    port: u16,
    sock: UdpSocket,
    core: Arc<Mutex<DhcpServer>>,
    events: Events,
    lease_file: Option<PathBuf>,
    metrics: NetbootMetrics,
) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let SocketAddr::V4(src) = src else { continue };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (decision, save) = {
            let Ok(mut c) = core.lock() else {
                return Err(Error::Config("DHCP core poisoned".into()));
            };
            let d = c.handle(
                now,
                Received {
                    src,
                    local_port: port,
                    data: &buf[..n],
                },
            );
            let save = match (&lease_file, c.take_leases_dirty(), c.leases()) {
                (Some(path), true, Some(l)) => Some((path.clone(), l.to_json())),
                _ => None,
            };
            (d, save)
        };
        if let Some((path, json)) = save {
            if let Err(e) = super::leases::write_atomic(&path, &json) {
                tracing::warn!("saving leases: {e}");
            }
        }
        if let (Some(ip), Some(mac)) = (decision.client_ip, decision.mac) {
            events.learn(ip.into(), mac);
        }
        if let Some(reply) = &decision.reply {
            if let Err(e) = sock.send_to(&reply.data, SocketAddr::V4(reply.dst)).await {
                tracing::warn!("DHCP reply to {}: {e}", reply.dst);
            }
        }
        match (decision.client, decision.step) {
            (None, _) => metrics.dhcp_malformed(),
            (Some((arch, kind)), Some(step)) => metrics.dhcp(step, arch, kind),
            (Some((arch, kind)), None) if decision.reply.is_none() => {
                metrics.dhcp(crate::events::Step::Ignored, arch, kind)
            }
            _ => {}
        }
        if let Some(step) = decision.step {
            events.emit(BootEvent {
                mac: decision.mac,
                peer: SocketAddr::V4(src),
                step,
                detail: decision.detail,
            });
        }
    }
}
