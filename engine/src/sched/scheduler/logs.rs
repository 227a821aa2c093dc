//! Task output. Each target has a token bucket of bytes (a rate and a
//! burst, time an input), so a chatty or hostile agent can neither fill the
//! disk nor keep the server's lock busy with commits: output over the
//! budget is dropped and counted, and one note saying how much goes into
//! the log before the next output that passes (or before the task's end).
//! What passes is appended to the job log ([`LogLine`]), never by
//! rewriting the job's row.

use super::*;
use crate::sched::model::LogLine;

/// Each report of output costs at least this many bytes of the budget, so
/// a flood of tiny reports is held back like a flood of big ones (each
/// admitted report is one commit).
pub const LOG_MIN_COST: u64 = 1024;

/// One target's output budget, in thousandths of a byte so that refills at
/// any rate lose nothing to rounding.
#[derive(Debug, Clone)]
pub(super) struct LogBucket {
    milli: u64,
    at: Millis,
    /// Bytes dropped since the last output that passed.
    dropped: u64,
}

impl LogBucket {
    fn full(burst: u64, now: Millis) -> LogBucket {
        LogBucket {
            milli: burst.saturating_mul(1000),
            at: now,
            dropped: 0,
        }
    }

    /// Refills for the time since the last call, then grants up to `want`
    /// bytes (nothing when less than [`LOG_MIN_COST`] is there).
    fn take(&mut self, now: Millis, want: u64, rate: u64, burst: u64) -> u64 {
        let elapsed = now.saturating_sub(self.at);
        self.at = self.at.max(now);
        self.milli = self
            .milli
            .saturating_add(rate.saturating_mul(elapsed))
            .min(burst.saturating_mul(1000));
        let avail = self.milli / 1000;
        if avail < LOG_MIN_COST.min(burst.max(1)) {
            return 0;
        }
        let cost = want.max(LOG_MIN_COST).min(avail);
        self.milli -= cost * 1000;
        cost.min(want)
    }
}

impl Scheduler {
    /// Output `text` of `mac`'s run `r`, as its agent sent it: what the
    /// target's budget allows is kept (its newest part) and broadcast, the
    /// rest is counted as dropped.
    pub(super) fn task_output(&mut self, now: Millis, mac: MacAddr, r: TaskRef, text: String) {
        let (rate, burst) = (self.cfg.log_rate, self.cfg.log_burst);
        let b = self
            .log_buckets
            .entry(mac)
            .or_insert_with(|| LogBucket::full(burst, now));
        let granted = b.take(now, text.len() as u64, rate, burst) as usize;
        let mut cut = text.len() - granted.min(text.len());
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        b.dropped += cut as u64;
        if cut == text.len() {
            return;
        }
        let kept = match self.dropped_note(mac) {
            Some(note) => format!("{note}{}", &text[cut..]),
            None if cut == 0 => text,
            None => text[cut..].to_string(),
        };
        self.append_log(now, mac, r.job, r.task, &kept);
        self.transient(now, mac, r, EventKind::TaskLog { text: kept });
    }

    /// Records the note of output dropped since the last that passed, if any.
    pub(super) fn flush_dropped(&mut self, now: Millis, mac: MacAddr, r: TaskRef) {
        if let Some(note) = self.dropped_note(mac) {
            self.append_log(now, mac, r.job, r.task, &note);
        }
    }

    /// The note for output dropped since the last that passed (said once).
    fn dropped_note(&mut self, mac: MacAddr) -> Option<String> {
        let b = self.log_buckets.get_mut(&mac)?;
        let n = std::mem::take(&mut b.dropped);
        (n > 0).then(|| {
            format!(
                "[rackcast: {n} bytes of output dropped: over the server's log budget of {} bytes/s]\n",
                self.cfg.log_rate
            )
        })
    }

    /// Appends `text` to `mac`'s run of `job`: to the tail the views show
    /// and, as a [`LogLine`], to the store's job log.
    pub(super) fn append_log(
        &mut self,
        now: Millis,
        mac: MacAddr,
        job: JobId,
        task: u32,
        text: &str,
    ) {
        let Some(run) = self.jobs.get_mut(&job).and_then(|j| j.run_mut(mac)) else {
            return;
        };
        run.append_log(text);
        self.last_log += 1;
        self.logs.push(LogLine {
            seq: self.last_log,
            job,
            mac,
            task,
            at: now,
            text: text.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        let mut b = LogBucket::full(4096, 0);
        assert_eq!(b.take(0, 4096, 1000, 4096), 4096);
        assert_eq!(b.take(0, 10, 1000, 4096), 0, "empty");
        // 1.5 s at 1000 bytes/s: 1500 bytes, the minimum cost taken for 10.
        assert_eq!(b.take(1500, 10, 1000, 4096), 10);
        assert_eq!(b.take(1500, 10, 1000, 4096), 0, "476 bytes left");
        // An hour later the bucket holds the burst, no more.
        assert_eq!(b.take(3_601_500, 1 << 20, 1000, 4096), 4096);
    }
}
