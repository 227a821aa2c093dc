//! A key-less attacker on the segment: records a session's packets from
//! inside a test namespace, then sprays them back at the group.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rackcast_cast_net::{receiver_socket, NetConfig};

/// Most packets recorded (bounded memory: ~1.5 KB each).
const MAX_RECORDED: usize = 40_000;

/// Moves the calling thread into namespace `host` and opens a socket on
/// the group there, the way a receiver would.
fn socket_in(host: &str, group: SocketAddrV4) -> UdpSocket {
    let ns = std::fs::File::open(format!("/var/run/netns/{host}")).expect("namespace file");
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let iface = rackcast_types::Interface::lookup("eth0").expect("eth0 in the namespace");
    let sock = receiver_socket(&NetConfig {
        group,
        iface_addr: iface.ipv4,
        ttl: 1,
        buffer: 8 << 20,
    })
    .expect("group socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    sock
}

/// A thread running until `stop()`.
pub struct Task<T> {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<T>,
}

impl<T> Task<T> {
    pub fn stop(self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("task thread")
    }
}

/// Records every datagram on the group in `host` until stopped (at most
/// `limit` long).
pub fn record(host: &str, group: SocketAddrV4, limit: Duration) -> Task<Vec<Vec<u8>>> {
    let stop = Arc::new(AtomicBool::new(false));
    let (host, flag) = (host.to_string(), stop.clone());
    let handle = std::thread::spawn(move || {
        let sock = socket_in(&host, group);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        while !flag.load(Ordering::Relaxed) && start.elapsed() < limit {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if got.len() < MAX_RECORDED {
                    got.push(buf[..n].to_vec());
                }
            }
        }
        got
    });
    Task { stop, handle }
}

/// Sends `packets` to the group from `host`, `per_sec` a second, in a loop,
/// until stopped (at most `limit` long). Returns how many were sent.
pub fn replay(
    host: &str,
    group: SocketAddrV4,
    packets: Vec<Vec<u8>>,
    per_sec: u32,
    limit: Duration,
) -> Task<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let (host, flag) = (host.to_string(), stop.clone());
    let handle = std::thread::spawn(move || {
        let sock = socket_in(&host, group);
        let _ = sock.set_multicast_loop_v4(false);
        let start = Instant::now();
        let mut sent = 0u64;
        // Bursts of a hundredth of a second's worth.
        let burst = (per_sec / 100).max(1) as usize;
        while !flag.load(Ordering::Relaxed) && start.elapsed() < limit && !packets.is_empty() {
            for _ in 0..burst {
                let p = &packets[sent as usize % packets.len()];
                let _ = sock.send_to(p, group);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    });
    Task { stop, handle }
}
