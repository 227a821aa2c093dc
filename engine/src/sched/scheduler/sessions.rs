//! The cast-session planner: targets that want the same image are grouped
//! into one session, which starts at the first of its policy's conditions;
//! later arrivals join the running carousel.

use super::*;

impl Scheduler {
    /// Puts `mac` in the live session for `image` at `root` (the root its
    /// job pinned; opening a session if none), returning its id.
    pub(super) fn join_session(
        &mut self,
        now: Millis,
        mac: MacAddr,
        image: &str,
        root: &str,
        job: JobId,
        policy: &CastPolicy,
    ) -> Option<SessionId> {
        if let Some(s) = self.sessions.values_mut().find(|s| {
            s.image == image
                && s.root == root
                && s.phase != SessionPhase::Ended
                && !s.done.contains(&mac)
        }) {
            if s.members.insert(mac) {
                self.dirty_sessions.insert(s.id);
            }
            return Some(s.id);
        }
        let root = root.to_string();
        let id = self.next_session;
        self.next_session = SessionId(id.0 + 1);
        let derive = |what: &str| {
            blake3::keyed_hash(&self.cfg.key_secret, format!("{what} {id}").as_bytes())
        };
        let key = crate::image::hex(derive("key").as_bytes());
        let wire = u64::from_le_bytes(derive("wire").as_bytes()[..8].try_into().unwrap_or([1; 8]));
        let port = self.cfg.cast_port + (id.0 % 1000) as u16;
        let s = CastSession {
            id,
            image: image.to_string(),
            root,
            group: format!("{}:{port}", self.cfg.cast_group),
            key,
            wire_session: wire,
            phase: SessionPhase::Forming { first_join: now },
            policy: policy.clone(),
            job,
            members: [mac].into_iter().collect(),
            done: BTreeSet::new(),
        };
        self.event(
            now,
            Actor::Scheduler,
            Subject::run(mac, job),
            EventKind::CastForming {
                session: id,
                image: image.to_string(),
                group: s.group.clone(),
            },
        );
        self.sessions.insert(id, s);
        self.dirty_sessions.insert(id);
        Some(id)
    }

    /// Starts forming sessions whose condition holds.
    pub(super) fn plan(&mut self, now: Millis) {
        let forming: Vec<SessionId> = self
            .sessions
            .values()
            .filter(|s| matches!(s.phase, SessionPhase::Forming { .. }))
            .map(|s| s.id)
            .collect();
        for id in forming {
            let s = &self.sessions[&id];
            let SessionPhase::Forming { first_join } = s.phase else {
                continue;
            };
            let pending = self.pending_for(&s.image);
            let want = s
                .policy
                .min_targets
                .unwrap_or(usize::MAX)
                .min(pending)
                .max(1);
            let reason = if s.members.len() >= want {
                Some(format!("{} of {want} targets joined", s.members.len()))
            } else if s
                .policy
                .max_wait
                .is_some_and(|w| now >= first_join + w * 1000)
            {
                Some(format!(
                    "{} s after the first target joined",
                    s.policy.max_wait.unwrap_or(0)
                ))
            } else if s.policy.start_at.is_some_and(|t| now >= t * 1000) {
                Some("the set start time came".to_string())
            } else {
                None
            };
            let Some(reason) = reason else { continue };
            let s = self.sessions.get_mut(&id).expect("session exists");
            s.phase = SessionPhase::Running { started: now };
            let (receivers, rate, job) = (s.members.len(), s.policy.rate, s.job);
            self.dirty_sessions.insert(id);
            self.event(
                now,
                Actor::Scheduler,
                Subject::job(job),
                EventKind::CastStarted {
                    session: id,
                    receivers,
                    why: reason,
                },
            );
            self.actions.push_back(Action::StartSender {
                session: id,
                receivers,
                rate,
            });
        }
    }

    /// Targets whose current task is distributing `image` (and not done in a session).
    pub(super) fn pending_for(&self, image: &str) -> usize {
        self.targets
            .values()
            .filter(|t| !matches!(t.state, TargetState::Failed { .. }))
            .filter(|t| {
                self.current(t.mac).is_some_and(|(j, r)| {
                    matches!(&j.spec.tasks[r.task as usize].kind, TaskKind::Distribute { image: i, .. } if i == image)
                })
            })
            .count()
    }

    pub(super) fn end_session(
        &mut self,
        now: Millis,
        id: SessionId,
        actor: Actor,
        why: &str,
        stats: serde_json::Value,
    ) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if s.phase == SessionPhase::Ended {
                return;
            }
            s.phase = SessionPhase::Ended;
            let (job, done, members) = (s.job, s.done.len(), s.members.len());
            self.dirty_sessions.insert(id);
            let mut stats = match stats {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            };
            // The session's own figures win over a sender's of the same name.
            for k in ["session", "why", "done", "members"] {
                stats.remove(k);
            }
            self.event(
                now,
                actor,
                Subject::job(job),
                EventKind::CastEnded {
                    session: id,
                    why: why.to_string(),
                    done,
                    members,
                    stats,
                },
            );
        }
    }

    pub(super) fn leave_sessions(&mut self, mac: MacAddr) {
        for s in self.sessions.values_mut() {
            if s.phase != SessionPhase::Ended && s.members.remove(&mac) {
                self.dirty_sessions.insert(s.id);
            }
        }
    }
}
