//! Proxy-DHCP offer latency under a steady stream of PXE DISCOVERs.
//!
//! Sends `--rate` DISCOVERs per second for `--secs` seconds (x64 UEFI PXE
//! clients, a different MAC each, broadcast to port 67 on `--iface`) and
//! times each OFFER by its xid. Prints one line: sent, answered, and latency
//! percentiles. Run it where the server's replies reach it (the benchmark runs
//! it in a network namespace on a veth facing the server).
//!
//! `cargo run --release -p rackcast-netboot --example dhcp_load -- --iface IF`

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

struct Args {
    iface: Option<String>,
    server: Ipv4Addr,
    client_port: u16,
    rate: u32,
    secs: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        iface: None,
        server: Ipv4Addr::BROADCAST,
        client_port: 68,
        rate: 1000,
        secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--iface" => a.iface = Some(val()?),
            "--server" => a.server = val()?.parse().map_err(|e| format!("--server: {e}"))?,
            "--client-port" => {
                a.client_port = val()?.parse().map_err(|e| format!("--client-port: {e}"))?
            }
            "--rate" => a.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--secs" => a.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: dhcp_load [--iface IF] [--server IP] [--client-port 68] [--rate 1000] [--secs 10]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.rate == 0 || a.secs == 0 {
        return Err("--rate and --secs must be positive".into());
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let sock = match bind(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("binding port {}: {e}", args.client_port);
            std::process::exit(1);
        }
    };
    let total = args.rate as usize * args.secs as usize;
    // Send times in nanoseconds since `start` (0: not sent yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let xid_base: u32 = std::process::id().wrapping_mul(0x9E37_79B9) & 0xFF00_0000;
    let start = Instant::now();

    let rx = {
        let sock = sock.try_clone().expect("clone socket");
        let sent = sent.clone();
        let done = done.clone();
        std::thread::spawn(move || receive(&sock, &sent, &done, xid_base, start))
    };

    let period = Duration::from_secs(1) / args.rate;
    let dst = SocketAddr::V4(SocketAddrV4::new(args.server, 67));
    let mut pkt = Vec::with_capacity(300);
    for i in 0..total {
        let due = period * i as u32;
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        discover(&mut pkt, xid_base | i as u32, i as u32);
        let t = start.elapsed().as_nanos() as u64;
        sent[i].store(t.max(1), Ordering::Release);
        if let Err(e) = sock.send_to(&pkt, dst) {
            eprintln!("send: {e}");
        }
    }
    // Late offers still count; give them a second.
    std::thread::sleep(Duration::from_secs(1));
    done.store(true, Ordering::Release);
    let mut lat = rx.join().expect("receiver");
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i] as f64 / 1000.0
    };
    println!(
        "sent {total} answered {} lost {} rate {}/s p50_us {:.1} p90_us {:.1} p99_us {:.1} p999_us {:.1} max_us {:.1}",
        lat.len(),
        total - lat.len(),
        args.rate,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
}

fn bind(args: &Args) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(i) = &args.iface {
        s.bind_device(Some(i.as_bytes()))?;
    }
    s.set_recv_buffer_size(4 << 20)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, args.client_port)).into())?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(s.into())
}

/// Nanosecond latencies of the offers that matched a DISCOVER of ours.
fn receive(
    sock: &UdpSocket,
    sent: &[AtomicU64],
    done: &AtomicBool,
    xid_base: u32,
    start: Instant,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(sent.len());
    let mut seen = vec![false; sent.len()];
    let mut buf = [0u8; 1500];
    // Bounded: the sender sets `done` after its last send plus one second.
    while !done.load(Ordering::Acquire) {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let now = start.elapsed().as_nanos() as u64;
        // BOOTREPLY with our xid.
        if n < 240 || buf[0] != 2 {
            continue;
        }
        let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if xid & 0xFF00_0000 != xid_base {
            continue;
        }
        let i = (xid & 0x00FF_FFFF) as usize;
        if i >= sent.len() || seen[i] {
            continue;
        }
        let t = sent[i].load(Ordering::Acquire);
        if t == 0 {
            continue;
        }
        seen[i] = true;
        lat.push(now.saturating_sub(t));
    }
    lat
}

/// A DISCOVER from an x64 UEFI PXE client; the MAC varies with `n`.
fn discover(out: &mut Vec<u8>, xid: u32, n: u32) {
    out.clear();
    out.extend_from_slice(&[1, 1, 6, 0]);
    out.extend_from_slice(&xid.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x80, 0]); // secs, flags: broadcast
    out.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    let mac = [0x02, 0x00, 0x5e, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    out.extend_from_slice(&mac);
    out.extend_from_slice(&[0; 10]);
    out.extend_from_slice(&[0; 64 + 128]); // sname, file
    out.extend_from_slice(&[99, 130, 83, 99]);
    out.extend_from_slice(&[53, 1, 1]);
    let class = b"PXEClient:Arch:00007:UNDI:003016";
    out.extend_from_slice(&[60, class.len() as u8]);
    out.extend_from_slice(class);
    out.extend_from_slice(&[93, 2, 0, 7]);
    out.extend_from_slice(&[94, 3, 1, 3, 16]);
    out.extend_from_slice(&[97, 17, 0]);
    out.extend_from_slice(&[0x52; 10]);
    out.extend_from_slice(&mac);
    out.push(255);
    if out.len() < 300 {
        out.resize(300, 0); // the BOOTP minimum
    }
}
