//! Full-DHCP address pool and leases, persisted as a small JSON state file so
//! a restarted server hands every client the address it had.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::arch::MacAddr;
use crate::error::{Error, Result};

/// How long an offered (not yet requested) address is held for its client.
const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address is kept out of the pool.
const DECLINE_HOLD_SECS: u64 = 600;

/// One client's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The client.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Unix time the lease (or the offer hold) ends.
    pub expires: u64,
    /// True once the client has REQUESTed it (an ACKed lease).
    pub bound: bool,
}

/// The pool, reservations and leases; all times are unix seconds passed in.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    start: u32,
    end: u32,
    lease_secs: u32,
    reservations: HashMap<MacAddr, Ipv4Addr>,
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    declined: HashMap<Ipv4Addr, u64>,
    dirty: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    version: u32,
    leases: Vec<StoredLease>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredLease {
    mac: String,
    ip: Ipv4Addr,
    expires: u64,
}

impl LeaseTable {
    /// A table for the pool `start..=end` with `lease_secs` leases.
    pub fn new(
        start: Ipv4Addr,
        end: Ipv4Addr,
        lease_secs: u32,
        reservations: HashMap<MacAddr, Ipv4Addr>,
    ) -> Result<Self> {
        let (s, e) = (u32::from(start), u32::from(end));
        if s > e {
            return Err(Error::Config(format!("empty pool {start}-{end}")));
        }
        Ok(LeaseTable {
            start: s,
            end: e,
            lease_secs: lease_secs.max(60),
            reservations,
            by_mac: HashMap::new(),
            by_ip: HashMap::new(),
            declined: HashMap::new(),
            dirty: false,
        })
    }

    /// Lease duration granted.
    pub fn lease_secs(&self) -> u32 {
        self.lease_secs
    }

    /// The lease of `mac`, if any.
    pub fn lease_of(&self, mac: MacAddr) -> Option<Lease> {
        self.by_mac.get(&mac).copied()
    }

    /// Picks an address to offer `mac`: its reservation, its previous
    /// address, the one it asks for, or the first free one.
    pub fn offer(
        &mut self,
        now: u64,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let ip = if let Some(ip) = self.reservations.get(&mac) {
            *ip
        } else if let Some(l) = self
            .by_mac
            .get(&mac)
            .filter(|l| self.usable(now, mac, l.ip))
        {
            l.ip
        } else if let Some(ip) =
            requested.filter(|ip| self.in_pool(*ip) && self.usable(now, mac, *ip))
        {
            ip
        } else {
            self.first_free(now, mac)?
        };
        let keep_bound = self
            .by_mac
            .get(&mac)
            .filter(|l| l.ip == ip && l.bound && l.expires > now)
            .copied();
        let lease = keep_bound.unwrap_or(Lease {
            mac,
            ip,
            expires: now + OFFER_HOLD_SECS,
            bound: false,
        });
        self.put(lease);
        Some(ip)
    }

    /// A REQUEST for `ip`: binds the lease and returns true, or false (NAK).
    pub fn request(&mut self, now: u64, mac: MacAddr, ip: Ipv4Addr) -> bool {
        let ok = match self.reservations.get(&mac) {
            Some(r) => *r == ip,
            None => self.in_pool(ip) && self.usable(now, mac, ip),
        };
        if ok {
            self.put(Lease {
                mac,
                ip,
                expires: now + u64::from(self.lease_secs),
                bound: true,
            });
            self.dirty = true;
        }
        ok
    }

    /// A RELEASE: the address goes back to the pool.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if self.by_mac.get(&mac).is_some_and(|l| l.ip == ip) {
            self.by_mac.remove(&mac);
            self.by_ip.remove(&ip);
            self.dirty = true;
        }
    }

    /// A DECLINE: someone else uses `ip`; keep it out of the pool for a while.
    pub fn decline(&mut self, now: u64, mac: MacAddr, ip: Ipv4Addr) {
        self.release(mac, ip);
        self.declined.insert(ip, now + DECLINE_HOLD_SECS);
    }

    /// True (once) after a change that must be persisted.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The bound leases as JSON text.
    pub fn to_json(&self) -> String {
        let mut leases: Vec<StoredLease> = self
            .by_mac
            .values()
            .filter(|l| l.bound)
            .map(|l| StoredLease {
                mac: l.mac.to_string(),
                ip: l.ip,
                expires: l.expires,
            })
            .collect();
        leases.sort_by_key(|l| u32::from(l.ip));
        serde_json::to_string_pretty(&Stored { version: 1, leases }).unwrap_or_default()
    }

    /// Restores bound leases from [`LeaseTable::to_json`] text.
    pub fn restore_json(&mut self, text: &str, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::LeaseFile {
            path: path.to_path_buf(),
            reason,
        };
        let stored: Stored = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if stored.version != 1 {
            return Err(bad(format!("unknown version {}", stored.version)));
        }
        for l in stored.leases {
            let mac = MacAddr::parse(&l.mac).map_err(|e| bad(e.to_string()))?;
            self.put(Lease {
                mac,
                ip: l.ip,
                expires: l.expires,
                bound: true,
            });
        }
        Ok(())
    }

    /// Loads the state file if it exists.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        match std::fs::read_to_string(path) {
            Ok(text) => self.restore_json(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Writes the state file atomically (temp file + rename), so a crash
    /// mid-write never loses every lease.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_json())
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }

    /// Free for `mac`: not leased to another live client, not reserved for
    /// another, not recently declined.
    fn usable(&self, now: u64, mac: MacAddr, ip: Ipv4Addr) -> bool {
        if self.declined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        if self.reservations.iter().any(|(m, r)| *r == ip && *m != mac) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(m) if *m == mac => true,
            Some(m) => self.by_mac.get(m).is_none_or(|l| l.expires <= now),
        }
    }

    fn first_free(&self, now: u64, mac: MacAddr) -> Option<Ipv4Addr> {
        // Never-used addresses first, so an expired client likely gets its
        // old address back later; then expired ones.
        let mut expired = None;
        for n in self.start..=self.end {
            let ip = Ipv4Addr::from(n);
            if !self.usable(now, mac, ip) {
                continue;
            }
            if !self.by_ip.contains_key(&ip) {
                return Some(ip);
            }
            expired.get_or_insert(ip);
        }
        expired
    }

    fn put(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.insert(lease.mac, lease) {
            if old.ip != lease.ip {
                self.by_ip.remove(&old.ip);
            }
        }
        if let Some(prev) = self.by_ip.insert(lease.ip, lease.mac) {
            if prev != lease.mac {
                self.by_mac.remove(&prev);
            }
        }
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const R: MacAddr = MacAddr([2, 0, 0, 0, 0, 3]);

    fn table() -> LeaseTable {
        let mut res = HashMap::new();
        res.insert(R, Ipv4Addr::new(10, 9, 0, 200));
        LeaseTable::new(
            Ipv4Addr::new(10, 9, 0, 10),
            Ipv4Addr::new(10, 9, 0, 11),
            3600,
            res,
        )
        .unwrap()
    }

    #[test]
    fn offer_request_renew_and_exhaustion() {
        let mut t = table();
        let a = t.offer(0, A, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 9, 0, 10));
        assert!(t.request(1, A, a));
        assert!(t.take_dirty());
        let b = t.offer(1, B, Some(a)).unwrap();
        assert_ne!(a, b, "a bound address is not handed to another");
        assert!(!t.request(1, B, a));
        assert!(
            t.offer(2, MacAddr([9; 6]), None).is_none(),
            "pool of two exhausted"
        );
        assert!(t.request(1000, A, a), "renewal");
        assert_eq!(t.lease_of(A).unwrap().expires, 1000 + 3600);
        assert_eq!(t.offer(5000, R, None), Some(Ipv4Addr::new(10, 9, 0, 200)));
        assert!(!t.request(5000, R, a));
    }

    #[test]
    fn expired_leases_are_reclaimed_and_declines_held() {
        let mut t = table();
        let a = t.offer(0, A, None).unwrap();
        t.request(0, A, a);
        let b = t.offer(0, B, None).unwrap();
        t.decline(0, B, b);
        assert!(t.offer(10, MacAddr([9; 6]), None).is_none());
        assert_eq!(
            t.offer(700, MacAddr([9; 6]), None),
            Some(b),
            "decline hold over"
        );
        assert_eq!(
            t.offer(4000, MacAddr([8; 6]), None),
            Some(a),
            "expired lease reclaimed"
        );
    }

    #[test]
    fn leases_survive_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        let mut t = table();
        let a = t.offer(0, A, None).unwrap();
        t.request(0, A, a);
        t.offer(0, B, None).unwrap(); // an offer is not persisted
        t.save(&path).unwrap();
        let mut u = table();
        u.load(&path).unwrap();
        assert_eq!(u.lease_of(A).unwrap().ip, a);
        assert!(u.lease_of(B).is_none());
        assert_eq!(u.offer(10, A, None), Some(a));
        assert!(u
            .restore_json("{\"version\":9,\"leases\":[]}", &path)
            .is_err());
    }
}
