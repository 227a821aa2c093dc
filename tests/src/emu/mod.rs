//! Real BMC emulators for the suites (the drivers' in engine/bmc, the
//! server's in tests/server): sushy-tools' Redfish emulator and OpenIPMI's
//! ipmi_sim, each on a free loopback port in its own temporary directory,
//! killed by PID on drop (panics included), and what they share: the
//! login, free ports, tool discovery, a self-signed certificate.

mod ipmi_sim;
mod sushy;

pub use ipmi_sim::IpmiSim;
pub use sushy::Sushy;

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// The login both emulators are given.
pub const USER: &str = "admin";
pub const PASSWORD: &str = "pw-Zq7-s3cret";

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Panics with `log` when the process has exited.
    pub fn check_alive(&mut self, what: &str, log: &Path) {
        if let Ok(Some(st)) = self.0.try_wait() {
            panic!(
                "{what} exited ({st}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

/// A loopback TCP port nothing listens on (right now).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback UDP port nothing listens on (right now).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `bin` on PATH, or None with a printed reason.
pub fn tool(bin: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: {bin} not installed (Debian package {package}; scripts/deps.sh test)");
    }
    found
}

/// A self-signed certificate for 127.0.0.1 (not a CA: rustls refuses a
/// CA certificate as a server's) and its key, PEM.
pub fn self_signed() -> (rcgen::CertifiedKey, String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (ck.cert.pem(), ck.key_pair.serialize_pem());
    (ck, cert, key)
}

/// How long an emulator may take to come up.
pub const READY: Duration = Duration::from_secs(20);
