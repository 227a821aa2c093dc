//! The scheduler as netboot's [`BootPolicy`]: a MAC with pending work boots
//! the environment its next task needs; one without boots its local disk.
//! Answers come from a map refreshed after every committed change, because
//! a proxy offer cannot wait for the scheduler's lock.
//!
//! A target whose one-time disk boot did not take (it fetched its script
//! again soon after its work ended) is held at a script that waits, and
//! its MAC goes to the server, which has its BMC cycle it into its disk
//! ([`Scheduler::disk_missed`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rackcast_netboot::{
    BootAction, BootPolicy, BootQuery, BootStage, ClientKind, ConsoleAnswer, ConsoleReply,
    ConsoleRequest, MacAddr, Netboot, NetbootSettings,
};
use tokio::sync::{mpsc, oneshot};

use super::boot_token::BootToken;
use super::console::{self, script};
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
    /// Enrolled MACs (the menu prompt may be for them only).
    known: RwLock<HashSet<MacAddr>>,
    menu: Menu,
    /// Where console requests go ([`console::serve`]); full means busy.
    console: mpsc::Sender<console::Call>,
}

/// The preboot menu's settings (`menu_*` in the server config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Menu {
    /// Seconds the prompt waits; 0: no prompt, no console.
    pub(crate) timeout: u32,
    /// The key that opens it.
    pub(crate) key: char,
    /// Whether machines not enrolled get it.
    pub(crate) for_unknown: bool,
}

/// What the policy hands the server to act on.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Held targets that fetched their script.
    pub(crate) disk_missed: mpsc::Receiver<MacAddr>,
    /// Console requests ([`console::serve`]).
    pub(crate) console: mpsc::Receiver<console::Call>,
}

/// Console requests queued at most; more are answered "busy".
const CONSOLE_QUEUE: usize = 64;
/// Longest a console request waits for its answer.
const CONSOLE_WAIT: Duration = Duration::from_secs(30);

/// What a MAC boots now, and for which task.
#[derive(Debug, Clone)]
struct Boot {
    env: Environment,
    task: Option<(JobId, u32)>,
}

impl SchedPolicy {
    /// The policy, and where what it cannot answer itself arrives.
    pub(crate) fn new(url: String, boot_key: [u8; 32], menu: Menu) -> (SchedPolicy, Inbox) {
        let (missed, disk_missed) = mpsc::channel(256);
        let (console, console_rx) = mpsc::channel(CONSOLE_QUEUE);
        let p = SchedPolicy {
            boots: RwLock::new(HashMap::new()),
            held: RwLock::new(HashMap::new()),
            missed,
            url,
            boot_key,
            known: RwLock::new(HashSet::new()),
            menu,
            console,
        };
        let inbox = Inbox {
            disk_missed,
            console: console_rx,
        };
        (p, inbox)
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
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        for &mac in macs {
            if s.target(mac).is_some() {
                known.insert(mac);
            } else {
                known.remove(&mac);
            }
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
        self.env_script(env, &token, "")
            .unwrap_or_else(|| "#!ipxe\nexit\n".into())
    }

    /// The maintenance shell's boot of `env` on `mac`: its kernel with
    /// `rackcast.shell=1` and no boot token (no agent runs); `None` when
    /// `env` is not a kernel and initrd.
    pub(crate) fn shell_script(&self, env: &Environment, mac: MacAddr) -> Option<String> {
        if env.boot_file.is_some() {
            return None;
        }
        self.env_script(env, "", &format!(" rackcast.shell=1 rackcast.mac={mac}"))
    }

    /// `env`'s boot with `token` and `extra` on its command line.
    fn env_script(&self, env: &Environment, token: &str, extra: &str) -> Option<String> {
        let fill = |s: &str| {
            s.replace("{server}", &self.url)
                .replace("{token}", token)
                .replace("{env}", &env.name)
        };
        match (&env.boot_file, &env.kernel, &env.initrd) {
            (Some(f), _, _) => Some(format!("#!ipxe\nchain {{http}}/files/{f}\n")),
            (None, Some(k), Some(i)) => Some(format!(
                "#!ipxe\nkernel {{http}}/files/{k} initrd=initrd.img {}{extra}\ninitrd --name initrd.img {{http}}/files/{i}\nboot\n",
                fill(&env.cmdline)
            )),
            _ => None,
        }
    }

    /// The menu prompt for `q`, when it gets one: menus on, a client iPXE
    /// runs on, and enrolled (or strangers get it too).
    fn prompt(&self, q: &BootQuery) -> Option<String> {
        let m = self.menu;
        if m.timeout == 0 {
            return None;
        }
        if q.kind != ClientKind::Ipxe && rackcast_netboot::policy::default_loader(q.arch).is_none()
        {
            return None;
        }
        if !m.for_unknown {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            if !known.contains(&q.mac) {
                return None;
            }
        }
        let local = rackcast_netboot::policy::ipxe_script(
            &BootAction::LocalDisk,
            q.arch,
            "{server}",
            "{http}",
            q.mac,
        )?;
        Some(script::prompt(m.key, m.timeout, q.arch.raw(), &local))
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
        // The menu prompt, then the disk; without a menu, a firmware PXE
        // client gets the quick-local-boot loader (UEFI, when the boot root
        // has it) or no offer, and moves on to its disk.
        match self.prompt(q) {
            Some(p) => BootAction::IpxeScript(p),
            None => BootAction::LocalDisk,
        }
    }

    fn console(&self, req: ConsoleRequest) -> Option<ConsoleAnswer> {
        if self.menu.timeout == 0 {
            return None;
        }
        let arch = req.arch.raw();
        let (reply, answer) = oneshot::channel();
        if self.console.try_send(console::Call { req, reply }).is_err() {
            let busy = script::back_to_menu("the server is busy: try again", arch);
            return Some(Box::pin(async move { ConsoleReply::Script(busy) }));
        }
        Some(Box::pin(async move {
            match tokio::time::timeout(CONSOLE_WAIT, answer).await {
                Ok(Ok(a)) => a,
                _ => ConsoleReply::Script(script::back_to_menu(
                    "the server did not answer: try again",
                    arch,
                )),
            }
        }))
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
