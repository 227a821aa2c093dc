//! Targets with a BMC. A target with work and no agent to take it is booted
//! into the environment its work needs through its BMC (a one-time network
//! boot, then power on or a cycle); one that does not register by its
//! deadline is booted again, up to `power_tries`, sooner after a BMC error
//! (`power_backoff`, doubled each try), then failed and held with the
//! BMC's last error. A target whose work is done gets a one-time disk boot.
//! The server carries out each [`Action::Power`] and reports it with
//! [`Scheduler::power_done`]; it also polls the power state and reports it
//! with [`Scheduler::power_observed`], and a change nobody asked for
//! becomes a `target.power` event with `expected: false`.

use super::*;
use crate::sched::api::{BmcSettings, PowerState};

impl Scheduler {
    /// Sets (`Some`) or removes `mac`'s BMC; the server keeps its password.
    pub fn set_bmc(
        &mut self,
        now: Millis,
        mac: MacAddr,
        bmc: Option<BmcSettings>,
    ) -> Result<&Target, SchedError> {
        let t = self
            .targets
            .get_mut(&mac)
            .ok_or(SchedError::UnknownTarget(mac))?;
        let addr = bmc.as_ref().map(|b| b.addr.clone());
        t.bmc = bmc;
        t.bmc_error = None;
        if t.bmc.is_none() {
            t.power = None;
        }
        self.dirty_targets.insert(mac);
        self.event(
            now,
            Actor::Operator,
            Subject::target(mac),
            EventKind::BmcSet { addr },
        );
        self.wake(now, mac);
        self.targets.get(&mac).ok_or(SchedError::UnknownTarget(mac))
    }

    /// The outcome of an [`Action::Power`]: the power state after it, or the
    /// BMC's error and whether it may pass (an unreachable BMC) or not (a
    /// refused login).
    pub fn power_done(
        &mut self,
        now: Millis,
        mac: MacAddr,
        plan: PowerPlan,
        outcome: Result<PowerState, (String, bool)>,
    ) {
        if let PowerPlan::Task(op) = plan {
            self.power_task_done(now, mac, op, outcome);
            return;
        }
        let Some(t) = self.targets.get_mut(&mac) else {
            return;
        };
        self.dirty_targets.insert(mac);
        let (error, transient) = match outcome {
            Ok(state) => {
                t.bmc_error = None;
                self.record_power(now, mac, state, true);
                return;
            }
            Err(e) => e,
        };
        t.bmc_error = Some(error.clone());
        let tries = t.power_tries;
        let waiting = matches!(t.state, TargetState::RebootingTo { .. });
        self.power_event(now, mac, plan.word(), "", Some(error.clone()));
        if plan != PowerPlan::Netboot || !waiting {
            return;
        }
        if !transient {
            self.fail_attempt(
                now,
                mac,
                &format!("its BMC refused the network boot: {error}"),
            );
            // A task with retries left waits for its next attempt: boot it.
            self.wake(now, mac);
            return;
        }
        // Try again sooner than the boot timeout: the deadline is the retry.
        let backoff = self
            .cfg
            .power_backoff
            .saturating_mul(1 << tries.saturating_sub(1).min(6));
        let deadline = now + backoff.min(self.cfg.boot_timeout);
        if let Some(TargetState::RebootingTo { env, .. }) = self.targets.get(&mac).map(|t| &t.state)
        {
            let env = env.clone();
            self.set_state(
                now,
                mac,
                TargetState::RebootingTo { env, deadline },
                Actor::Scheduler,
            );
        }
    }

    /// The power state the server's poller read from `mac`'s BMC (or why
    /// it could not). A change is expected only while a network boot the
    /// scheduler asked for may still be under way (a cycle passes through
    /// off); any other happened behind rackcast's back.
    pub fn power_observed(&mut self, now: Millis, mac: MacAddr, read: Result<PowerState, String>) {
        let expect = self.cfg.power_expect;
        let Some(t) = self.targets.get_mut(&mac) else {
            return;
        };
        match read {
            Ok(power) => {
                let expected = t.power_asked != 0 && now.saturating_sub(t.power_asked) <= expect;
                self.record_power(now, mac, power, expected);
            }
            Err(e) => {
                if t.bmc_error.as_deref() != Some(e.as_str()) {
                    t.bmc_error = Some(e);
                    self.dirty_targets.insert(mac);
                }
            }
        }
    }

    /// `mac`'s power is `power`: an event when it changed.
    fn record_power(&mut self, now: Millis, mac: MacAddr, power: PowerState, expected: bool) {
        let Some(t) = self.targets.get_mut(&mac) else {
            return;
        };
        let was = t.power;
        if t.bmc_error.take().is_some() {
            self.dirty_targets.insert(mac);
        }
        if was == Some(power) {
            return;
        }
        t.power = Some(power);
        self.dirty_targets.insert(mac);
        self.event(
            now,
            Actor::Server,
            Subject::target(mac),
            EventKind::PowerChanged {
                was,
                power,
                expected,
            },
        );
    }

    /// An operator's power action, which the server carried out: recorded,
    /// with the state it left.
    pub fn power_noted(
        &mut self,
        now: Millis,
        mac: MacAddr,
        action: &str,
        outcome: Result<PowerState, String>,
    ) {
        if !self.targets.contains_key(&mac) {
            return;
        }
        let error = outcome.as_ref().err().cloned();
        self.event(
            now,
            Actor::Operator,
            Subject::target(mac),
            EventKind::PowerAction {
                action: action.to_string(),
                why: "operator".into(),
                error,
            },
        );
        match outcome {
            Ok(power) => self.record_power(now, mac, power, true),
            Err(e) => self.power_observed(now, mac, Err(e)),
        }
    }

    /// Starts `mac`'s current task if it is a power task (the server runs
    /// those through the BMC, agent or not). `true` when the current task is one.
    pub(super) fn start_power_task(&mut self, now: Millis, mac: MacAddr) -> bool {
        let Some((job, run)) = self.current(mac) else {
            return false;
        };
        let spec = job.spec.tasks[run.task as usize].clone();
        let TaskKind::Power { op } = spec.kind else {
            return false;
        };
        let r = TaskRef {
            job: job.id,
            task: run.task,
            attempt: run.attempt,
        };
        let Some(t) = self.targets.get(&mac) else {
            return false;
        };
        match &t.state {
            TargetState::Running { job, task, .. } if *job == r.job && *task == r.task => {
                return true
            }
            TargetState::Failed { .. } => return true,
            _ => {}
        }
        let has_bmc = t.bmc.is_some();
        self.start_run(now, mac, r, now + self.timeout_for(&spec));
        self.mark_started(now, mac, r);
        if !has_bmc {
            self.fail_attempt(
                now,
                mac,
                &format!(
                    "a power task needs the target's BMC: rackcast target set-bmc {mac} --bmc URL"
                ),
            );
            return true;
        }
        self.actions.push_back(Action::Power {
            mac,
            plan: PowerPlan::Task(op),
        });
        self.power_event(now, mac, op.word(), "the job's power task", None);
        true
    }

    fn power_task_done(
        &mut self,
        now: Millis,
        mac: MacAddr,
        op: rackcast_types::PowerOp,
        outcome: Result<PowerState, (String, bool)>,
    ) {
        let Some(TargetState::Running {
            job, task, attempt, ..
        }) = self.targets.get(&mac).map(|t| t.state.clone())
        else {
            return;
        };
        let r = TaskRef { job, task, attempt };
        match outcome {
            Ok(state) => {
                if let Some(t) = self.targets.get_mut(&mac) {
                    t.bmc_error = None;
                    // Its agent goes down with it: the next task boots it anew.
                    t.last_seen = 0;
                }
                self.record_power(now, mac, state, true);
                self.task_done(now, mac, r, &format!("power {op}: now {state}"));
                self.wake(now, mac);
            }
            Err((e, _)) => {
                if let Some(t) = self.targets.get_mut(&mac) {
                    t.bmc_error = Some(e.clone());
                }
                self.fail_attempt(now, mac, &format!("its BMC failed the power task: {e}"));
            }
        }
    }

    /// Boots `mac` through its BMC when it has work and no agent to take it
    /// (never registered, or silent longer than `agent_silence`).
    pub(super) fn wake(&mut self, now: Millis, mac: MacAddr) {
        if self.start_power_task(now, mac) {
            return;
        }
        let Some(t) = self.targets.get(&mac) else {
            return;
        };
        let silent = t.last_seen == 0 || now.saturating_sub(t.last_seen) > self.cfg.agent_silence;
        let idle = matches!(
            t.state,
            TargetState::Unknown | TargetState::Local | TargetState::Waiting { .. }
        );
        if t.bmc.is_none() || !silent || !idle {
            return;
        }
        let Some(job) = self.current(mac).map(|(j, _)| j.id) else {
            return;
        };
        let BootChoice::Env(env) = self.boot_choice(mac) else {
            return;
        };
        self.netboot(now, mac, env, 1, &format!("job {job} needs it"));
    }

    /// A reboot that did not come back in time: with a BMC and tries left,
    /// boot it again through the BMC. `true` when so.
    pub(super) fn power_retry(&mut self, now: Millis, mac: MacAddr) -> bool {
        let Some(t) = self.targets.get(&mac) else {
            return false;
        };
        let TargetState::RebootingTo { env, .. } = &t.state else {
            return false;
        };
        if t.bmc.is_none() || t.power_tries >= self.cfg.power_tries {
            return false;
        }
        let (env, tries) = (env.clone(), t.power_tries + 1);
        let why = match &t.bmc_error {
            Some(e) => format!(
                "the BMC failed: {e} (try {tries} of {})",
                self.cfg.power_tries
            ),
            None => format!(
                "not registered in time (try {tries} of {})",
                self.cfg.power_tries
            ),
        };
        self.netboot(now, mac, env, tries, &why);
        true
    }

    /// Why a target with a BMC never came back, for the failed task.
    pub(super) fn power_gave_up(&self, mac: MacAddr) -> Option<String> {
        let t = self.targets.get(&mac)?;
        t.bmc.as_ref()?;
        Some(match &t.bmc_error {
            Some(e) => format!(
                "after {} network boots through its BMC; the BMC's last error: {e}",
                t.power_tries
            ),
            None => format!("after {} network boots through its BMC", t.power_tries),
        })
    }

    /// `mac`'s work is done: its next boot is its disk. A network boot
    /// within `boot_timeout` after that means the one-time boot did not
    /// take (see [`Scheduler::disk_missed`]).
    pub(super) fn boot_disk(&mut self, now: Millis, mac: MacAddr) {
        let until = now + self.cfg.boot_timeout;
        if let Some(t) = self.targets.get_mut(&mac).filter(|t| t.bmc.is_some()) {
            // Wake-on-LAN can power on, not choose a boot device.
            if t.bmc.as_ref().is_some_and(|b| b.addr != "wol") {
                t.disk_until = until;
            }
            self.dirty_targets.insert(mac);
            self.actions.push_back(Action::Power {
                mac,
                plan: PowerPlan::Disk,
            });
            self.power_event(now, mac, PowerPlan::Disk.word(), "no work left", None);
        }
    }

    /// `mac` fetched its network boot script while its one-time disk boot
    /// was due: the override did not take (a BMC that applies it only at
    /// power-on, or a warm reboot that skips it). Its BMC sets it again and
    /// cycles the power, once per disk boot, so a machine whose disk boot
    /// keeps failing is not cycled forever.
    pub fn disk_missed(&mut self, now: Millis, mac: MacAddr) {
        let Some(t) = self.targets.get_mut(&mac) else {
            return;
        };
        if t.disk_until <= now || t.state != TargetState::Local || t.bmc.is_none() {
            return;
        }
        t.disk_until = 0;
        t.power_asked = now;
        self.dirty_targets.insert(mac);
        self.actions.push_back(Action::Power {
            mac,
            plan: PowerPlan::DiskCycle,
        });
        self.power_event(
            now,
            mac,
            PowerPlan::DiskCycle.word(),
            "its reboot came back to the network instead of its disk",
            None,
        );
    }

    fn netboot(&mut self, now: Millis, mac: MacAddr, env: String, tries: u32, why: &str) {
        if let Some(t) = self.targets.get_mut(&mac) {
            t.power_tries = tries;
            t.power_asked = now;
            self.dirty_targets.insert(mac);
        }
        let deadline = now + self.cfg.boot_timeout;
        self.set_state(
            now,
            mac,
            TargetState::RebootingTo { env, deadline },
            Actor::Scheduler,
        );
        self.actions.push_back(Action::Power {
            mac,
            plan: PowerPlan::Netboot,
        });
        self.power_event(now, mac, PowerPlan::Netboot.word(), why, None);
    }

    fn power_event(
        &mut self,
        now: Millis,
        mac: MacAddr,
        action: &str,
        why: &str,
        error: Option<String>,
    ) {
        let about = match self.current(mac) {
            Some((j, r)) => Subject::task(mac, j.id, r.task),
            None => Subject::target(mac),
        };
        self.event(
            now,
            Actor::Scheduler,
            about,
            EventKind::PowerAction {
                action: action.to_string(),
                why: why.to_string(),
                error,
            },
        );
    }
}
