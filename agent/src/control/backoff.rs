//! Exponential back-off with jitter for calls to a lost server.
//!
//! 200 ms, doubling, capped at 5 s; each delay is drawn from the upper
//! quarter below its nominal value, so a rack of agents that lost the server
//! at the same moment does not come back in lock step, and no delay is ever
//! longer than the cap.

use std::time::Duration;

/// The first delay.
pub const FIRST: Duration = Duration::from_millis(200);
/// The longest delay.
pub const CAP: Duration = Duration::from_secs(5);

/// A back-off schedule. Randomness is a seeded input, so tests are exact.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// A schedule whose jitter comes from `seed`.
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            failures: 0,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// A schedule seeded from the clock and the process id.
    pub fn from_entropy() -> Backoff {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Backoff::new(t ^ (u64::from(std::process::id()) << 32))
    }

    /// The nominal delay after `failures` consecutive failures (from 1).
    pub fn nominal(failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        (FIRST * (1u32 << shift)).min(CAP)
    }

    /// Records a failure; returns how long to wait before the next try:
    /// between 3/4 of the nominal delay and the nominal delay.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let nominal = Self::nominal(self.failures);
        let r = self.next_random() % 1024;
        nominal - nominal / 4 * r as u32 / 1024
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts the schedule over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: plenty for spreading retries.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_200ms_and_caps_at_5s() {
        let nominal: Vec<u64> = (1..=8)
            .map(|n| Backoff::nominal(n).as_millis() as u64)
            .collect();
        assert_eq!(nominal, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Backoff::nominal(u32::MAX), CAP);
    }

    #[test]
    fn delays_are_jittered_below_the_nominal_value() {
        let mut b = Backoff::new(42);
        let mut seen = std::collections::HashSet::new();
        for n in 1..=50 {
            let d = b.next_delay();
            let nominal = Backoff::nominal(n);
            assert!(d <= nominal, "delay {d:?} above nominal {nominal:?}");
            assert!(d >= nominal * 3 / 4, "delay {d:?} below 3/4 of {nominal:?}");
            assert!(d <= CAP);
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter should vary the delays");
    }

    #[test]
    fn same_seed_same_schedule_and_reset_starts_over() {
        let mut a = Backoff::new(7);
        let mut b = Backoff::new(7);
        let xs: Vec<_> = (0..10).map(|_| a.next_delay()).collect();
        let ys: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(xs, ys);
        assert_eq!(a.failures(), 10);
        a.reset();
        assert_eq!(a.failures(), 0);
        assert!(a.next_delay() <= FIRST);
    }

    #[test]
    fn different_agents_spread_out() {
        let firsts: std::collections::HashSet<_> = (0..20u64)
            .map(|seed| Backoff::new(seed * 7919).next_delay())
            .collect();
        assert!(firsts.len() > 5);
    }
}
