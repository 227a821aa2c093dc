//! What the agent tells the server about its machine, and which interface
//! it reaches the server through.
//!
//! The parsers take text (and the scanners a sysfs root), so they are tested
//! on samples rather than on whatever machine runs the tests.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};

use rackcast_engine::image::probe_source;
use rackcast_engine::sched::api::{DiskInfo, Inventory, NicInfo};

use rackcast_types::MacAddr;

use crate::error::{AgentError, Result};

/// Gathers the inventory of this machine; `disk` (the agent's `--disk`, a
/// file or a device) is listed too when it is not one of the block devices.
pub fn collect(disk: Option<&Path>) -> Inventory {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (cpu, cpus) = parse_cpuinfo(&read("/proc/cpuinfo"));
    let mut disks = scan_block(Path::new("/sys/block"));
    if let Some(d) = disk {
        if let Some(info) = disk_file(d) {
            let canon = std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf());
            if !disks.iter().any(|k| Path::new(&k.path) == canon) {
                disks.push(info);
            }
        }
    }
    let ipv4 = ipv4_by_interface();
    Inventory {
        hostname: hostname(),
        cpu,
        cpus: cpus.max(std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        memory: parse_meminfo(&read("/proc/meminfo")),
        disks,
        nics: scan_net(Path::new("/sys/class/net"), &ipv4),
    }
}

/// CPU model and logical CPU count from `/proc/cpuinfo` text.
pub fn parse_cpuinfo(text: &str) -> (String, u32) {
    let mut count = 0;
    let mut model = String::new();
    let mut fallback = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => count += 1,
            // x86 and most arm64 kernels.
            "model name" if model.is_empty() => model = v.to_string(),
            // Older arm ("Hardware"), s390 / ppc ("cpu", "machine"), riscv ("uarch").
            "Hardware" | "cpu model" | "uarch" | "cpu" | "machine" if fallback.is_empty() => {
                fallback = v.to_string()
            }
            _ => {}
        }
    }
    if model.is_empty() {
        model = fallback;
    }
    (model, count)
}

/// Total memory in bytes from `/proc/meminfo` text (0 when absent).
pub fn parse_meminfo(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| {
            let mut it = v.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            Some(match it.next() {
                Some("kB") | Some("KB") => n * 1024,
                Some("mB") | Some("MB") => n << 20,
                _ => n,
            })
        })
        .unwrap_or(0)
}

/// Block devices under a sysfs `block` directory (normally `/sys/block`):
/// size from `size` (512-byte sectors), serial and model where the kernel
/// knows them. Devices of size 0 (unused loop devices, empty drives) and RAM
/// disks are left out.
pub fn scan_block(sys_block: &Path) -> Vec<DiskInfo> {
    let Ok(dir) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut disks: Vec<DiskInfo> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ram") || name.starts_with("zram") {
                return None;
            }
            let dev = e.path();
            let sectors: u64 = read_trim(&dev.join("size"))?.parse().ok()?;
            if sectors == 0 {
                return None;
            }
            let first = |names: &[&str]| {
                names
                    .iter()
                    .find_map(|n| read_trim(&dev.join(n)).filter(|s| !s.is_empty()))
                    .unwrap_or_default()
            };
            Some(DiskInfo {
                path: format!("/dev/{name}"),
                size: sectors * 512,
                serial: first(&["device/serial", "serial", "device/wwid", "wwid"]),
                model: first(&["device/model", "device/name"]),
            })
        })
        .collect();
    disks.sort_by(|a, b| a.path.cmp(&b.path));
    disks
}

/// The `--disk` itself, as a disk: its path and size (a file's length or a
/// device's).
pub fn disk_file(path: &Path) -> Option<DiskInfo> {
    let f = File::open(path).ok()?;
    let info = probe_source(&f, path).ok()?;
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Some(DiskInfo {
        path: canon.to_string_lossy().into_owned(),
        size: info.size,
        serial: String::new(),
        model: if info.is_block_device {
            String::new()
        } else {
            "file".into()
        },
    })
}

/// Network interfaces under a sysfs `class/net` directory (normally
/// `/sys/class/net`), loopback left out, with the IPv4 addresses in `ipv4`
/// (interface name, address).
pub fn scan_net(sys_net: &Path, ipv4: &[(String, Ipv4Addr)]) -> Vec<NicInfo> {
    let Ok(dir) = std::fs::read_dir(sys_net) else {
        return Vec::new();
    };
    let mut nics: Vec<NicInfo> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let mac = read_trim(&e.path().join("address")).unwrap_or_default();
            // Loopback (type 772) has no identity worth reporting.
            let kind = read_trim(&e.path().join("type")).unwrap_or_default();
            if name == "lo" || kind == "772" {
                return None;
            }
            Some(NicInfo {
                ipv4: ipv4
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, a)| a.to_string())
                    .collect(),
                name,
                mac,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// Every interface's IPv4 addresses, from getifaddrs.
pub fn ipv4_by_interface() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .collect()
}

/// The host name.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| read_trim(Path::new(p)).filter(|s| !s.is_empty()))
        .unwrap_or_default()
}

/// How this machine reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The server's address.
    pub server: SocketAddr,
    /// Our address on the way there (127.0.0.1 for a server on loopback).
    pub local: Ipv4Addr,
    /// The interface holding `local`, when found.
    pub iface: Option<String>,
    /// That interface's MAC, when it has a real one.
    pub mac: Option<MacAddr>,
}

/// Host and port of an `http://host[:port][/path]` URL (plain HTTP only).
pub fn server_host_port(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| AgentError::Config(format!("server URL {url}: {why}"));
    let (rest, default_port) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(r), _) => (r, 443),
        (None, Some(r)) => (r, 80),
        (None, None) => return Err(bad("must start with https:// (or http://)")),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    // [v6]:port, host:port, host
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => default_port,
    };
    Ok((host, port))
}

/// Finds the local IPv4 address (and its interface and MAC) the kernel uses
/// to reach `server_url`: a UDP socket connected there sends nothing, but
/// its local address is the route's source.
pub fn route_to(server_url: &str) -> Result<Route> {
    let (host, port) = server_host_port(server_url)?;
    let server = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| AgentError::Config(format!("resolving {host}: {e}")))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| AgentError::Config(format!("{host} has no IPv4 address")))?;
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| AgentError::Config(format!("opening a UDP socket: {e}")))?;
    sock.connect(server)
        .map_err(|e| AgentError::Config(format!("no route to {server}: {e}")))?;
    let local = match sock.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        Ok(a) => {
            return Err(AgentError::Config(format!(
                "route to {server} leaves from {a}, not IPv4"
            )))
        }
        Err(e) => return Err(AgentError::Config(format!("route to {server}: {e}"))),
    };
    let iface = ipv4_by_interface()
        .into_iter()
        .find(|(_, a)| *a == local)
        .map(|(n, _)| n);
    let mac = iface
        .as_deref()
        .and_then(|n| read_trim(&PathBuf::from(format!("/sys/class/net/{n}/address"))))
        .and_then(|m| MacAddr::parse(&m).ok())
        .filter(MacAddr::is_real);
    Ok(Route {
        server,
        local,
        iface,
        mac,
    })
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
flags\t\t: fpu vme de
processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
";

    const ARM_OLD: &str = "processor\t: 0
BogoMIPS\t: 38.40
Features\t: fp asimd
CPU implementer\t: 0x41
processor\t: 1
BogoMIPS\t: 38.40
processor\t: 2
processor\t: 3

Hardware\t: BCM2835
Revision\t: c03111
";

    #[test]
    fn cpuinfo_x86_model_and_count() {
        assert_eq!(
            parse_cpuinfo(X86),
            ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into(), 2)
        );
    }

    #[test]
    fn cpuinfo_arm_without_model_name_uses_hardware() {
        assert_eq!(parse_cpuinfo(ARM_OLD), ("BCM2835".into(), 4));
        assert_eq!(parse_cpuinfo(""), (String::new(), 0));
    }

    #[test]
    fn meminfo_total_in_bytes() {
        let text = "MemTotal:       16318008 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo(text), 16318008 * 1024);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), 0);
        assert_eq!(parse_meminfo("MemTotal: junk kB\n"), 0);
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn block_devices_with_serials_skipping_empty_loops_and_ram() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path();
        write(&b.join("sda/size"), "1953525168\n");
        write(&b.join("sda/device/model"), "Samsung SSD 870 \n");
        write(&b.join("sda/device/serial"), "S5STNF0R123456\n");
        write(&b.join("nvme0n1/size"), "2000409264\n");
        write(&b.join("nvme0n1/device/serial"), "PHLJ0001\n");
        write(&b.join("nvme0n1/device/model"), "INTEL SSDPE2KX010T8\n");
        write(&b.join("vda/size"), "41943040\n");
        write(&b.join("vda/serial"), "disk-0\n");
        write(&b.join("loop0/size"), "0\n");
        write(&b.join("loop1/size"), "2048\n");
        write(&b.join("ram0/size"), "8192\n");
        write(&b.join("broken/size"), "not a number\n");
        let disks = scan_block(b);
        let paths: Vec<_> = disks.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/dev/loop1", "/dev/nvme0n1", "/dev/sda", "/dev/vda"]
        );
        assert_eq!(
            disks[2],
            DiskInfo {
                path: "/dev/sda".into(),
                size: 1953525168 * 512,
                serial: "S5STNF0R123456".into(),
                model: "Samsung SSD 870".into(),
            }
        );
        assert_eq!(disks[3].serial, "disk-0");
        assert_eq!(disks[0].size, 2048 * 512);
        assert!(scan_block(&b.join("missing")).is_empty());
    }

    #[test]
    fn nics_with_their_ipv4_and_no_loopback() {
        let t = tempfile::tempdir().unwrap();
        let n = t.path();
        write(&n.join("lo/address"), "00:00:00:00:00:00\n");
        write(&n.join("lo/type"), "772\n");
        write(&n.join("eno1/address"), "3c:ec:ef:01:02:03\n");
        write(&n.join("eno1/type"), "1\n");
        write(&n.join("eno2/address"), "3c:ec:ef:01:02:04\n");
        let addrs = vec![
            ("lo".to_string(), Ipv4Addr::LOCALHOST),
            ("eno1".to_string(), Ipv4Addr::new(10, 0, 0, 7)),
            ("eno1".to_string(), Ipv4Addr::new(10, 1, 0, 7)),
        ];
        let nics = scan_net(n, &addrs);
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].name, "eno1");
        assert_eq!(nics[0].mac, "3c:ec:ef:01:02:03");
        assert_eq!(nics[0].ipv4, ["10.0.0.7", "10.1.0.7"]);
        assert!(nics[1].ipv4.is_empty());
    }

    #[test]
    fn a_disk_file_is_listed_with_its_size() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("disk.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let d = disk_file(&p).unwrap();
        assert_eq!(d.size, 4096);
        assert_eq!(d.model, "file");
        assert!(disk_file(&t.path().join("none")).is_none());
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            server_host_port("http://10.0.0.1:8080/").unwrap(),
            ("10.0.0.1".into(), 8080)
        );
        assert_eq!(
            server_host_port("http://deploy.example").unwrap(),
            ("deploy.example".into(), 80)
        );
        assert_eq!(
            server_host_port("http://[::1]:7000/x").unwrap(),
            ("::1".into(), 7000)
        );
        assert_eq!(server_host_port("https://x").unwrap(), ("x".into(), 443));
        assert!(server_host_port("ftp://x").is_err());
        assert!(server_host_port("http://").is_err());
        assert!(server_host_port("http://x:port").is_err());
    }

    #[test]
    fn the_route_to_a_loopback_server_is_loopback() {
        let r = route_to("http://127.0.0.1:7070").unwrap();
        assert_eq!(r.local, Ipv4Addr::LOCALHOST);
        assert!(r.local.is_loopback());
        assert_eq!(r.mac, None, "loopback has no identity");
    }
}
