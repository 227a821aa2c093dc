//! What the sender sends next: the index when a fresh report lacks it, then
//! repairs (the lowest chunk first), then the carousel; and what it takes
//! from a report to decide that.

use super::*;

impl<S: FrameSource> Sender<S> {
    /// Takes the needs of receiver `id`'s latest status, if it is a pace
    /// setter: its deficits become repairs, chunks it still needs after their
    /// visit go back on the carousel. Whatever the status says about an
    /// object sent since it was written is stale and ignored: acting on it
    /// would re-send blind. Costs the size of the status, never the group's.
    pub(super) fn apply_report(&mut self, id: u64) {
        let Some(r) = self.receivers.get(&id) else {
            return;
        };
        if !r.setter || r.status.done {
            return;
        }
        let st = r.status.clone();
        // What it says of the object on the air now is half a visit old.
        let on_air = self.visit.map(|(o, _)| o);
        let fresh = |visit_end: &HashMap<u32, u64>, c: u32| {
            on_air != Some(c) && visit_end.get(&c).is_some_and(|&e| st.highest_seq > e)
        };
        let mut raised = false;
        if !st.has_index {
            let index_fresh = on_air != Some(INDEX_OBJECT)
                && self
                    .visit_end
                    .get(&INDEX_OBJECT)
                    .is_none_or(|&e| st.highest_seq > e);
            if index_fresh && !self.index_wanted {
                self.index_wanted = true;
                raised = true;
            }
            self.echo_repairs |= raised;
            return;
        }
        for &(c, d) in &st.deficits {
            if d == 0 || !self.is_framed(c) || !fresh(&self.visit_end, c) {
                continue;
            }
            let d = d.min(self.chunk_k(c));
            let w = self.repairs.entry(c).or_insert(0);
            // Echoed when the plan grows; a receiver that missed the echo
            // asks again (backing off) until the visit comes.
            if d > *w {
                *w = d;
                raised = true;
            }
        }
        let n = self.index.entries.len() as u32;
        let mut ranges: Vec<(u32, u32)> = st.needed.clone();
        if st.needed_truncated {
            let from = st.needed.last().map_or(0, |&(a, k)| a.saturating_add(k));
            ranges.push((from, n.saturating_sub(from)));
        }
        for (a, k) in ranges {
            for c in a..a.saturating_add(k).min(n) {
                if fresh(&self.visit_end, c)
                    && self.is_framed(c)
                    && !self.repairs.contains_key(&c)
                    && !st.deficits.iter().any(|&(d, _)| d == c)
                {
                    self.carousel.insert(c);
                }
            }
        }
        self.echo_repairs |= raised;
    }

    /// The repairs echo: the index if wanted, then each chunk's largest
    /// reported deficit, lowest chunks first, as many as fit.
    pub(super) fn repairs_echo(&self) -> Vec<(u32, u32)> {
        let max = wire::max_list_entries(self.cfg.symbol_size);
        let index = self.index_wanted.then(|| {
            (
                INDEX_OBJECT,
                source_symbols(self.index_bytes.len(), self.cfg.symbol_size),
            )
        });
        index
            .into_iter()
            .chain(self.repairs.iter().map(|(&c, &w)| (c, w)))
            .take(max)
            .collect()
    }

    /// Chooses the next object to visit; false when nothing is due now.
    pub(super) fn plan_visit(&mut self, now: Instant) -> Result<bool, CastError> {
        let index_due = self
            .last_index_visit
            .is_none_or(|t| now >= t + self.cfg.revisit_after);
        // The index goes out once, then again only when a fresh report
        // lacks it (or while nobody has reported); receivers still to report
        // have been listening all along.
        let index_wanted = self.index_wanted
            || self.receivers.is_empty()
            || !self.visit_end.contains_key(&INDEX_OBJECT);
        let index_now = index_wanted && index_due;
        if self.phase == Phase::Waiting && !index_now {
            self.idle_until = Some(now + self.cfg.announce_interval);
            return Ok(false);
        }
        // Running, an index asked for again within `revisit_after` waits
        // while chunks go on: idling here held a group for an announce
        // interval each time a slow receiver missed the index again.
        // With nothing else to send meanwhile, wake when it is due.
        let index_wake = self
            .last_index_visit
            .filter(|_| index_wanted && !index_due)
            .map(|t| t + self.cfg.revisit_after);
        if index_now {
            self.last_index_visit = Some(now);
            self.index_wanted = false;
            self.stats.index_visits += 1;
            let k = source_symbols(self.index_bytes.len(), self.cfg.symbol_size);
            self.load(INDEX_OBJECT)?;
            self.visit = Some((INDEX_OBJECT, k + 1 + k / 8));
            return Ok(true);
        }
        if self.framed.is_empty() || self.setters == 0 {
            // Nobody to send to: look again when a status arrives (it
            // clears the wait) or at the next announce.
            self.idle_until = Some(now + self.cfg.announce_interval);
            return Ok(false);
        }
        let cooldown = &self.cooldown;
        let cool_until = |c: u32| cooldown.get(&c).copied().filter(|&t| now < t);
        let mut earliest: Option<Instant> = None;
        let mut wait = |t: Instant| earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
        // Repairs first, lowest chunk first: a receiver holding a chunk in
        // part frees its memory soonest.
        let mut pick: Option<(u32, u32, bool)> = None;
        for (&c, &w) in &self.repairs {
            match cool_until(c) {
                Some(t) => wait(t),
                None => {
                    pick = Some((c, w, true));
                    break;
                }
            }
        }
        if pick.is_none() {
            let mut unneeded = Vec::new();
            let order = self
                .carousel
                .range(self.cursor..)
                .chain(self.carousel.range(..self.cursor));
            for &c in order {
                if let Some(t) = cool_until(c) {
                    wait(t);
                    continue;
                }
                if !self.anyone_needs(c) {
                    unneeded.push(c);
                    continue;
                }
                pick = Some((c, 0, false));
                break;
            }
            for c in unneeded {
                self.carousel.remove(&c);
            }
        }
        let Some((chunk, want, repair)) = pick else {
            // Wait for a cooldown to pass, or for a report (which ends the
            // wait); look again at the next announce regardless.
            let again = now + self.cfg.announce_interval;
            let again = index_wake.map_or(again, |t| t.min(again));
            self.idle_until = Some(earliest.map_or(again, |t| t.min(again)));
            return Ok(false);
        };
        let k = self.chunk_k(chunk);
        self.repairs.remove(&chunk);
        let whole = self.carousel.remove(&chunk);
        let want = if whole { k } else { want.clamp(1, k) };
        if repair {
            self.stats.repair_visits += 1;
        } else {
            if chunk < self.cursor || self.stats.passes == 0 {
                self.stats.passes += 1;
            }
            self.cursor = chunk + 1;
        }
        // A whole visit adds one symbol beyond the margin, so a receiver
        // that lost no more than the typical share completes from it; a
        // repair, sized for the neediest, adds the margin alone.
        let extra = if whole { 1 } else { 0 };
        let send = ((want as f64 * (1.0 + self.margin)).ceil() as u32 + extra)
            .min(k + self.fec.repair_count(k));
        let send_time = Duration::from_secs_f64(
            send as f64 * (self.cfg.symbol_size + wire::OVERHEAD) as f64 / self.pacer.rate() as f64,
        );
        self.cooldown
            .insert(chunk, now + send_time + self.cfg.revisit_after);
        self.load(chunk)?;
        self.visit = Some((chunk, send));
        Ok(true)
    }

    /// Whether some pace setter may still need `chunk`: one that has not
    /// said what it needs (no index yet in its last status) may.
    fn anyone_needs(&self, chunk: u32) -> bool {
        self.receivers
            .values()
            .any(|r| r.setter && (!r.status.has_index || Self::needs(r, chunk)))
    }

    fn is_framed(&self, chunk: u32) -> bool {
        self.framed.binary_search(&chunk).is_ok()
    }

    fn chunk_k(&self, chunk: u32) -> u32 {
        source_symbols(self.frame_len(chunk), self.cfg.symbol_size)
    }
}
