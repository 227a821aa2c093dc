//! The server's side of BMC control: each target's BMC password sealed
//! under `DATA/bmc.key` (XChaCha20-Poly1305, the MAC as associated data, so
//! a sealed password moved to another target does not open), the calls the
//! scheduler's [`Action::Power`] and the operator API ask for, run on
//! blocking threads with a time bound so a hung BMC never holds the
//! scheduler, and the power-state poller.
//!
//! [`Action::Power`]: rackcast_engine::sched::Action::Power

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rackcast_bmc::{BmcAddr, BmcConfig, BmcError, Credentials};
use rackcast_engine::sched::api::{BootDevice, PowerOp, PowerState};
use rackcast_engine::sched::{MacAddr, PowerPlan};

use super::{auth, now_ms, Shared};

/// Seals and opens BMC passwords.
pub(crate) struct Vault(XChaCha20Poly1305);

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// The vault keyed by `path` (32 random bytes as hex, made 0600 on
    /// first start).
    pub(crate) fn open(path: &Path) -> std::io::Result<Vault> {
        let key = auth::load_or_create_key(path)?;
        Ok(Vault(XChaCha20Poly1305::new(&key.into())))
    }

    /// `password` sealed for `mac`: a random nonce, then the ciphertext.
    pub(crate) fn seal(&self, mac: MacAddr, password: &str) -> std::io::Result<Vec<u8>> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(std::io::Error::other)?;
        let aad = mac.to_string();
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: password.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| std::io::Error::other("sealing the BMC password failed"))?;
        Ok([&nonce[..], &sealed].concat())
    }

    /// The password sealed for `mac`, or `None` when it does not open
    /// (another key, another target, or changed bytes).
    pub(crate) fn unseal(&self, mac: MacAddr, sealed: &[u8]) -> Option<String> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(24);
        let aad = mac.to_string();
        let plain = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// What to ask a BMC.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Call {
    /// The scheduler's plan.
    Plan(PowerPlan),
    /// An operator's power action.
    Power(PowerOp),
    /// An operator's one-time boot.
    BootOnce(BootDevice),
    /// The power state only.
    State,
}

/// A failed call: the message (never the password) and whether trying
/// again may help.
#[derive(Debug, Clone)]
pub(crate) struct Failed {
    pub message: String,
    pub transient: bool,
}

impl Failed {
    fn fatal(message: String) -> Failed {
        Failed {
            message,
            transient: false,
        }
    }
}

/// Carries out `call` on `mac`'s BMC: the power state after it.
pub(crate) async fn call(sh: &Arc<Shared>, mac: MacAddr, call: Call) -> Result<PowerState, Failed> {
    let cfg = config(sh, mac).await?;
    // Each request is bounded by the driver; this bounds a call of several.
    let bound = cfg.timeout * 6 + Duration::from_secs(5);
    let work = tokio::task::spawn_blocking(move || run(&cfg, call));
    match tokio::time::timeout(bound, work).await {
        Ok(Ok(r)) => r.map_err(|e| Failed {
            transient: e.is_transient(),
            message: e.to_string(),
        }),
        Ok(Err(e)) => Err(Failed::fatal(format!("the BMC call ended: {e}"))),
        Err(_) => Err(Failed {
            message: format!("the BMC did not finish within {} s", bound.as_secs()),
            transient: true,
        }),
    }
}

/// The driver configuration of `mac`'s BMC, its password unsealed.
async fn config(sh: &Arc<Shared>, mac: MacAddr) -> Result<BmcConfig, Failed> {
    let settings = sh
        .read(|i| i.sched.target(mac).and_then(|t| t.bmc.clone()))
        .await
        .ok_or_else(|| {
            Failed::fatal(format!(
                "{mac} has no BMC: rackcast target set-bmc {mac} --bmc URL"
            ))
        })?;
    let addr: BmcAddr = settings
        .addr
        .parse()
        .map_err(|e: rackcast_bmc::AddrError| Failed::fatal(e.to_string()))?;
    let sealed = sh
        .store
        .bmc_secret(mac)
        .await
        .map_err(|e| Failed::fatal(format!("reading the BMC password: {e}")))?;
    let password = match sealed {
        Some(s) => Some(sh.vault.unseal(mac, &s).ok_or_else(|| {
            Failed::fatal(
                "the stored BMC password does not open with DATA/bmc.key: set it again \
                 (rackcast target set-bmc)"
                    .into(),
            )
        })?),
        None => None,
    };
    let credentials = match (settings.user, password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        (Some(user), None) => Some(Credentials {
            user,
            password: String::new(),
        }),
        _ => None,
    };
    let from = sh.cfg.cast_addr;
    Ok(BmcConfig {
        addr,
        credentials,
        insecure: settings.insecure,
        mac: mac.octets(),
        wol_from: (!from.is_unspecified()).then_some(from),
        timeout: Duration::from_secs(sh.cfg.bmc_timeout.max(1)),
    })
}

fn run(cfg: &BmcConfig, call: Call) -> Result<PowerState, BmcError> {
    let bmc = rackcast_bmc::connect(cfg)?;
    // A driver that cannot set a boot device (Wake-on-LAN) still powers on.
    let boot_once = |dev| match bmc.boot_once(dev) {
        Err(BmcError::Unsupported(_)) => Ok(()),
        r => r,
    };
    match call {
        Call::State => bmc.state(),
        Call::Power(op) => {
            bmc.power(op)?;
            Ok(bmc.state().unwrap_or(PowerState::Unknown))
        }
        Call::BootOnce(dev) => {
            bmc.boot_once(dev)?;
            bmc.state()
        }
        Call::Plan(PowerPlan::Netboot) => {
            match rackcast_bmc::boot_into(&*bmc, BootDevice::Pxe) {
                // Wake-on-LAN powers on only; the netboot policy does the rest.
                Err(BmcError::Unsupported(_)) => bmc.power(PowerOp::On)?,
                r => r?,
            }
            Ok(bmc.state().unwrap_or(PowerState::Unknown))
        }
        Call::Plan(PowerPlan::Task(op)) => {
            bmc.power(op)?;
            Ok(bmc.state().unwrap_or(PowerState::Unknown))
        }
        Call::Plan(PowerPlan::DiskCycle) => {
            match rackcast_bmc::boot_into(&*bmc, BootDevice::Disk) {
                Err(BmcError::Unsupported(_)) => {}
                r => r?,
            }
            Ok(bmc.state().unwrap_or(PowerState::Unknown))
        }
        Call::Plan(PowerPlan::Disk) => {
            boot_once(BootDevice::Disk)?;
            Ok(bmc.state().unwrap_or(PowerState::Unknown))
        }
    }
}

/// Carries out the scheduler's plan for `mac` and reports it back.
pub(crate) fn spawn_plan(sh: Arc<Shared>, mac: MacAddr, plan: PowerPlan) {
    tokio::spawn(async move {
        let r = call(&sh, mac, Call::Plan(plan)).await;
        if let Err(e) = &r {
            tracing::warn!("{mac}: BMC {}: {}", plan.word(), e.message);
        }
        let outcome = r.map_err(|e| (e.message, e.transient));
        if let Err(e) = sh
            .mutate(|s, now| s.power_done(now, mac, plan, outcome))
            .await
        {
            tracing::error!("{mac}: recording the BMC's answer: {}", e.1);
        }
    });
}

/// Tells the scheduler of each held target that fetched its script (see
/// [`crate::policy`]); it decides whether to cycle it.
pub(crate) async fn disk_missed_loop(
    sh: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<MacAddr>,
) {
    while let Some(mac) = rx.recv().await {
        if let Err(e) = sh.mutate(|s, now| s.disk_missed(now, mac)).await {
            tracing::error!("{mac}: recording a missed disk boot: {}", e.1);
        }
    }
}

/// Reads the power state of every target with a BMC (Wake-on-LAN has
/// none) every `bmc_poll` seconds, a few at a time, and tells the
/// scheduler, which records changes.
pub(crate) async fn poll_loop(sh: Arc<Shared>) {
    let every = Duration::from_secs(sh.cfg.bmc_poll.max(1));
    let gate = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let due: Vec<MacAddr> = sh
            .read(|i| {
                i.sched
                    .targets()
                    .filter(|t| t.bmc.as_ref().is_some_and(|b| b.addr != "wol"))
                    .map(|t| t.mac)
                    .collect()
            })
            .await;
        let started = now_ms();
        let mut calls = tokio::task::JoinSet::new();
        for mac in due {
            let (sh, gate) = (sh.clone(), gate.clone());
            calls.spawn(async move {
                let Ok(_permit) = gate.acquire().await else {
                    return;
                };
                let read = call(&sh, mac, Call::State).await.map_err(|e| e.message);
                let _ = sh.mutate(|s, now| s.power_observed(now, mac, read)).await;
            });
        }
        while calls.join_next().await.is_some() {}
        let spent = Duration::from_millis(now_ms().saturating_sub(started));
        tokio::time::sleep(every.saturating_sub(spent).max(Duration::from_millis(500))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_password_opens_only_for_its_target_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(&dir.path().join("bmc.key")).unwrap();
        let a = MacAddr::parse("02:00:00:00:00:01").unwrap();
        let b = MacAddr::parse("02:00:00:00:00:02").unwrap();
        let sealed = v.seal(a, "hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(v.unseal(a, &sealed).as_deref(), Some("hunter2"));
        assert_eq!(v.unseal(b, &sealed), None, "moved to another target");
        let other = Vault::open(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.unseal(a, &sealed), None, "another key");
        let mut bent = sealed.clone();
        *bent.last_mut().unwrap() ^= 1;
        assert_eq!(v.unseal(a, &bent), None, "changed bytes");
        assert_ne!(
            v.seal(a, "hunter2").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("bmc.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
