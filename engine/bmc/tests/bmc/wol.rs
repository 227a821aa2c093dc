//! Wake-on-LAN across a veth pair between two network namespaces made
//! for the test: the driver, on a thread inside one, broadcasts from its
//! address; a receiver on a thread inside the other must get the magic
//! packet. Needs root and `ip`.

use std::fs::File;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rackcast_bmc::{connect, magic_packet, BmcAddr, BmcConfig, PowerOp};

use crate::emu::tool;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

#[test]
fn the_magic_packet_crosses_a_veth_pair() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: Wake-on-LAN between network namespaces needs root");
        return;
    }
    if tool("ip", "iproute2").is_none() {
        return;
    }
    let ns = Netns::pair();
    let (a, b) = (ns.0[0].clone(), ns.0[1].clone());
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = thread::spawn(move || {
        enter(&b);
        let rx = UdpSocket::bind("0.0.0.0:9").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 200];
        while got.len() < 3 {
            match rx.recv_from(&mut buf) {
                Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
                Err(_) => break,
            }
        }
        got
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let sender = thread::spawn(move || {
        enter(&a);
        let bmc = connect(&BmcConfig {
            addr: BmcAddr::Wol,
            credentials: None,
            insecure: false,
            mac: MAC,
            wol_from: Some(Ipv4Addr::new(10, 213, 9, 1)),
            timeout: Duration::from_secs(2),
        })
        .unwrap();
        bmc.power(PowerOp::On)
    });
    sender.join().unwrap().unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(got.len(), 3, "{got:?}");
    for (p, from) in got {
        assert_eq!(p, magic_packet(MAC));
        assert_eq!(from.ip(), Ipv4Addr::new(10, 213, 9, 1));
    }
}

/// Moves this thread (only) into network namespace `name`.
fn enter(name: &str) {
    let f = File::open(format!("/run/netns/{name}")).unwrap();
    // SAFETY: setns on a valid namespace fd changes this thread's network
    // namespace only; the thread ends with the test.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// Two namespaces joined by a veth pair (10.213.9.1/24, 10.213.9.2/24),
/// deleted on drop (their veth ends go with them).
struct Netns([String; 2]);

impl Netns {
    fn pair() -> Netns {
        let id = std::process::id();
        let ns = Netns([format!("rcwol-a-{id}"), format!("rcwol-b-{id}")]);
        let [a, b] = &ns.0;
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "link", "add", "wa", "netns", a, "type", "veth", "peer", "name", "wb", "netns", b,
        ]);
        for (n, dev, addr) in [(a, "wa", "10.213.9.1/24"), (b, "wb", "10.213.9.2/24")] {
            ip(&["-n", n, "addr", "add", addr, "dev", dev]);
            ip(&["-n", n, "link", "set", dev, "up"]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
