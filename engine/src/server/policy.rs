//! The scheduler as netboot's [`BootPolicy`]: a MAC with pending work boots
//! the environment its next task needs; one without boots its local disk.
//! Answers come from a map refreshed after every committed change, because
//! a proxy offer cannot wait for the scheduler's lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rackcast_netboot::{BootAction, BootPolicy, BootQuery, MacAddr, Mode, Netboot, NetbootConfig};

use super::{NetbootSettings, ServerConfig, ServerError};
use crate::sched::api::Environment;
use crate::sched::{BootChoice, Change, Scheduler};

/// See the module doc.
#[derive(Debug)]
pub struct SchedPolicy {
    boots: RwLock<HashMap<MacAddr, Environment>>,
    url: String,
    token: String,
}

impl SchedPolicy {
    pub(crate) fn new(url: String, token: String) -> SchedPolicy {
        SchedPolicy {
            boots: RwLock::new(HashMap::new()),
            url,
            token,
        }
    }

    /// Recomputes every target's boot.
    pub(crate) fn refresh_all(&self, s: &Scheduler) {
        let macs: Vec<String> = s.targets().map(|t| t.mac.clone()).collect();
        self.refresh(s, &macs);
    }

    /// Recomputes the boots that `changes` may have changed.
    pub(crate) fn update(&self, s: &Scheduler, changes: &[Change]) {
        if changes.iter().any(|c| matches!(c, Change::Environment(_))) {
            return self.refresh_all(s);
        }
        let macs: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Target(t) => Some(t.mac.clone()),
                _ => None,
            })
            .collect();
        self.refresh(s, &macs);
    }

    fn refresh(&self, s: &Scheduler, macs: &[String]) {
        let mut boots = self.boots.write().unwrap_or_else(|e| e.into_inner());
        for m in macs {
            let Some(mac) = MacAddr::parse(m) else {
                continue;
            };
            match s.boot_choice(m) {
                BootChoice::Env(name) => {
                    match s.environment(&name) {
                        Some(env) => {
                            boots.insert(mac, env.clone());
                        }
                        None => {
                            tracing::warn!("{m} needs environment {name}, which is not defined: it boots its disk");
                            boots.remove(&mac);
                        }
                    }
                }
                BootChoice::Local => {
                    boots.remove(&mac);
                }
            }
        }
    }

    /// The iPXE script that boots `env`.
    pub fn script(&self, env: &Environment) -> String {
        let fill = |s: &str| {
            s.replace("{server}", &self.url)
                .replace("{token}", &self.token)
                .replace("{env}", &env.name)
        };
        match (&env.boot_file, &env.kernel, &env.initrd) {
            (Some(f), _, _) => format!("#!ipxe\nchain {{http}}/files/{f}\n"),
            (None, Some(k), Some(i)) => format!(
                "#!ipxe\nkernel {{http}}/files/{k} initrd=initrd.img {}\ninitrd --name initrd.img {{http}}/files/{i}\nboot\n",
                fill(&env.cmdline)
            ),
            _ => "#!ipxe\nexit\n".into(),
        }
    }
}

impl BootPolicy for SchedPolicy {
    fn decide(&self, q: &BootQuery) -> BootAction {
        let boots = self.boots.read().unwrap_or_else(|e| e.into_inner());
        match boots.get(&q.mac) {
            Some(env) => BootAction::IpxeScript(self.script(env)),
            None => BootAction::LocalDisk,
        }
    }
}

/// The environments built into `root` (`rackcast env build -o ROOT/NAME`
/// leaves `ROOT/NAME/env.toml`), so a server serves what it finds there.
pub(crate) fn environments_in(root: &std::path::Path) -> Vec<Environment> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let p = e.path().join("env.toml");
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        match toml::from_str::<Environment>(&text) {
            Ok(env) => out.push(env),
            Err(err) => tracing::warn!("{}: {err}", p.display()),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Binds netboot for the server.
pub(crate) async fn bind_netboot(
    cfg: &ServerConfig,
    nb: &NetbootSettings,
    policy: Arc<SchedPolicy>,
) -> Result<Netboot, ServerError> {
    let server_ip = match nb.server_ip {
        Some(ip) => ip,
        None => rackcast_netboot::iface_ipv4(&nb.iface)?,
    };
    let mode = match nb.mode.as_deref().unwrap_or("proxy") {
        "proxy" => Mode::Proxy,
        "full" => {
            let (pool_start, pool_end) = nb.pool.ok_or_else(|| {
                ServerError::Config("netboot mode full needs pool = [\"A\", \"B\"]".into())
            })?;
            Mode::Full {
                pool_start,
                pool_end,
                netmask: std::net::Ipv4Addr::new(255, 255, 255, 0),
                router: None,
                lease_secs: 3600,
                reservations: Default::default(),
                lease_file: cfg.data.join("leases.json"),
            }
        }
        other => {
            return Err(ServerError::Config(format!(
                "netboot mode {other:?}: use proxy or full"
            )))
        }
    };
    let root = nb.root.clone().unwrap_or_else(|| cfg.data.join("boot"));
    std::fs::create_dir_all(&root).map_err(|source| ServerError::Data {
        path: root.display().to_string(),
        source,
    })?;
    let max_blksize = rackcast_netboot::iface_mtu(&nb.iface)
        .map(rackcast_netboot::blksize_for_mtu)
        .unwrap_or(1468);
    let ncfg = NetbootConfig {
        iface: Some(nb.iface.clone()),
        server_ip,
        root,
        mode,
        style: rackcast_netboot::dhcp::ReplyStyle::BootServer,
        allow_vendor: Vec::new(),
        dhcp_ports: nb.dhcp_ports.clone().unwrap_or_else(|| vec![67, 4011]),
        tftp: nb
            .tftp
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 69))),
        http: nb
            .http
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 8080))),
        tftp_limits: tftp_limits(nb, max_blksize)?,
    };
    Ok(Netboot::bind(ncfg, policy).await?)
}

/// The TFTP limits of `[netboot]`: its keys over the defaults.
fn tftp_limits(
    nb: &NetbootSettings,
    max_blksize: u16,
) -> Result<rackcast_netboot::tftp::TransferLimits, ServerError> {
    let d = rackcast_netboot::tftp::TransferLimits::default();
    let max_windowsize = nb.tftp_max_windowsize.unwrap_or(d.max_windowsize);
    if max_windowsize == 0 {
        return Err(ServerError::Config(
            "netboot tftp_max_windowsize must be at least 1".into(),
        ));
    }
    Ok(rackcast_netboot::tftp::TransferLimits {
        max_blksize,
        max_windowsize,
        max_total_bytes_in_flight: nb
            .tftp_max_bytes_in_flight
            .unwrap_or(d.max_total_bytes_in_flight),
        ..d
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netboot(table: &str) -> Result<NetbootSettings, toml::de::Error> {
        let text = format!("data = \"/tmp/x\"\n[netboot]\niface = \"eth0\"\n{table}");
        toml::from_str::<ServerConfig>(&text).map(|c| c.netboot.expect("[netboot] given"))
    }

    #[test]
    fn tftp_keys_of_the_netboot_table_set_the_limits() {
        let nb = netboot("tftp_max_bytes_in_flight = 1048576\ntftp_max_windowsize = 8\n").unwrap();
        let l = tftp_limits(&nb, 1468).unwrap();
        assert_eq!(l.max_total_bytes_in_flight, 1 << 20);
        assert_eq!(l.max_windowsize, 8);
        assert_eq!(l.max_blksize, 1468);
        // Absent keys keep the defaults.
        let d = rackcast_netboot::tftp::TransferLimits::default();
        let l = tftp_limits(&netboot("").unwrap(), 1400).unwrap();
        assert_eq!(l.max_total_bytes_in_flight, d.max_total_bytes_in_flight);
        assert_eq!(l.max_windowsize, d.max_windowsize);
        assert_eq!(l.max_blksize, 1400);
    }

    #[test]
    fn bad_tftp_keys_are_refused() {
        let nb = netboot("tftp_max_windowsize = 0\n").unwrap();
        let e = tftp_limits(&nb, 1468).unwrap_err().to_string();
        assert!(e.contains("tftp_max_windowsize"), "{e}");
        let e = netboot("tftp_max_window = 4\n").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(netboot("tftp_max_bytes_in_flight = -1\n").is_err());
    }
}
