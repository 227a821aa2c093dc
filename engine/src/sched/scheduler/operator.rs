//! What operators ask of the scheduler: enroll targets, define
//! environments, track the image library, submit, cancel and retry jobs.

use super::*;

impl Scheduler {
    /// Enrolls a target by MAC (so jobs can name it before it first boots).
    pub fn add_target(
        &mut self,
        now: Millis,
        mac: MacAddr,
        name: &str,
    ) -> Result<&Target, SchedError> {
        match self.targets.entry(mac) {
            std::collections::btree_map::Entry::Vacant(v) => {
                let mut t = Target::new(mac);
                t.name = name.to_string();
                v.insert(t);
                self.event(
                    now,
                    Actor::Operator,
                    Subject::target(mac),
                    EventKind::TargetAdded {
                        name: name.to_string(),
                    },
                );
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if !name.is_empty() {
                    o.get_mut().name = name.to_string();
                }
            }
        }
        self.dirty_targets.insert(mac);
        self.targets.get(&mac).ok_or(SchedError::UnknownTarget(mac))
    }

    /// Sets and removes a target's template variables (all or nothing).
    pub fn set_vars(
        &mut self,
        now: Millis,
        mac: MacAddr,
        update: &VarsUpdate,
    ) -> Result<&Target, SchedError> {
        let t = self
            .targets
            .get_mut(&mac)
            .ok_or(SchedError::UnknownTarget(mac))?;
        super::super::template::update(&mut t.vars, &update.set, &update.unset)
            .map_err(SchedError::Invalid)?;
        self.dirty_targets.insert(mac);
        self.event(
            now,
            Actor::Operator,
            Subject::target(mac),
            EventKind::TargetVars {
                set: update.set.keys().cloned().collect(),
                unset: update.unset.clone(),
            },
        );
        self.targets.get(&mac).ok_or(SchedError::UnknownTarget(mac))
    }

    /// Adds or replaces an environment.
    pub fn put_environment(&mut self, now: Millis, env: Environment) -> Result<(), SchedError> {
        if !valid_name(&env.name) || env.name == LOCAL_ENV {
            return Err(SchedError::Invalid(format!(
                "environment name {:?}: use letters, digits, '.', '_' or '-' (and not `local`)",
                env.name
            )));
        }
        if env.boot_file.is_none() && (env.kernel.is_none() || env.initrd.is_none()) {
            return Err(SchedError::Invalid(format!(
                "environment {}: give kernel and initrd, or boot_file",
                env.name
            )));
        }
        self.event(
            now,
            Actor::Operator,
            Subject::default(),
            EventKind::EnvironmentPut {
                name: env.name.clone(),
            },
        );
        self.dirty_envs.insert(env.name.clone());
        self.environments.insert(env.name.clone(), env);
        Ok(())
    }

    /// The image library changed: `name` now has `root` (hex), or is gone.
    pub fn set_image(&mut self, name: &str, root: Option<String>) {
        match root {
            Some(r) => self.image_roots.insert(name.to_string(), r),
            None => self.image_roots.remove(name),
        };
    }

    /// A verified image entered the library (upload or Create Disk Image).
    pub fn image_added(&mut self, now: Millis, name: &str, root: &str, who: &str) {
        self.set_image(name, Some(root.to_string()));
        let actor = if who == "agent" {
            Actor::Agent
        } else {
            Actor::Operator
        };
        self.event(
            now,
            actor,
            Subject::default(),
            EventKind::ImageAdded {
                name: name.to_string(),
                root: root.to_string(),
            },
        );
    }

    /// Validates and queues a job.
    pub fn submit(&mut self, now: Millis, mut spec: JobSpec) -> Result<JobId, SchedError> {
        if spec.targets.is_empty() {
            return Err(SchedError::Invalid("the job names no targets".into()));
        }
        if spec.tasks.is_empty() {
            return Err(SchedError::Invalid("the job has no tasks".into()));
        }
        let mut macs = Vec::new();
        for m in &spec.targets {
            let mac = MacAddr::parse(m)?;
            if !self.targets.contains_key(&mac) {
                return Err(SchedError::UnknownTarget(mac));
            }
            if macs.contains(&mac) {
                return Err(SchedError::Invalid(format!("target {mac} is listed twice")));
            }
            macs.push(mac);
        }
        spec.targets = macs.iter().map(MacAddr::to_string).collect();
        for (i, t) in spec.tasks.iter().enumerate() {
            let n = i + 1;
            if let Some(env) = &t.env {
                self.check_env(env)
                    .map_err(|e| SchedError::Invalid(format!("task {n}: {e}")))?;
            }
            match &t.kind {
                TaskKind::Distribute { image, .. } => {
                    if !self.image_roots.contains_key(image) {
                        return Err(SchedError::UnknownImage(image.clone()));
                    }
                }
                TaskKind::Create { image, .. } => {
                    if !valid_name(image) {
                        return Err(SchedError::Invalid(format!(
                            "task {n}: image name {image:?}: use letters, digits, '.', '_' or '-'"
                        )));
                    }
                }
                TaskKind::Script { script, .. } => {
                    if script.trim().is_empty() {
                        return Err(SchedError::Invalid(format!(
                            "task {n}: the script is empty"
                        )));
                    }
                }
                TaskKind::Power { .. } => {}
                TaskKind::Reboot { to } => {
                    if to != LOCAL_ENV {
                        self.check_env(to)
                            .map_err(|e| SchedError::Invalid(format!("task {n}: {e}")))?;
                    }
                }
            }
        }
        if let Some(0) = spec.cast.min_targets {
            return Err(SchedError::Invalid(
                "cast.min_targets must be at least 1".into(),
            ));
        }
        let id = self.next_job;
        self.next_job = JobId(id.0 + 1);
        let runs = macs
            .iter()
            .map(|m| Run {
                mac: *m,
                status: RunStatus::Queued,
                task: 0,
                attempt: 1,
                started: false,
                error: None,
                log: String::new(),
                progress: None,
            })
            .collect();
        let pinned = spec
            .tasks
            .iter()
            .filter_map(|t| match &t.kind {
                TaskKind::Distribute { image, .. } => {
                    Some((image.clone(), self.image_roots.get(image)?.clone()))
                }
                _ => None,
            })
            .collect();
        let job = Job {
            id,
            spec,
            created: now,
            runs,
            pinned,
        };
        self.event(
            now,
            Actor::Operator,
            Subject::job(id),
            EventKind::JobSubmitted {
                name: job.spec.name.clone(),
                targets: macs.len(),
                tasks: job.spec.tasks.len(),
            },
        );
        self.jobs.insert(id, job);
        self.dirty_jobs.insert(id);
        for m in &macs {
            if let Some(t) = self.targets.get_mut(m) {
                t.queue.push(id);
                self.dirty_targets.insert(*m);
            }
        }
        // Targets with a BMC and no agent to take the work: boot them.
        for m in &macs {
            self.wake(now, *m);
        }
        Ok(id)
    }

    /// Cancels a job: runs not finished are cancelled, its targets released.
    pub fn cancel(&mut self, now: Millis, id: JobId) -> Result<(), SchedError> {
        let job = self.jobs.get_mut(&id).ok_or(SchedError::UnknownJob(id))?;
        let mut touched = Vec::new();
        for r in job.runs.iter_mut() {
            if r.status != RunStatus::Done && r.status != RunStatus::Cancelled {
                r.status = RunStatus::Cancelled;
                r.progress = None;
                touched.push(r.mac);
            }
        }
        self.dirty_jobs.insert(id);
        self.event(
            now,
            Actor::Operator,
            Subject::job(id),
            EventKind::JobCancelled {},
        );
        for mac in touched {
            self.leave_sessions(mac);
            if let Some(t) = self.targets.get_mut(&mac) {
                t.queue.retain(|j| *j != id);
                if matches!(&t.state, TargetState::Running { job, .. } | TargetState::Failed { job, .. } if *job == id)
                {
                    let st = idle_state(t);
                    self.set_state(now, mac, st, Actor::Operator);
                }
                self.dirty_targets.insert(mac);
            }
        }
        Ok(())
    }

    /// Retries a job's failed runs from the task that failed.
    pub fn retry(&mut self, now: Millis, id: JobId) -> Result<usize, SchedError> {
        let job = self.jobs.get_mut(&id).ok_or(SchedError::UnknownJob(id))?;
        let mut again = Vec::new();
        for r in job.runs.iter_mut() {
            if r.status == RunStatus::Failed {
                r.status = RunStatus::Queued;
                r.attempt = 1;
                r.started = false;
                r.error = None;
                again.push(r.mac);
            }
        }
        self.dirty_jobs.insert(id);
        self.event(
            now,
            Actor::Operator,
            Subject::job(id),
            EventKind::JobRetried {
                targets: again.len(),
            },
        );
        for &mac in &again {
            if let Some(t) = self.targets.get_mut(&mac) {
                if !t.queue.contains(&id) {
                    t.queue.insert(0, id);
                }
                self.dirty_targets.insert(mac);
                if matches!(&t.state, TargetState::Failed { job, .. } if *job == id) {
                    let st = idle_state(t);
                    self.set_state(now, mac, st, Actor::Operator);
                }
            }
            self.wake(now, mac);
        }
        Ok(again.len())
    }

    /// Releases a failed target's hold: its failed job stays failed, the next
    /// queued job (if any) may run.
    pub fn release(&mut self, now: Millis, mac: MacAddr) -> Result<(), SchedError> {
        let t = self
            .targets
            .get_mut(&mac)
            .ok_or(SchedError::UnknownTarget(mac))?;
        if let TargetState::Failed { job, .. } = t.state {
            t.queue.retain(|j| *j != job);
            let st = idle_state(t);
            self.set_state(now, mac, st, Actor::Operator);
        }
        self.dirty_targets.insert(mac);
        self.wake(now, mac);
        Ok(())
    }
}
