//! The kernel's path MTU towards a client, read from a throwaway socket
//! connected to it (connecting a UDP socket sends nothing; it only picks the
//! route, whose MTU the kernel then reports, including what ICMP "packet
//! too big" taught it).

use std::io;
use std::net::{IpAddr, SocketAddr};

/// The path MTU from `bind_ip` towards `peer`, over IPv4 or IPv6.
pub fn path_mtu(bind_ip: IpAddr, peer: SocketAddr) -> io::Result<u32> {
    let probe = std::net::UdpSocket::bind((bind_ip, 0))?;
    probe.connect(peer)?;
    let mtu = match peer {
        SocketAddr::V4(_) => {
            nix::sys::socket::getsockopt(&probe, nix::sys::socket::sockopt::IpMtu)?
        }
        SocketAddr::V6(_) => ipv6_mtu(&probe)?,
    };
    u32::try_from(mtu).map_err(|_| io::Error::other(format!("path MTU {mtu}")))
}

/// `getsockopt(IPPROTO_IPV6, IPV6_MTU)` on a connected socket. Written by
/// hand because nix (0.29 and 0.31) has `IP_MTU` but no `IPV6_MTU`, and
/// socket2 has neither.
#[allow(unsafe_code)]
fn ipv6_mtu(sock: &std::net::UdpSocket) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut mtu: nix::libc::c_int = 0;
    let mut len = std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: the descriptor is open for the duration of the call (borrowed
    // from `sock`), and `mtu`/`len` are a valid, writable c_int and its size,
    // which is what the kernel writes for IPV6_MTU.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::IPPROTO_IPV6,
            nix::libc::IPV6_MTU,
            (&mut mtu as *mut nix::libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_mtu_on_both_families() {
        let v4 = path_mtu("127.0.0.1".parse().unwrap(), "127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(v4 >= 1280, "lo IPv4 MTU {v4}");
        // IPv6 may be disabled in a container; only then is there no answer.
        match path_mtu("::1".parse().unwrap(), "[::1]:9".parse().unwrap()) {
            Ok(v6) => assert!(v6 >= 1280, "lo IPv6 MTU {v6}"),
            Err(e) if std::net::UdpSocket::bind("[::1]:0").is_err() => {
                eprintln!("skipping the IPv6 half: no IPv6 here ({e})")
            }
            Err(e) => panic!("IPv6 path MTU: {e}"),
        }
    }
}
