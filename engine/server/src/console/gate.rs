//! Who may change things from a machine's console: the site's console PIN
//! or a named operator's admin token, typed at iPXE's `login`. Wrong
//! answers are counted per machine and for the whole site, and past a
//! limit every answer is refused for a while, right or wrong, so a PIN
//! cannot be guessed at network speed. Time is an input.

use std::collections::{HashMap, VecDeque};

use rackcast_engine::sched::api::Millis;
use rackcast_engine::sched::api::Role;
use rackcast_engine::sched::MacAddr;

use crate::operators::Caller;

/// How long a wrong answer counts.
pub(crate) const WINDOW_MS: Millis = 10 * 60 * 1000;
/// Wrong answers from one machine within the window before it is locked.
pub(crate) const PER_MACHINE: usize = 5;
/// Wrong answers from all machines within the window before every console
/// is locked (a stranger cycling MAC addresses).
pub(crate) const SITE: usize = 30;
/// Machines with wrong answers remembered at once: past this, the site
/// lock applies (memory stays bounded whatever a stranger sends).
const MACHINES: usize = 4096;

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Authorised: `pin`, or the operator's name.
    Allowed(String),
    /// Wrong PIN or credentials; counted.
    Wrong,
    /// Too many wrong answers: refused without looking, for this long.
    Locked { wait_ms: Millis },
}

/// See the module doc.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// BLAKE3 of the PIN (compared in constant time), when one is set.
    pin: Option<blake3::Hash>,
    wrong: HashMap<MacAddr, VecDeque<Millis>>,
    site: VecDeque<Millis>,
}

impl Gate {
    /// A gate for `pin` (none: operator credentials only).
    pub(crate) fn new(pin: Option<&str>) -> Gate {
        Gate {
            pin: pin.map(|p| blake3::hash(p.as_bytes())),
            ..Gate::default()
        }
    }

    /// Checks `user` and `secret` typed at `mac`'s console at `now`.
    /// `operator` looks up a token's holder. The PIN is taken with any
    /// user name; a token only with its own name (or none).
    pub(crate) fn check(
        &mut self,
        now: Millis,
        mac: MacAddr,
        user: &str,
        secret: &str,
        operator: impl Fn(&str) -> Option<Caller>,
    ) -> Verdict {
        self.forget(now);
        let machine = self.wrong.get(&mac).map_or(0, VecDeque::len);
        if machine >= PER_MACHINE || self.site.len() >= SITE || self.wrong.len() >= MACHINES {
            let oldest = match self.wrong.get(&mac) {
                Some(q) if q.len() >= PER_MACHINE => q.front().copied(),
                _ => self.site.front().copied(),
            };
            let wait_ms = oldest.map_or(WINDOW_MS, |t| (t + WINDOW_MS).saturating_sub(now));
            return Verdict::Locked {
                wait_ms: wait_ms.max(1),
            };
        }
        if let Some(pin) = self.pin {
            if !secret.is_empty() && blake3::hash(secret.as_bytes()) == pin {
                return Verdict::Allowed("pin".into());
            }
        }
        if let Some(c) = operator(secret) {
            if c.role == Role::Admin && (user.is_empty() || user == c.name) {
                return Verdict::Allowed(c.name);
            }
        }
        self.wrong.entry(mac).or_default().push_back(now);
        self.site.push_back(now);
        Verdict::Wrong
    }

    /// Drops wrong answers older than the window.
    fn forget(&mut self, now: Millis) {
        let old = |t: &Millis| t + WINDOW_MS <= now;
        while self.site.front().is_some_and(old) {
            self.site.pop_front();
        }
        self.wrong.retain(|_, q| {
            while q.front().is_some_and(old) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn book(token: &str) -> Option<Caller> {
        match token {
            "rco1-admin" => Some(Caller {
                name: "alice".into(),
                role: Role::Admin,
            }),
            "rco1-viewer" => Some(Caller {
                name: "bob".into(),
                role: Role::Viewer,
            }),
            _ => None,
        }
    }

    #[test]
    fn the_pin_or_an_admin_token_under_its_own_name() {
        let mut g = Gate::new(Some("4321"));
        let a = mac(1);
        assert_eq!(
            g.check(0, a, "", "4321", book),
            Verdict::Allowed("pin".into())
        );
        assert_eq!(
            g.check(0, a, "anyone", "4321", book),
            Verdict::Allowed("pin".into())
        );
        assert_eq!(
            g.check(0, a, "alice", "rco1-admin", book),
            Verdict::Allowed("alice".into())
        );
        assert_eq!(
            g.check(0, a, "", "rco1-admin", book),
            Verdict::Allowed("alice".into())
        );
        // Another's name, a viewer, nothing at all.
        assert_eq!(g.check(0, a, "bob", "rco1-admin", book), Verdict::Wrong);
        assert_eq!(g.check(0, a, "bob", "rco1-viewer", book), Verdict::Wrong);
        assert_eq!(g.check(0, a, "", "", book), Verdict::Wrong);
        // No PIN set: an empty secret never matches one.
        let mut none = Gate::new(None);
        assert_eq!(none.check(0, a, "", "", book), Verdict::Wrong);
        assert_eq!(none.check(0, a, "", "4321", book), Verdict::Wrong);
    }

    #[test]
    fn a_machine_is_locked_after_five_wrong_answers_even_for_the_right_one() {
        let mut g = Gate::new(Some("4321"));
        let a = mac(1);
        for i in 0..PER_MACHINE as u64 {
            assert_eq!(g.check(i * 1000, a, "", "0000", book), Verdict::Wrong);
        }
        let v = g.check(10_000, a, "", "4321", book);
        assert_eq!(
            v,
            Verdict::Locked {
                wait_ms: WINDOW_MS - 10_000
            }
        );
        // Another machine is not affected.
        assert_eq!(
            g.check(10_000, mac(2), "", "4321", book),
            Verdict::Allowed("pin".into())
        );
        // Once the first wrong answer ages out, one more try is allowed.
        assert_eq!(
            g.check(WINDOW_MS, a, "", "4321", book),
            Verdict::Allowed("pin".into())
        );
    }

    #[test]
    fn many_machines_guessing_lock_the_site() {
        let mut g = Gate::new(Some("4321"));
        for i in 0..SITE as u8 {
            assert_eq!(g.check(0, mac(i), "", "bad", book), Verdict::Wrong);
        }
        assert!(matches!(
            g.check(1, mac(200), "", "4321", book),
            Verdict::Locked { .. }
        ));
        assert_eq!(
            g.check(WINDOW_MS, mac(200), "", "4321", book),
            Verdict::Allowed("pin".into())
        );
    }
}
