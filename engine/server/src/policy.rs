//! The scheduler as netboot's [`BootPolicy`]: a MAC with pending work boots
//! the environment its next task needs; one without boots its local disk.
//! Answers come from a map refreshed after every committed change, because
//! a proxy offer cannot wait for the scheduler's lock.
//!
//! A target whose one-time disk boot did not take (it fetched its script
//! again soon after its work ended) is held at a script that waits, and
//! its MAC goes to the server, which has its BMC cycle it into its disk
//! ([`Scheduler::disk_missed`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rackcast_netboot::{
    BootAction, BootPolicy, BootQuery, BootStage, MacAddr, Netboot, NetbootSettings,
};
use tokio::sync::mpsc;

use super::boot_token::BootToken;
use super::{now_ms, ServerConfig, ServerError};
use rackcast_engine::sched::api::{Environment, JobId};
use rackcast_engine::sched::{BootChoice, Change, Scheduler};

/// See the module doc.
#[derive(Debug)]
pub struct SchedPolicy {
    boots: RwLock<HashMap<MacAddr, Boot>>,
    /// Targets whose disk boot did not take, until when (Unix ms).
    held: RwLock<HashMap<MacAddr, u64>>,
    /// Where a held target's script fetch is reported; full means a report
    /// is already waiting, and one per target is all the scheduler acts on.
    missed: mpsc::Sender<MacAddr>,
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
    /// The policy, and where held targets' script fetches arrive.
    pub(crate) fn new(url: String, boot_key: [u8; 32]) -> (SchedPolicy, mpsc::Receiver<MacAddr>) {
        let (missed, rx) = mpsc::channel(256);
        let p = SchedPolicy {
            boots: RwLock::new(HashMap::new()),
            held: RwLock::new(HashMap::new()),
            missed,
            url,
            boot_key,
        };
        (p, rx)
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
        let mut held = self.held.write().unwrap_or_else(|e| e.into_inner());
        for &mac in macs {
            let choice = s.boot_choice(mac);
            match choice {
                BootChoice::HoldForDisk { until } => held.insert(mac, until),
                _ => held.remove(&mac),
            };
            match choice {
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
                BootChoice::Local | BootChoice::HoldForDisk { .. } => {
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
        if let Some(b) = boots.get(&q.mac) {
            return BootAction::IpxeScript(self.script(&b.env, q.mac, b.task));
        }
        if q.stage == BootStage::Script {
            let held = self.held.read().unwrap_or_else(|e| e.into_inner());
            if held.get(&q.mac).is_some_and(|&until| now_ms() < until) {
                let _ = self.missed.try_send(q.mac);
                return BootAction::IpxeScript(hold_script(q.arch, q.mac));
            }
        }
        // A firmware PXE client gets the quick-local-boot loader (UEFI, when
        // the boot root has it) or no offer, and moves on to its disk.
        BootAction::LocalDisk
    }
}

/// What a held target runs: a notice and a wait for the power cycle, then
/// its disk as usual should the cycle never come.
fn hold_script(arch: rackcast_netboot::ClientArch, mac: MacAddr) -> String {
    // Placeholders stay, to be filled when this script is served.
    let local = rackcast_netboot::policy::ipxe_script(
        &BootAction::LocalDisk,
        arch,
        "{server}",
        "{http}",
        mac,
    )
    .unwrap_or_default();
    let local = local.trim_start_matches("#!ipxe\n");
    format!(
        "#!ipxe\necho rackcast: this machine came back to the network instead of its disk\n\
         echo rackcast: its BMC is power-cycling it into its disk\nsleep 60 ||\n{local}"
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use rackcast_netboot::ClientArch;

    #[test]
    fn a_held_target_waits_then_falls_back_to_its_firmwares_local_boot() {
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        let bios = hold_script(ClientArch::X86Bios, mac);
        let efi = hold_script(ClientArch::X64Uefi, mac);
        for s in [&bios, &efi] {
            assert!(s.starts_with("#!ipxe\n"), "{s}");
            assert_eq!(s.matches("#!ipxe").count(), 1, "{s}");
            assert!(s.contains("power-cycling it into its disk"), "{s}");
            let wait = s.find("sleep 60").unwrap();
            assert!(wait < s.find("exit").unwrap(), "{s}");
        }
        assert!(
            bios.contains("sanboot --no-describe --drive 0x80"),
            "{bios}"
        );
        assert!(!efi.contains("sanboot"), "{efi}");
        // Filled when served, like every other script's placeholders.
        assert!(
            efi.contains("chain {http}/files/rackcast-local-x64.efi || exit"),
            "{efi}"
        );
    }
}
