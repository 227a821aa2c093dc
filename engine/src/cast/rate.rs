//! Pacing and rate control. Time is always an input: nothing here reads a
//! clock, so the simulation drives it with a virtual one.

use std::time::{Duration, Instant};

/// A token bucket in bytes: packets leave evenly spaced instead of in bursts
/// that overflow switch and receiver buffers.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// How much the bucket may hold, in time at the current rate: enough that a
/// shell waking every millisecond can keep the link full.
const BURST: Duration = Duration::from_millis(2);

impl Pacer {
    /// A pacer at `rate` bytes/s.
    pub fn new(rate: u64, now: Instant) -> Pacer {
        Pacer {
            rate: rate.max(1) as f64,
            tokens: 0.0,
            last: now,
        }
    }

    /// Changes the rate.
    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate.max(1) as f64;
    }

    /// Current rate in bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        let cap = (self.rate * BURST.as_secs_f64()).max(16_000.0);
        self.tokens = (self.tokens + dt * self.rate).min(cap);
    }

    /// Takes `bytes` if the bucket has them.
    pub fn try_send(&mut self, now: Instant, bytes: usize) -> bool {
        self.refill(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Takes `bytes` whether or not the bucket has them (a control packet
    /// that cannot wait): the symbols after it wait for the debt, so all
    /// the sender sends stays within the rate. The debt is bounded by one
    /// bucket.
    pub fn charge(&mut self, now: Instant, bytes: usize) {
        self.refill(now);
        let cap = (self.rate * BURST.as_secs_f64()).max(16_000.0);
        self.tokens = (self.tokens - bytes as f64).max(-cap);
    }

    /// When `bytes` will be available.
    pub fn next_send(&self, bytes: usize) -> Instant {
        let missing = (bytes as f64 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// AIMD on the loss the healthy receivers report: loss above
/// `decrease_above` (or disks falling behind) cuts the rate to
/// `1 - loss` of itself, between 5% and 75% (75% for disks); loss below
/// `increase_below` adds an eighth of the current rate, within 1% and 5% of
/// the ceiling; in between the rate holds, so a link with steady random
/// (non-congestion) loss is not driven to zero.
#[derive(Debug, Clone)]
pub struct RateControl {
    ceiling: u64,
    floor: u64,
    current: u64,
    next_adjust: Option<Instant>,
    /// The rate the first of the last cuts left, until the rate is back.
    recover_to: u64,
    last_cut: Option<Instant>,
    /// Loss fraction above which the rate decreases.
    pub decrease_above: f64,
    /// Loss fraction below which the rate increases.
    pub increase_below: f64,
    /// Minimum time between adjustments.
    pub interval: Duration,
}

impl RateControl {
    /// Starts at `initial` between `floor` and `ceiling` (bytes/s).
    pub fn new(ceiling: u64, floor: u64, initial: u64) -> RateControl {
        let floor = floor.min(ceiling).max(1);
        RateControl {
            ceiling,
            floor,
            current: initial.clamp(floor, ceiling),
            next_adjust: None,
            recover_to: 0,
            last_cut: None,
            decrease_above: 0.05,
            increase_below: 0.03,
            interval: Duration::from_millis(100),
        }
    }

    /// The current rate.
    pub fn rate(&self) -> u64 {
        self.current
    }

    /// Feeds the loss of the healthy majority (`None`: none of them
    /// reported since the last step, which is good news) and whether their
    /// disks fall behind; returns the new rate.
    pub fn on_feedback(&mut self, now: Instant, loss: Option<f64>, disks_behind: bool) -> u64 {
        if self.next_adjust.is_some_and(|t| now < t) {
            return self.current;
        }
        self.next_adjust = Some(now + self.interval);
        let loss = loss.unwrap_or(0.0);
        if loss > self.decrease_above || disks_behind {
            // Down by a quarter; under heavy loss straight down to about
            // what got through, so that a slow group is not flooded for a
            // dozen steps.
            let factor = if disks_behind {
                0.75
            } else {
                (1.0 - loss).clamp(0.05, 0.75)
            };
            self.current = ((self.current as f64 * factor) as u64).max(self.floor);
            // Cuts in a row answer one overflow (reports lag the rate by a
            // loss window, so the later ones are echoes of the first): the
            // first one's result, about what got through, is what to climb
            // back to.
            let burst = self.last_cut.is_some_and(|t| now < t + self.interval * 4);
            if !burst {
                self.recover_to = self.current;
            }
            self.last_cut = Some(now);
        } else if loss < self.increase_below {
            let step = if self.current < self.recover_to {
                // Back to it halving the distance each step (BIC-TCP's
                // binary search): echoes of one overflow at 1 GB/s cut a
                // session to 43 MB/s, and an eighth a step took two seconds
                // to climb back.
                (self.recover_to - self.current).div_ceil(2)
            } else {
                // Past it, probe in additive steps that stay small next to
                // a slow group's rate (an eighth of it, within 1% and 5% of
                // the ceiling): a flat twentieth of a 1 GB/s ceiling
                // doubled a 27 MB/s straggler's rate in one step and
                // brought the loss straight back.
                self.recover_to = 0;
                (self.current / 8).clamp(self.ceiling / 100, self.ceiling / 20)
            };
            self.current = (self.current + step.max(1)).min(self.ceiling);
        }
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spaces_packets_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000_000, t0);
        let mut sent = 0usize;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            if p.try_send(now, 1000) {
                sent += 1000;
            } else {
                now = p.next_send(1000).max(now + Duration::from_micros(1));
            }
        }
        assert!((990_000..=1_020_000).contains(&sent), "{sent}");
    }

    #[test]
    fn aimd_backs_off_and_recovers() {
        let t0 = Instant::now();
        let mut r = RateControl::new(100, 10, 100);
        let mut t = t0;
        for _ in 0..5 {
            t += Duration::from_millis(200);
            r.on_feedback(t, Some(0.3), false);
        }
        assert!(r.rate() < 30);
        assert!(r.rate() >= 10);
        for _ in 0..30 {
            t += Duration::from_millis(200);
            r.on_feedback(t, None, false);
        }
        assert_eq!(r.rate(), 100);
        // One overflow, then two echoes of it: back to what got through
        // in a few steps, not an eighth a step.
        let mut r = RateControl::new(1000, 10, 1000);
        r.on_feedback(t, Some(0.5), false);
        for _ in 0..2 {
            t += Duration::from_millis(100);
            r.on_feedback(t, Some(0.9), false);
        }
        assert!(r.rate() <= 10, "{}", r.rate());
        for _ in 0..4 {
            t += Duration::from_millis(100);
            r.on_feedback(t, None, false);
        }
        assert!((450..=500).contains(&r.rate()), "{}", r.rate());
        for _ in 0..40 {
            t += Duration::from_millis(100);
            r.on_feedback(t, None, false);
        }
        assert_eq!(r.rate(), 1000);
        // Steady 4% random loss: hold.
        let before = r.rate();
        t += Duration::from_millis(200);
        assert_eq!(r.on_feedback(t, Some(0.04), false), before);
    }
}
