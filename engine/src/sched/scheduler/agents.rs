//! What agents and the cast senders tell the scheduler: registrations,
//! polls for directives, task reports, a sender's verdicts.

use super::*;

impl Scheduler {
    /// Records a refused registration for `mac` (the server refused it;
    /// nothing about the target changes).
    pub fn registration_refused(&mut self, now: Millis, mac: MacAddr, reason: &str, peer: &str) {
        self.event(
            now,
            Actor::Agent,
            Subject::target(mac),
            EventKind::RegistrationRefused {
                reason: reason.to_string(),
                peer: peer.to_string(),
            },
        );
    }

    /// Records that an operator dropped `mac`'s agent session.
    pub fn agent_reset(&mut self, now: Millis, mac: MacAddr) -> Result<(), SchedError> {
        if !self.targets.contains_key(&mac) {
            return Err(SchedError::UnknownTarget(mac));
        }
        self.event(
            now,
            Actor::Operator,
            Subject::target(mac),
            EventKind::AgentReset {},
        );
        Ok(())
    }

    /// An agent started in `env` (or came back after losing the server).
    pub fn register(
        &mut self,
        now: Millis,
        mac: MacAddr,
        env: &str,
        inventory: Inventory,
        running: Option<TaskRef>,
    ) -> Result<(), SchedError> {
        let t = self.targets.entry(mac).or_insert_with(|| Target::new(mac));
        if t.name.is_empty() && !inventory.hostname.is_empty() {
            t.name = inventory.hostname.clone();
        }
        t.inventory = inventory;
        t.last_seen = now;
        t.registered = true;
        t.power_tries = 0;
        t.disk_until = 0;
        let old_env = std::mem::replace(&mut t.env, env.to_string());
        let state = t.state.clone();
        self.dirty_targets.insert(mac);
        self.event(
            now,
            Actor::Agent,
            Subject::target(mac),
            EventKind::AgentRegistered {
                env: env.to_string(),
                was: old_env,
            },
        );
        match state {
            TargetState::RebootingTo { env: want, .. } => {
                if want == env {
                    self.arrived(now, mac);
                } else {
                    // Booted into the wrong environment: the next poll sends it
                    // where it must go again; the deadline still runs.
                    self.event(
                        now,
                        Actor::Agent,
                        Subject::target(mac),
                        EventKind::WrongEnv {
                            want,
                            got: env.to_string(),
                        },
                    );
                }
            }
            TargetState::Running {
                job, task, attempt, ..
            } => {
                let still = running == Some(TaskRef { job, task, attempt });
                if !still && !self.resumable(job, task) {
                    let started = self
                        .jobs
                        .get(&job)
                        .and_then(|j| j.run(mac))
                        .is_some_and(|r| r.started);
                    if started {
                        self.fail_attempt(now, mac, "the agent restarted while running the task");
                    } else {
                        let st = idle_state_env(env);
                        self.set_state(now, mac, st, Actor::Agent);
                    }
                }
            }
            TargetState::Unknown | TargetState::Local | TargetState::Waiting { .. } => {
                let st = idle_state_env(env);
                self.set_state(now, mac, st, Actor::Agent);
            }
            TargetState::Failed { .. } => {}
        }
        self.plan(now);
        Ok(())
    }

    /// The agent asks what to do; `running` is the task it is on.
    pub fn poll(&mut self, now: Millis, mac: MacAddr, running: Option<TaskRef>) -> Directive {
        let Some(t) = self.targets.get_mut(&mac) else {
            return Directive::Register;
        };
        if !t.registered || matches!(t.state, TargetState::Unknown) {
            return Directive::Register;
        }
        t.last_seen = now;
        let d = match t.state.clone() {
            TargetState::Unknown => Directive::Register,
            TargetState::Failed { .. } => Directive::Wait,
            TargetState::Local => {
                if self.current(mac).is_some() {
                    let st = idle_state(self.targets.get(&mac).expect("target exists"));
                    self.set_state(now, mac, st, Actor::Scheduler);
                    self.next_work(now, mac)
                } else {
                    Directive::BootLocal
                }
            }
            TargetState::RebootingTo { env, .. } => Directive::Reboot { env, task: None },
            TargetState::Running {
                job, task, attempt, ..
            } => {
                let r = TaskRef { job, task, attempt };
                if running == Some(r) {
                    Directive::Wait
                } else {
                    self.dispatch(now, mac, r)
                }
            }
            TargetState::Waiting { .. } => self.next_work(now, mac),
        };
        self.plan(now);
        d
    }

    /// The agent reports on a task. Only `Finished` moves the job on.
    pub fn report(
        &mut self,
        now: Millis,
        mac: MacAddr,
        r: TaskRef,
        report: TaskReport,
    ) -> Result<bool, SchedError> {
        let t = self
            .targets
            .get_mut(&mac)
            .ok_or(SchedError::UnknownTarget(mac))?;
        t.last_seen = now;
        let current = match t.state {
            TargetState::Running {
                job, task, attempt, ..
            } => Some(TaskRef { job, task, attempt }),
            _ => None,
        };
        if current != Some(r) {
            // A stale run (cancelled, timed out, retried): the agent stops it.
            if let TaskReport::Finished { ok, .. } = &report {
                self.event(
                    now,
                    Actor::Agent,
                    Subject::task(mac, r.job, r.task),
                    EventKind::StaleReport {
                        attempt: r.attempt,
                        ok: *ok,
                    },
                );
            }
            return Ok(false);
        }
        match report {
            TaskReport::Started => {
                let job = self
                    .jobs
                    .get_mut(&r.job)
                    .ok_or(SchedError::UnknownJob(r.job))?;
                let run = job.run_mut(mac).ok_or(SchedError::UnknownTarget(mac))?;
                let resumed = run.started;
                run.started = true;
                run.status = RunStatus::Running;
                self.dirty_runs.insert((r.job, mac));
                let kind = job.spec.tasks[r.task as usize].kind.word();
                self.event(
                    now,
                    Actor::Agent,
                    Subject::task(mac, r.job, r.task),
                    EventKind::TaskStarted {
                        attempt: r.attempt,
                        kind,
                        resumed,
                    },
                );
            }
            TaskReport::Progress(p) => {
                self.mark_started(now, mac, r);
                if let Some(run) = self.jobs.get_mut(&r.job).and_then(|j| j.run_mut(mac)) {
                    run.progress = Some(p.clone());
                }
                if let Some(t) = self.targets.get_mut(&mac) {
                    t.progress = Some(p.clone());
                }
                self.transient(now, mac, r, EventKind::TaskProgress(p));
            }
            TaskReport::Log { text } => {
                self.mark_started(now, mac, r);
                self.task_output(now, mac, r, text);
            }
            TaskReport::Rejoin { reason } => {
                self.mark_started(now, mac, r);
                self.leave_sessions(mac);
                self.event(
                    now,
                    Actor::Agent,
                    Subject::task(mac, r.job, r.task),
                    EventKind::TaskRejoin { reason },
                );
            }
            TaskReport::Finished {
                ok,
                error,
                summary,
                root,
                transport,
            } => {
                self.mark_started(now, mac, r);
                self.flush_dropped(now, mac, r);
                let error = match (ok, self.earned(mac, r, root.as_deref(), transport)) {
                    (false, _) => error,
                    (true, Earned::Yes) => None,
                    (true, Earned::No(why)) => Some(why),
                    (true, Earned::NotYet(why)) => return Err(SchedError::NotYet(why)),
                };
                if error.is_none() {
                    self.task_done(now, mac, r, &summary);
                } else {
                    let e = error.unwrap_or_else(|| "the task failed".into());
                    if !summary.is_empty() {
                        self.append_log(now, mac, r.job, r.task, &format!("{summary}\n"));
                    }
                    self.fail_attempt(now, mac, &e);
                }
            }
        }
        self.plan(now);
        Ok(true)
    }

    /// The sender of `session` saw `receiver` finish (written, flushed,
    /// verified): what a Distribute report's success rests on.
    pub fn receiver_confirmed(&mut self, session: SessionId, receiver: u64) {
        if let Some(s) = self.sessions.get_mut(&session) {
            let m = s
                .members
                .iter()
                .copied()
                .find(|m| receiver_id(*m) == receiver);
            if let Some(m) = m {
                if s.done.insert(m) {
                    self.dirty_sessions.insert(session);
                }
            }
        }
    }

    /// The image root `mac`'s running Distribute task pinned: what it may
    /// fetch by unicast.
    pub fn distributing(&self, mac: MacAddr) -> Option<String> {
        let TargetState::Running { job, task, .. } = self.targets.get(&mac)?.state else {
            return None;
        };
        let job = self.jobs.get(&job)?;
        let TaskKind::Distribute { image, .. } = &job.spec.tasks.get(task as usize)?.kind else {
            return None;
        };
        job.pinned
            .get(image)
            .or_else(|| self.image_roots.get(image))
            .cloned()
    }

    /// Whether a successful report of `mac`'s run `r` is borne out. A
    /// Distribute task is done only when the agent names the root its job
    /// pinned and, when its chunks came by multicast, that root's cast
    /// sender recorded this receiver done (by unicast, every chunk it
    /// fetched was checked against that root's index, as the sender's
    /// record is the receiver's word too).
    fn earned(
        &self,
        mac: MacAddr,
        r: TaskRef,
        root: Option<&str>,
        transport: Option<Transport>,
    ) -> Earned {
        let Some(job) = self.jobs.get(&r.job) else {
            return Earned::Yes;
        };
        let Some(TaskKind::Distribute { image, .. }) =
            job.spec.tasks.get(r.task as usize).map(|t| &t.kind)
        else {
            return Earned::Yes;
        };
        let Some(pinned) = job
            .pinned
            .get(image)
            .or_else(|| self.image_roots.get(image))
        else {
            return Earned::No(format!("image {image} has no root to check against"));
        };
        if root != Some(pinned.as_str()) {
            return Earned::No(format!(
                "the agent reports root {}, but the job pinned root {pinned} for image {image}",
                root.unwrap_or("(none)")
            ));
        }
        if matches!(transport, Some(Transport::Unicast | Transport::Mixed)) {
            return Earned::Yes;
        }
        let session = self
            .sessions
            .values()
            .filter(|s| s.job == r.job && s.image == *image && s.root == *pinned)
            .filter(|s| s.members.contains(&mac) || s.done.contains(&mac))
            .max_by_key(|s| s.id);
        match session {
            Some(s) if s.done.contains(&mac) => Earned::Yes,
            Some(s) if s.phase != SessionPhase::Ended => Earned::NotYet(format!(
                "cast session {} has not yet recorded {mac} done: report again",
                s.id
            )),
            _ => Earned::No(format!(
                "the agent reports image {image} written, but no cast sender recorded {mac} done"
            )),
        }
    }

    /// The sender of `session` finished; `done` are the receiver ids that
    /// completed in it, `stats` its figures (kept in the `cast.ended` event).
    pub fn sender_finished(
        &mut self,
        now: Millis,
        session: SessionId,
        done: &[u64],
        stats: serde_json::Value,
    ) {
        if let Some(s) = self.sessions.get_mut(&session) {
            let members: Vec<MacAddr> = s.members.iter().copied().collect();
            for m in members {
                if done.contains(&receiver_id(m)) {
                    s.done.insert(m);
                }
            }
        }
        self.end_session(now, session, Actor::Server, "the sender finished", stats);
        self.plan(now);
    }
}

/// What [`Scheduler::earned`] found.
enum Earned {
    /// The report stands.
    Yes,
    /// It does not: the task fails with this.
    No(String),
    /// Not yet known: the agent reports again.
    NotYet(String),
}
