//! rackcast netboot: how a bare-metal target finds rackcast.
//!
//! Proxy-DHCP / DHCP decisions, TFTP transfers and the boot policy are sans-IO
//! state machines; thin tokio shells own the sockets. [`Netboot`] wires them
//! together the way `rackcast netboot` and the deployment server run them.
// One hand-written getsockopt (IPV6_MTU, in tftp::mtu) is the only unsafe
// code; everything else is safe.
#![deny(unsafe_code)]

pub mod arch;
pub mod dhcp;
mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod metrics;
pub mod neighbor;
pub mod policy;
mod settings;
pub mod tftp;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

pub use arch::{ClientArch, ClientKind, MacAddr};
pub use error::{Error, Result};
pub use events::{BootEvent, Events, Step};
pub use metrics::NetbootMetrics;
pub use policy::{
    BootAction, BootPolicy, BootQuery, BootStage, ConsoleAnswer, ConsoleReply, ConsoleRequest,
    StaticPolicy,
};
pub use settings::{NetbootMode, NetbootSettings, StyleSetting};

use dhcp::shell::DhcpService;
use dhcp::{DhcpConfig, DhcpServer, FullConfig, LeaseTable, ReplyStyle};
use files::FileTree;
use http::{HttpLimits, HttpServer};
use tftp::{TftpServer, TransferLimits};

/// Proxy-DHCP beside the site's DHCP server, or full DHCP on an isolated network.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Answer boot clients only; never hand out addresses.
    Proxy,
    /// Hand out addresses from a pool too.
    Full {
        /// First pool address.
        pool_start: Ipv4Addr,
        /// Last pool address.
        pool_end: Ipv4Addr,
        /// Subnet mask.
        netmask: Ipv4Addr,
        /// Default gateway.
        router: Option<Ipv4Addr>,
        /// Lease duration in seconds.
        lease_secs: u32,
        /// Fixed addresses by MAC.
        reservations: dhcp::Reservations,
        /// Where leases are persisted across restarts.
        lease_file: PathBuf,
    },
}

/// Everything needed to run netboot on one interface.
#[derive(Debug, Clone)]
pub struct NetbootConfig {
    /// Interface the DHCP sockets bind to (`None`: all).
    pub iface: Option<String>,
    /// Our address on that interface.
    pub server_ip: Ipv4Addr,
    /// Served root directory.
    pub root: PathBuf,
    /// Proxy or full.
    pub mode: Mode,
    /// Proxy offer style for firmware PXE.
    pub style: ReplyStyle,
    /// Extra vendor-class prefixes to answer.
    pub allow_vendor: Vec<String>,
    /// DHCP ports (67 and 4011 in production).
    pub dhcp_ports: Vec<u16>,
    /// TFTP listening address (port 69 in production).
    pub tftp: SocketAddr,
    /// HTTP listening address.
    pub http: SocketAddr,
    /// TFTP negotiation limits and caps on concurrent transfers.
    pub tftp_limits: TransferLimits,
    /// Which peers may fetch a MAC's iPXE script.
    pub script_peer: neighbor::ScriptPeer,
    /// What HTTP connections may hold.
    pub http_limits: HttpLimits,
}

/// The bound netboot services, ready to run.
#[derive(Debug)]
pub struct Netboot {
    dhcp: DhcpService,
    tftp: TftpServer,
    http: HttpServer,
    events: Events,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Netboot {
    /// Binds every socket; errors here are configuration or permission errors.
    pub async fn bind(cfg: NetbootConfig, policy: Arc<dyn BootPolicy>) -> Result<Self> {
        let events = Events::new();
        let files = FileTree::new(&cfg.root, policy.clone())?;
        let http = HttpServer::bind(
            cfg.http,
            files.clone(),
            events.clone(),
            cfg.server_ip.to_string(),
            String::new(),
            cfg.http_limits,
        )
        .await?;
        let http_port = http.local_addr()?.port();
        let base = if http_port == 80 {
            format!("http://{}", cfg.server_ip)
        } else {
            format!("http://{}:{http_port}", cfg.server_ip)
        };
        let tftp =
            TftpServer::bind(cfg.tftp, files, cfg.tftp_limits.clone(), events.clone()).await?;
        let metrics = NetbootMetrics::default();
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry, tftp.stats());
        let registry = Arc::new(registry);
        let http = HttpServer::rebase(http, base.clone())
            .script_peer(cfg.script_peer)
            .metrics(metrics.clone(), registry.clone());
        let (full, leases, lease_file) = match &cfg.mode {
            Mode::Proxy => (None, None, None),
            Mode::Full {
                pool_start,
                pool_end,
                netmask,
                router,
                lease_secs,
                reservations,
                lease_file,
            } => {
                let mut t =
                    LeaseTable::new(*pool_start, *pool_end, *lease_secs, reservations.clone())?;
                t.load(lease_file)?;
                (
                    Some(FullConfig {
                        netmask: *netmask,
                        router: *router,
                        dns: Vec::new(),
                    }),
                    Some(t),
                    Some(lease_file.clone()),
                )
            }
        };
        let core = DhcpServer::new(
            DhcpConfig {
                server_ip: cfg.server_ip,
                http_base: base,
                style: cfg.style,
                allow_vendor: cfg.allow_vendor.clone(),
                full,
                local_boot: local_boot_in(&cfg.root),
            },
            policy,
            leases,
        );
        let dhcp = DhcpService::bind(
            core,
            cfg.iface.as_deref(),
            Ipv4Addr::UNSPECIFIED,
            &cfg.dhcp_ports,
            events.clone(),
            lease_file,
        )?
        .with_metrics(metrics);
        Ok(Netboot {
            dhcp,
            tftp,
            http,
            events,
            registry,
        })
    }

    /// Netboot's metrics (also served at `/metrics` on its HTTP port).
    pub fn registry(&self) -> Arc<prometheus_client::registry::Registry> {
        self.registry.clone()
    }

    /// The boot-event feed.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The TFTP server's bound address.
    pub fn tftp_addr(&self) -> Result<SocketAddr> {
        self.tftp.local_addr()
    }

    /// The HTTP server's bound address.
    pub fn http_addr(&self) -> Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The DHCP sockets' bound addresses.
    pub fn dhcp_addrs(&self) -> Vec<SocketAddr> {
        self.dhcp.local_addrs()
    }

    /// The TFTP counters.
    pub fn tftp_stats(&self) -> Arc<tftp::TftpStats> {
        self.tftp.stats()
    }

    /// Runs every service until one fails.
    pub async fn run(self) -> Result<()> {
        tokio::select! {
            r = self.dhcp.run() => r,
            r = self.tftp.run() => r,
            r = self.http.run() => r,
        }
    }
}

/// The platforms whose quick-local-boot loader is in `root`, looked up
/// when netboot starts (the DHCP core does no I/O), and said in the log:
/// without it, UEFI clients with no work get silence and reach their disk
/// only after the firmware's network boot timeouts.
fn local_boot_in(root: &std::path::Path) -> Vec<ClientArch> {
    let mut found = Vec::new();
    for arch in [ClientArch::X64Uefi, ClientArch::Arm64Uefi] {
        let Some(name) = policy::local_loader(arch) else {
            continue;
        };
        if root.join(name).is_file() {
            tracing::info!("quick local boot for {arch:?}: {name}");
            found.push(arch);
        } else {
            tracing::info!(
                "no {name} in {}: {arch:?} clients with no work get no answer \
                 (rackcast env local-boot writes it)",
                root.display()
            );
        }
    }
    found
}
