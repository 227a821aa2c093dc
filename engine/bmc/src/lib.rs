//! Power and one-time boot through a target's baseboard management
//! controller: Redfish (HTTPS + JSON), IPMI over LAN (RMCP+, through
//! `ipmitool` as Ironic's and MAAS's drivers do) and Wake-on-LAN (power-on
//! only). Every driver is blocking and bounds each call by
//! [`BmcConfig::timeout`]; the server runs them on blocking threads.
//!
//! Addresses are URLs, as `rackcast target add --bmc` takes them:
//! `redfish://HOST[:PORT][/redfish/v1/Systems/ID]`, `ipmi://HOST[:PORT]`
//! and `wol`.
//!
//! [`connect`] picks the driver (`redfish.rs`, `ipmi.rs`, `wol.rs`);
//! [`boot_into`] sets the one-time boot device and starts the machine into
//! it. Errors never carry the password, and no `Debug` shows it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod addr;
mod ipmi;
mod redfish;
mod wol;

pub use addr::AddrError;
/// The power words, shared with the scheduler, the API and the CLI.
pub use rackcast_types::{BootDevice, PowerOp, PowerState};
pub use wol::magic_packet;

/// Where a target's BMC is and which protocol it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BmcAddr {
    /// Redfish over HTTPS.
    Redfish {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// TCP port (default 443).
        port: Option<u16>,
        /// The ComputerSystem's path, e.g. `/redfish/v1/Systems/1`
        /// (default: the only member of `/redfish/v1/Systems`).
        system: Option<String>,
    },
    /// IPMI v2 over LAN (RMCP+).
    Ipmi {
        /// Host name or IP address.
        host: String,
        /// UDP port (default 623).
        port: Option<u16>,
    },
    /// Wake-on-LAN: a magic packet to the target's MAC; power-on only.
    Wol,
}

/// A BMC login. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"(hidden)")
            .finish()
    }
}

/// Everything a driver needs to reach one target's BMC.
#[derive(Debug, Clone)]
pub struct BmcConfig {
    /// The BMC.
    pub addr: BmcAddr,
    /// Its login (Redfish and IPMI).
    pub credentials: Option<Credentials>,
    /// Accept a certificate no trusted CA issued (Redfish BMCs with
    /// self-signed certificates); only when the target's settings say so.
    pub insecure: bool,
    /// The target's MAC (the Wake-on-LAN packet's payload).
    pub mac: [u8; 6],
    /// Send Wake-on-LAN from this local address (the provisioning
    /// interface's), to the broadcast address of its segment.
    pub wol_from: Option<std::net::Ipv4Addr>,
    /// Bound on each call (connect, request, answer).
    pub timeout: Duration,
}

/// Why a BMC call failed. Never carries the password.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// The BMC refused the login.
    #[error("the BMC refused the login: {0}")]
    Auth(String),
    /// No answer in time, or no connection.
    #[error("the BMC did not answer: {0}")]
    Unreachable(String),
    /// The BMC answered with an error.
    #[error("the BMC refused {what}: {detail}")]
    Refused {
        /// The request.
        what: String,
        /// What the BMC said (status and message).
        detail: String,
    },
    /// The driver cannot do this (Wake-on-LAN cannot power off).
    #[error("{0}")]
    Unsupported(String),
    /// An answer the driver did not understand.
    #[error("unexpected answer from the BMC: {0}")]
    Protocol(String),
    /// The BMC's TLS certificate is not trusted (a self-signed one, without
    /// `insecure`); retrying cannot help.
    #[error("the BMC's certificate is not trusted: {0}")]
    Certificate(String),
}

impl BmcError {
    /// Worth retrying (the BMC may answer later), unlike a refused login.
    pub fn is_transient(&self) -> bool {
        matches!(self, BmcError::Unreachable(_) | BmcError::Refused { .. })
    }
}

/// One target's BMC.
pub trait Bmc: Send + Sync + fmt::Debug {
    /// Carries out a power action.
    fn power(&self, op: PowerOp) -> Result<(), BmcError>;
    /// The power state.
    fn state(&self) -> Result<PowerState, BmcError>;
    /// Sets the device of the next boot only.
    fn boot_once(&self, dev: BootDevice) -> Result<(), BmcError>;
}

/// The driver for `cfg.addr`. Does no I/O: a BMC that is down shows at
/// the first call, not here. Redfish finds its system at the first call
/// (then remembers it); IPMI needs `cfg.credentials`.
pub fn connect(cfg: &BmcConfig) -> Result<Box<dyn Bmc>, BmcError> {
    Ok(match &cfg.addr {
        BmcAddr::Redfish { .. } => Box::new(redfish::Redfish::new(cfg)?),
        BmcAddr::Ipmi { .. } => Box::new(ipmi::Ipmi::new(cfg)?),
        BmcAddr::Wol => Box::new(wol::Wol::new(cfg)),
    })
}

/// Boots the target from `dev`, once: sets the one-time boot device, then
/// powers on a machine that is off and power-cycles one that is on (a
/// running machine reads its boot device only when it restarts). The boot
/// device goes first and right before the power action because IPMI BMCs
/// drop it 60 s after it was set. A driver that cannot set a boot device
/// (Wake-on-LAN) fails here: call `power(PowerOp::On)` for it instead.
pub fn boot_into(bmc: &dyn Bmc, dev: BootDevice) -> Result<(), BmcError> {
    bmc.boot_once(dev)?;
    match bmc.state()? {
        PowerState::On => bmc.power(PowerOp::Cycle),
        PowerState::Off | PowerState::Unknown => bmc.power(PowerOp::On),
    }
}

/// `text` without `secret`. BMCs have no reason to echo a password, but
/// what they say ends up in errors and logs: make sure.
pub(crate) fn hide(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "(hidden)")
    }
}

impl fmt::Display for BmcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = |h: &str| {
            if h.contains(':') {
                format!("[{h}]")
            } else {
                h.to_string()
            }
        };
        match self {
            BmcAddr::Redfish {
                host: h,
                port,
                system,
            } => {
                write!(f, "redfish://{}", host(h))?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                if let Some(s) = system {
                    write!(f, "{s}")?;
                }
                Ok(())
            }
            BmcAddr::Ipmi { host: h, port } => {
                write!(f, "ipmi://{}", host(h))?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                Ok(())
            }
            BmcAddr::Wol => f.write_str("wol"),
        }
    }
}

impl FromStr for BmcAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<BmcAddr, AddrError> {
        addr::parse(s)
    }
}

impl TryFrom<String> for BmcAddr {
    type Error = AddrError;
    fn try_from(s: String) -> Result<BmcAddr, AddrError> {
        s.parse()
    }
}

impl From<BmcAddr> for String {
    fn from(a: BmcAddr) -> String {
        a.to_string()
    }
}
