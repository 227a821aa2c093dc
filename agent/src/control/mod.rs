//! The agent's control loop: register with the deployment server, long-poll
//! for directives, run tasks and report on them, reboot where told.
//!
//! ```text
//! register ─► poll ─┬─ Wait ──────────────► poll
//!    ▲              ├─ Run ─► task thread ─► reports (Log, Progress) ... Finished | Rejoin ─► poll
//!    │              ├─ Reboot / BootLocal ─► --on-reboot: restart | exit | system
//!    └── 401 ───────┴─ Register
//! ```
//!
//! Nothing is lost when the server is: calls are retried with back-off
//! ([`backoff`]) for up to [`AgentConfig::give_up`]; a `Finished` (or
//! `Rejoin`) report is held until the server acknowledges it, and a
//! re-registration names the task still in hand (`running`).
//!
//! The loop is the sans-IO [`machine::Machine`] (time is an input, every
//! decision a value) driven by a thin shell that makes its HTTP calls, runs
//! task workers ([`tasks`]) and reboots ([`boot`]).

pub mod backoff;
pub mod boot;
pub mod client;
pub mod inventory;
pub mod machine;
#[cfg(test)]
mod machine_tests;
pub mod script;
mod shell;
pub mod tasks;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use rackcast_types::MacAddr;

use crate::error::{AgentError, Result};

pub use boot::KernelArgs;
pub use client::Client;

/// The agent's version, sent when registering.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What to do when the server says reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// Local test and demo targets: act as if the machine had booted into
    /// the environment (register again from it, in-process); `local` ends
    /// the agent as "booted the local disk".
    Restart,
    /// Say where the machine would boot, and end the agent.
    Exit,
    /// Real machines: set a one-time network boot (UEFI `BootNext` via
    /// `efibootmgr`, when booting into an automation environment) and run
    /// the reboot command.
    System,
}

/// How the control loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No work left: the machine boots (or, for a local agent, "booted")
    /// its own disk.
    BootLocal,
    /// The machine reboots (or, with [`RebootMode::Exit`], would reboot)
    /// into this environment.
    Rebooted {
        /// The environment.
        env: String,
    },
    /// The server stayed unreachable for the give-up time.
    GaveUp {
        /// How long it was tried.
        after: Duration,
        /// The last error.
        last_error: String,
    },
}

/// Everything the control loop needs, validated by [`run`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The deployment server, `https://host:port` (`http://` for a server
    /// with `tls = false`).
    pub server: String,
    /// The CA certificate (PEM) to trust for the server's HTTPS (`None`:
    /// the public roots).
    pub ca: Option<PathBuf>,
    /// The enrollment token for `register`.
    pub enroll_token: String,
    /// The target's identity.
    pub mac: MacAddr,
    /// The environment this agent runs in (`linux-x64`, ...).
    pub env: String,
    /// The disk a task that names none works on (a file or a device).
    pub disk: Option<PathBuf>,
    /// Where scripts run and captures are written before upload.
    pub work_dir: PathBuf,
    /// Join cast sessions on this address (`None`: the address the route to
    /// the server leaves from).
    pub iface_addr: Option<Ipv4Addr>,
    /// What a reboot directive does.
    pub on_reboot: RebootMode,
    /// The reboot command for [`RebootMode::System`], program then arguments.
    pub reboot_command: Vec<String>,
    /// Seconds to ask the server to hold an idle poll (`None`: the server's
    /// `poll_wait`).
    pub poll_wait: Option<u64>,
    /// How long to keep retrying a lost server before giving up.
    pub give_up: Duration,
    /// A cast receive with no packet of its session for this long asks the
    /// server for a new session.
    pub stall: Duration,
}

impl AgentConfig {
    /// A configuration with the defaults: environment `linux-x64`, work
    /// directory `/var/tmp/rackcast`, reboot mode `exit`, give up after an
    /// hour, rejoin a cast after 15 s of silence.
    pub fn new(server: &str, enroll_token: &str, mac: MacAddr) -> AgentConfig {
        AgentConfig {
            server: server.trim_end_matches('/').to_string(),
            ca: None,
            enroll_token: enroll_token.to_string(),
            mac,
            env: "linux-x64".into(),
            disk: None,
            work_dir: PathBuf::from("/var/tmp/rackcast"),
            iface_addr: None,
            on_reboot: RebootMode::Exit,
            reboot_command: vec!["reboot".into(), "-f".into()],
            poll_wait: None,
            give_up: Duration::from_secs(3600),
            stall: Duration::from_secs(15),
        }
    }

    /// Checks the values that would otherwise fail later, far from here.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(AgentError::Config(s));
        inventory::server_host_port(&self.server)?;
        if !self.mac.is_real() {
            return bad(format!(
                "MAC {} cannot name a target (all zeros or broadcast)",
                self.mac
            ));
        }
        if self.env.trim().is_empty() {
            return bad("the environment name is empty".into());
        }
        if self.on_reboot == RebootMode::System && self.reboot_command.is_empty() {
            return bad("the reboot command is empty".into());
        }
        if self.stall.is_zero() {
            return bad("the cast stall time must be above zero".into());
        }
        Ok(())
    }
}

/// Runs the agent until there is nothing left for it to do: it registers,
/// follows directives, and returns how it ended. Errors are the ones
/// retrying cannot fix (a bad configuration, a refused enrollment token, a
/// reboot command that failed).
pub fn run(cfg: AgentConfig) -> Result<Outcome> {
    cfg.validate()?;
    shell::drive(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let mac = MacAddr::parse("02:00:00:00:00:0A").unwrap();
        let c = AgentConfig::new("http://127.0.0.1:7070/", "tok", mac);
        assert_eq!(c.server, "http://127.0.0.1:7070");
        assert_eq!(c.mac.to_string(), "02:00:00:00:00:0a");
        assert_eq!(c.on_reboot, RebootMode::Exit, "never reboot by default");
        assert!(c.validate().is_ok());
        let mut bad = c.clone();
        bad.mac = MacAddr([0; 6]);
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.server = "ftp://x".into();
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.on_reboot = RebootMode::System;
        bad.reboot_command.clear();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_refused_connection_for_longer_than_give_up_is_an_outcome() {
        let mut c = AgentConfig::new("http://127.0.0.1:9", "tok", MacAddr([2, 0, 0, 0, 0, 1]));
        c.give_up = Duration::from_millis(700);
        let start = std::time::Instant::now();
        match run(c).unwrap() {
            Outcome::GaveUp { after, last_error } => {
                assert!(after >= Duration::from_millis(700));
                assert!(!last_error.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(8));
    }
}
