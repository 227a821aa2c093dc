//! A network interface's IPv4 address and MTU, looked up once by name.

use std::net::Ipv4Addr;

/// What rackcast needs to know of an interface it serves or joins on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    /// Its first IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Its MTU (Linux sysfs); 1500 where sysfs does not say.
    pub mtu: u32,
}

/// An interface that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// The interface list could not be read.
    #[error("listing network interfaces: {0}")]
    List(#[source] nix::Error),
    /// No such interface, or it has no IPv4 address.
    #[error("interface {0} has no IPv4 address")]
    NoIpv4(String),
}

impl Interface {
    /// Looks `name` up.
    pub fn lookup(name: &str) -> Result<Interface, InterfaceError> {
        let ipv4 = nix::ifaddrs::getifaddrs()
            .map_err(InterfaceError::List)?
            .filter(|a| a.interface_name == name)
            .find_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
            .ok_or_else(|| InterfaceError::NoIpv4(name.to_string()))?;
        Ok(Interface {
            ipv4,
            mtu: Interface::mtu(name).unwrap_or(1500),
        })
    }

    /// The MTU of `name` from sysfs, or `None` when it has none.
    pub fn mtu(name: &str) -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_address_and_an_mtu() {
        let lo = Interface::lookup("lo").unwrap();
        assert_eq!(lo.ipv4, Ipv4Addr::LOCALHOST);
        assert!(lo.mtu >= 1280, "{}", lo.mtu);
    }

    #[test]
    fn missing_interface_is_named() {
        let e = Interface::lookup("rc-no-such0").unwrap_err();
        assert!(e.to_string().contains("rc-no-such0"), "{e}");
    }
}
