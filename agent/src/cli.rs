//! The command line of `rackcast-agent` (and of `rackcast agent`, its alias
//! for users' scripts): flags, environment variables and the kernel command
//! line resolved into an [`AgentConfig`], then the control loop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::control::inventory::route_to;
use crate::{AgentConfig, KernelArgs, Outcome, RebootMode};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rackcast_types::{Interface, MacAddr};

/// Where `rackcast env build --server-ca` puts the server's CA.
pub const BAKED_CA: &str = "/etc/rackcast/ca.pem";

/// Options of `rackcast agent`.
#[derive(Debug, Args)]
#[command(after_long_help = AFTER_HELP)]
pub struct AgentArgs {
    /// The deployment server, e.g. https://10.0.0.1:7300.
    /// Default: rackcast.server= on the kernel command line.
    #[arg(long, env = "RACKCAST_SERVER")]
    pub server: Option<String>,
    /// The token to register with: the boot token of a netbooted target
    /// (rackcast.token= on the kernel command line, the default) or the
    /// server's enrollment token (DATA/agent.token) for an agent started by
    /// hand. A flag shows in `ps`: prefer --token-file or the variable.
    #[arg(long, env = "RACKCAST_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for the server's HTTPS: the server's
    /// DATA/tls/ca.pem, which `rackcast env build --server-ca` puts in an
    /// environment as /etc/rackcast/ca.pem (the default when it exists).
    #[arg(long, env = "RACKCAST_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The target's identity. Default: the MAC of the interface that routes
    /// to the server (give one for agents on loopback).
    #[arg(long)]
    pub mac: Option<String>,
    /// The disk that tasks naming none work on: a block device, or a file
    /// for local targets. Default: rackcast.disk= on the kernel command line.
    #[arg(long)]
    pub disk: Option<PathBuf>,
    /// The environment this agent runs in. Default: rackcast.env= on the
    /// kernel command line, else linux-x64.
    #[arg(long)]
    pub env: Option<String>,
    /// Join multicast sessions on this interface (a name like eno1, or its
    /// IPv4 address). Default: the interface that routes to the server.
    #[arg(long)]
    pub iface: Option<String>,
    /// What a reboot directive does: `restart` re-registers in-process as if
    /// the machine had booted the new environment, and exits 0 for the local
    /// disk (local targets); `exit` prints where the machine would boot and
    /// exits 0; `system` sets a one-time UEFI network boot (efibootmgr) and
    /// runs --reboot-command. Default: `system` when the kernel command line
    /// has rackcast.server= (a netbooted target), otherwise `exit`: a
    /// developer's machine is never rebooted unless asked.
    #[arg(long, value_enum)]
    pub on_reboot: Option<RebootArg>,
    /// The command `--on-reboot system` runs, split on spaces.
    #[arg(long, default_value = "reboot -f")]
    pub reboot_command: String,
    /// Where scripts run and disk captures wait for their upload.
    #[arg(long, default_value = "/var/tmp/rackcast")]
    pub work_dir: PathBuf,
    /// Seconds to keep retrying a lost server before giving up (exit 3).
    #[arg(long, default_value_t = 3600)]
    pub give_up: u64,
    /// Seconds to ask the server to hold an idle poll. Default: the server's.
    #[arg(long)]
    pub poll_wait: Option<u64>,
    /// Seconds without a packet of its cast session before a receive asks the
    /// server for a new session (what is on disk stays and is resumed).
    #[arg(long, default_value_t = 15)]
    pub cast_stall: u64,
}

const AFTER_HELP: &str = "\
Every value can come from the kernel command line of an automation environment
(rackcast.server=URL rackcast.token=T rackcast.env=NAME rackcast.disk=PATH), so
a netbooted initramfs runs plain `rackcast-agent`. Flags and environment
variables win over the command line.

The agent registers, long-polls for directives and follows them: runs scripts
(output streamed to the server), captures and uploads disks, receives multicast
images (resuming what is already on the disk), reboots. When it loses the
server it retries with back-off and picks up where it was; a finished task's
result is held until the server has it.

Local targets for tests and demos: several agents on one machine, each with
its own identity and disk file:

  rackcast-agent --server https://127.0.0.1:7300 --ca DATA/tls/ca.pem --token-file T \\
      --mac 02:00:00:00:00:01 --disk /tmp/t1.img --on-reboot restart

Exit status: 0 when the target boots its local disk or reboots into an
environment (or, with --on-reboot exit, would); 3 when the server stayed
unreachable for --give-up seconds; 1 on any other error. stdout gets one line:
`boot-local` or `reboot ENV`; stderr one line per directive and a progress
line per second.";

/// `--on-reboot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootArg {
    /// Re-register in-process (local targets); exit 0 for the local disk.
    Restart,
    /// Print where the machine would boot and exit 0.
    Exit,
    /// Set a one-time network boot and run --reboot-command.
    System,
}

/// Runs the agent and turns its outcome into the exit status (errors on
/// stderr, as `error: ...`).
pub fn main(a: AgentArgs) -> ExitCode {
    match run(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the agent with `a`.
pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    // The agent's lines go to stderr as they are: the environment's console
    // and the server's tests read them.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_ansi(false)
        // Script output is echoed as it is, as eprintln did.
        .with_ansi_sanitization(false)
        .try_init();
    let kernel = KernelArgs::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let cfg = config(a, &kernel)?;
    tracing::info!(
        "agent {}: server {}, environment {}, disk {}, on reboot: {:?}",
        cfg.mac,
        cfg.server,
        cfg.env,
        cfg.disk
            .as_ref()
            .map_or("none".to_string(), |d| d.display().to_string()),
        cfg.on_reboot
    );
    match crate::run(cfg)? {
        Outcome::BootLocal => {
            println!("boot-local");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Rebooted { env } => {
            println!("reboot {env}");
            Ok(ExitCode::SUCCESS)
        }
        // The agent has said why, on stderr.
        Outcome::GaveUp { .. } => Ok(ExitCode::from(3)),
    }
}

/// Flags, then environment variables (clap), then the kernel command line.
fn config(a: AgentArgs, kernel: &KernelArgs) -> anyhow::Result<AgentConfig> {
    let server = a.server.or_else(|| kernel.server.clone()).context(
        "no server: pass --server URL, set RACKCAST_SERVER, or boot with rackcast.server=",
    )?;
    let from_file = match &a.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the token from {}", p.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    let token = from_file
        .or(a.token)
        .or_else(|| kernel.token.clone())
        .context(
        "no token: pass --token-file FILE, set RACKCAST_AGENT_TOKEN, or boot with rackcast.token=",
    )?;
    let mac = match a.mac {
        Some(m) => MacAddr::parse(&m)?,
        None => {
            let route = route_to(&server)?;
            route.mac.with_context(|| {
                format!(
                    "cannot tell this target's MAC: the route to {server} leaves from {} ({}), \
                     which has none; pass --mac",
                    route.local,
                    route.iface.as_deref().unwrap_or("no interface found")
                )
            })?
        }
    };
    let mut cfg = AgentConfig::new(&server, &token, mac);
    cfg.ca = a.ca.or_else(|| {
        let baked = std::path::Path::new(BAKED_CA);
        baked.is_file().then(|| baked.to_path_buf())
    });
    if let Some(env) = a.env.or_else(|| kernel.env.clone()) {
        cfg.env = env;
    }
    cfg.disk = a.disk.or_else(|| kernel.disk.clone().map(PathBuf::from));
    cfg.work_dir = a.work_dir;
    cfg.iface_addr = match a.iface {
        None => None,
        Some(i) => Some(match i.parse::<Ipv4Addr>() {
            Ok(addr) => addr,
            Err(_) => Interface::lookup(&i)?.ipv4,
        }),
    };
    cfg.on_reboot = match a.on_reboot {
        Some(RebootArg::Restart) => RebootMode::Restart,
        Some(RebootArg::Exit) => RebootMode::Exit,
        Some(RebootArg::System) => RebootMode::System,
        None if kernel.booted_by_rackcast() => RebootMode::System,
        None => RebootMode::Exit,
    };
    cfg.reboot_command = a
        .reboot_command
        .split_whitespace()
        .map(str::to_string)
        .collect();
    cfg.poll_wait = a.poll_wait;
    cfg.give_up = Duration::from_secs(a.give_up);
    if a.cast_stall == 0 {
        bail!("--cast-stall must be at least 1 second");
    }
    cfg.stall = Duration::from_secs(a.cast_stall);
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        a: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn flags_win_over_the_kernel_command_line() {
        let k = KernelArgs::parse(
            "rackcast.server=http://10.9.9.9:7070 rackcast.token=kt rackcast.env=winpe rackcast.disk=/dev/sda",
        );
        let c = config(
            parse(&[
                "--server",
                "http://127.0.0.1:7070",
                "--mac",
                "02:00:00:00:00:01",
                "--disk",
                "/tmp/t.img",
            ]),
            &k,
        )
        .unwrap();
        assert_eq!(c.server, "http://127.0.0.1:7070");
        assert_eq!(c.enroll_token, "kt", "token from the kernel");
        assert_eq!(c.env, "winpe");
        assert_eq!(c.disk, Some(PathBuf::from("/tmp/t.img")));
        assert_eq!(c.on_reboot, RebootMode::System, "netbooted: system reboots");
        assert_eq!(c.reboot_command, ["reboot", "-f"]);
    }

    #[test]
    fn a_developer_machine_is_never_rebooted_by_default() {
        let c = config(
            parse(&[
                "--server",
                "http://127.0.0.1:7070",
                "--token",
                "t",
                "--mac",
                "02:00:00:00:00:01",
                "--iface",
                "127.0.0.1",
            ]),
            &KernelArgs::default(),
        )
        .unwrap();
        assert_eq!(c.on_reboot, RebootMode::Exit);
        assert_eq!(c.env, "linux-x64");
        assert_eq!(c.iface_addr, Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn a_token_file_beats_the_kernel_and_an_empty_one_is_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "rcb1-secret\nignored\n").unwrap();
        let args = |f: &std::path::Path| {
            parse(&[
                "--server",
                "http://127.0.0.1:7070",
                "--mac",
                "02:00:00:00:00:01",
                "--token-file",
                f.to_str().unwrap(),
            ])
        };
        let kernel = KernelArgs {
            token: Some("from-kernel".into()),
            ..KernelArgs::default()
        };
        assert_eq!(
            config(args(&f), &kernel).unwrap().enroll_token,
            "rcb1-secret"
        );
        std::fs::write(&f, "\n").unwrap();
        assert_eq!(
            config(args(&f), &kernel).unwrap().enroll_token,
            "from-kernel"
        );
        let e = config(args(&f), &KernelArgs::default()).unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        let e = config(args(&dir.path().join("missing")), &kernel).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
    }

    #[test]
    fn missing_server_or_token_or_mac_on_loopback_say_what_to_pass() {
        let e = config(parse(&["--token", "t"]), &KernelArgs::default()).unwrap_err();
        assert!(e.to_string().contains("--server"), "{e}");
        let e = config(
            parse(&["--server", "http://127.0.0.1:7070"]),
            &KernelArgs::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        let e = config(
            parse(&["--server", "http://127.0.0.1:7070", "--token", "t"]),
            &KernelArgs::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--mac"), "{e:#}");
    }
}
