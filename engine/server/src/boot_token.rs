//! Per-target, per-boot tokens: what the iPXE script of MAC X carries on
//! the kernel command line, so that the enrollment token never crosses
//! netboot.
//!
//! A token is minted without storing anything: it names the MAC, the
//! moment it was issued and the pending task it boots for, under a keyed
//! BLAKE3 tag with the server's `boot.key`. That is why a DHCP answer, a
//! retried script fetch or a server restart costs nothing and loses
//! nothing. It is one-time because a claim records its issue time per MAC
//! and only a later-issued token can claim again; it expires after the
//! configured lifetime. Pure functions, time as an input.

use rackcast_engine::image::{from_hex, hex};
use rackcast_engine::sched::api::{JobId, Millis};
use rackcast_engine::sched::MacAddr;

/// The prefix that tells a boot token from the enrollment token (hex).
const PREFIX: &str = "rcb1";

/// What a boot token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BootToken {
    /// The target it is for.
    pub mac: MacAddr,
    /// When it was issued, unix ms.
    pub issued: Millis,
    /// The task it boots for: job and task index, if any.
    pub task: Option<(JobId, u32)>,
}

/// Why a boot token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// Not a boot token at all, or its tag does not verify.
    #[error("the boot token is not one this server issued")]
    Forged,
    /// Issued for another MAC.
    #[error("the boot token was issued to {issued_to}, not {claimed}")]
    OtherMac {
        /// Its MAC.
        issued_to: MacAddr,
        /// The MAC that presented it.
        claimed: MacAddr,
    },
    /// Older than the lifetime.
    #[error("the boot token expired {ago_s} s ago (lifetime {ttl_s} s): boot the target again")]
    Expired {
        /// Seconds past its end.
        ago_s: u64,
        /// The lifetime, seconds.
        ttl_s: u64,
    },
    /// This token (or a later one) was claimed already.
    #[error("the boot token was claimed already (a second registration with one boot's token)")]
    Claimed,
    /// The target's pending task is not the one it was issued for.
    #[error("the boot token was issued for {issued}, but the target's pending task is {now}")]
    OtherTask {
        /// What it was issued for.
        issued: String,
        /// What is pending now.
        now: String,
    },
}

impl BootToken {
    /// The token's text, tagged with `key`.
    pub fn mint(&self, key: &[u8; 32]) -> String {
        let body = self.body();
        let tag = blake3::keyed_hash(key, body.as_bytes());
        format!("{body}-{}", hex(&tag.as_bytes()[..16]))
    }

    /// Parses `text` if it looks like a boot token; `None` if it is
    /// something else (the enrollment token).
    pub fn looks_like(text: &str) -> bool {
        text.starts_with(PREFIX) && text.as_bytes().get(PREFIX.len()) == Some(&b'-')
    }

    /// Checks the tag under `key` and returns what the token says.
    pub fn verify(text: &str, key: &[u8; 32]) -> Result<BootToken, Refusal> {
        let (body, tag) = text.rsplit_once('-').ok_or(Refusal::Forged)?;
        let tag = from_hex(tag).ok_or(Refusal::Forged)?;
        let want = blake3::keyed_hash(key, body.as_bytes());
        // Constant-time: compare whole hashes of the two tags.
        let eq = tag.len() == 16 && blake3::hash(&tag) == blake3::hash(&want.as_bytes()[..16]);
        if !eq {
            return Err(Refusal::Forged);
        }
        let mut f = body.split('-');
        let (Some(PREFIX), Some(mac), Some(issued), Some(job), Some(task), None) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(Refusal::Forged);
        };
        let mac = from_hex(mac)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(MacAddr)
            .ok_or(Refusal::Forged)?;
        let issued = issued.parse().map_err(|_| Refusal::Forged)?;
        let job: u64 = job.parse().map_err(|_| Refusal::Forged)?;
        let task: u32 = task.parse().map_err(|_| Refusal::Forged)?;
        Ok(BootToken {
            mac,
            issued,
            task: (job != 0).then_some((JobId(job), task)),
        })
    }

    /// Whether `self` may be claimed by `claimed` at `now`, given the issue
    /// time of the last claimed token (`last_claim`, 0 for none), the
    /// target's pending task and the lifetime.
    pub fn check(
        &self,
        claimed: MacAddr,
        now: Millis,
        last_claim: Millis,
        pending: Option<(JobId, u32)>,
        ttl_ms: Millis,
    ) -> Result<(), Refusal> {
        if self.mac != claimed {
            return Err(Refusal::OtherMac {
                issued_to: self.mac,
                claimed,
            });
        }
        if now > self.issued.saturating_add(ttl_ms) {
            return Err(Refusal::Expired {
                ago_s: (now - self.issued - ttl_ms) / 1000,
                ttl_s: ttl_ms / 1000,
            });
        }
        if self.issued <= last_claim {
            return Err(Refusal::Claimed);
        }
        if self.task != pending {
            let show = |t: Option<(JobId, u32)>| match t {
                Some((j, t)) => format!("job {j} task {}", t + 1),
                None => "none".to_string(),
            };
            return Err(Refusal::OtherTask {
                issued: show(self.task),
                now: show(pending),
            });
        }
        Ok(())
    }

    fn body(&self) -> String {
        let (job, task) = self.task.map_or((0, 0), |(j, t)| (j.0, t));
        format!("{PREFIX}-{}-{}-{job}-{task}", hex(&self.mac.0), self.issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);
    const TTL: Millis = 3_600_000;

    fn token() -> BootToken {
        BootToken {
            mac: A,
            issued: 1_000_000,
            task: Some((JobId(3), 1)),
        }
    }

    #[test]
    fn a_minted_token_verifies_and_says_what_it_was_minted_with() {
        let t = token().mint(&KEY);
        assert!(BootToken::looks_like(&t), "{t}");
        assert_eq!(BootToken::verify(&t, &KEY), Ok(token()));
        assert!(!BootToken::looks_like(&hex(&[0xab; 32])));
    }

    #[test]
    fn any_changed_field_or_another_key_is_refused_as_forged() {
        let t = token().mint(&KEY);
        assert_eq!(BootToken::verify(&t, &[8; 32]), Err(Refusal::Forged));
        // Claim the token for B by editing its MAC: the tag no longer fits.
        let edited = t.replace(&hex(&A.0), &hex(&B.0));
        assert_eq!(BootToken::verify(&edited, &KEY), Err(Refusal::Forged));
        let later = t.replace("-1000000-", "-9000000-");
        assert_eq!(BootToken::verify(&later, &KEY), Err(Refusal::Forged));
        for junk in [
            "",
            "rcb1-",
            "rcb1-zz",
            "rcb1-a-b-c-d-e-f",
            &t[..t.len() - 2],
        ] {
            assert_eq!(
                BootToken::verify(junk, &KEY),
                Err(Refusal::Forged),
                "{junk}"
            );
        }
    }

    #[test]
    fn claims_are_bound_to_mac_time_task_and_once() {
        let t = token();
        let pending = Some((JobId(3), 1));
        assert_eq!(t.check(A, 1_000_500, 0, pending, TTL), Ok(()));
        assert!(matches!(
            t.check(B, 1_000_500, 0, pending, TTL),
            Err(Refusal::OtherMac { .. })
        ));
        assert!(matches!(
            t.check(A, 1_000_000 + TTL + 5_000, 0, pending, TTL),
            Err(Refusal::Expired { ago_s: 5, .. })
        ));
        // Claimed once: the same token, or an earlier one, cannot claim again.
        assert_eq!(
            t.check(A, 1_000_500, 1_000_000, pending, TTL),
            Err(Refusal::Claimed)
        );
        assert!(matches!(
            t.check(A, 1_000_500, 0, Some((JobId(4), 0)), TTL),
            Err(Refusal::OtherTask { .. })
        ));
    }
}
