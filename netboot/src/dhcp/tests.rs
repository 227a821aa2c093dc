use super::*;
use crate::policy::StaticPolicy;
use dhcproto::v4::UnknownOption;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

struct Req {
    mtype: MessageType,
    vendor: Option<&'static [u8]>,
    arch: Option<u16>,
    user_class: Option<&'static [u8]>,
    opt175: bool,
    guid: Option<Vec<u8>>,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
}

impl Req {
    fn discover(vendor: &'static [u8], arch: u16) -> Self {
        Req {
            mtype: MessageType::Discover,
            vendor: Some(vendor),
            arch: Some(arch),
            user_class: None,
            opt175: false,
            guid: None,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            requested: None,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut m = Message::new(
            self.ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            self.giaddr,
            &MAC,
        );
        m.set_xid(0xdead_beef);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(self.mtype));
        if let Some(v) = self.vendor {
            o.insert(DhcpOption::ClassIdentifier(v.to_vec()));
        }
        if let Some(a) = self.arch {
            o.insert(DhcpOption::ClientSystemArchitecture(a.into()));
        }
        if let Some(u) = self.user_class {
            o.insert(DhcpOption::UserClass(u.to_vec()));
        }
        if self.opt175 {
            o.insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                vec![1, 1, 1],
            )));
        }
        if let Some(g) = &self.guid {
            o.insert(DhcpOption::ClientMachineIdentifier(g.clone()));
        }
        if let Some(r) = self.requested {
            o.insert(DhcpOption::RequestedIpAddress(r));
        }
        m.to_vec().unwrap()
    }
}

fn policy() -> Arc<StaticPolicy> {
    Arc::new(StaticPolicy::with_default(BootAction::IpxeScript(
        "#!ipxe\nexit".into(),
    )))
}

fn server(style: ReplyStyle, policy: Arc<StaticPolicy>) -> DhcpServer {
    server_with_local_boot(style, policy, vec![])
}

fn server_with_local_boot(
    style: ReplyStyle,
    policy: Arc<StaticPolicy>,
    local_boot: Vec<ClientArch>,
) -> DhcpServer {
    DhcpServer::new(
        DhcpConfig {
            server_ip: SERVER,
            http_base: "http://10.77.0.1:8080".into(),
            style,
            allow_vendor: vec!["AcmeBoot".into()],
            full: None,
            local_boot,
        },
        policy,
        None,
    )
}

fn ask(s: &mut DhcpServer, req: &Req, port: u16, src: SocketAddrV4) -> (Decision, Option<Message>) {
    let data = req.bytes();
    let d = s.handle(
        1000,
        Received {
            src,
            local_port: port,
            data: &data,
        },
    );
    let m = d
        .reply
        .as_ref()
        .map(|r| Message::decode(&mut Decoder::new(&r.data)).unwrap());
    (d, m)
}

fn client67() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn vendor_of(m: &Message) -> Vec<u8> {
    match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.clone(),
        _ => vec![],
    }
}

fn fname(m: &Message) -> String {
    String::from_utf8_lossy(m.fname().unwrap_or(&[]))
        .trim_end_matches('\0')
        .to_string()
}

#[test]
fn bios_pxe_gets_boot_server_offer_then_loader_on_4011() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let req = Req::discover(b"PXEClient:Arch:00000:UNDI:002001", 0);
    let (d, m) = ask(&mut s, &req, 67, client67());
    let m = m.expect("proxy offer");
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "proxy never hands out addresses"
    );
    assert_eq!(m.siaddr(), SERVER);
    assert!(
        m.opts().get(OptionCode::VendorExtensions).is_none(),
        "no option 43: ask 4011"
    );
    assert!(m.fname().is_none());
    assert_eq!(vendor_of(&m), b"PXEClient");
    assert_eq!(
        d.reply.unwrap().dst,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );

    let mut req = req;
    req.mtype = MessageType::Request;
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 50);
    let src = SocketAddrV4::new(req.ciaddr, 4011);
    let (d, m) = ask(&mut s, &req, 4011, src);
    let m = m.expect("4011 ack");
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(fname(&m), "undionly.kpxe");
    assert_eq!(
        d.reply.unwrap().dst,
        src,
        "reply to the request's source port"
    );
    assert_eq!(d.client_ip, Some(req.ciaddr));
}

#[test]
fn ipxe_on_4011_from_port_68_gets_reply_to_68() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"PXEClient:Arch:00000:UNDI:002001", 0);
    req.user_class = Some(b"iPXE");
    req.mtype = MessageType::Request;
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 51);
    let src = SocketAddrV4::new(req.ciaddr, 68);
    let (d, m) = ask(&mut s, &req, 4011, src);
    assert_eq!(d.reply.unwrap().dst, src);
    assert_eq!(
        fname(&m.unwrap()),
        "http://10.77.0.1:8080/ipxe/52-54-00-12-34-56?arch=0"
    );
}

#[test]
fn each_arch_gets_its_loader() {
    for (raw, file) in [
        (0, "undionly.kpxe"),
        (6, "ipxe-i386.efi"),
        (7, "ipxe.efi"),
        (11, "ipxe-arm64.efi"),
    ] {
        let mut s = server(ReplyStyle::Bypass, policy());
        let req = Req::discover(b"PXEClient", raw);
        let (_, m) = ask(&mut s, &req, 67, client67());
        let m = m.unwrap_or_else(|| panic!("arch {raw}"));
        assert_eq!(fname(&m), file, "arch {raw}");
        assert_eq!(
            m.opts().get(OptionCode::VendorExtensions),
            Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255])),
            "bypass style carries discovery control"
        );
    }
    // EBC (9) has no loader: silence rather than a wrong binary.
    let mut s = server(ReplyStyle::Bypass, policy());
    let (d, m) = ask(&mut s, &Req::discover(b"PXEClient", 9), 67, client67());
    assert!(m.is_none());
    assert_eq!(d.step, Some(Step::Ignored));
}

#[test]
fn arch_from_vendor_class_when_option_93_missing() {
    let mut s = server(ReplyStyle::Bypass, policy());
    let mut req = Req::discover(b"PXEClient:Arch:00007:UNDI:003016", 0);
    req.arch = None;
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert_eq!(fname(&m.unwrap()), "ipxe.efi");
}

#[test]
fn http_boot_gets_httpclient_and_url() {
    let p = Arc::new(StaticPolicy::with_default(BootAction::ChainFile(
        "shim/bootx64.efi".into(),
    )));
    let mut s = server(ReplyStyle::BootServer, p);
    for raw in [16u16, 19] {
        let req = Req::discover(b"HTTPClient:Arch:00016:UNDI:003001", raw);
        let (_, m) = ask(&mut s, &req, 67, client67());
        let m = m.unwrap();
        assert_eq!(vendor_of(&m), b"HTTPClient");
        assert_eq!(fname(&m), "http://10.77.0.1:8080/files/shim/bootx64.efi");
        assert_eq!(
            m.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(
                b"http://10.77.0.1:8080/files/shim/bootx64.efi".to_vec()
            ))
        );
    }
}

#[test]
fn ipxe_detected_by_user_class_or_175_gets_script_url() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"PXEClient:Arch:00007:UNDI:003010", 7);
    req.user_class = Some(b"iPXE");
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert_eq!(
        fname(&m.unwrap()),
        "http://10.77.0.1:8080/ipxe/52-54-00-12-34-56?arch=7"
    );
    let mut req = Req::discover(b"PXEClient:Arch:00000:UNDI:002001", 0);
    req.opt175 = true;
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert!(fname(&m.unwrap()).contains("/ipxe/"));
    // RFC 3004 form too.
    let mut req = Req::discover(b"PXEClient", 0);
    req.user_class = Some(b"\x04iPXE");
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert!(fname(&m.unwrap()).contains("/ipxe/"));
}

#[test]
fn non_pxe_client_gets_nothing_allow_list_does() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"udhcp 1.35.0", 0);
    let (d, m) = ask(&mut s, &req, 67, client67());
    assert!(m.is_none() && d.step.is_none());
    req.vendor = None;
    assert!(ask(&mut s, &req, 67, client67()).1.is_none());
    req.vendor = Some(b"AcmeBoot v2");
    assert!(ask(&mut s, &req, 67, client67()).1.is_some());
    assert_eq!(s.stats().ignored, 2);
}

#[test]
fn option_97_echoed_missing_or_zero_accepted() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"PXEClient", 7);
    let mut guid = vec![0u8];
    guid.extend(1..=16);
    req.guid = Some(guid.clone());
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert_eq!(
        m.unwrap().opts().get(OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(guid))
    );
    req.guid = Some(vec![0; 17]);
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert!(m
        .unwrap()
        .opts()
        .get(OptionCode::ClientMachineIdentifier)
        .is_some());
    req.guid = None;
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert!(m
        .unwrap()
        .opts()
        .get(OptionCode::ClientMachineIdentifier)
        .is_none());
}

#[test]
fn relayed_requests_unicast_to_giaddr() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"PXEClient", 7);
    req.giaddr = Ipv4Addr::new(10, 78, 0, 1);
    let (d, _) = ask(&mut s, &req, 67, SocketAddrV4::new(req.giaddr, 67));
    assert_eq!(d.reply.unwrap().dst, SocketAddrV4::new(req.giaddr, 67));
}

#[test]
fn policy_ignore_and_local_disk_stay_silent_for_firmware_without_a_local_loader() {
    for action in [BootAction::Ignore, BootAction::LocalDisk] {
        let mut s = server(
            ReplyStyle::BootServer,
            Arc::new(StaticPolicy::with_default(action.clone())),
        );
        let (d, m) = ask(&mut s, &Req::discover(b"PXEClient", 7), 67, client67());
        assert!(m.is_none(), "{action:?}");
        assert_eq!(d.step, Some(Step::Ignored));
    }
    // iPXE with local disk still gets a script (which chains the local
    // loader, or says `exit`).
    let mut s = server(
        ReplyStyle::BootServer,
        Arc::new(StaticPolicy::with_default(BootAction::LocalDisk)),
    );
    let mut req = Req::discover(b"PXEClient", 7);
    req.user_class = Some(b"iPXE");
    assert!(ask(&mut s, &req, 67, client67()).1.is_some());
}

#[test]
fn a_uefi_client_with_no_work_gets_the_local_loader_when_the_root_has_it() {
    let local = || Arc::new(StaticPolicy::with_default(BootAction::LocalDisk));
    let mut s = server_with_local_boot(ReplyStyle::BootServer, local(), vec![ClientArch::X64Uefi]);
    // Firmware PXE, x64 UEFI: the offer, then the loader on port 4011.
    let (d, m) = ask(&mut s, &Req::discover(b"PXEClient", 7), 67, client67());
    assert!(m.is_some(), "{d:?}");
    let mut req = Req::discover(b"PXEClient", 7);
    req.mtype = MessageType::Request;
    req.ciaddr = Ipv4Addr::new(10, 77, 0, 50);
    let (_, m) = ask(&mut s, &req, 4011, SocketAddrV4::new(req.ciaddr, 4011));
    assert_eq!(fname(&m.unwrap()), "rackcast-local-x64.efi");
    // UEFI HTTP boot: the loader's URL.
    let (_, m) = ask(&mut s, &Req::discover(b"HTTPClient", 16), 67, client67());
    assert_eq!(
        fname(&m.unwrap()),
        "http://10.77.0.1:8080/files/rackcast-local-x64.efi"
    );
    // BIOS and a platform without its loader in the root: silence as before.
    for arch in [0, 11] {
        let (d, m) = ask(&mut s, &Req::discover(b"PXEClient", arch), 67, client67());
        assert!(m.is_none(), "arch {arch}");
        assert_eq!(d.step, Some(Step::Ignored));
    }
}

#[test]
fn proxy_ignores_requests_on_67() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let mut req = Req::discover(b"PXEClient", 7);
    req.mtype = MessageType::Request;
    assert!(ask(&mut s, &req, 67, client67()).1.is_none());
}

#[test]
fn malformed_dropped_and_counted() {
    let mut s = server(ReplyStyle::BootServer, policy());
    let good = Req::discover(b"PXEClient", 7).bytes();
    let mut bad_94 = good.clone();
    // Replace the end option with a 2-byte option 94 (dhcproto debug-asserts 3).
    let end = bad_94.iter().rposition(|&b| b == 255).unwrap();
    bad_94.truncate(end);
    bad_94.extend_from_slice(&[94, 2, 1, 2, 255]);
    for data in [vec![], vec![1; 100], good[..250].to_vec(), bad_94, {
        let mut g = good.clone();
        g[236] = 0;
        g
    }] {
        let d = s.handle(
            0,
            Received {
                src: client67(),
                local_port: 67,
                data: &data,
            },
        );
        assert!(d.reply.is_none());
    }
    assert_eq!(s.stats().malformed, 5);
    // Every truncation of a real request: never a panic.
    for n in 0..good.len() {
        let _ = s.handle(
            0,
            Received {
                src: client67(),
                local_port: 67,
                data: &good[..n],
            },
        );
    }
}

fn full_server(dir: &std::path::Path) -> DhcpServer {
    let mut res = HashMap::new();
    res.insert(MacAddr([2, 0, 0, 0, 0, 9]), Ipv4Addr::new(10, 77, 0, 200));
    let mut t = LeaseTable::new(
        Ipv4Addr::new(10, 77, 0, 100),
        Ipv4Addr::new(10, 77, 0, 110),
        600,
        res,
    )
    .unwrap();
    t.load(&dir.join("leases.json")).unwrap();
    DhcpServer::new(
        DhcpConfig {
            server_ip: SERVER,
            http_base: "http://10.77.0.1".into(),
            style: ReplyStyle::BootServer,
            allow_vendor: vec![],
            full: Some(FullConfig {
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                router: None,
                dns: vec![],
            }),
            local_boot: vec![],
        },
        policy(),
        Some(t),
    )
}

#[test]
fn full_mode_discover_request_ack_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = full_server(dir.path());
    let mut req = Req::discover(b"PXEClient", 7);
    let (_, m) = ask(&mut s, &req, 67, client67());
    let m = m.unwrap();
    let ip = m.yiaddr();
    assert_eq!(ip, Ipv4Addr::new(10, 77, 0, 100));
    assert_eq!(
        fname(&m),
        "ipxe.efi",
        "full mode offers carry the boot file"
    );
    assert!(m.opts().get(OptionCode::SubnetMask).is_some());
    req.mtype = MessageType::Request;
    req.requested = Some(ip);
    let (d, m) = ask(&mut s, &req, 67, client67());
    assert_eq!(m.unwrap().opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(d.client_ip, Some(ip));
    assert!(s.take_leases_dirty());
    s.leases()
        .unwrap()
        .save(&dir.path().join("leases.json"))
        .unwrap();

    let mut s = full_server(dir.path());
    // A plain (non-PXE) client gets an address, not ours.
    let mut other = Req::discover(b"udhcp", 0);
    other.vendor = None;
    let mac_other = [2, 0, 0, 0, 0, 1];
    let mut msg = Message::decode(&mut Decoder::new(&other.bytes())).unwrap();
    msg.set_chaddr(&mac_other);
    let data = msg.to_vec().unwrap();
    let d = s.handle(
        1000,
        Received {
            src: client67(),
            local_port: 67,
            data: &data,
        },
    );
    let m = Message::decode(&mut Decoder::new(&d.reply.unwrap().data)).unwrap();
    assert_ne!(m.yiaddr(), ip, "the restarted server remembers the lease");
    assert!(m.fname().is_none());
    // The original client renews its address after the restart.
    req.ciaddr = ip;
    req.requested = None;
    let (_, m) = ask(&mut s, &req, 67, SocketAddrV4::new(ip, 68));
    let m = m.unwrap();
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), ip);
    // Asking for someone else's address is refused.
    req.ciaddr = Ipv4Addr::UNSPECIFIED;
    req.requested = Some(Ipv4Addr::new(10, 77, 0, 200));
    let (_, m) = ask(&mut s, &req, 67, client67());
    assert_eq!(m.unwrap().opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn full_mode_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = full_server(dir.path());
    let req = Req::discover(b"PXEClient", 7);
    let mut msg = Message::decode(&mut Decoder::new(&req.bytes())).unwrap();
    msg.set_chaddr(&[2, 0, 0, 0, 0, 9]);
    let data = msg.to_vec().unwrap();
    let d = s.handle(
        0,
        Received {
            src: client67(),
            local_port: 67,
            data: &data,
        },
    );
    let m = Message::decode(&mut Decoder::new(&d.reply.unwrap().data)).unwrap();
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 77, 0, 200));
}

#[test]
fn decline_from_a_stranger_is_ignored_and_from_the_owner_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = full_server(dir.path());
    let mut req = Req::discover(b"PXEClient", 7);
    let (_, m) = ask(&mut s, &req, 67, client67());
    let ip = m.unwrap().yiaddr();
    req.mtype = MessageType::Request;
    req.requested = Some(ip);
    ask(&mut s, &req, 67, client67());
    // Another MAC declines the address: ignored, the lease stays.
    let mut decline = Req::discover(b"PXEClient", 7);
    decline.mtype = MessageType::Decline;
    decline.requested = Some(ip);
    let mut msg = Message::decode(&mut Decoder::new(&decline.bytes())).unwrap();
    msg.set_chaddr(&[2, 0, 0, 0, 0, 0x66]);
    let data = msg.to_vec().unwrap();
    let d = s.handle(
        10,
        Received {
            src: client67(),
            local_port: 67,
            data: &data,
        },
    );
    assert_eq!(d.step, Some(Step::Ignored), "{}", d.detail);
    assert_eq!(s.stats().declines_refused, 1);
    let leases = s.leases().unwrap();
    assert_eq!(leases.lease_of(MacAddr(MAC)).map(|l| l.ip), Some(ip));
    assert_eq!(leases.declined_len(), 0);
    // The owner's DECLINE is honoured: the address leaves the pool.
    let (d, _) = ask(&mut s, &decline, 67, client67());
    assert_eq!(d.step, Some(Step::Released), "{}", d.detail);
    assert_eq!(s.leases().unwrap().declined_len(), 1);
    assert!(s.leases().unwrap().lease_of(MacAddr(MAC)).is_none());
    let (_, m) = ask(&mut s, &Req::discover(b"PXEClient", 7), 67, client67());
    assert_ne!(m.unwrap().yiaddr(), ip, "a declined address is not offered");
}
