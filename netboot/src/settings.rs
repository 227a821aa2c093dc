//! The netboot settings operators write, in one type for both front ends:
//! the `[netboot]` table of `rackcast server`'s config and the flags of
//! `rackcast netboot`. [`NetbootSettings::resolve`] validates them once
//! into the runtime [`NetbootConfig`].
//!
//! # Limits
//!
//! Everything a stranger on the provisioning network can make the server
//! hold is capped; the keys and their defaults:
//!
//! | key | default | bounds |
//! |---|---|---|
//! | `tftp_max_bytes_in_flight` | 64 MiB | unacknowledged TFTP bytes, all transfers together |
//! | `tftp_max_windowsize` | 64 | blocks per TFTP window (256 KiB per transfer at most) |
//! | `tftp_max_transfers` | 1024 | TFTP transfers at once; more get ERROR 0 |
//! | `tftp_max_per_client` | 8 | TFTP transfers at once per client address |
//! | `http_max_connections` | 256 | HTTP connections at once; more wait in the backlog |
//! | `http_head_timeout_secs` | 20 | time for a request head to arrive (and keep-alive idle) |
//! | `http_write_timeout_secs` | 30 | time one HTTP write may wait for the client |
//!
//! Fixed in the code: a client's TFTP `timeout` option is honoured only up
//! to the 8 s back-off ceiling; netascii is converted one window at a time
//! (no `tsize` for it); at most [`crate::dhcp::leases::MAX_DECLINED`]
//! declined addresses are held, each for ten minutes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rackcast_types::{Interface, MacAddr};
use serde::Deserialize;

use crate::dhcp::ReplyStyle;
use crate::http::HttpLimits;
use crate::tftp::{blksize_for_mtu, TransferLimits};
use crate::{Error, Mode, NetbootConfig, Result};

/// How netboot runs on one interface, as configured. Every key but `iface`
/// has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetbootSettings {
    /// Interface of the provisioning network.
    pub iface: String,
    /// `proxy` (default) beside the site's DHCP server, or `full` on an
    /// isolated network.
    #[serde(default)]
    pub mode: NetbootMode,
    /// Our address as targets reach it (default: the interface's).
    #[serde(default)]
    pub server_ip: Option<Ipv4Addr>,
    /// Boot root served over TFTP and HTTP (the server's default:
    /// `DATA/boot`).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// TFTP address (default `0.0.0.0:69`).
    #[serde(default = "default_tftp")]
    pub tftp: SocketAddr,
    /// HTTP address for boot files and iPXE scripts (default `0.0.0.0:8080`).
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// DHCP ports (default 67 and 4011).
    #[serde(default = "default_dhcp_ports")]
    pub dhcp_ports: Vec<u16>,
    /// Proxy offer style for firmware PXE: `boot-server` (default) or
    /// `bypass`.
    #[serde(default)]
    pub style: StyleSetting,
    /// Extra vendor-class prefixes to answer besides PXEClient/HTTPClient.
    #[serde(default)]
    pub allow_vendor: Vec<String>,
    /// Full mode: first and last pool address.
    #[serde(default)]
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Full mode: subnet mask handed out (default 255.255.255.0).
    #[serde(default = "default_netmask")]
    pub netmask: Ipv4Addr,
    /// Full mode: default gateway handed out.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// Full mode: lease time in seconds (default 3600).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Full mode: fixed addresses by MAC.
    #[serde(default)]
    pub reservations: HashMap<MacAddr, Ipv4Addr>,
    /// Cap on unacknowledged TFTP bytes across all transfers (default
    /// 64 MiB); later transfers get smaller windows while it is used up.
    #[serde(default)]
    pub tftp_max_bytes_in_flight: Option<usize>,
    /// Largest TFTP windowsize granted (default 64; 1 turns windows off).
    #[serde(default)]
    pub tftp_max_windowsize: Option<u16>,
    /// Who may fetch `/ipxe/<mac>` (it carries that MAC's boot token):
    /// `segment` (default: only the peer whose neighbour entry has that
    /// MAC) or `any` (targets behind a DHCP relay).
    #[serde(default)]
    pub script_peer: crate::neighbor::ScriptPeer,
    /// TFTP transfers running at once (default 1024).
    #[serde(default)]
    pub tftp_max_transfers: Option<usize>,
    /// TFTP transfers running at once per client address (default 8).
    #[serde(default)]
    pub tftp_max_per_client: Option<usize>,
    /// HTTP connections open at once (default 256).
    #[serde(default)]
    pub http_max_connections: Option<usize>,
    /// Seconds an HTTP request head may take to arrive (default 20).
    #[serde(default)]
    pub http_head_timeout_secs: Option<u64>,
    /// Seconds one HTTP write may wait for the client (default 30).
    #[serde(default)]
    pub http_write_timeout_secs: Option<u64>,
}

/// `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetbootMode {
    /// Answer boot clients only; never hand out addresses.
    #[default]
    Proxy,
    /// Hand out addresses from `pool` too.
    Full,
}

/// `style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StyleSetting {
    /// No option 43 or boot file in the offer: the client asks on 4011.
    #[default]
    BootServer,
    /// Boot file and option 43 in the offer: one round trip fewer.
    Bypass,
}

fn default_tftp() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_dhcp_ports() -> Vec<u16> {
    vec![67, 4011]
}
fn default_netmask() -> Ipv4Addr {
    Ipv4Addr::new(255, 255, 255, 0)
}
fn default_lease_secs() -> u32 {
    3600
}

impl NetbootSettings {
    /// Settings for `iface` with every default.
    pub fn new(iface: impl Into<String>) -> NetbootSettings {
        NetbootSettings {
            iface: iface.into(),
            mode: NetbootMode::Proxy,
            server_ip: None,
            root: None,
            tftp: default_tftp(),
            http: default_http(),
            dhcp_ports: default_dhcp_ports(),
            style: StyleSetting::BootServer,
            allow_vendor: Vec::new(),
            pool: None,
            netmask: default_netmask(),
            router: None,
            lease_secs: default_lease_secs(),
            reservations: HashMap::new(),
            tftp_max_bytes_in_flight: None,
            tftp_max_windowsize: None,
            script_peer: Default::default(),
            tftp_max_transfers: None,
            tftp_max_per_client: None,
            http_max_connections: None,
            http_head_timeout_secs: None,
            http_write_timeout_secs: None,
        }
    }

    /// Validates these settings into the runtime configuration: the
    /// interface's address (unless `server_ip` is given) and MTU are looked
    /// up, TFTP's blksize is capped by that MTU, full mode keeps its leases
    /// in `state_dir`. `default_root` serves when `root` is not set.
    pub fn resolve(&self, default_root: &Path, state_dir: &Path) -> Result<NetbootConfig> {
        let server_ip = match self.server_ip {
            Some(ip) => ip,
            None => Interface::lookup(&self.iface)?.ipv4,
        };
        let mtu = Interface::mtu(&self.iface);
        Ok(NetbootConfig {
            iface: Some(self.iface.clone()),
            server_ip,
            root: self
                .root
                .clone()
                .unwrap_or_else(|| default_root.to_path_buf()),
            mode: self.mode(state_dir)?,
            style: match self.style {
                StyleSetting::BootServer => ReplyStyle::BootServer,
                StyleSetting::Bypass => ReplyStyle::Bypass,
            },
            allow_vendor: self.allow_vendor.clone(),
            dhcp_ports: self.dhcp_ports.clone(),
            tftp: self.tftp,
            http: self.http,
            tftp_limits: self.tftp_limits(mtu)?,
            script_peer: self.script_peer,
            http_limits: self.http_limits()?,
        })
    }

    fn mode(&self, state_dir: &Path) -> Result<Mode> {
        match self.mode {
            // Proxy mode never hands out addresses: a pool is ignored, as
            // the server always did (`rackcast netboot` refuses --pool).
            NetbootMode::Proxy => Ok(Mode::Proxy),
            NetbootMode::Full => {
                let (pool_start, pool_end) = self.pool.ok_or_else(|| {
                    Error::Config("full mode needs a pool (first and last address)".into())
                })?;
                if u32::from(pool_start) > u32::from(pool_end) {
                    return Err(Error::Config(format!(
                        "pool {pool_start}-{pool_end} ends before it starts"
                    )));
                }
                Ok(Mode::Full {
                    pool_start,
                    pool_end,
                    netmask: self.netmask,
                    router: self.router,
                    lease_secs: self.lease_secs,
                    reservations: self.reservations.clone(),
                    lease_file: state_dir.join("leases.json"),
                })
            }
        }
    }

    /// The TFTP limits: these keys over the defaults, blksize capped by the
    /// interface's MTU where it has one.
    pub fn tftp_limits(&self, mtu: Option<u32>) -> Result<TransferLimits> {
        let d = TransferLimits::default();
        let max_windowsize = self.tftp_max_windowsize.unwrap_or(d.max_windowsize);
        if max_windowsize == 0 {
            return Err(Error::Config(
                "tftp_max_windowsize must be at least 1".into(),
            ));
        }
        let max_transfers = positive("tftp_max_transfers", self.tftp_max_transfers)?;
        let max_per_client = positive("tftp_max_per_client", self.tftp_max_per_client)?;
        Ok(TransferLimits {
            max_blksize: mtu.map_or(d.max_blksize, |m| blksize_for_mtu(m, false)),
            max_windowsize,
            max_total_bytes_in_flight: self
                .tftp_max_bytes_in_flight
                .unwrap_or(d.max_total_bytes_in_flight),
            max_transfers: max_transfers.unwrap_or(d.max_transfers),
            max_transfers_per_client: max_per_client.unwrap_or(d.max_transfers_per_client),
            ..d
        })
    }

    /// The HTTP limits: these keys over the defaults.
    pub fn http_limits(&self) -> Result<HttpLimits> {
        let d = HttpLimits::default();
        let secs = |key, v: Option<u64>| -> Result<Option<std::time::Duration>> {
            Ok(positive(key, v.map(|s| s as usize))?
                .map(|s| std::time::Duration::from_secs(s as u64)))
        };
        Ok(HttpLimits {
            max_connections: positive("http_max_connections", self.http_max_connections)?
                .unwrap_or(d.max_connections),
            head_timeout: secs("http_head_timeout_secs", self.http_head_timeout_secs)?
                .unwrap_or(d.head_timeout),
            write_timeout: secs("http_write_timeout_secs", self.http_write_timeout_secs)?
                .unwrap_or(d.write_timeout),
        })
    }
}

/// `value`, refused when zero: a cap of nothing would serve no one.
fn positive(key: &str, value: Option<usize>) -> Result<Option<usize>> {
    match value {
        Some(0) => Err(Error::Config(format!("{key} must be at least 1"))),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(table: &str) -> std::result::Result<NetbootSettings, toml::de::Error> {
        toml::from_str(&format!("iface = \"eth0\"\n{table}"))
    }

    #[test]
    fn tftp_keys_set_the_limits() {
        let nb = settings("tftp_max_bytes_in_flight = 1048576\ntftp_max_windowsize = 8\n").unwrap();
        let l = nb.tftp_limits(Some(1500)).unwrap();
        assert_eq!(l.max_total_bytes_in_flight, 1 << 20);
        assert_eq!(l.max_windowsize, 8);
        assert_eq!(l.max_blksize, 1468);
        // Absent keys keep the defaults.
        let d = TransferLimits::default();
        let l = settings("").unwrap().tftp_limits(Some(1432)).unwrap();
        assert_eq!(l.max_total_bytes_in_flight, d.max_total_bytes_in_flight);
        assert_eq!(l.max_windowsize, d.max_windowsize);
        assert_eq!(l.max_blksize, 1400);
        assert_eq!(
            settings("").unwrap().tftp_limits(None).unwrap().max_blksize,
            1468
        );
    }

    #[test]
    fn limit_keys_set_the_caps_and_zero_is_refused() {
        let nb = settings(
            "tftp_max_transfers = 100\ntftp_max_per_client = 2\nhttp_max_connections = 16\n\
             http_head_timeout_secs = 5\nhttp_write_timeout_secs = 7\n",
        )
        .unwrap();
        let t = nb.tftp_limits(None).unwrap();
        assert_eq!((t.max_transfers, t.max_transfers_per_client), (100, 2));
        let h = nb.http_limits().unwrap();
        assert_eq!(h.max_connections, 16);
        assert_eq!(h.head_timeout, std::time::Duration::from_secs(5));
        assert_eq!(h.write_timeout, std::time::Duration::from_secs(7));
        let d = settings("").unwrap();
        assert_eq!(d.http_limits().unwrap(), HttpLimits::default());
        let t = d.tftp_limits(None).unwrap();
        assert_eq!(t.max_transfers, TransferLimits::default().max_transfers);
        for key in [
            "tftp_max_transfers",
            "tftp_max_per_client",
            "http_max_connections",
            "http_head_timeout_secs",
        ] {
            let nb = settings(&format!("{key} = 0\n")).unwrap();
            let e = match nb.tftp_limits(None) {
                Err(e) => e,
                Ok(_) => nb.http_limits().unwrap_err(),
            };
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn bad_keys_are_refused() {
        let nb = settings("tftp_max_windowsize = 0\n").unwrap();
        let e = nb.tftp_limits(None).unwrap_err().to_string();
        assert!(e.contains("tftp_max_windowsize"), "{e}");
        let e = settings("tftp_max_window = 4\n").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(settings("tftp_max_bytes_in_flight = -1\n").is_err());
        assert!(settings("mode = \"fancy\"\n").is_err());
        assert!(settings("reservations = { \"nope\" = \"10.0.0.9\" }\n").is_err());
    }

    #[test]
    fn full_mode_takes_the_configured_netmask_router_and_leases() {
        let nb = settings(
            "server_ip = \"10.9.0.1\"\nmode = \"full\"\npool = [\"10.9.0.100\", \"10.9.0.199\"]\n\
             netmask = \"255.255.0.0\"\nrouter = \"10.9.0.254\"\nlease_secs = 600\n\
             reservations = { \"52-54-00-00-00-09\" = \"10.9.0.9\" }\n",
        )
        .unwrap();
        let cfg = nb
            .resolve(Path::new("/srv/boot"), Path::new("/var/lib/x"))
            .unwrap();
        let Mode::Full {
            netmask,
            router,
            lease_secs,
            reservations,
            lease_file,
            ..
        } = cfg.mode
        else {
            panic!("full mode expected");
        };
        assert_eq!(netmask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(router, Some(Ipv4Addr::new(10, 9, 0, 254)));
        assert_eq!(lease_secs, 600);
        assert_eq!(
            reservations.get(&MacAddr([0x52, 0x54, 0, 0, 0, 9])),
            Some(&Ipv4Addr::new(10, 9, 0, 9))
        );
        assert_eq!(lease_file, Path::new("/var/lib/x/leases.json"));
        assert_eq!(cfg.root, Path::new("/srv/boot"));
    }

    #[test]
    fn full_mode_needs_a_pool_and_proxy_mode_ignores_one() {
        let dir = Path::new("/tmp");
        let e = settings("server_ip = \"10.9.0.1\"\nmode = \"full\"\n")
            .unwrap()
            .resolve(dir, dir)
            .unwrap_err();
        assert!(e.to_string().contains("pool"), "{e}");
        let cfg = settings("server_ip = \"10.9.0.1\"\npool = [\"10.9.0.100\", \"10.9.0.199\"]\n")
            .unwrap()
            .resolve(dir, dir)
            .unwrap();
        assert!(matches!(cfg.mode, Mode::Proxy));
    }
}
