//! The whole DHCP decision path on arbitrary datagrams, in proxy and full
//! mode, on both ports: it must never panic.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use rackcast_netboot::dhcp::{DhcpConfig, DhcpServer, FullConfig, LeaseTable, Received, ReplyStyle};
use rackcast_netboot::{BootAction, ClientArch, StaticPolicy};

fuzz_target!(|data: &[u8]| {
    let policy = Arc::new(StaticPolicy::with_default(BootAction::IpxeScript("#!ipxe".into())));
    let cfg = |full: bool, style| DhcpConfig {
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        http_base: "http://10.0.0.1:8080".into(),
        style,
        allow_vendor: vec!["Acme".into()],
        full: full.then(|| FullConfig {
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
        }),
        local_boot: vec![ClientArch::X64Uefi],
    };
    let leases = LeaseTable::new(
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 20),
        3600,
        Default::default(),
    )
    .ok();
    let mut servers = [
        DhcpServer::new(cfg(false, ReplyStyle::BootServer), policy.clone(), None),
        DhcpServer::new(cfg(false, ReplyStyle::Bypass), policy.clone(), None),
        DhcpServer::new(cfg(true, ReplyStyle::BootServer), policy, leases),
    ];
    for s in &mut servers {
        for port in [67, 4011] {
            let _ = s.handle(
                0,
                Received {
                    src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
                    local_port: port,
                    data,
                },
            );
        }
    }
});
