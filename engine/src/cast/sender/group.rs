//! The sender's view of its group: who is done, who is a straggler, who
//! sets the pace, and what each receiver still needs.

use super::*;

/// Statuses a receiver must have sent before it can be called a straggler.
const STRAGGLER_EVIDENCE: u32 = 3;
/// Pace setters' reports a rate step needs to act on (fewer: it holds).
const RATE_QUORUM: usize = 3;

impl<S: FrameSource> Sender<S> {
    pub(super) fn verdicts(&self) -> Vec<(u64, Verdict)> {
        let mut v: Vec<(u64, Verdict)> = self
            .receivers
            .iter()
            .map(|(&id, r)| {
                let d = r.status.chunks_done;
                let verdict = if r.status.done {
                    Verdict::Done
                } else if r.lost {
                    Verdict::Lost { chunks_done: d }
                } else {
                    Verdict::Incomplete { chunks_done: d }
                };
                (id, verdict)
            })
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// A receiver is a straggler when its loss is far above the group's
    /// median: it cannot keep up with the rate the others take.
    pub(super) fn classify_stragglers(&mut self) {
        let mut losses: Vec<f64> = self
            .receivers
            .values()
            .filter(|r| !r.lost && !r.status.done)
            .map(|r| r.loss)
            .collect();
        if losses.len() < 2 {
            for r in self.receivers.values_mut() {
                r.straggler = false;
            }
            return;
        }
        losses.sort_unstable_by(f64::total_cmp);
        let median = losses[losses.len() / 2];
        // Far above the median, in ratio and in points: at 20% uniform loss
        // a receiver measured at 27% over one short window is not behind.
        let limit = (median * 3.0).max(median + 0.25);
        // A straggler stays one while any healthy receiver still works: its
        // loss falls whenever the sender slows or it is starved of packets
        // it no longer sets the pace for, and re-admitting it on that dip
        // hands it the pace again (measured: a tbf-limited port swung from
        // 83% to 0% loss and back, and each swing cut the group's rate).
        // Once the healthy ones are done, it sets the pace alone.
        let healthy_left = self
            .receivers
            .values()
            .any(|r| !r.lost && !r.status.done && !r.straggler && r.loss <= limit);
        for (&id, r) in self.receivers.iter_mut() {
            let s = !r.status.done
                && if r.straggler {
                    healthy_left || r.loss > limit * 0.6
                } else {
                    // One report is one window: judge only a receiver heard
                    // from a few times.
                    r.statuses >= STRAGGLER_EVIDENCE && r.loss > limit
                };
            if s && !r.straggler {
                self.events.push_back(SenderEvent::Straggler {
                    receiver: id,
                    loss: r.loss,
                });
            }
            r.straggler = s;
        }
    }

    /// Works out again what depends on the whole group: stragglers, who
    /// sets the pace, whether all are done, the proactive margin and the
    /// rate. Receivers that become pace setters have their latest report
    /// taken (it was ignored while they were not).
    pub(super) fn health_pass(&mut self, now: Instant) {
        self.health_due = false;
        self.next_health = now + HEALTH_INTERVAL;
        self.classify_stragglers();
        let healthy = self
            .receivers
            .values()
            .any(|r| !r.lost && !r.status.done && !r.straggler);
        let mut promoted = Vec::new();
        let mut setters = 0;
        let mut active = 0;
        let mut done = 0;
        for (&id, r) in self.receivers.iter_mut() {
            let s = !r.lost && !r.status.done && (!r.straggler || !healthy);
            if s && !r.setter {
                promoted.push(id);
            }
            r.setter = s;
            setters += s as usize;
            if !r.lost {
                active += 1;
                done += r.status.done as usize;
            }
        }
        self.setters = setters;
        self.healthy_left = healthy;
        self.all_done = active > 0 && done == active;
        self.reporting = active - done;
        for id in promoted {
            self.apply_report(id);
        }
        let (loss, behind) = self.group_health();
        self.median_loss = loss;
        // Proactive repair covers the typical receiver's loss; the tail is
        // served by deficit-driven repairs, which cost far less than sizing
        // every chunk for the unluckiest receiver.
        // A share `loss` lost of `n` sent leaves `n (1 - loss)`: sending
        // `k / (1 - loss)` gives the median receiver its `k`.
        let loss = loss.min(0.5);
        self.margin = loss / (1.0 - loss) + self.cfg.repair_margin;
        self.disks_behind = behind;
    }

    /// One step of the rate control, on its own timer: the median loss of
    /// the statuses the pace setters sent since the last step. Loss a
    /// receiver reported seconds ago says nothing of the rate now (it held
    /// a session at its floor for seconds after one overflow), and feedback
    /// is sparse by design, so no status at all is good news: a receiver
    /// that loses more than the proactive margin reports its deficit when
    /// the visit ends.
    ///
    /// Reports are biased toward receivers in trouble (a deficit is what
    /// makes one speak), so one receiver's complaint in a group is not the
    /// group's loss: the step needs [`RATE_QUORUM`] reports (or every pace
    /// setter, if fewer) to move on them, and holds otherwise. One slow
    /// port among 100 receivers cut their rate before the three statuses
    /// that mark it a straggler.
    pub(super) fn rate_step(&mut self, now: Instant) {
        let mut fresh: Vec<f64> = self.fresh_loss.drain().map(|(_, l)| l).collect();
        let heard = fresh.len();
        let loss = (heard > 0).then(|| {
            fresh.sort_unstable_by(f64::total_cmp);
            fresh[heard / 2]
        });
        if heard > 0 && heard < RATE_QUORUM.min(self.setters.max(1)) {
            return;
        }
        let rate = self.ratectl.on_feedback(now, loss, self.disks_behind);
        self.pacer.set_rate(rate);
    }

    /// The pace setters' median loss, and whether their disks are behind.
    pub(super) fn group_health(&self) -> (f64, bool) {
        let setters: Vec<&Rx> = self.receivers.values().filter(|r| r.setter).collect();
        if setters.is_empty() {
            return (0.0, false);
        }
        let mut losses: Vec<f64> = setters.iter().map(|r| r.loss).collect();
        losses.sort_unstable_by(f64::total_cmp);
        let median = losses[losses.len() / 2];
        let mut backlogs: Vec<u64> = setters.iter().map(|r| r.status.write_backlog).collect();
        backlogs.sort_unstable();
        // Half the healthy receivers holding more than 256 MiB undrained: their
        // disks are the bottleneck, not the network.
        let behind = backlogs[backlogs.len() / 2] > 256 << 20;
        (median, behind)
    }

    pub(super) fn needs(r: &Rx, chunk: u32) -> bool {
        if !r.status.has_index {
            // It needs the index first: index visits serve it.
            return false;
        }
        for &(a, n) in &r.status.needed {
            if chunk >= a && chunk - a < n {
                return true;
            }
        }
        r.status.needed_truncated
            && r.status
                .needed
                .last()
                .is_some_and(|&(a, n)| chunk >= a.saturating_add(n))
    }
}
