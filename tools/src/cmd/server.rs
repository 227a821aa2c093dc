//! `rackcast server`: the deployment server (REST API, agent API, cast
//! senders, image library, optional netboot) in one process.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rackcast_server::{Server, ServerConfig};

/// Options of `rackcast server`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  rackcast server --data /var/lib/rackcast --listen 0.0.0.0:7300 --cast-addr 10.0.0.1\n\n\
On first start the server writes an operator token to DATA/admin.token (for the\n\
CLI: RACKCAST_TOKEN or --token-file), an agent enrollment token to\n\
DATA/agent.token (for agents started by hand: --token-file) and, unless the\n\
config names a certificate (tls_cert, tls_key), a CA in DATA/tls/ca.pem that\n\
its HTTPS certificate chains to (CLI: --ca or RACKCAST_CA; environments:\n\
rackcast env build --server-ca). Netbooted targets get a one-time boot token\n\
in their iPXE script, never the enrollment token."
)]
pub struct ServerArgs {
    /// Server configuration (TOML: the fields of `ServerConfig`, and a
    /// `[netboot]` table to answer PXE too). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory: database, tokens, image library.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address of the operator and agent APIs.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// URL agents should use to reach this server (default: https://LISTEN).
    #[arg(long)]
    public_url: Option<String>,
    /// Serve the operator API on this address instead, apart from the
    /// agent API on --listen (keep it off the provisioning network).
    #[arg(long)]
    operator_listen: Option<SocketAddr>,
    /// Address of the interface cast sessions are multicast from.
    #[arg(long)]
    cast_addr: Option<Ipv4Addr>,
    /// First UDP port of cast sessions (session n uses PORT + n % 1000).
    #[arg(long)]
    cast_port: Option<u16>,
    /// Rate ceiling of each cast session, bytes/s (suffixes K, M, G).
    #[arg(long, value_parser = super::util::parse_size)]
    cast_rate: Option<u64>,
    /// Environment of tasks that name none.
    #[arg(long)]
    default_env: Option<String>,
    /// Make the data directory's CA (unless it is there), print the path
    /// of its certificate and exit: for `rackcast env build --server-ca`
    /// before the server's first start.
    #[arg(long)]
    make_ca: bool,
    /// Apply the database migrations this version needs, print the
    /// database's path and exit (run it before starting a new version).
    #[arg(long)]
    migrate_only: bool,
}

/// Runs `rackcast server`.
pub fn run(a: ServerArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    let mut cfg = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str::<ServerConfig>(&text).with_context(|| format!("{}", p.display()))?
        }
        None => ServerConfig::new(PathBuf::from("/var/lib/rackcast")),
    };
    if let Some(d) = a.data {
        cfg.data = d;
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(u) = a.public_url {
        cfg.public_url = Some(u);
    }
    if let Some(o) = a.operator_listen {
        cfg.operator_listen = Some(o);
    }
    if let Some(c) = a.cast_addr {
        cfg.cast_addr = c;
    }
    if let Some(p) = a.cast_port {
        cfg.cast_port = p;
    }
    if let Some(r) = a.cast_rate {
        cfg.cast_rate = r;
    }
    if let Some(e) = a.default_env {
        cfg.default_env = e;
    }
    if a.make_ca {
        if cfg.tls_cert.is_some() {
            anyhow::bail!(
                "the config names tls_cert: give environments the CA that issued it, \
                 not one of the server's own"
            );
        }
        let ca = rackcast_server::tls::make_ca(&cfg.data)
            .with_context(|| format!("making a CA in {}", cfg.data.display()))?;
        println!("{}", ca.display());
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if a.migrate_only {
        let db = rt
            .block_on(Server::migrate_only(&cfg))
            .with_context(|| format!("migrating {}", cfg.data.display()))?;
        println!("{db}");
        return Ok(ExitCode::SUCCESS);
    }
    rt.block_on(async move {
        let data = cfg.data.clone();
        let server = Server::bind(cfg).await?;
        eprintln!(
            "rackcast server on {} (data in {})",
            server.url(),
            data.display()
        );
        eprintln!(
            "  operator token:         {}",
            server.admin_token_path().display()
        );
        eprintln!(
            "  agent enrollment token: {}",
            data.join("agent.token").display()
        );
        if let Some(ca) = server.ca_path() {
            eprintln!(
                "  CA certificate:         {} (clients: --ca or RACKCAST_CA; \
                 environments: rackcast env build --server-ca)",
                ca.display()
            );
        }
        if let Some(op) = server.operator_addr() {
            eprintln!("  operator API:           {op} (apart from the agent API)");
        }
        // A line scripts can wait for.
        println!("listening {}", server.url());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            r = server.run() => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
