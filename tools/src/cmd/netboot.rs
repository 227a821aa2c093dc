//! `rackcast netboot`: the netboot front end on its own, for sites that only
//! want a fast PXE server. The deployment server embeds the same components.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use rackcast_netboot::{
    BootAction, BootPolicy, MacAddr, Netboot, NetbootMode, NetbootSettings, StaticPolicy,
    StyleSetting,
};

/// Options of `rackcast netboot`.
#[derive(Debug, clap::Args)]
pub struct NetbootArgs {
    /// Interface of the boot network (DHCP binds to it; its address is ours).
    #[arg(long)]
    iface: String,
    /// Directory served read-only over TFTP and HTTP.
    #[arg(long)]
    root: PathBuf,
    /// `proxy` beside the site's DHCP server, or `full` on an isolated network.
    #[arg(long, default_value = "proxy", value_parser = ["proxy", "full"])]
    mode: String,
    /// Address pool for `--mode full`, as `A-B` (e.g. 10.0.0.100-10.0.0.200).
    #[arg(long)]
    pool: Option<String>,
    /// Boot policy file (TOML); without it every PXE client is chained to iPXE,
    /// which is told to boot the local disk.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// HTTP listen address for boot files and iPXE scripts.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// TFTP listen address.
    #[arg(long, default_value = "0.0.0.0:69")]
    tftp: SocketAddr,
    /// Our address as clients reach it (default: the interface's first IPv4).
    #[arg(long)]
    server_ip: Option<Ipv4Addr>,
    /// Proxy offer style for firmware PXE: `boot-server` (no option 43, the
    /// client asks again on 4011) or `bypass` (boot file and option 43 at once).
    #[arg(long, default_value = "boot-server", value_parser = ["boot-server", "bypass"])]
    style: String,
    /// Extra vendor-class prefixes to answer besides PXEClient/HTTPClient.
    #[arg(long = "allow-vendor")]
    allow_vendor: Vec<String>,
    /// Subnet mask handed out in full mode.
    #[arg(long, default_value = "255.255.255.0")]
    netmask: Ipv4Addr,
    /// Default gateway handed out in full mode.
    #[arg(long)]
    router: Option<Ipv4Addr>,
    /// Lease time in seconds (full mode).
    #[arg(long, default_value_t = 3600)]
    lease_secs: u32,
    /// Fixed address for a MAC in full mode, as `MAC=IP` (repeatable).
    #[arg(long = "reserve")]
    reserve: Vec<String>,
    /// Where full-mode leases are kept across restarts.
    #[arg(long, default_value = "/var/lib/rackcast/netboot")]
    state_dir: PathBuf,
    /// Cap on unacknowledged TFTP bytes across all transfers (e.g. 64M):
    /// later transfers are granted smaller windows while it is used up.
    #[arg(long, default_value = "64M", value_parser = crate::cmd::util::parse_size)]
    tftp_max_bytes_in_flight: u64,
    /// Largest TFTP windowsize granted (RFC 7440; 1 turns windows off).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    tftp_max_windowsize: u16,
    /// TFTP transfers at once, all clients together; more get ERROR 0.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    tftp_max_transfers: u32,
    /// TFTP transfers at once from one client address (raise it when many
    /// clients share an address: a NAT, a relay, a benchmark on loopback).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    tftp_max_per_client: u32,
    /// DHCP ports (tests use others; production is 67 and 4011).
    #[arg(long = "dhcp-port", default_values_t = [67u16, 4011])]
    dhcp_ports: Vec<u16>,
}

/// Runs `rackcast netboot`.
pub fn run(args: NetbootArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let policy: Arc<dyn BootPolicy> = match &args.policy {
        Some(p) => Arc::new(StaticPolicy::load(p)?),
        None => Arc::new(StaticPolicy::with_default(BootAction::LocalDisk)),
    };
    let settings = settings(&args)?;
    if settings.mode == NetbootMode::Full {
        std::fs::create_dir_all(&args.state_dir)
            .with_context(|| format!("creating {}", args.state_dir.display()))?;
    }
    let cfg = settings.resolve(&args.root, &args.state_dir)?;
    let server_ip = cfg.server_ip;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let nb = Netboot::bind(cfg, policy).await?;
        eprintln!(
            "rackcast netboot on {} ({server_ip}): DHCP {:?}, TFTP {}, HTTP {}",
            args.iface,
            args.dhcp_ports,
            nb.tftp_addr()?,
            nb.http_addr()?
        );
        tokio::select! {
            r = nb.run() => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The flags as the settings type the server's `[netboot]` table also uses,
/// so both front ends resolve them the same way.
fn settings(args: &NetbootArgs) -> anyhow::Result<NetbootSettings> {
    let mut nb = NetbootSettings::new(args.iface.clone());
    nb.mode = if args.mode == "full" {
        NetbootMode::Full
    } else {
        NetbootMode::Proxy
    };
    nb.server_ip = args.server_ip;
    nb.root = Some(args.root.clone());
    nb.tftp = args.tftp;
    nb.http = args.http;
    nb.dhcp_ports = args.dhcp_ports.clone();
    nb.style = if args.style == "bypass" {
        StyleSetting::Bypass
    } else {
        StyleSetting::BootServer
    };
    nb.allow_vendor = args.allow_vendor.clone();
    if let Some(pool) = &args.pool {
        let (a, b) = pool.split_once('-').context("--pool must be A-B")?;
        nb.pool = Some((
            a.trim().parse().context("pool start")?,
            b.trim().parse().context("pool end")?,
        ));
    } else if nb.mode == NetbootMode::Full {
        bail!("--mode full needs --pool A-B");
    }
    if nb.mode == NetbootMode::Proxy && nb.pool.is_some() {
        bail!("--pool is only for --mode full: proxy mode never hands out addresses");
    }
    nb.netmask = args.netmask;
    nb.router = args.router;
    nb.lease_secs = args.lease_secs;
    for r in &args.reserve {
        let (m, ip) = r.split_once('=').context("--reserve must be MAC=IP")?;
        let mac = MacAddr::parse(m)?;
        nb.reservations
            .insert(mac, ip.parse().with_context(|| format!("bad IP {ip:?}"))?);
    }
    nb.tftp_max_bytes_in_flight = Some(
        usize::try_from(args.tftp_max_bytes_in_flight)
            .context("--tftp-max-bytes-in-flight is too large")?,
    );
    nb.tftp_max_windowsize = Some(args.tftp_max_windowsize);
    nb.tftp_max_transfers = Some(args.tftp_max_transfers as usize);
    nb.tftp_max_per_client = Some(args.tftp_max_per_client as usize);
    Ok(nb)
}
