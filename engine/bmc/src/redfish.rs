//! Redfish over HTTPS: the ComputerSystem's `PowerState`, its
//! `#ComputerSystem.Reset` action and a one-time `Boot` override. The
//! system is the address's path, else the only member of
//! `/redfish/v1/Systems` (found at the first call, then remembered). All
//! the requests of one trait call share one deadline, the configured
//! timeout.

use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{Bmc, BmcAddr, BmcConfig, BmcError, BootDevice, PowerOp, PowerState};

mod http;
mod requests;
mod tls;

use http::Http;
use requests::{action_info_resets, boot_patch, reset_steps, strings};

/// The driver of one Redfish BMC.
#[derive(Debug)]
pub(crate) struct Redfish {
    http: Http,
    /// The system's path, given or found.
    system: OnceLock<String>,
    timeout: Duration,
}

/// How often `PowerState` is read while waiting for a ForceOff to land.
const POWER_POLL: Duration = Duration::from_millis(500);

/// One GET of the system.
struct System {
    path: String,
    json: Value,
    etag: Option<String>,
}

impl Redfish {
    pub(crate) fn new(cfg: &BmcConfig) -> Result<Redfish, BmcError> {
        let BmcAddr::Redfish { host, port, system } = &cfg.addr else {
            unreachable!("connect dispatches on the address")
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let base = format!("https://{host}:{}", port.unwrap_or(443));
        let known = OnceLock::new();
        if let Some(s) = system {
            let _ = known.set(s.clone());
        }
        Ok(Redfish {
            http: Http::new(base, cfg.credentials.as_ref(), cfg.insecure, cfg.timeout),
            system: known,
            timeout: cfg.timeout,
        })
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The system's path: given, or the only member of the collection.
    fn system_path(&self, deadline: Instant) -> Result<&str, BmcError> {
        if let Some(p) = self.system.get() {
            return Ok(p);
        }
        let (coll, _) = self.http.get("/redfish/v1/Systems", deadline)?;
        let members: Vec<&str> = coll
            .get("Members")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m.get("@odata.id")?.as_str())
            .collect();
        let path = match members[..] {
            [one] if one.starts_with('/') => one.trim_end_matches('/').to_string(),
            [one] => {
                return Err(BmcError::Protocol(format!(
                    "/redfish/v1/Systems lists {one:?}, not a path on the BMC"
                )))
            }
            [] => {
                return Err(BmcError::Protocol(
                    "/redfish/v1/Systems lists no system".into(),
                ))
            }
            _ => {
                return Err(BmcError::Unsupported(format!(
                    "the BMC manages {} systems ({}): name one in the address, redfish://HOST{}",
                    members.len(),
                    members.join(", "),
                    members[0]
                )))
            }
        };
        Ok(self.system.get_or_init(|| path))
    }

    fn get_system(&self, deadline: Instant) -> Result<System, BmcError> {
        let path = self.system_path(deadline)?.to_string();
        let (json, etag) = self.http.get(&path, deadline)?;
        Ok(System { path, json, etag })
    }

    /// The Reset action's target and the reset types it allows: listed
    /// in the action, or in its `@Redfish.ActionInfo` (OpenBMC), else
    /// unknown.
    fn reset_action(
        &self,
        sys: &System,
        deadline: Instant,
    ) -> Result<(String, Option<Vec<String>>), BmcError> {
        let action = &sys.json["Actions"]["#ComputerSystem.Reset"];
        let target = match action.get("target").and_then(Value::as_str) {
            Some(t) if t.starts_with('/') => t.to_string(),
            Some(t) => {
                return Err(BmcError::Protocol(format!(
                    "the Reset action's target {t:?} is not a path on the BMC"
                )))
            }
            None => format!("{}/Actions/ComputerSystem.Reset", sys.path),
        };
        let mut allowed = strings(&action["ResetType@Redfish.AllowableValues"]);
        if allowed.is_none() {
            if let Some(info) = action.get("@Redfish.ActionInfo").and_then(Value::as_str) {
                // Only a hint: without it the usual types are assumed.
                if let Ok((info, _)) = self.http.get(info, deadline) {
                    allowed = action_info_resets(&info);
                }
            }
        }
        Ok((target, allowed))
    }

    /// Reads `PowerState` until it is Off (or the deadline passes).
    fn wait_off(&self, path: &str, deadline: Instant) -> Result<(), BmcError> {
        while Instant::now() < deadline {
            let (sys, _) = self.http.get(path, deadline)?;
            if sys["PowerState"] == "Off" {
                return Ok(());
            }
            thread::sleep(POWER_POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
        Err(BmcError::Unreachable(format!(
            "{path}: still not off {:?} after ForceOff",
            self.timeout
        )))
    }
}

impl Bmc for Redfish {
    fn power(&self, op: PowerOp) -> Result<(), BmcError> {
        let deadline = self.deadline();
        let sys = self.get_system(deadline)?;
        // Some BMCs refuse On when on and ForceOff when off (iDRAC: 409):
        // nothing to do then. A machine that is off is cycled by powering
        // it on.
        let op = match (op, sys.json["PowerState"].as_str()) {
            (PowerOp::On, Some("On")) | (PowerOp::Off, Some("Off")) => return Ok(()),
            (PowerOp::Cycle, Some("Off")) => PowerOp::On,
            (op, _) => op,
        };
        let (target, allowed) = self.reset_action(&sys, deadline)?;
        let steps = reset_steps(op, allowed.as_deref())?;
        for (i, step) in steps.iter().enumerate() {
            if i > 0 {
                self.wait_off(&sys.path, deadline)?;
            }
            let body = json!({ "ResetType": step });
            self.http
                .send("POST", &target, Some(&body), None, deadline)?;
        }
        Ok(())
    }

    fn state(&self) -> Result<PowerState, BmcError> {
        let sys = self.get_system(self.deadline())?;
        Ok(match sys.json["PowerState"].as_str() {
            Some("On" | "PoweringOn" | "Paused") => PowerState::On,
            Some("Off" | "PoweringOff") => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    fn boot_once(&self, dev: BootDevice) -> Result<(), BmcError> {
        let deadline = self.deadline();
        let target = match dev {
            BootDevice::Pxe => "Pxe",
            BootDevice::Disk => "Hdd",
        };
        let mut sys = self.get_system(deadline)?;
        let boot = &sys.json["Boot"];
        if let Some(ok) = strings(&boot["BootSourceOverrideTarget@Redfish.AllowableValues"]) {
            if !ok.iter().any(|t| t == target) {
                return Err(BmcError::Unsupported(format!(
                    "the BMC cannot boot {target} once: it allows {}",
                    ok.join(", ")
                )));
            }
        }
        // A second try only after a 412 (or 428): someone changed the
        // system since our GET, or the BMC wants If-Match.
        for attempt in 0..2 {
            let body = boot_patch(target, &sys.json);
            match self.http.send(
                "PATCH",
                &sys.path,
                Some(&body),
                sys.etag.as_deref(),
                deadline,
            ) {
                Ok(_) => return Ok(()),
                Err(f) if attempt == 0 && matches!(f.status, Some(412 | 428)) => {
                    sys = self.get_system(deadline)?;
                }
                Err(f) => return Err(f.into()),
            }
        }
        unreachable!("the second attempt returns")
    }
}
