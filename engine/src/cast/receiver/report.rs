//! When a receiver reports, and when it stays silent.
//!
//! Feedback must not grow with the group: at 10,000 receivers a status every
//! 100 ms each would be 100,000 packets a second at one sender. So a
//! receiver reports only what the sender needs to hear:
//! - **first contact** (its join) and, when it joined a running session, the
//!   moment it holds the index (its needs then include chunks already sent);
//! - a **deficit**, when a visit of an object it still needs ends (the sender
//!   moved on to another object). It waits a random backoff first, drawn from
//!   a truncated exponential scaled to the group size the sender announces,
//!   and stays silent if meanwhile the sender's `Repairs` echo promises at
//!   least the symbols it lacks, or the object is on the air again: one
//!   report, echoed, answers the whole group;
//! - **done**, once, then again only while the sender has not acknowledged it;
//! - a **heartbeat** with its full needs, at the period the sender announces
//!   (scaled so the group's heartbeats stay within the sender's budget),
//!   jittered so a group never beats in step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{ChunkState, Receiver};
use crate::cast::fec::source_symbols;
use crate::cast::wire::{Announce, INDEX_OBJECT};

/// Longest heartbeat period a receiver accepts from an announce.
const MAX_HEARTBEAT: Duration = Duration::from_secs(60);
/// Longest backoff a receiver accepts from an announce.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Asking again backs off to at most this many times the first wait.
const MAX_ASK_DOUBLINGS: u32 = 16;
/// Echoed repairs remembered at once; a flood of echoes cannot grow memory.
const MAX_ECHOED: usize = 4096;
/// Objects remembered as seen on the air before the index arrived.
const MAX_SEEN: usize = 1 << 16;
/// First-contact and done statuses the whole group may send per second: a
/// group that joins (or finishes) at once spreads them over
/// `group / SPREAD_BUDGET` seconds, and a done receiver waits that long for
/// its acknowledgement before it says done again.
const SPREAD_BUDGET: u64 = 2000;

/// A receiver's report schedule.
#[derive(Debug)]
pub(super) struct Reports {
    /// Heartbeat period, from the announce.
    heartbeat: Duration,
    /// Longest backoff before a deficit report, from the announce.
    backoff: Duration,
    /// Group size, from the announce.
    group: u32,
    next_heartbeat: Instant,
    /// A report is due from this time (first contact, late index, done).
    urgent: Option<Instant>,
    /// When the pending deficit report fires, and for which objects.
    nack_at: Option<Instant>,
    nack: Vec<u32>,
    /// Objects the last deficit report asked for, and when to ask again if
    /// neither an echo nor a visit of them has been heard (the report or
    /// its echo was lost).
    asked: Vec<u32>,
    ask_again: Option<Instant>,
    /// How long to wait for an answer before asking again: doubles while
    /// nothing answers (a sender slowed for a straggler answers late), back
    /// to the base once something does.
    ask_gap: Duration,
    /// Repairs the sender promised: object -> symbols it will send.
    echoed: BTreeMap<u32, u32>,
    /// Chunks whose symbols went by before the index was held.
    seen: Vec<u32>,
    /// When the last report went out.
    last: Option<Instant>,
    rng: u64,
}

impl Reports {
    pub(super) fn new(id: u64, nonce: u64, interval: Duration, now: Instant) -> Reports {
        let mut r = Reports {
            heartbeat: interval,
            backoff: interval / 4,
            group: 1,
            next_heartbeat: now,
            urgent: None,
            nack_at: None,
            nack: Vec::new(),
            asked: Vec::new(),
            ask_again: None,
            ask_gap: Duration::ZERO,
            echoed: BTreeMap::new(),
            seen: Vec::new(),
            last: None,
            rng: (id ^ nonce.rotate_left(32)) | 1,
        };
        r.next_heartbeat = now + interval.mul_f64(r.uniform());
        r
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        // xorshift64: the draws only spread timers; they need no secrecy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A backoff from the truncated exponential of Nonnenmacher and
    /// Biersack: with `λ = ln(group) + 1`, a few receivers out of any group
    /// draw an early time, so the first report (and its echo) comes quickly
    /// and the rest are suppressed.
    fn draw_backoff(&mut self) -> Duration {
        let lambda = (self.group.max(1) as f64).ln() + 1.0;
        let x = self.uniform().max(1e-12);
        let f = ((lambda.exp() - 1.0) * x + 1.0).ln() / lambda;
        self.backoff.mul_f64(f.clamp(0.0, 1.0))
    }

    fn next_beat(&mut self, now: Instant) -> Instant {
        now + self.heartbeat.mul_f64(0.75 + self.uniform() / 2.0)
    }
}

impl Receiver {
    /// The sender's feedback parameters from an announce.
    pub(super) fn take_feedback_params(&mut self, now: Instant, a: &Announce) {
        let r = &mut self.reports;
        r.group = a.group.max(1);
        r.backoff = Duration::from_micros(a.backoff_us as u64).min(MAX_BACKOFF);
        let beat = Duration::from_millis(a.heartbeat_ms as u64)
            .clamp(self.cfg.status_interval, MAX_HEARTBEAT);
        let old = r.heartbeat;
        if beat.abs_diff(old) > old / 4 {
            // Re-draw the phase: receivers that joined while the group was
            // small would otherwise all beat together at the new period.
            r.heartbeat = beat;
            let from = r.last.unwrap_or(now);
            r.next_heartbeat = r.next_beat(from).max(now);
        }
    }

    /// A report is due right away.
    pub(super) fn report_now(&mut self, now: Instant) {
        self.reports.urgent.get_or_insert(now);
    }

    /// A report every receiver of the group sends at about the same moment
    /// (first contact, done): due after a random part of the spread, so
    /// 10,000 of them reach the sender over seconds, not in one burst.
    pub(super) fn report_spread(&mut self, now: Instant) {
        let spread = self.spread();
        let at = now + spread.mul_f64(self.reports.uniform());
        self.reports.urgent.get_or_insert(at);
    }

    fn spread(&self) -> Duration {
        Duration::from_micros(self.reports.group as u64 * 1_000_000 / SPREAD_BUDGET)
    }

    /// The sender moved on from `object`: if this receiver still lacks it,
    /// a deficit report is scheduled after a backoff.
    pub(super) fn visit_ended(&mut self, now: Instant, object: u32) {
        if object != INDEX_OBJECT && self.index.is_none() {
            // Its symbols were useless without the index; ask for the chunk
            // once the index is here.
            let r = &mut self.reports;
            if r.seen.len() < MAX_SEEN && !r.seen.contains(&object) {
                r.seen.push(object);
            }
            // And the index's own visit went by unheard (every symbol lost,
            // or sent before this receiver followed the session: a join's
            // echo can trail the index): ask for it like any deficit.
            // Waiting for the heartbeat cost a second of useless symbols
            // at the start of a session on real sockets.
            if !self.reports.asked.contains(&INDEX_OBJECT) {
                self.want_report(now, INDEX_OBJECT);
            }
            return;
        }
        if self.still_needs(object) {
            self.want_report(now, object);
        }
    }

    /// The index is here: chunks that went by before it are wanted again,
    /// and a receiver that joined a running session says what it needs.
    pub(super) fn index_arrived(&mut self, now: Instant) {
        let seen = std::mem::take(&mut self.reports.seen);
        for c in seen {
            if self.still_needs(c) {
                self.want_report(now, c);
            }
        }
        if self.late {
            self.report_now(now);
        }
    }

    /// A visit of `object` began: whatever was promised for it is on the air.
    pub(super) fn visit_began(&mut self, object: u32) {
        let r = &mut self.reports;
        r.echoed.remove(&object);
        if r.asked.contains(&object) {
            r.asked.retain(|&o| o != object);
            r.ask_gap = Duration::ZERO;
        }
    }

    /// The sender's echo of the repairs it scheduled.
    pub(super) fn on_repairs(&mut self, list: &[(u32, u32)]) {
        for &(object, symbols) in list {
            if !self.still_needs(object) {
                continue;
            }
            let e = &mut self.reports.echoed;
            if e.len() >= MAX_ECHOED && !e.contains_key(&object) {
                continue;
            }
            let w = e.entry(object).or_insert(0);
            *w = (*w).max(symbols);
        }
        // What it promised waits for its visit, which may queue behind
        // other repairs: ask again only if none came long after (the visit
        // went by unheard), not at the short gap of an unanswered report.
        let promised = self
            .reports
            .asked
            .iter()
            .any(|&o| self.still_needs(o) && !self.unanswered(o));
        if promised {
            let wait = self.promise_wait();
            let r = &mut self.reports;
            r.ask_again = r.ask_again.map(|t| t.max(self.clock + wait));
        }
    }

    fn want_report(&mut self, now: Instant, object: u32) {
        let min_gap = self.cfg.status_interval / 4;
        let r = &mut self.reports;
        if !r.nack.contains(&object) {
            r.nack.push(object);
        }
        if r.nack_at.is_none() {
            let earliest = r.last.map_or(now, |t| t + min_gap);
            r.nack_at = Some((now + r.draw_backoff()).max(earliest));
        }
    }

    fn still_needs(&self, object: u32) -> bool {
        if object == INDEX_OBJECT {
            return self.index.is_none();
        }
        self.states.get(object as usize) == Some(&ChunkState::Needed)
    }

    /// Symbols this receiver still lacks of `object`, which it needs.
    pub(super) fn deficit(&self, object: u32) -> u32 {
        if let Some(a) = self.assemblies.get(&object) {
            return a.k.saturating_sub(a.symbols.len() as u32);
        }
        let Some(a) = &self.announce else { return 0 };
        let s = a.symbol_size as usize;
        let len = if object == INDEX_OBJECT {
            a.index_len as usize
        } else {
            self.index
                .as_ref()
                .and_then(|i| i.entries.get(object as usize))
                .and_then(|e| e.data.frame())
                .map_or(0, |f| f.len as usize)
        };
        source_symbols(len, s)
    }

    /// Objects of the pending deficit report that are still unanswered.
    pub(super) fn nack_objects(&self) -> impl Iterator<Item = u32> + '_ {
        self.reports
            .nack
            .iter()
            .copied()
            .filter(|&o| self.unanswered(o))
    }

    /// Needed, not on the air, and not promised in the sender's echo.
    fn unanswered(&self, o: u32) -> bool {
        self.still_needs(o)
            && self.current_object != Some(o)
            && self
                .reports
                .echoed
                .get(&o)
                .is_none_or(|&w| w < self.deficit(o))
    }

    /// Whether a status is due now; a deficit report that the sender's echo
    /// (or a visit on the air) has answered is dropped here, counted.
    pub(super) fn report_due(&mut self, now: Instant) -> bool {
        if self.acked || self.ended {
            return false;
        }
        if self.reports.ask_again.is_some_and(|t| now >= t) {
            self.reports.ask_again = None;
            for o in std::mem::take(&mut self.reports.asked) {
                // No visit of it came: a promise heard for it is stale (its
                // visit went by unheard, or never came).
                self.reports.echoed.remove(&o);
                if self.unanswered(o) {
                    self.want_report(now, o);
                }
            }
        }
        if self.reports.urgent.is_some_and(|t| now >= t) {
            return true;
        }
        if self.durable {
            return self.reports.urgent.is_none()
                && self
                    .reports
                    .last
                    .is_none_or(|t| now >= t + self.done_retry());
        }
        if self.reports.nack_at.is_some_and(|t| now >= t) {
            if self.nack_objects().next().is_some() {
                return true;
            }
            self.stats.suppressed += 1;
            // Silent on a promise: if no visit of the object follows long
            // after, ask after all.
            let waiting: Vec<u32> = self
                .reports
                .nack
                .iter()
                .copied()
                .filter(|&o| self.still_needs(o) && self.current_object != Some(o))
                .collect();
            if !waiting.is_empty() {
                let at = now + self.promise_wait();
                let r = &mut self.reports;
                for o in waiting {
                    if !r.asked.contains(&o) {
                        r.asked.push(o);
                    }
                }
                r.ask_again = Some(r.ask_again.map_or(at, |t| t.max(at)));
            }
            self.reports.nack_at = None;
            self.reports.nack.clear();
        }
        now >= self.reports.next_heartbeat
    }

    /// A status went out at `now`.
    pub(super) fn reported(&mut self, now: Instant) {
        let asked: Vec<u32> = self.nack_objects().collect();
        self.await_answer(now, asked);
        let r = &mut self.reports;
        r.urgent = None;
        r.nack_at = None;
        r.nack.clear();
        r.last = Some(now);
        r.next_heartbeat = r.next_beat(now);
        self.stats.reports += 1;
    }

    /// How long a promised repair may take before it counts as gone by
    /// unheard: long, because it may queue behind many others, and longer
    /// in a large group, whose re-asks would add up.
    fn promise_wait(&self) -> Duration {
        let base = (self.reports.backoff * 4).max(self.cfg.status_interval);
        (base * MAX_ASK_DOUBLINGS).max(self.reports.heartbeat / 4)
    }

    /// Waits for an echo or a visit of `objects`; asks again if neither
    /// comes. The echo comes back within a round trip of the sender hearing
    /// a report, and a promised visit soon after; a few backoffs without
    /// either mean something was lost.
    fn await_answer(&mut self, now: Instant, objects: Vec<u32>) {
        if objects.is_empty() {
            return;
        }
        let base = (self.reports.backoff * 4).max(self.cfg.status_interval);
        let r = &mut self.reports;
        r.ask_gap = (r.ask_gap * 2).clamp(base, base * MAX_ASK_DOUBLINGS);
        for o in objects {
            if !r.asked.contains(&o) {
                r.asked.push(o);
            }
        }
        r.ask_again = Some(now + r.ask_gap);
    }

    /// When the next status may be due.
    pub(super) fn next_report(&self) -> Option<Instant> {
        if self.acked || self.ended {
            return None;
        }
        let r = &self.reports;
        if self.durable {
            return r
                .urgent
                .or_else(|| Some(r.last.map_or(r.next_heartbeat, |t| t + self.done_retry())));
        }
        [r.urgent, r.nack_at, r.ask_again, Some(r.next_heartbeat)]
            .into_iter()
            .flatten()
            .min()
    }

    /// How long a done receiver waits for its acknowledgement before it
    /// says done again: long enough that the whole group's retries stay
    /// within [`SPREAD_BUDGET`], never longer than a heartbeat.
    fn done_retry(&self) -> Duration {
        self.spread()
            .max(self.cfg.status_interval)
            .min(self.reports.heartbeat.max(self.cfg.status_interval))
    }
}
