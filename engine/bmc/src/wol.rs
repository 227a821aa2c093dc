//! Wake-on-LAN: a magic packet (six 0xFF bytes, then the MAC sixteen
//! times) in a UDP datagram to the limited broadcast 255.255.255.255:9.
//! It can only power a machine on, and nothing answers it, so the power
//! state stays unknown.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{Bmc, BmcConfig, BmcError, BootDevice, PowerOp, PowerState};

/// The magic packet that wakes the NIC with address `mac`.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xFF; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

/// The Wake-on-LAN "BMC" of one target.
#[derive(Debug)]
pub(crate) struct Wol {
    mac: [u8; 6],
    from: Option<Ipv4Addr>,
}

/// Where magic packets go: every host on the segment, on the discard port.
const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 9);
/// Sent a few times, a few ms apart, as UDP may drop one.
const REPEAT: usize = 3;
const GAP: Duration = Duration::from_millis(5);

impl Wol {
    pub(crate) fn new(cfg: &BmcConfig) -> Wol {
        Wol {
            mac: cfg.mac,
            from: cfg.wol_from,
        }
    }
}

impl Bmc for Wol {
    fn power(&self, op: PowerOp) -> Result<(), BmcError> {
        match op {
            PowerOp::On => send(self.mac, self.from, BROADCAST),
            PowerOp::Off | PowerOp::Cycle => Err(BmcError::Unsupported(format!(
                "Wake-on-LAN can only power a machine on, not {}: give the target a Redfish or IPMI BMC",
                if op == PowerOp::Off { "off" } else { "cycle it" }
            ))),
        }
    }

    fn state(&self) -> Result<PowerState, BmcError> {
        Ok(PowerState::Unknown)
    }

    fn boot_once(&self, _dev: BootDevice) -> Result<(), BmcError> {
        Err(BmcError::Unsupported(
            "Wake-on-LAN cannot choose the boot device: the target must try the network first (or use a Redfish or IPMI BMC)".into(),
        ))
    }
}

/// Sends the magic packet for `mac` to `dest`, from `from` when given.
/// Bound to an address, Linux sends the limited broadcast out of that
/// address's interface, so the packet reaches the provisioning segment
/// rather than the default route's.
fn send(mac: [u8; 6], from: Option<Ipv4Addr>, dest: SocketAddrV4) -> Result<(), BmcError> {
    let fail = |what: &str, e: std::io::Error| {
        BmcError::Unreachable(format!("Wake-on-LAN to {dest}: {what}: {e}"))
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| fail("socket", e))?;
    sock.set_broadcast(true)
        .map_err(|e| fail("SO_BROADCAST", e))?;
    if let Some(ip) = from {
        sock.bind(&SockAddr::from(SocketAddrV4::new(ip, 0)))
            .map_err(|e| {
                BmcError::Unsupported(format!(
                    "cannot send Wake-on-LAN from {ip} (is it an address of this machine?): {e}"
                ))
            })?;
    }
    let packet = magic_packet(mac);
    let to = SockAddr::from(dest);
    for i in 0..REPEAT {
        if i > 0 {
            std::thread::sleep(GAP);
        }
        sock.send_to(&packet, &to).map_err(|e| fail("send", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn the_packet_is_six_ff_then_sixteen_macs() {
        let p = magic_packet(MAC);
        assert_eq!(p.len(), 6 + 16 * 6);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &MAC, "copy {i}");
        }
    }

    #[test]
    fn three_packets_reach_an_explicit_destination() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let std::net::SocketAddr::V4(dest) = rx.local_addr().unwrap() else {
            panic!("bound to IPv4")
        };
        send(MAC, Some(Ipv4Addr::LOCALHOST), dest).unwrap();
        let mut buf = [0u8; 200];
        for _ in 0..REPEAT {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &magic_packet(MAC)[..]);
        }
    }

    #[test]
    fn only_power_on_is_supported() {
        let cfg = BmcConfig {
            addr: crate::BmcAddr::Wol,
            credentials: None,
            insecure: false,
            mac: MAC,
            wol_from: None,
            timeout: Duration::from_secs(1),
        };
        let w = Wol::new(&cfg);
        assert!(matches!(
            w.power(PowerOp::Off),
            Err(BmcError::Unsupported(_))
        ));
        assert!(matches!(
            w.power(PowerOp::Cycle),
            Err(BmcError::Unsupported(_))
        ));
        assert!(matches!(
            w.boot_once(BootDevice::Pxe),
            Err(BmcError::Unsupported(_))
        ));
        assert_eq!(w.state().unwrap(), PowerState::Unknown);
    }

    #[test]
    fn a_foreign_source_address_is_refused_clearly() {
        // TEST-NET-3: never an address of this machine.
        let e = send(MAC, Some(Ipv4Addr::new(203, 0, 113, 7)), BROADCAST).unwrap_err();
        assert!(e.to_string().contains("203.0.113.7"), "{e}");
    }
}
