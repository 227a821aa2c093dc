//! The sender's view of its group: who is done, who is a straggler, who
//! sets the pace, and what each receiver still needs.

use super::*;

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
        let limit = (median * 3.0).max(0.25);
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
                    r.loss > limit
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

    /// The receivers whose needs set the pace: active non-stragglers, or all
    /// active ones when only stragglers are left.
    pub(super) fn pace_setters(&self) -> Vec<&Rx> {
        let active: Vec<&Rx> = self
            .receivers
            .values()
            .filter(|r| !r.lost && !r.status.done)
            .collect();
        let healthy: Vec<&Rx> = active.iter().copied().filter(|r| !r.straggler).collect();
        if healthy.is_empty() {
            active
        } else {
            healthy
        }
    }

    pub(super) fn group_health(&self) -> (f64, bool) {
        let setters = self.pace_setters();
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

    /// Symbols the neediest of `rx` lacks for `chunk` (k when unknown).
    pub(super) fn deficit(r: &Rx, chunk: u32, k: u32) -> u32 {
        r.status
            .deficits
            .iter()
            .find(|&&(c, _)| c == chunk)
            .map_or(k, |&(_, d)| d.min(k))
    }
}
