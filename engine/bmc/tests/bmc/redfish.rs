//! Redfish against sushy-emulator over HTTPS with basic auth.

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use rackcast_bmc::{boot_into, connect, BmcError, BootDevice, PowerOp, PowerState};

use crate::emu::{config, free_tcp_port, PASSWORD};
use rackcast_tests::emu::Sushy;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn power_actions_change_the_power_state() {
    let Some(s) = Sushy::start(true) else { return };
    let bmc = connect(&config(s.addr().parse().unwrap(), PASSWORD, true, TIMEOUT)).unwrap();
    // test:///default's only domain starts running.
    assert_eq!(bmc.state().unwrap(), PowerState::On);
    bmc.power(PowerOp::Off).unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::Off);
    assert_eq!(s.get(&s.system())["PowerState"], "Off");
    // Off again is nothing, not an error.
    bmc.power(PowerOp::Off).unwrap();
    bmc.power(PowerOp::On).unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::On);
    // A cycle (ForceRestart here: sushy offers no PowerCycle) leaves it on.
    bmc.power(PowerOp::Cycle).unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::On);
    // Cycling a machine that is off powers it on.
    bmc.power(PowerOp::Off).unwrap();
    bmc.power(PowerOp::Cycle).unwrap();
    assert_eq!(bmc.state().unwrap(), PowerState::On);
}

#[test]
fn boot_once_sets_the_override_target() {
    let Some(s) = Sushy::start(true) else { return };
    let bmc = connect(&config(s.addr().parse().unwrap(), PASSWORD, true, TIMEOUT)).unwrap();
    let sys = s.system();
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Hdd");
    bmc.boot_once(BootDevice::Pxe).unwrap();
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Pxe");
    bmc.boot_once(BootDevice::Disk).unwrap();
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Hdd");
    // The system named in the address; a redirect (sushy sends the name
    // to the UUID) is not followed: it would lose the PATCH and the login.
    let named = |p: &str| {
        format!("redfish://127.0.0.1:{}{p}", s.port)
            .parse()
            .unwrap()
    };
    let given = connect(&config(named(&sys), PASSWORD, true, TIMEOUT)).unwrap();
    given.boot_once(BootDevice::Pxe).unwrap();
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Pxe");
    let moved = connect(&config(
        named("/redfish/v1/Systems/test"),
        PASSWORD,
        true,
        TIMEOUT,
    ));
    let e = moved.unwrap().boot_once(BootDevice::Disk).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("307 TEMPORARY REDIRECT to {sys}")),
        "{e}"
    );
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Pxe");
    // boot_into: the device, then power on (the machine is off).
    bmc.power(PowerOp::Off).unwrap();
    boot_into(bmc.as_ref(), BootDevice::Pxe).unwrap();
    let now = s.get(&sys);
    assert_eq!(now["Boot"]["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(now["PowerState"], "On");
}

#[test]
fn a_self_signed_certificate_is_refused_unless_insecure() {
    let Some(s) = Sushy::start(true) else { return };
    let bmc = connect(&config(s.addr().parse().unwrap(), PASSWORD, false, TIMEOUT)).unwrap();
    let e = bmc.state().unwrap_err();
    assert!(matches!(e, BmcError::Certificate(_)), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(msg.contains("--bmc-insecure"), "{msg}");
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[test]
fn a_wrong_password_is_an_auth_error_that_never_shows_it() {
    let Some(s) = Sushy::start(true) else { return };
    let wrong = "wr0ng-Pa55-xyz";
    let bmc = connect(&config(s.addr().parse().unwrap(), wrong, true, TIMEOUT)).unwrap();
    let debug = format!("{bmc:?}");
    assert!(!debug.contains(wrong), "{debug}");
    for e in [
        bmc.state().unwrap_err(),
        bmc.power(PowerOp::Off).unwrap_err(),
        bmc.boot_once(BootDevice::Pxe).unwrap_err(),
    ] {
        assert!(matches!(e, BmcError::Auth(_)), "{e:?}");
        assert!(!e.is_transient());
        let text = format!("{e} {e:?}");
        assert!(text.contains("401"), "{text}");
        assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
    }
    // Nothing changed.
    assert_eq!(s.get(&s.system())["PowerState"], "On");
}

#[test]
fn an_unreachable_bmc_fails_within_the_timeout() {
    let timeout = Duration::from_millis(1500);
    let margin = Duration::from_secs(1);
    // Nothing listens: refused at once.
    let closed = format!("redfish://127.0.0.1:{}", free_tcp_port())
        .parse()
        .unwrap();
    // Accepts (the kernel completes the handshake) but never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute = format!(
        "redfish://127.0.0.1:{}",
        silent.local_addr().unwrap().port()
    )
    .parse()
    .unwrap();
    for addr in [closed, mute] {
        let bmc = connect(&config(addr, PASSWORD, true, timeout)).unwrap();
        for call in 0..2 {
            let start = Instant::now();
            let e = match call {
                0 => bmc.state().unwrap_err(),
                _ => bmc.boot_once(BootDevice::Pxe).unwrap_err(),
            };
            let took = start.elapsed();
            assert!(matches!(e, BmcError::Unreachable(_)), "{e:?}");
            assert!(e.is_transient());
            assert!(took < timeout + margin, "took {took:?}: {e}");
        }
    }
    // The silent listener really got the connections.
    silent.set_nonblocking(true).unwrap();
    let (mut c, _) = silent.accept().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut hello = [0u8; 1];
    assert_eq!(c.read(&mut hello).unwrap(), 1, "a TLS ClientHello");
    assert_eq!(hello[0], 0x16);
}
