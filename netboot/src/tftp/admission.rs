//! Caps on concurrent transfers: in total, and per client address.
//!
//! A transfer costs little (a small state machine, a share of the bytes in
//! flight), but a stranger sending read requests from thousands of ports
//! would otherwise make thousands of them; one client address may hold a
//! few (firmware probes the size, then fetches), the server a bounded number.
//!
//! A client's address and port is one transfer however often it repeats its
//! request: a repetition shares the first one's place (the shard keeps one
//! transfer per port anyway), so a retransmitted RRQ from a client at its cap
//! is never refused. No clock and no sockets: a mutex-guarded count that each
//! running transfer holds a [`Permit`] of, like the flight budget.
//!
//! The table also remembers which shard a client's address and port was
//! routed to while it holds a place (see [`Permit::route`]), so that a
//! repeated request reaches the shard that holds the first one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

/// Requests from one address and port that may be in hand at once (the
/// running transfer and a repetition on its way to the shard); more are
/// dropped, so one port repeating itself costs a bounded amount of work.
const MAX_REQUESTS_PER_PORT: u32 = 2;

/// The transfers one server may run at once.
#[derive(Debug)]
pub struct TransferCaps {
    max_total: usize,
    max_per_client: usize,
    inner: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    /// Requests in hand per client address and port.
    peers: HashMap<SocketAddr, Peer>,
    /// Distinct ports per client address.
    clients: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Peer {
    /// Requests in hand.
    requests: u32,
    /// The shard its requests go to, once one was chosen.
    route: Option<usize>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server runs as many transfers as it may.
    ServerFull,
    /// This client address runs as many transfers as it may.
    ClientFull,
    /// This address and port has requests in hand already: a burst of
    /// repetitions, dropped without an answer.
    Repeated,
}

impl TransferCaps {
    /// At most `max_total` transfers, `max_per_client` per client address
    /// (each at least one).
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(TransferCaps {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            inner: Mutex::default(),
        })
    }

    /// A place for a request from `peer`, held until the permit is dropped.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Permit, Refused> {
        let mut held = self.lock();
        match held.peers.get_mut(&peer) {
            Some(p) if p.requests >= MAX_REQUESTS_PER_PORT => return Err(Refused::Repeated),
            Some(p) => p.requests += 1,
            None => {
                if held.peers.len() >= self.max_total {
                    return Err(Refused::ServerFull);
                }
                let ports = held.clients.entry(peer.ip()).or_insert(0);
                if *ports >= self.max_per_client {
                    return Err(Refused::ClientFull);
                }
                *ports += 1;
                held.peers.insert(
                    peer,
                    Peer {
                        requests: 1,
                        route: None,
                    },
                );
            }
        }
        Ok(Permit {
            caps: self.clone(),
            peer,
        })
    }

    /// Client addresses and ports holding a place now.
    pub fn in_use(&self) -> usize {
        self.lock().peers.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request's place under the [`TransferCaps`], given back on drop.
#[derive(Debug)]
pub struct Permit {
    caps: Arc<TransferCaps>,
    peer: SocketAddr,
}

impl Permit {
    /// The shard this client address and port was routed to by an earlier
    /// request still in hand, if any.
    pub fn route(&self) -> Option<usize> {
        self.caps.lock().peers.get(&self.peer).and_then(|p| p.route)
    }

    /// Routes this client address and port to `shard` for as long as any
    /// of its requests holds a place.
    pub fn set_route(&self, shard: usize) {
        if let Some(p) = self.caps.lock().peers.get_mut(&self.peer) {
            p.route = Some(shard);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.caps.lock();
        let Some(p) = held.peers.get_mut(&self.peer) else {
            return;
        };
        p.requests -= 1;
        if p.requests > 0 {
            return;
        }
        held.peers.remove(&self.peer);
        let ip = self.peer.ip();
        if let Some(ports) = held.clients.get_mut(&ip) {
            *ports -= 1;
            if *ports == 0 {
                held.clients.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[test]
    fn per_client_cap_refuses_a_new_port_but_not_a_repeated_request() {
        let caps = TransferCaps::new(10, 2);
        let a1 = caps.admit(at([10, 0, 0, 1], 1000)).unwrap();
        let a2 = caps.admit(at([10, 0, 0, 1], 1001)).unwrap();
        assert_eq!(
            caps.admit(at([10, 0, 0, 1], 1002)).unwrap_err(),
            Refused::ClientFull
        );
        // Another client is not affected.
        let b = caps.admit(at([10, 0, 0, 2], 1000)).unwrap();
        // The same port again shares its place, once.
        let again = caps.admit(at([10, 0, 0, 1], 1000)).unwrap();
        assert_eq!(
            caps.admit(at([10, 0, 0, 1], 1000)).unwrap_err(),
            Refused::Repeated
        );
        assert_eq!(caps.in_use(), 3);
        drop(a1);
        assert_eq!(caps.in_use(), 3, "the repetition still holds the place");
        assert_eq!(
            caps.admit(at([10, 0, 0, 1], 1002)).unwrap_err(),
            Refused::ClientFull
        );
        drop(again);
        let a3 = caps.admit(at([10, 0, 0, 1], 1002)).unwrap();
        drop((a2, a3, b));
        assert_eq!(caps.in_use(), 0);
        assert!(caps.lock().clients.is_empty(), "no address left behind");
    }

    #[test]
    fn a_route_lasts_while_the_port_holds_a_place() {
        let caps = TransferCaps::new(10, 2);
        let first = caps.admit(at([10, 0, 0, 1], 1000)).unwrap();
        assert_eq!(first.route(), None);
        first.set_route(3);
        let again = caps.admit(at([10, 0, 0, 1], 1000)).unwrap();
        assert_eq!(again.route(), Some(3), "a repetition meets its first");
        let other = caps.admit(at([10, 0, 0, 1], 1001)).unwrap();
        assert_eq!(other.route(), None, "another port is routed on its own");
        drop(first);
        assert_eq!(again.route(), Some(3));
        drop(again);
        let later = caps.admit(at([10, 0, 0, 1], 1000)).unwrap();
        assert_eq!(later.route(), None, "forgotten with the last place");
        drop((other, later));
    }

    #[test]
    fn total_cap_counts_every_client() {
        let caps = TransferCaps::new(3, 8);
        let held: Vec<Permit> = (0..3)
            .map(|i| caps.admit(at([10, 0, 0, i], 69)).unwrap())
            .collect();
        assert_eq!(
            caps.admit(at([10, 0, 0, 9], 69)).unwrap_err(),
            Refused::ServerFull
        );
        drop(held);
        assert!(caps.admit(at([10, 0, 0, 9], 69)).is_ok());
    }
}
