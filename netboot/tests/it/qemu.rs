//! Real firmware under QEMU (TCG: iPXE fails under KVM here), time-bounded,
//! on a segment each test builds and removes: a namespace with a bridge,
//! QEMU's tap and our netboot in proxy mode on the bridge, beside a separate
//! primary DHCP server (dnsmasq, addresses only, no PXE options) in its own
//! namespace on a veth into the bridge, as at a site with its own DHCP.
//!
//! Asserted on four independent witnesses: netboot's boot events, the
//! firmware's own output (OVMF's serial console, SeaBIOS's debug port), the
//! primary server's log (the address came from it, not from us), and the
//! wire itself: QEMU's `filter-dump` records the NIC's frames to a pcap file
//! that the tests read back (no tcpdump needed).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rackcast_netboot::dhcp::ReplyStyle;
use rackcast_netboot::tftp::TransferLimits;
use rackcast_netboot::{
    BootAction, BootEvent, MacAddr, Mode, Netboot, NetbootConfig, StaticPolicy, Step,
};

use crate::util::{enter, have, read_pcap, root, Netns, Seen};
use crate::wire;

/// Our address on the segment; the primary DHCP server is `.1`.
const OUR_IP: &str = "10.232.0.2";
const PRIMARY_IP: &str = "10.232.0.1";
/// The primary's pool: every station address must come from here.
const POOL_PREFIX: &str = "10.232.0.1";
/// Hard limit on one firmware run (QEMU is killed after it).
const QEMU_LIMIT: Duration = Duration::from_secs(75);

/// TCG on two cores: firmware runs one at a time so none starves.
static ONE_QEMU: Mutex<()> = Mutex::new(());

#[test]
fn ovmf_uefi_pxe_via_proxy_dhcp_and_4011_beside_dnsmasq_downloads_boot_file() {
    let Some(fw) = Ovmf::find() else { return };
    if !facilities() {
        return;
    }
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::new("rqp");
    let boot_file = patterned(150_000);
    std::fs::write(lan.dir().join("ipxe.efi"), &boot_file).unwrap();
    let policy = StaticPolicy::with_default(BootAction::IpxeScript("#!ipxe\nexit\n".into()));
    let srv = lan.serve(policy);
    let mac = MacAddr::parse("52:54:00:7a:01:01").unwrap();
    let run = lan.boot(&srv, &fw.args(lan.dir(), false), &virtio(mac), |r| {
        r.serial.contains("NBP file downloaded successfully")
            && r.has(mac, Step::TftpDone, "ipxe.efi")
    });
    let ctx = run.context();
    assert!(
        run.has(
            mac,
            Step::Offer,
            "x64-uefi pxe proxy offer, boot file ipxe.efi on 4011"
        ),
        "no deferred proxy offer (no option 43, boot file on 4011): {ctx}"
    );
    assert!(
        run.has(mac, Step::BootServerAck, "boot file ipxe.efi"),
        "firmware never asked on 4011: {ctx}"
    );
    assert!(
        run.has(
            mac,
            Step::TftpDone,
            &format!("ipxe.efi ({} bytes)", boot_file.len())
        ),
        "our TFTP did not serve the boot file: {ctx}"
    );
    assert!(
        !run.events.iter().any(|e| e.step == Step::Ack),
        "proxy mode handed out an address: {ctx}"
    );
    for line in [
        "Station IP address is 10.232.0.1".to_string(),
        format!("Server IP address is {OUR_IP}"),
        "NBP filename is ipxe.efi".to_string(),
        format!("NBP filesize is {} Bytes", boot_file.len()),
        "NBP file downloaded successfully".to_string(),
    ] {
        assert!(run.serial.contains(&line), "serial lacks {line:?}: {ctx}");
    }
    assert!(
        run.primary_acked(mac),
        "the primary DHCP server did not lease the address: {ctx}"
    );
    run.on_wire(|w, ours| wire::uefi_pxe(w, mac.0, ours, "ipxe.efi", &boot_file));
}

#[test]
fn ovmf_uefi_http_boot_arch16_gets_url_and_downloads_over_http() {
    let Some(fw) = Ovmf::find() else { return };
    if !facilities() {
        return;
    }
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::new("rqh");
    let boot_file = patterned(120_000);
    std::fs::write(lan.dir().join("ipxe.efi"), &boot_file).unwrap();
    let policy = StaticPolicy::with_default(BootAction::IpxeScript("#!ipxe\nexit\n".into()));
    let srv = lan.serve(policy);
    let mac = MacAddr::parse("52:54:00:7a:01:02").unwrap();
    let url = format!("http://{OUR_IP}:8080/files/ipxe.efi");
    let run = lan.boot(&srv, &fw.args(lan.dir(), true), &virtio(mac), |r| {
        r.serial.contains("Downloading...100%") && r.any(Step::HttpFile, "ipxe.efi")
    });
    let ctx = run.context();
    assert!(
        run.has(
            mac,
            Step::Offer,
            &format!("x64-uefi-http http-boot proxy offer, boot file {url}")
        ),
        "no HTTPClient offer with a URL: {ctx}"
    );
    assert!(
        run.any(
            Step::HttpFile,
            &format!("ipxe.efi bytes 0-{0} of {0}", boot_file.len())
        ),
        "our HTTP did not serve the boot file: {ctx}"
    );
    for line in [
        "Start HTTP Boot over IPv4".to_string(),
        "Station IP address is 10.232.0.1".to_string(),
        format!("URI: {url}"),
        format!("File Size: {} Bytes", boot_file.len()),
        "Downloading...100%".to_string(),
    ] {
        assert!(run.serial.contains(&line), "serial lacks {line:?}: {ctx}");
    }
    assert!(
        !run.serial.contains("Start PXE over IPv4"),
        "PXE was not skipped; HTTP boot was not what ran: {ctx}"
    );
    assert!(
        run.primary_acked(mac),
        "the primary DHCP server did not lease the address: {ctx}"
    );
    run.on_wire(|w, ours| wire::uefi_http(w, mac.0, ours, &url));
}

#[test]
fn seabios_ipxe_rom_via_proxy_dhcp_fetches_our_script_which_names_our_server() {
    if !facilities() {
        return;
    }
    if !Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists() {
        eprintln!("SKIP: ipxe-qemu ROMs not installed");
        return;
    }
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let lan = Lan::new("rqs");
    // Under proxy-DHCP iPXE's ${next-server} is the primary server, so the
    // script must name us explicitly ({http}); the second stage proves it did.
    std::fs::write(lan.dir().join("stage2.ipxe"), "#!ipxe\necho stage two\n").unwrap();
    let policy = StaticPolicy::with_default(BootAction::IpxeScript(
        "#!ipxe\necho rackcast script for {mac}\nchain {http}/files/stage2.ipxe\n".into(),
    ));
    let srv = lan.serve(policy);
    let mac = MacAddr::parse("52:54:00:7a:01:03").unwrap();
    let dbg = lan.dir().join("seabios.log");
    let fw = [
        "-boot".to_string(),
        "n".into(),
        "-chardev".into(),
        format!("file,id=dbg,path={}", dbg.display()),
        "-device".into(),
        "isa-debugcon,iobase=0x402,chardev=dbg".into(),
    ];
    let nic = ["-device".to_string(), format!("e1000,netdev=n0,mac={mac}")];
    let run = lan.boot(&srv, &fw, &nic, |r| r.any(Step::HttpFile, "stage2.ipxe"));
    let ctx = run.context();
    let seabios = std::fs::read_to_string(&dbg).unwrap_or_default();
    assert!(
        seabios.contains("Booting from ROM"),
        "SeaBIOS never ran the iPXE ROM: {seabios}\n{ctx}"
    );
    let script_url = format!("http://{OUR_IP}:8080/ipxe/52-54-00-7a-01-03?arch=0");
    assert!(
        run.has(
            mac,
            Step::Offer,
            &format!("bios ipxe proxy offer, boot file {script_url}")
        ),
        "no proxy offer with a script URL to iPXE: {ctx}"
    );
    assert!(
        run.has(
            mac,
            Step::HttpScript,
            "script: chain {http}/files/stage2.ipxe"
        ),
        "iPXE never fetched its script: {ctx}"
    );
    // The second stage came from the same iPXE, at the address the primary
    // server leased, by our name rather than ${next-server}.
    let script_peer = run
        .events
        .iter()
        .find(|e| e.step == Step::HttpScript)
        .map(|e| e.peer.ip());
    let stage2_peer = run
        .events
        .iter()
        .find(|e| e.step == Step::HttpFile && e.detail.contains("stage2.ipxe"))
        .map(|e| e.peer.ip());
    assert!(
        stage2_peer.is_some() && stage2_peer == script_peer,
        "the script did not reach our server by name: {ctx}"
    );
    assert!(
        stage2_peer.is_some_and(|ip| ip.to_string().starts_with(POOL_PREFIX)),
        "iPXE's address is not from the primary's pool: {ctx}"
    );
    assert!(
        run.primary_acked(mac),
        "the primary DHCP server did not lease the address: {ctx}"
    );
    run.on_wire(|w, ours| wire::ipxe_script(w, mac.0, ours, &script_url));
}

fn facilities() -> bool {
    root() && have("ip") && have("qemu-system-x86_64") && have("dnsmasq")
}

fn virtio(mac: MacAddr) -> [String; 2] {
    // `romfile=`: OVMF's own virtio-net driver and PXE stack, not iPXE's ROM.
    [
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac},romfile="),
    ]
}

/// Bytes that are not all alike, so a misplaced block would show.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// OVMF code and a template of its variable store.
struct Ovmf {
    code: PathBuf,
    vars: PathBuf,
}

impl Ovmf {
    fn find() -> Option<Self> {
        for (code, vars) in [
            ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
            ("OVMF_CODE.fd", "OVMF_VARS.fd"),
        ] {
            let dir = Path::new("/usr/share/OVMF");
            if dir.join(code).exists() && dir.join(vars).exists() {
                return Some(Ovmf {
                    code: dir.join(code),
                    vars: dir.join(vars),
                });
            }
        }
        eprintln!("SKIP: OVMF not installed");
        None
    }

    /// Firmware arguments with a private, writable copy of the variables.
    /// `http_only` turns PXE off through fw_cfg so the boot manager goes on
    /// to its HTTP boot options.
    fn args(&self, dir: &Path, http_only: bool) -> Vec<String> {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy(&self.vars, &vars).unwrap();
        let mut a = vec![
            "-drive".to_string(),
            format!(
                "if=pflash,format=raw,readonly=on,file={}",
                self.code.display()
            ),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ];
        if http_only {
            for knob in ["IPv4PXESupport", "IPv6PXESupport"] {
                a.push("-fw_cfg".into());
                a.push(format!("name=opt/org.tianocore/{knob},string=n"));
            }
        }
        a
    }
}

/// The test's segment: a LAN namespace (bridge, tap, our server) and the
/// primary DHCP server's namespace; everything is removed on drop.
struct Lan {
    // Field order is drop order: dnsmasq first, then the namespaces.
    dnsmasq: Child,
    dhcp_log: PathBuf,
    br: String,
    tap: String,
    lan: Netns,
    _primary: Netns,
    dir: tempfile::TempDir,
}

impl Lan {
    fn new(prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lan = Netns::new(prefix);
        let primary = Netns::new(&format!("{prefix}d"));
        // Our IPv6 link-local address must not wait for DAD before we send
        // router advertisements from it.
        for ns in [&lan, &primary] {
            ns.exec(&[
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
            ]);
        }
        let br = format!("{}b", lan.name);
        let tap = format!("{}t", lan.name);
        let v_lan = format!("{}v", lan.name);
        let v_dhcp = format!("{}v", primary.name);
        lan.exec(&["ip", "link", "add", &br, "type", "bridge"]);
        lan.exec(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
        lan.exec(&["ip", "link", "set", &tap, "master", &br]);
        lan.exec(&[
            "ip", "link", "add", &v_lan, "type", "veth", "peer", "name", &v_dhcp,
        ]);
        lan.exec(&["ip", "link", "set", &v_dhcp, "netns", &primary.name]);
        lan.exec(&["ip", "link", "set", &v_lan, "master", &br]);
        lan.exec(&["ip", "addr", "add", &format!("{OUR_IP}/24"), "dev", &br]);
        for i in [&tap, &v_lan, &br] {
            lan.exec(&["ip", "link", "set", i, "up"]);
        }
        primary.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{PRIMARY_IP}/24"),
            "dev",
            &v_dhcp,
        ]);
        primary.exec(&["ip", "link", "set", &v_dhcp, "up"]);
        let dhcp_log = dir.path().join("dnsmasq.log");
        // Addresses only: no boot file, no next-server, no PXE service.
        let dnsmasq = primary
            .command(&[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                &format!("--interface={v_dhcp}"),
                "--dhcp-range=10.232.0.100,10.232.0.199,255.255.255.0,1h",
                &format!("--dhcp-leasefile={}", dir.path().join("leases").display()),
                "--pid-file",
                "--log-dhcp",
                &format!("--log-facility={}", dhcp_log.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        Lan {
            dnsmasq,
            dhcp_log,
            br,
            tap,
            lan,
            _primary: primary,
            dir,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Our netboot in proxy mode on the bridge, with router advertisements.
    fn serve(&self, policy: StaticPolicy) -> Server {
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns = self.lan.name.clone();
        let iface = self.br.clone();
        let root_dir = self.dir().to_path_buf();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let cfg = NetbootConfig {
                    iface: Some(iface.clone()),
                    server_ip: OUR_IP.parse().unwrap(),
                    root: root_dir,
                    mode: Mode::Proxy,
                    style: ReplyStyle::BootServer,
                    allow_vendor: vec![],
                    dhcp_ports: vec![67, 4011],
                    tftp: "0.0.0.0:69".parse().unwrap(),
                    http: "0.0.0.0:8080".parse().unwrap(),
                    tftp_limits: TransferLimits::default(),
                    script_peer: Default::default(),
                    http_limits: rackcast_netboot::http::HttpLimits::default(),
                };
                let nb = Netboot::bind(cfg, Arc::new(policy)).await.unwrap();
                let mut events = nb.events().subscribe();
                ready_tx.send(()).unwrap();
                let fwd = async move {
                    while let Ok(e) = events.recv().await {
                        let _ = tx.send(e);
                    }
                };
                tokio::select! {
                    r = nb.run() => { r.unwrap(); }
                    _ = fwd => {}
                    _ = advertise_router(&iface) => {}
                    _ = stop_rx => {}
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("netboot ready");
        Server {
            events: rx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Boots QEMU on the tap until `done` holds, QEMU exits, or the limit.
    fn boot(
        &self,
        srv: &Server,
        firmware: &[String],
        nic: &[String],
        done: impl Fn(&Run) -> bool,
    ) -> Run {
        let serial = self.dir().join("serial.log");
        let qemu_log = self.dir().join("qemu.log");
        let mut args: Vec<String> = [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("-serial".into());
        args.push(format!("file:{}", serial.display()));
        args.push("-netdev".into());
        // `vnet_hdr=off`: with it on, QEMU 7.2's filter-dump writes the
        // virtio-net header in front of every frame a virtio NIC moves,
        // and the capture is no longer plain Ethernet.
        args.push(format!(
            "tap,id=n0,ifname={},script=no,downscript=no,vnet_hdr=off",
            self.tap
        ));
        let pcap = self.dir().join("n0.pcap");
        args.push("-object".into());
        args.push(format!(
            "filter-dump,id=cap0,netdev=n0,file={}",
            pcap.display()
        ));
        args.extend(firmware.iter().cloned());
        args.extend(nic.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::fs::File::create(&qemu_log).unwrap();
        let child = self
            .lan
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu");
        let mut qemu = Qemu(child);
        let start = Instant::now();
        let mut run = Run {
            events: Vec::new(),
            serial: String::new(),
            exited: false,
            elapsed: Duration::ZERO,
            dhcp_log: String::new(),
            qemu_log: String::new(),
            wire: Err("not read yet".into()),
        };
        while start.elapsed() < QEMU_LIMIT {
            match srv.events.recv_timeout(Duration::from_millis(250)) {
                Ok(e) => {
                    run.events.push(e);
                    continue; // drain bursts before looking at the logs
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            run.serial = read_lossy(&serial);
            if let Ok(Some(_)) = qemu.0.try_wait() {
                run.exited = true;
            }
            if done(&run) || run.exited {
                break;
            }
        }
        // Events that raced the last look.
        while let Ok(e) = srv.events.try_recv() {
            run.events.push(e);
        }
        drop(qemu);
        run.elapsed = start.elapsed();
        run.serial = read_lossy(&serial);
        run.dhcp_log = read_lossy(&self.dhcp_log);
        run.qemu_log = read_lossy(&qemu_log);
        run.wire = read_pcap(&pcap);
        eprintln!("firmware run took {:?}", run.elapsed);
        run
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = self.dnsmasq.kill();
        let _ = self.dnsmasq.wait();
    }
}

/// Our netboot on its own runtime thread inside the LAN namespace.
struct Server {
    events: Receiver<BootEvent>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills QEMU by its PID when the run ends, even on panic.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one firmware run left behind.
struct Run {
    events: Vec<BootEvent>,
    serial: String,
    exited: bool,
    elapsed: Duration,
    dhcp_log: String,
    qemu_log: String,
    /// The guest NIC's traffic as QEMU recorded it.
    wire: Result<Vec<Seen>, String>,
}

impl Run {
    fn has(&self, mac: MacAddr, step: Step, detail: &str) -> bool {
        self.events
            .iter()
            .any(|e| e.mac == Some(mac) && e.step == step && e.detail.contains(detail))
    }

    fn any(&self, step: Step, detail: &str) -> bool {
        self.events
            .iter()
            .any(|e| e.step == step && e.detail.contains(detail))
    }

    /// The primary server's log shows it leased an address to `mac` from its pool.
    fn primary_acked(&self, mac: MacAddr) -> bool {
        self.dhcp_log.lines().any(|l| {
            l.contains("DHCPACK") && l.contains(POOL_PREFIX) && l.contains(&mac.to_string())
        })
    }

    /// Runs a check on the recorded traffic; panics with it and the run's
    /// context when the check fails.
    fn on_wire(&self, check: impl FnOnce(&[Seen], std::net::Ipv4Addr) -> Result<String, String>) {
        let wire = match &self.wire {
            Ok(w) => w,
            Err(e) => panic!("no capture from QEMU's filter-dump: {e}{}", self.context()),
        };
        match check(wire, OUR_IP.parse().unwrap()) {
            Ok(found) => eprintln!("{found}"),
            Err(e) => panic!(
                "on the wire: {e}\n--- capture\n{}{}",
                wire::summary(wire),
                self.context()
            ),
        }
    }

    fn context(&self) -> String {
        let events: Vec<String> = self.events.iter().map(|e| e.to_string()).collect();
        format!(
            "\nafter {:?}, qemu exited: {}\n--- events\n{}\n--- serial\n{}\n--- primary DHCP\n{}\n--- qemu\n{}",
            self.elapsed,
            self.exited,
            events.join("\n"),
            self.serial.replace('\r', ""),
            self.dhcp_log,
            self.qemu_log
        )
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Sends a bare IPv6 router advertisement (no prefix, no managed/other flags)
/// on `iface` every half second: iPXE waits ~13 s for one before it boots,
/// and this one lets its IPv6 autoconfiguration finish at once.
async fn advertise_router(iface: &str) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::net::{Ipv6Addr, SocketAddrV6};
    let Ok(index) = nix::net::if_::if_nametoindex(iface) else {
        return std::future::pending().await;
    };
    let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).and_then(|s| {
        s.bind_device(Some(iface.as_bytes()))?;
        s.set_multicast_hops_v6(255)?;
        s.set_multicast_if_v6(index)?;
        Ok(s)
    });
    let Ok(sock) = sock else {
        return std::future::pending().await;
    };
    // Type 134, code 0, checksum (the kernel fills it), hop limit 64, flags 0,
    // router lifetime 0 (not a default router), reachable 0, retransmit 0.
    let ra = [134u8, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let all_nodes = SockAddr::from(SocketAddrV6::new(
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        0,
        0,
        index,
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..1000 {
        tick.tick().await;
        // Errors before the link-local address exists are expected.
        let _ = sock.send_to(&ra, &all_nodes);
    }
    std::future::pending().await
}
