//! IPMI through ipmitool against ipmi_sim, whose chassis script keeps the
//! power and boot device in files and logs every call.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use rackcast_bmc::{boot_into, connect, BmcError, BootDevice, PowerOp, PowerState};

use crate::emu::{config, free_udp_port, tool, PASSWORD};
use rackcast_tests::emu::IpmiSim;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn power_actions_reach_the_chassis() {
    let Some(sim) = IpmiSim::start() else { return };
    let bmc = connect(&config(
        sim.addr().parse().unwrap(),
        PASSWORD,
        false,
        TIMEOUT,
    ))
    .unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::Off);
    bmc.power(PowerOp::On).unwrap();
    assert_eq!(sim.file("power"), "1");
    assert_eq!(bmc.state().unwrap(), PowerState::On);
    bmc.power(PowerOp::Off).unwrap();
    assert_eq!(sim.file("power"), "0");
    assert_eq!(bmc.state().unwrap(), PowerState::Off);
    // Off, a cycle is a power on.
    bmc.power(PowerOp::Cycle).unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::On);
    assert_eq!(sim.calls().last().unwrap(), "get power");
    let before = sim.calls().len();
    // On, a cycle is off, then on once the chassis reads off (as Ironic
    // does: `chassis power cycle` is optional and many BMCs refuse it).
    bmc.power(PowerOp::Cycle).unwrap();
    let calls = sim.calls();
    let after = &calls[before..];
    let off = after.iter().position(|c| c == "set power 0");
    let on = after.iter().position(|c| c == "set power 1");
    assert!(off.is_some() && off < on, "{after:?}");
    assert_eq!(bmc.state().unwrap(), PowerState::On);
}

#[test]
fn boot_once_and_boot_into_reach_the_chassis() {
    let Some(sim) = IpmiSim::start() else { return };
    let bmc = connect(&config(
        sim.addr().parse().unwrap(),
        PASSWORD,
        false,
        TIMEOUT,
    ))
    .unwrap();
    bmc.boot_once(BootDevice::Pxe).unwrap();
    assert_eq!(sim.file("boot"), "pxe");
    assert!(
        sim.calls().iter().any(|c| c == "set boot pxe"),
        "{:?}",
        sim.calls()
    );
    bmc.boot_once(BootDevice::Disk).unwrap();
    // ipmi_sim names the "disk" device "default".
    assert_eq!(sim.file("boot"), "default");
    // boot_into: the boot device first, then the power on (the chassis is off).
    let before = sim.calls().len();
    boot_into(bmc.as_ref(), BootDevice::Pxe).unwrap();
    let calls = sim.calls();
    let after = &calls[before..];
    let boot = after.iter().position(|c| c == "set boot pxe");
    let on = after.iter().position(|c| c == "set power 1");
    assert!(boot.is_some() && boot < on, "{after:?}");
    assert_eq!(sim.file("power"), "1");
}

#[test]
fn a_wrong_password_is_an_auth_error_that_never_shows_it() {
    let Some(sim) = IpmiSim::start() else { return };
    let wrong = "wr0ng-Pa55-xyz";
    let bmc = connect(&config(sim.addr().parse().unwrap(), wrong, false, TIMEOUT)).unwrap();
    let start = Instant::now();
    let e = bmc.power(PowerOp::On).unwrap_err();
    assert!(matches!(e, BmcError::Auth(_)), "{e:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let text = format!("{e} {e:?} {bmc:?}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    assert_eq!(sim.file("power"), "0");
}

#[test]
fn an_unreachable_ipmi_bmc_fails_within_the_timeout() {
    if tool("ipmitool", "ipmitool").is_none() {
        return;
    }
    let timeout = Duration::from_secs(2);
    // A bound socket that never answers, and a closed port (ipmitool
    // ignores the ICMP port unreachable): both cost ipmitool ~6 s alone.
    let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ports = [mute.local_addr().unwrap().port(), free_udp_port()];
    for port in ports {
        let addr = format!("ipmi://127.0.0.1:{port}").parse().unwrap();
        let bmc = connect(&config(addr, PASSWORD, false, timeout)).unwrap();
        let start = Instant::now();
        let e = bmc.state().unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, BmcError::Unreachable(_)), "{e:?}");
        assert!(e.is_transient());
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(1),
            "{took:?}"
        );
    }
}
