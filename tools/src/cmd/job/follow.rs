//! The decisions of `rackcast job watch`, on a clock it is given: when to
//! (re)open the event stream and from which seq, when to refresh the job,
//! when the server counts as lost, when to stop and with which exit status.
//! No sockets and no `Instant::now()` here; `watch` is the shell.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use rackcast_engine::sched::api::JobId;

/// Stream reconnects in a row before the watch falls back to polling...
pub const STREAM_TRIES: u32 = 8;
/// ...for this long, before it tries the stream again.
pub const STREAM_PAUSE: Duration = Duration::from_secs(30);
/// A stream that stayed up this long was healthy: its drop starts a new count.
pub const HEALTHY_STREAM: Duration = Duration::from_secs(30);
/// Job refreshes in a row that may fail before the server counts as lost
/// (with the back-off, about a minute).
pub const REFRESH_TRIES: u32 = 10;
/// Refresh at least this often (progress has no sequenced events).
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// ...and after an event, as soon as this has passed since the last refresh.
pub const REFRESH_AFTER_EVENT: Duration = Duration::from_millis(200);

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The job is `done`: exit 0.
    Done,
    /// The job `failed` or was `cancelled`: exit 1.
    NotDone,
    /// The server was lost for good: exit 2.
    Lost,
    /// `--timeout` ran out: exit 3.
    TimedOut,
}

impl Outcome {
    /// The outcome a job status means, `None` while the job goes on.
    pub fn of_status(status: &str) -> Option<Outcome> {
        match status {
            "done" => Some(Outcome::Done),
            "failed" | "cancelled" => Some(Outcome::NotDone),
            _ => None,
        }
    }

    /// The process exit status.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => 0,
            Outcome::NotDone => 1,
            Outcome::Lost => 2,
            Outcome::TimedOut => 3,
        })
    }
}

/// Bounded exponential back-off: 0.5 s, 1 s, 2 s, 4 s, then 8 s, for
/// `max` failures in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max: u32,
}

impl Backoff {
    /// Allows `max` failures in a row.
    pub fn new(max: u32) -> Backoff {
        Backoff { failures: 0, max }
    }

    /// A failure: the delay before the next try, `None` once out of tries.
    pub fn fail(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.failures > self.max {
            return None;
        }
        Some(Duration::from_millis(500 << (self.failures - 1).min(4)))
    }

    /// A success: start over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What the shell does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finish with this outcome.
    Stop(Outcome),
    /// Open the event stream with `since=`.
    OpenStream {
        /// The last seq seen (0: from the start).
        since: u64,
    },
    /// `GET /api/v1/jobs/{id}`.
    Refresh,
    /// Wait for a stream message until then, and ask again.
    Wait(Instant),
}

/// What to do with an event from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFate {
    /// New, in sequence: show it (a refresh follows).
    Show,
    /// Live only (seq 0: progress, log lines): show, no refresh.
    Transient,
    /// Seen before, or another job's.
    Skip,
}

/// A failed refresh: try again (with a note the first time) or give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again; `first` of a run of failures.
    Again {
        /// First failure in a row.
        first: bool,
    },
    /// Out of tries: the server is lost.
    GiveUp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamPhase {
    /// Open since then.
    Open(Instant),
    /// Down: open it (again) at then.
    Down(Instant),
    /// The server answers, but with no event stream: poll only.
    Off,
}

/// The state of one watch.
#[derive(Debug)]
pub struct Follow {
    job: JobId,
    deadline: Option<Instant>,
    last_seq: u64,
    stream: StreamPhase,
    stream_backoff: Backoff,
    refresh_backoff: Backoff,
    refresh_failures: u32,
    polling: bool,
    last_refresh: Instant,
    next_refresh: Instant,
    event_pending: bool,
}

impl Follow {
    /// A watch of `job` whose view was fetched at `now`.
    pub fn new(now: Instant, job: JobId, timeout: Option<Duration>) -> Follow {
        Follow {
            job,
            deadline: timeout.map(|t| now + t),
            last_seq: 0,
            stream: StreamPhase::Down(now),
            stream_backoff: Backoff::new(STREAM_TRIES),
            refresh_backoff: Backoff::new(REFRESH_TRIES),
            refresh_failures: 0,
            polling: false,
            last_refresh: now,
            next_refresh: now + REFRESH_EVERY,
            event_pending: false,
        }
    }

    /// The next step, given the job's status as last seen.
    pub fn poll(&mut self, now: Instant, status: &str) -> Step {
        if let Some(o) = Outcome::of_status(status) {
            return Step::Stop(o);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Step::Stop(Outcome::TimedOut);
        }
        if let StreamPhase::Down(at) = self.stream {
            if now >= at {
                self.stream = StreamPhase::Open(now);
                return Step::OpenStream {
                    since: self.last_seq,
                };
            }
        }
        let due = if self.event_pending {
            self.next_refresh
                .min(self.last_refresh + REFRESH_AFTER_EVENT)
        } else {
            self.next_refresh
        };
        if now >= due {
            self.last_refresh = now;
            // Until the answer says otherwise, the next try is a period away.
            self.next_refresh = now + REFRESH_EVERY;
            return Step::Refresh;
        }
        let mut wake = due;
        if let StreamPhase::Down(at) = self.stream {
            wake = wake.min(at);
        }
        if let Some(d) = self.deadline {
            wake = wake.min(d);
        }
        Step::Wait(wake)
    }

    /// An event arrived with this seq, for this job.
    pub fn on_event(&mut self, seq: u64, job: Option<JobId>) -> EventFate {
        self.stream_backoff.reset();
        self.polling = false;
        if job.is_some_and(|j| j != self.job) {
            return EventFate::Skip;
        }
        if seq == 0 {
            return EventFate::Transient;
        }
        if seq <= self.last_seq {
            return EventFate::Skip;
        }
        self.last_seq = seq;
        self.event_pending = true;
        EventFate::Show
    }

    /// The stream failed or dropped; a note when the watch falls back to polling.
    pub fn on_stream_broken(&mut self, now: Instant, why: &str) -> Option<String> {
        if let StreamPhase::Open(since) = self.stream {
            if now.saturating_duration_since(since) >= HEALTHY_STREAM {
                self.stream_backoff.reset();
            }
        }
        if let Some(d) = self.stream_backoff.fail() {
            self.stream = StreamPhase::Down(now + d);
            return None;
        }
        self.stream_backoff.reset();
        self.stream = StreamPhase::Down(now + STREAM_PAUSE);
        if self.polling {
            return None;
        }
        self.polling = true;
        Some(format!(
            "live events lost ({why}); following job {} by polling every second",
            self.job
        ))
    }

    /// The server answered the stream with something else: poll only.
    pub fn on_stream_unavailable(&mut self, why: &str) -> String {
        self.stream = StreamPhase::Off;
        format!(
            "live events unavailable ({why}); following job {} by polling every second",
            self.job
        )
    }

    /// A refresh answered at `now`.
    pub fn on_refreshed(&mut self, now: Instant) {
        self.refresh_backoff.reset();
        self.refresh_failures = 0;
        self.event_pending = false;
        self.next_refresh = now + REFRESH_EVERY;
    }

    /// A refresh could not reach the server at `now`.
    pub fn on_refresh_unreachable(&mut self, now: Instant) -> Retry {
        self.refresh_failures += 1;
        match self.refresh_backoff.fail() {
            Some(d) => {
                self.next_refresh = now + d;
                Retry::Again {
                    first: self.refresh_failures == 1,
                }
            }
            None => Retry::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn statuses_and_exit_codes() {
        assert_eq!(Outcome::of_status("done"), Some(Outcome::Done));
        assert_eq!(Outcome::of_status("failed"), Some(Outcome::NotDone));
        assert_eq!(Outcome::of_status("cancelled"), Some(Outcome::NotDone));
        assert_eq!(Outcome::of_status("running"), None);
        assert_eq!(Outcome::of_status("queued"), None);
        assert_eq!(Outcome::Done.exit_code(), ExitCode::from(0));
        assert_eq!(Outcome::NotDone.exit_code(), ExitCode::from(1));
        assert_eq!(Outcome::Lost.exit_code(), ExitCode::from(2));
        assert_eq!(Outcome::TimedOut.exit_code(), ExitCode::from(3));
    }

    #[test]
    fn backoff_is_bounded() {
        let mut b = Backoff::new(6);
        let delays: Vec<u64> = std::iter::from_fn(|| b.fail())
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 8000]);
        b.reset();
        assert_eq!(b.fail(), Some(500 * MS));
    }

    #[test]
    fn opens_the_stream_then_refreshes_every_second() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), None);
        assert_eq!(f.poll(t0, "running"), Step::OpenStream { since: 0 });
        assert_eq!(f.poll(t0, "running"), Step::Wait(t0 + REFRESH_EVERY));
        assert_eq!(f.poll(t0 + REFRESH_EVERY, "running"), Step::Refresh);
        f.on_refreshed(t0 + REFRESH_EVERY + 5 * MS);
        assert_eq!(
            f.poll(t0 + REFRESH_EVERY + 5 * MS, "running"),
            Step::Wait(t0 + 2 * REFRESH_EVERY + 5 * MS)
        );
        assert_eq!(f.poll(t0, "done"), Step::Stop(Outcome::Done));
        assert_eq!(f.poll(t0, "cancelled"), Step::Stop(Outcome::NotDone));
    }

    #[test]
    fn events_are_shown_once_and_bring_a_refresh_forward() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), None);
        f.poll(t0, "running");
        assert_eq!(f.on_event(5, Some(JobId(7))), EventFate::Show);
        assert_eq!(f.on_event(5, Some(JobId(7))), EventFate::Skip, "replayed");
        assert_eq!(f.on_event(4, Some(JobId(7))), EventFate::Skip, "older");
        assert_eq!(
            f.on_event(9, Some(JobId(8))),
            EventFate::Skip,
            "another job"
        );
        assert_eq!(f.on_event(0, Some(JobId(7))), EventFate::Transient);
        assert_eq!(f.on_event(6, None), EventFate::Show);
        assert_eq!(f.last_seq, 6);
        assert_eq!(
            f.poll(t0 + 50 * MS, "running"),
            Step::Wait(t0 + REFRESH_AFTER_EVENT)
        );
        assert_eq!(f.poll(t0 + REFRESH_AFTER_EVENT, "running"), Step::Refresh);
    }

    #[test]
    fn a_dropped_stream_reconnects_from_the_last_seq_with_backoff() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), None);
        f.poll(t0, "running");
        f.on_event(41, Some(JobId(7)));
        f.on_event(42, Some(JobId(7)));
        let mut t = t0 + 10 * MS;
        let mut delays = Vec::new();
        for _ in 0..STREAM_TRIES {
            assert_eq!(f.on_stream_broken(t, "reset by peer"), None);
            // Refreshes go on meanwhile; skip past them to the reconnect.
            let open = loop {
                match f.poll(t, "running") {
                    Step::OpenStream { since } => break since,
                    Step::Refresh => f.on_refreshed(t),
                    Step::Wait(w) => t = w,
                    Step::Stop(o) => panic!("stopped: {o:?}"),
                }
            };
            assert_eq!(open, 42);
            delays.push(t);
        }
        let gaps: Vec<u128> = delays
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps, [1000, 2000, 4000, 8000, 8000, 8000, 8000]);
        // Out of tries: one note, then polling, and a fresh try later.
        let note = f.on_stream_broken(t, "refused").expect("a note");
        assert!(note.contains("polling"), "{note}");
        assert_eq!(f.on_stream_broken(t, "refused"), None, "noted once");
        let t1 = t;
        loop {
            match f.poll(t, "running") {
                Step::OpenStream { since } => {
                    assert_eq!(since, 42);
                    break;
                }
                Step::Refresh => f.on_refreshed(t),
                Step::Wait(w) => t = w,
                Step::Stop(o) => panic!("stopped: {o:?}"),
            }
        }
        assert!(t - t1 >= 500 * MS);
    }

    #[test]
    fn a_healthy_stream_that_drops_starts_a_new_count() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), None);
        assert_eq!(f.poll(t0, "running"), Step::OpenStream { since: 0 });
        for _ in 0..3 {
            f.on_stream_broken(t0, "x");
        }
        // Reopened, up for a minute without an event, then dropped.
        let t = t0 + Duration::from_secs(9);
        f.stream = StreamPhase::Open(t);
        f.on_stream_broken(t + HEALTHY_STREAM, "x");
        assert_eq!(f.stream, StreamPhase::Down(t + HEALTHY_STREAM + 500 * MS));
    }

    #[test]
    fn refresh_failures_are_bounded() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), None);
        assert_eq!(f.on_refresh_unreachable(t0), Retry::Again { first: true });
        for _ in 1..REFRESH_TRIES {
            assert_eq!(f.on_refresh_unreachable(t0), Retry::Again { first: false });
        }
        assert_eq!(f.on_refresh_unreachable(t0), Retry::GiveUp);
        let mut g = Follow::new(t0, JobId(7), None);
        g.on_refresh_unreachable(t0);
        g.on_refreshed(t0);
        assert_eq!(g.on_refresh_unreachable(t0), Retry::Again { first: true });
    }

    #[test]
    fn the_timeout_stops_the_watch() {
        let t0 = Instant::now();
        let mut f = Follow::new(t0, JobId(7), Some(Duration::from_millis(300)));
        f.poll(t0, "running");
        f.on_stream_unavailable("404");
        assert_eq!(f.poll(t0, "running"), Step::Wait(t0 + 300 * MS));
        assert_eq!(
            f.poll(t0 + 300 * MS, "running"),
            Step::Stop(Outcome::TimedOut)
        );
    }
}
