//! DHCP with emulated clients (`busybox udhcpc`) in network namespaces: a
//! server namespace and a client namespace joined by a veth pair the test
//! creates; both are deleted on drop, even on panic. Each test has its own
//! namespaces, so the fixed ports 67/4011/69 never collide.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackcast_netboot::dhcp::ReplyStyle;
use rackcast_netboot::tftp::TransferLimits;
use rackcast_netboot::{
    BootAction, BootEvent, MacAddr, Mode, Netboot, NetbootConfig, StaticPolicy, Step,
};

use crate::util::{enter, have, root, run_limited, Netns};

const SERVER_IP: &str = "10.231.0.1";

struct Topology {
    srv: Netns,
    cli: Netns,
    srv_if: String,
    cli_if: String,
}

impl Topology {
    fn new() -> Self {
        let srv = Netns::new("rcs");
        let cli = Netns::new("rcc");
        let srv_if = format!("{}v", srv.name);
        let cli_if = format!("{}v", cli.name);
        // Create the pair inside the server namespace, then move one end.
        srv.exec(&[
            "ip", "link", "add", &srv_if, "type", "veth", "peer", "name", &cli_if,
        ]);
        srv.exec(&["ip", "link", "set", &cli_if, "netns", &cli.name]);
        srv.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            &srv_if,
        ]);
        srv.exec(&["ip", "link", "set", &srv_if, "up"]);
        cli.exec(&["ip", "link", "set", &cli_if, "up"]);
        Topology {
            srv,
            cli,
            srv_if,
            cli_if,
        }
    }

    fn set_client_mac(&self, mac: &str) {
        self.cli
            .exec(&["ip", "link", "set", &self.cli_if, "address", mac]);
    }
}

/// Netboot running inside the server namespace on its own thread.
struct Server {
    events: Arc<Mutex<Vec<BootEvent>>>,
    registry: Arc<prometheus_client::registry::Registry>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(
        topo: &Topology,
        mode: Mode,
        style: ReplyStyle,
        policy: StaticPolicy,
        root: &Path,
    ) -> Self {
        let ns = topo.srv.name.clone();
        let iface = topo.srv_if.clone();
        let root = root.to_path_buf();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let cfg = NetbootConfig {
                    iface: Some(iface),
                    server_ip: SERVER_IP.parse().unwrap(),
                    root,
                    mode,
                    style,
                    allow_vendor: vec![],
                    dhcp_ports: vec![67, 4011],
                    tftp: "0.0.0.0:69".parse().unwrap(),
                    http: "0.0.0.0:8080".parse().unwrap(),
                    tftp_limits: TransferLimits::default(),
                    script_peer: Default::default(),
                    http_limits: rackcast_netboot::http::HttpLimits::default(),
                };
                let nb = Netboot::bind(cfg, Arc::new(policy)).await.unwrap();
                let mut rx = nb.events().subscribe();
                ready_tx.send(nb.registry()).unwrap();
                let collect = async move {
                    while let Ok(e) = rx.recv().await {
                        ev.lock().unwrap().push(e);
                    }
                };
                tokio::select! {
                    r = nb.run() => { r.unwrap(); }
                    _ = collect => {}
                    _ = stop_rx => {}
                }
            });
        });
        let registry = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server ready");
        Server {
            events,
            registry,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The value of the sample `name{labels}` in netboot's `/metrics` text
    /// (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn events_for(&self, mac: MacAddr) -> Vec<BootEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.mac == Some(mac))
            .cloned()
            .collect()
    }
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

fn facilities() -> bool {
    root() && have("ip") && have("busybox")
}

fn script(dir: &Path) -> PathBuf {
    let p = dir.join("udhcpc.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\necho \"$1 ip=$ip siaddr=$siaddr boot_file=$boot_file\" >> \"$OUT\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

/// Runs udhcpc once (`-n`: give up after a few tries) in the client namespace.
fn udhcpc(
    topo: &Topology,
    dir: &Path,
    opts: &[&str],
    quit_after_lease: bool,
) -> (bool, String, String) {
    let out = dir.join(format!("env-{}", crate::util::unique("u")));
    let sh = script(dir);
    let mut args: Vec<String> = vec![
        "env".into(),
        format!("OUT={}", out.display()),
        "busybox".into(),
        "udhcpc".into(),
        "-f".into(),
        "-n".into(),
        "-t".into(),
        "3".into(),
        "-T".into(),
        "1".into(),
        "-i".into(),
        topo.cli_if.clone(),
        "-s".into(),
        sh.display().to_string(),
    ];
    if quit_after_lease {
        args.push("-q".into());
    }
    args.extend(opts.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, log) = run_limited(&mut topo.cli.command(&argv), Duration::from_secs(30));
    let env = std::fs::read_to_string(&out).unwrap_or_default();
    (ok, log, env)
}

fn policy() -> StaticPolicy {
    StaticPolicy::with_default(BootAction::IpxeScript("#!ipxe\nexit\n".into()))
}

const GUID: &str = "0x61:00000102030405060708090a0b0c0d0e0f";

fn proxy_case(mac: &str, opts: &[&str], expect_file: Option<&str>) {
    proxy_case_counted(mac, opts, expect_file, None)
}

/// As [`proxy_case`], and the offers show in netboot's metrics under
/// `labels` (`step="offer",arch="...",kind="..."`).
fn proxy_case_counted(mac: &str, opts: &[&str], expect_file: Option<&str>, labels: Option<&str>) {
    if !facilities() {
        return;
    }
    let topo = Topology::new();
    topo.set_client_mac(mac);
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(&topo, Mode::Proxy, ReplyStyle::Bypass, policy(), dir.path());
    let (_, log, _) = udhcpc(&topo, dir.path(), opts, true);
    let mac = MacAddr::parse(mac).unwrap();
    let offers: Vec<BootEvent> = srv
        .events_for(mac)
        .into_iter()
        .filter(|e| e.step == Step::Offer)
        .collect();
    match expect_file {
        Some(f) => {
            assert!(!offers.is_empty(), "no offer; udhcpc said: {log}");
            assert!(offers[0].detail.contains(f), "{:?}", offers[0]);
            // The client really received it: it selects the (proxy) offer.
            assert!(log.contains("select"), "udhcpc never saw our offer: {log}");
            if let Some(labels) = labels {
                let n = srv.metric(&format!("rackcast_dhcp_answers_total{{{labels}}}"));
                assert_eq!(n, offers.len() as f64, "{labels}");
            }
        }
        None => {
            assert!(srv.events_for(mac).is_empty(), "{:?}", srv.events_for(mac));
            assert!(!log.contains("select"), "{log}");
        }
    }
}

#[test]
fn udhcpc_bios_pxe() {
    proxy_case_counted(
        "02:00:00:aa:00:01",
        &[
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x5d:0000",
            "-x",
            "0x5e:010201",
            "-x",
            GUID,
        ],
        Some("undionly.kpxe"),
        Some(r#"step="offer",arch="bios",kind="pxe""#),
    );
}

#[test]
fn udhcpc_x64_uefi_pxe() {
    proxy_case(
        "02:00:00:aa:00:02",
        &[
            "-V",
            "PXEClient:Arch:00007:UNDI:003016",
            "-x",
            "0x5d:0007",
            "-x",
            "0x5e:010300",
            "-x",
            GUID,
        ],
        Some("ipxe.efi"),
    );
}

#[test]
fn udhcpc_arm64_uefi_pxe() {
    proxy_case(
        "02:00:00:aa:00:03",
        &[
            "-V",
            "PXEClient:Arch:00011:UNDI:003016",
            "-x",
            "0x5d:000b",
            "-x",
            "0x61:0000000000000000000000000000000000",
        ],
        Some("ipxe-arm64.efi"),
    );
}

#[test]
fn udhcpc_uefi_http_boot() {
    proxy_case_counted(
        "02:00:00:aa:00:04",
        &["-V", "HTTPClient:Arch:00016:UNDI:003001", "-x", "0x5d:0010"],
        Some("http://10.231.0.1:8080/files/ipxe.efi"),
        Some(r#"step="offer",arch="x64_uefi",kind="http_boot""#),
    );
}

#[test]
fn udhcpc_ipxe_user_class() {
    proxy_case(
        "02:00:00:aa:00:05",
        &[
            "-V",
            "PXEClient:Arch:00007:UNDI:003010",
            "-x",
            "0x5d:0007",
            "-x",
            "0x4d:69505845",
        ],
        Some("/ipxe/02-00-00-aa-00-05?arch=7"),
    );
}

#[test]
fn udhcpc_plain_client_gets_no_answer() {
    proxy_case("02:00:00:aa:00:06", &[], None);
}

#[test]
fn full_mode_leases_renewals_reservations_survive_restart() {
    if !facilities() {
        return;
    }
    let topo = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let lease_file = dir.path().join("leases.json");
    let reserved = MacAddr::parse("02:00:00:bb:00:09").unwrap();
    let mode = || Mode::Full {
        pool_start: Ipv4Addr::new(10, 231, 0, 100),
        pool_end: Ipv4Addr::new(10, 231, 0, 120),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        lease_secs: 3600,
        reservations: HashMap::from([(reserved, Ipv4Addr::new(10, 231, 0, 50))]),
        lease_file: lease_file.clone(),
    };
    let pxe = ["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"];
    topo.set_client_mac("02:00:00:bb:00:01");
    let first_ip;
    {
        let srv = Server::start(&topo, mode(), ReplyStyle::BootServer, policy(), dir.path());
        let (ok, log, env) = udhcpc(&topo, dir.path(), &pxe, true);
        assert!(ok, "{log}");
        assert!(env.contains("bound ip=10.231.0.100"), "{env}");
        assert!(
            env.contains("siaddr=10.231.0.1") && env.contains("boot_file=ipxe.efi"),
            "{env}"
        );
        first_ip = "10.231.0.100";
        // Renewal: the same client asks again for its address (REQUEST with -r).
        let (ok, log, env) = udhcpc(&topo, dir.path(), &["-r", first_ip], true);
        assert!(ok, "{log}");
        assert!(env.contains(&format!("bound ip={first_ip}")), "{env}");
        let acks = srv
            .events_for(MacAddr::parse("02:00:00:bb:00:01").unwrap())
            .into_iter()
            .filter(|e| e.step == Step::Ack)
            .count();
        assert!(acks >= 2, "{acks}");
        // A reservation.
        topo.set_client_mac("02:00:00:bb:00:09");
        let (ok, log, env) = udhcpc(&topo, dir.path(), &[], true);
        assert!(ok, "{log}");
        assert!(env.contains("bound ip=10.231.0.50"), "{env}");
        assert!(
            env.contains("boot_file= ") || env.ends_with("boot_file=\n"),
            "plain client gets no boot file: {env}"
        );
    }
    assert!(std::fs::read_to_string(&lease_file)
        .unwrap()
        .contains("10.231.0.100"));
    // Restart: a new client must not get the first client's address, and the
    // first client gets its own back.
    let _srv = Server::start(&topo, mode(), ReplyStyle::BootServer, policy(), dir.path());
    topo.set_client_mac("02:00:00:bb:00:02");
    let (ok, log, env) = udhcpc(&topo, dir.path(), &[], true);
    assert!(ok, "{log}");
    assert!(env.contains("bound ip=10.231.0.101"), "{env}");
    topo.set_client_mac("02:00:00:bb:00:01");
    let (ok, log, env) = udhcpc(&topo, dir.path(), &pxe, true);
    assert!(ok, "{log}");
    assert!(env.contains(&format!("bound ip={first_ip}")), "{env}");
}
