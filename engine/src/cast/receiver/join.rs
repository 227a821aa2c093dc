//! Joining a session: which announce a receiver may follow.
//!
//! A pinned receiver (`ReceiverConfig::session`) follows its session's first
//! announce. An unpinned one cannot tell a live sender from a recording of
//! an old session under the same key: both verify. So it asks. To every
//! sender it hears announcing (at most [`MAX_CANDIDATES`], the least recently
//! heard replaced first) it sends a join, a status with `joining` set and its
//! fresh nonce, and it adopts the first session whose announce echoes that
//! nonce under the MAC. A recording cannot contain a nonce drawn after it was
//! made. The announce that adopts the session also pins the sender's
//! address; anything from elsewhere is dropped from then on.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Receiver, Status};
use crate::cast::wire::{Announce, Header};

/// Most senders a receiver asks at once. A spray of replays from many
/// addresses can only take these slots in turn; the live sender's own
/// announces keep winning its slot back every announce interval.
pub const MAX_CANDIDATES: usize = 8;

/// A sender heard announcing before a session was adopted.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    session: u64,
    addr: SocketAddr,
    heard: Instant,
    /// Heard again since the last join went to it: it is still there.
    fresh: bool,
    next_join: Instant,
}

impl Receiver {
    /// An authenticated announce before a session is adopted: adopt it if it
    /// is ours, or remember its sender to ask.
    pub(super) fn before_adoption(
        &mut self,
        now: Instant,
        from: SocketAddr,
        h: &Header,
        payload: &[u8],
    ) {
        if self.cfg.session.is_some_and(|s| s != h.session) {
            self.stats.wrong_session += 1;
            return;
        }
        let Some(a) = self.check_announce(payload) else {
            return;
        };
        if self.cfg.session.is_none() && !a.echoes.contains(&self.cfg.nonce) {
            self.stats.unechoed += 1;
            self.heard_candidate(now, h.session, from);
            return;
        }
        self.adopt(now, from, h, payload, &a);
    }

    fn adopt(&mut self, now: Instant, from: SocketAddr, h: &Header, payload: &[u8], a: &Announce) {
        debug_assert!(a.echoes.contains(&self.cfg.nonce) || self.cfg.session.is_some());
        self.session = Some(h.session);
        self.sender = Some(from);
        self.candidates.clear();
        self.stats.packets += 1;
        self.stats.bytes += payload.len() as u64;
        self.count_seq(now, h.seq);
        self.on_announce(now, payload);
    }

    fn heard_candidate(&mut self, now: Instant, session: u64, addr: SocketAddr) {
        if let Some(c) = self
            .candidates
            .iter_mut()
            .find(|c| c.session == session && c.addr == addr)
        {
            c.heard = now;
            c.fresh = true;
            return;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            let oldest = (0..self.candidates.len())
                .min_by_key(|&i| self.candidates[i].heard)
                .expect("full");
            self.candidates.swap_remove(oldest);
        }
        self.candidates.push(Candidate {
            session,
            addr,
            heard: now,
            fresh: true,
            next_join: now,
        });
    }

    /// When a join is next due.
    pub(super) fn next_join(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter(|c| c.fresh)
            .map(|c| c.next_join)
            .min()
    }

    /// The next join due, if any: a status saying `joining`, with the nonce.
    pub(super) fn poll_join(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
    ) -> Option<(SocketAddr, usize)> {
        let interval = self.cfg.status_interval;
        let c = self
            .candidates
            .iter_mut()
            .find(|c| c.fresh && now >= c.next_join)?;
        c.fresh = false;
        c.next_join = now + interval;
        let (session, to) = (c.session, c.addr);
        let st = Status {
            receiver: self.cfg.id,
            nonce: self.cfg.nonce,
            joining: true,
            highest_seq: self.highest_seq,
            ..Status::default()
        };
        Some((to, self.emit_status(session, &st, buf)))
    }
}
