//! Full-DHCP address pool and leases, persisted as a small JSON state file so
//! a restarted server hands every client the address it had.
//!
//! The state file is written whole to a temporary file, synced, renamed over
//! the old one and the directory synced, so a crash leaves the old file or
//! the new one. A file that does not parse is moved aside at start (with a
//! warning) and the server starts with no leases rather than not at all.
//!
//! A DECLINE takes an address out of the pool for a while, so only the
//! client the address is leased or offered to may send one (anyone else
//! could empty the pool by declining every address), and at most
//! [`MAX_DECLINED`] addresses are held out at once.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::MacAddr;
use crate::error::{Error, Result};

/// How long an offered (not yet requested) address is held for its client.
const OFFER_HOLD_SECS: u64 = 60;
/// How long a declined address is kept out of the pool.
const DECLINE_HOLD_SECS: u64 = 600;
/// Declined addresses held out of the pool at once; the one due back
/// soonest makes room for a new one.
pub const MAX_DECLINED: usize = 64;

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

    /// A DECLINE from `mac`: someone else uses `ip`; keep it out of the
    /// pool for a while. Honoured (true) only when `ip` is leased or offered
    /// to `mac`.
    pub fn decline(&mut self, now: u64, mac: MacAddr, ip: Ipv4Addr) -> bool {
        if self.by_mac.get(&mac).is_none_or(|l| l.ip != ip) {
            return false;
        }
        self.release(mac, ip);
        self.declined.retain(|_, until| *until > now);
        if self.declined.len() >= MAX_DECLINED && !self.declined.contains_key(&ip) {
            let soonest = self
                .declined
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(ip, _)| *ip);
            if let Some(old) = soonest {
                self.declined.remove(&old);
            }
        }
        self.declined.insert(ip, now + DECLINE_HOLD_SECS);
        true
    }

    /// Addresses held out of the pool after a DECLINE (expired ones
    /// included until the next DECLINE prunes them).
    pub fn declined_len(&self) -> usize {
        self.declined.len()
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
        // Every entry checked before any is taken: a bad file changes nothing.
        let leases = stored
            .leases
            .into_iter()
            .map(|l| {
                Ok(Lease {
                    mac: MacAddr::parse(&l.mac).map_err(|e| bad(e.to_string()))?,
                    ip: l.ip,
                    expires: l.expires,
                    bound: true,
                })
            })
            .collect::<Result<Vec<Lease>>>()?;
        for l in leases {
            self.put(l);
        }
        Ok(())
    }

    /// Loads the state file if it exists. A file that does not parse is
    /// renamed to `<name>.corrupt-<unix seconds>` with a warning and the
    /// table stays empty; its new path is returned.
    pub fn load(&mut self, path: &Path) -> Result<Option<PathBuf>> {
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        let reason = match std::str::from_utf8(&text) {
            Ok(text) => match self.restore_json(text, path) {
                Ok(()) => return Ok(None),
                Err(e) => e,
            },
            Err(e) => Error::LeaseFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        };
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".corrupt-{secs}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|e| Error::io(path, e))?;
        tracing::warn!(
            "{reason}; moved to {} and starting with no leases",
            aside.display()
        );
        Ok(Some(aside))
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

/// Writes `text` to `path` through a synced temporary file and a rename,
/// then syncs the directory so the rename itself survives a power cut.
/// The file is 0600 (who holds which address is nobody else's business),
/// whatever mode an earlier file had.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    // A temporary file a crash left keeps its old mode when reopened.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
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
    fn lease_file_is_written_0600_even_over_a_wider_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        std::fs::write(&path, "{}").unwrap();
        std::fs::write(path.with_extension("tmp"), "junk").unwrap();
        for p in [path.clone(), path.with_extension("tmp")] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_atomic(&path, "{\"leases\":[]}").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "lease file mode {mode:o}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"leases\":[]}");
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
        assert!(t.decline(0, B, b));
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

    #[test]
    fn declines_only_from_the_holder_and_bounded() {
        let mut t = LeaseTable::new(
            Ipv4Addr::new(10, 9, 0, 0),
            Ipv4Addr::new(10, 9, 3, 255),
            3600,
            HashMap::new(),
        )
        .unwrap();
        let a = t.offer(0, A, None).unwrap();
        assert!(!t.decline(0, B, a), "B holds no lease on A's address");
        assert!(!t.decline(0, A, Ipv4Addr::new(10, 9, 0, 77)), "not A's");
        assert_eq!(t.declined_len(), 0);
        assert_eq!(t.lease_of(A).unwrap().ip, a);
        // One client declining address after address holds at most
        // MAX_DECLINED of them out of the pool.
        let mut declined = Vec::new();
        for i in 0..(MAX_DECLINED as u64 * 3) {
            let ip = t.offer(i, A, None).unwrap();
            assert!(t.decline(i, A, ip));
            assert!(t.declined_len() <= MAX_DECLINED);
            declined.push(ip);
        }
        assert_eq!(t.declined_len(), MAX_DECLINED);
        // The oldest declines made room (and were offered again); the
        // newest are held.
        let now = MAX_DECLINED as u64 * 3;
        let newest = &declined[declined.len() - MAX_DECLINED..];
        assert!(newest.iter().all(|ip| !t.usable(now, B, *ip)));
        let evicted: Vec<_> = declined.iter().filter(|ip| !newest.contains(ip)).collect();
        assert!(!evicted.is_empty());
        assert!(evicted.iter().all(|ip| t.usable(now, B, **ip)));
    }

    #[test]
    fn a_corrupt_lease_file_is_moved_aside_and_leases_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.json");
        for bad in [
            &b"{\"version\":1,\"leases\":[{\"mac\":\"zz\""[..],
            b"{\"version\":1,\"leases\":[{\"mac\":\"nope\",\"ip\":\"10.9.0.10\",\"expires\":9}]}",
            b"\xff\xfe garbage",
        ] {
            std::fs::write(&path, bad).unwrap();
            let mut t = table();
            let aside = t.load(&path).unwrap().expect("moved aside");
            assert!(!path.exists());
            assert_eq!(std::fs::read(&aside).unwrap(), bad, "kept for the operator");
            let name = aside.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("leases.json.corrupt-"), "{name}");
            assert!(t.lease_of(A).is_none() && t.lease_of(B).is_none());
            std::fs::remove_file(&aside).unwrap();
        }
        // The table works and saves over the moved file's place.
        let mut t = table();
        let a = t.offer(0, A, None).unwrap();
        t.request(0, A, a);
        t.save(&path).unwrap();
        let mut u = table();
        assert_eq!(u.load(&path).unwrap(), None);
        assert_eq!(u.lease_of(A).unwrap().ip, a);
        assert!(!path.with_extension("tmp").exists());
    }
}
