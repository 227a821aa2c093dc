//! The driver configuration the emulator tests share; the emulators
//! themselves are `rackcast_tests::emu`.

use std::time::Duration;

use rackcast_bmc::{BmcAddr, BmcConfig, Credentials};
pub use rackcast_tests::emu::{free_tcp_port, free_udp_port, self_signed, tool, PASSWORD, USER};

/// A config for `addr` with the emulators' login (or `password`).
pub fn config(addr: BmcAddr, password: &str, insecure: bool, timeout: Duration) -> BmcConfig {
    BmcConfig {
        addr,
        credentials: Some(Credentials {
            user: USER.into(),
            password: password.into(),
        }),
        insecure,
        mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        wol_from: None,
        timeout,
    }
}
