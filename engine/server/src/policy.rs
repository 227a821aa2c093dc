//! The scheduler as netboot's [`BootPolicy`]: a MAC with pending work boots
//! the environment its next task needs; one without boots its local disk.
//! Answers come from a map refreshed after every committed change, because
//! a proxy offer cannot wait for the scheduler's lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rackcast_netboot::{BootAction, BootPolicy, BootQuery, MacAddr, Netboot, NetbootSettings};

use super::boot_token::BootToken;
use super::{now_ms, ServerConfig, ServerError};
use rackcast_engine::sched::api::{Environment, JobId};
use rackcast_engine::sched::{BootChoice, Change, Scheduler};

/// See the module doc.
#[derive(Debug)]
pub struct SchedPolicy {
    boots: RwLock<HashMap<MacAddr, Boot>>,
    url: String,
    /// Tags the boot tokens scripts carry (`DATA/boot.key`).
    boot_key: [u8; 32],
}

/// What a MAC boots now, and for which task.
#[derive(Debug, Clone)]
struct Boot {
    env: Environment,
    task: Option<(JobId, u32)>,
}

impl SchedPolicy {
    pub(crate) fn new(url: String, boot_key: [u8; 32]) -> SchedPolicy {
        SchedPolicy {
            boots: RwLock::new(HashMap::new()),
            url,
            boot_key,
        }
    }

    /// Recomputes every target's boot.
    pub(crate) fn refresh_all(&self, s: &Scheduler) {
        let macs: Vec<MacAddr> = s.targets().map(|t| t.mac).collect();
        self.refresh(s, &macs);
    }

    /// Recomputes the boots that `changes` may have changed.
    pub(crate) fn update(&self, s: &Scheduler, changes: &[Change]) {
        if changes.iter().any(|c| matches!(c, Change::Environment(_))) {
            return self.refresh_all(s);
        }
        let macs: Vec<MacAddr> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Target(t) => Some(t.mac),
                _ => None,
            })
            .collect();
        self.refresh(s, &macs);
    }

    fn refresh(&self, s: &Scheduler, macs: &[MacAddr]) {
        let mut boots = self.boots.write().unwrap_or_else(|e| e.into_inner());
        for &mac in macs {
            match s.boot_choice(mac) {
                BootChoice::Env(name) => match s.environment(&name) {
                    Some(env) => {
                        let task = s.pending_task(mac);
                        boots.insert(
                            mac,
                            Boot {
                                env: env.clone(),
                                task,
                            },
                        );
                    }
                    None => {
                        tracing::warn!("{mac} needs environment {name}, which is not defined: it boots its disk");
                        boots.remove(&mac);
                    }
                },
                BootChoice::Local => {
                    boots.remove(&mac);
                }
            }
        }
    }

    /// The iPXE script that boots `env` on `mac` for `task`. `{token}` is
    /// a boot token minted now for this MAC and task (see
    /// [`crate::boot_token`]), never the enrollment token.
    pub fn script(&self, env: &Environment, mac: MacAddr, task: Option<(JobId, u32)>) -> String {
        let token = BootToken {
            mac,
            issued: now_ms(),
            task,
        }
        .mint(&self.boot_key);
        let fill = |s: &str| {
            s.replace("{server}", &self.url)
                .replace("{token}", &token)
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
            Some(b) => BootAction::IpxeScript(self.script(&b.env, q.mac, b.task)),
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

/// Binds netboot for the server: `[netboot]` resolved with the data
/// directory as the default boot root and the lease directory.
pub(crate) async fn bind_netboot(
    cfg: &ServerConfig,
    nb: &NetbootSettings,
    policy: Arc<SchedPolicy>,
) -> Result<Netboot, ServerError> {
    let ncfg = nb.resolve(&cfg.data.join("boot"), &cfg.data)?;
    std::fs::create_dir_all(&ncfg.root).map_err(|source| ServerError::Data {
        path: ncfg.root.display().to_string(),
        source,
    })?;
    Ok(Netboot::bind(ncfg, policy).await?)
}
