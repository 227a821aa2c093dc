//! Who is asking for a MAC's iPXE script: the kernel's neighbour table
//! says which hardware address an on-segment peer has. The script carries
//! a one-time token for that MAC, so a peer whose address belongs to
//! another machine is refused it.
//!
//! This stops a stranger on the provisioning segment from fetching another
//! target's token by naming its MAC. It does not stop a stranger who also
//! forges that MAC at layer 2 (see docs/threat-model.md).

use std::net::IpAddr;

use serde::Deserialize;

use crate::arch::MacAddr;

/// `script_peer`: which peers may fetch `/ipxe/<mac>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScriptPeer {
    /// Only the machine whose neighbour entry has that MAC (and loopback).
    /// A routed peer has no neighbour entry and is refused.
    #[default]
    Segment,
    /// Anyone (targets behind a DHCP relay): the one-time token still
    /// refuses a second claim, but cannot stop the first.
    Any,
}

/// The verdict on a script request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCheck {
    /// Serve it.
    Allowed,
    /// The peer's neighbour entry names another MAC.
    OtherMac(MacAddr),
    /// The peer has no neighbour entry: not on this segment.
    Unknown,
}

impl ScriptPeer {
    /// Checks `peer` asking for `mac`'s script against `table` (the text
    /// of `/proc/net/arp`).
    pub fn check(self, peer: IpAddr, mac: MacAddr, table: &str) -> PeerCheck {
        let peer = peer.to_canonical();
        if self == ScriptPeer::Any || peer.is_loopback() {
            return PeerCheck::Allowed;
        }
        match lookup(table, peer) {
            Some(m) if m == mac => PeerCheck::Allowed,
            Some(m) => PeerCheck::OtherMac(m),
            None => PeerCheck::Unknown,
        }
    }

    /// [`ScriptPeer::check`] against this host's table.
    pub fn check_host(self, peer: IpAddr, mac: MacAddr) -> PeerCheck {
        if self == ScriptPeer::Any || peer.to_canonical().is_loopback() {
            return PeerCheck::Allowed;
        }
        // The calling thread's namespace: /proc/net follows the process's
        // first thread, which may sit in another network namespace.
        let table = std::fs::read_to_string("/proc/thread-self/net/arp")
            .or_else(|_| std::fs::read_to_string("/proc/net/arp"))
            .unwrap_or_default();
        self.check(peer, mac, &table)
    }
}

/// The complete entry for `ip` in `/proc/net/arp` text.
fn lookup(table: &str, ip: IpAddr) -> Option<MacAddr> {
    // Columns: IP address, HW type, Flags, HW address, Mask, Device.
    // Flag 0x2 (ATF_COM) marks a resolved entry.
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, hw) = (f.first()?, f.get(2)?, f.get(3)?);
        if addr.parse::<IpAddr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        (flags & 0x2 != 0).then(|| MacAddr::parse(hw).ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "IP address       HW type     Flags       HW address            Mask     Device
10.0.0.7         0x1         0x2         52:54:00:00:00:0a     *        br0
10.0.0.8         0x1         0x0         00:00:00:00:00:00     *        br0
10.0.0.9         0x1         0x2         52:54:00:00:00:0b     *        br0
";
    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);

    #[test]
    fn only_the_machine_with_that_mac_gets_its_script() {
        let p = ScriptPeer::Segment;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.check(ip("10.0.0.7"), A, TABLE), PeerCheck::Allowed);
        assert_eq!(
            p.check(ip("10.0.0.9"), A, TABLE),
            PeerCheck::OtherMac(MacAddr([0x52, 0x54, 0, 0, 0, 0xb]))
        );
        // Incomplete and missing entries are not on the segment.
        assert_eq!(p.check(ip("10.0.0.8"), A, TABLE), PeerCheck::Unknown);
        assert_eq!(p.check(ip("10.9.0.1"), A, TABLE), PeerCheck::Unknown);
        // IPv4-mapped peers of a dual-stack listener are looked up as IPv4.
        assert_eq!(p.check(ip("::ffff:10.0.0.7"), A, TABLE), PeerCheck::Allowed);
        assert_eq!(p.check(ip("127.0.0.1"), A, ""), PeerCheck::Allowed);
        assert_eq!(
            ScriptPeer::Any.check(ip("10.9.0.1"), A, TABLE),
            PeerCheck::Allowed
        );
    }
}
