//! Real firmware under QEMU (TCG: iPXE fails under KVM here), time-bounded.
//! SeaBIOS with the iPXE ROM boots from the network through our DHCP to
//! fetching our HTTP script; asserted on netboot's boot events.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackcast_netboot::dhcp::ReplyStyle;
use rackcast_netboot::tftp::TransferLimits;
use rackcast_netboot::{BootAction, MacAddr, Mode, Netboot, NetbootConfig, StaticPolicy, Step};

use crate::util::{enter, have, root, Netns};

/// Kills QEMU by its PID when the test ends, even on panic.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn seabios_ipxe_rom_fetches_our_http_script() {
    if !(root() && have("qemu-system-x86_64") && have("ip")) {
        return;
    }
    if !std::path::Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists() {
        eprintln!("SKIP: ipxe-qemu ROMs not installed");
        return;
    }
    let ns = Netns::new("rcq");
    let br = format!("{}b", ns.name);
    let tap = format!("{}t", ns.name);
    ns.exec(&["ip", "link", "add", &br, "type", "bridge"]);
    ns.exec(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
    ns.exec(&["ip", "link", "set", &tap, "master", &br]);
    ns.exec(&["ip", "addr", "add", "10.232.0.1/24", "dev", &br]);
    ns.exec(&["ip", "link", "set", &tap, "up"]);
    ns.exec(&["ip", "link", "set", &br, "up"]);
    let dir = tempfile::tempdir().unwrap();
    let mac = MacAddr::parse("52:54:00:7a:00:01").unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ns_name = ns.name.clone();
    let iface = br.clone();
    let root_dir = dir.path().to_path_buf();
    let server = std::thread::spawn(move || {
        enter(&ns_name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = NetbootConfig {
                iface: Some(iface),
                server_ip: "10.232.0.1".parse().unwrap(),
                root: root_dir.clone(),
                mode: Mode::Full {
                    pool_start: "10.232.0.100".parse().unwrap(),
                    pool_end: "10.232.0.110".parse().unwrap(),
                    netmask: "255.255.255.0".parse().unwrap(),
                    router: None,
                    lease_secs: 3600,
                    reservations: Default::default(),
                    lease_file: root_dir.join("leases.json"),
                },
                style: ReplyStyle::BootServer,
                allow_vendor: vec![],
                dhcp_ports: vec![67, 4011],
                tftp: "0.0.0.0:69".parse().unwrap(),
                http: "0.0.0.0:8080".parse().unwrap(),
                tftp_limits: TransferLimits::default(),
            };
            let policy = StaticPolicy::with_default(BootAction::IpxeScript(
                "#!ipxe\necho rackcast script for {mac} from {server}\npoweroff\n".into(),
            ));
            let nb = Netboot::bind(cfg, Arc::new(policy)).await.unwrap();
            let mut events = nb.events().subscribe();
            let fwd = async move {
                while let Ok(e) = events.recv().await {
                    let _ = tx.send(e);
                }
            };
            tokio::select! {
                r = nb.run() => { r.unwrap(); }
                _ = fwd => {}
                _ = stop_rx => {}
            }
        });
    });

    let serial = dir.path().join("serial.log");
    let child = ns
        .command(&[
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-serial",
            &format!("file:{}", serial.display()),
            "-boot",
            "n",
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            "-device",
            &format!("e1000,netdev=n0,mac={mac}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);

    let start = Instant::now();
    let mut seen = Vec::new();
    let mut got_script = false;
    while start.elapsed() < Duration::from_secs(150) {
        if let Ok(Some(_)) = qemu.0.try_wait() {
            break; // the script's `poweroff` ran
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(e) => {
                eprintln!("event: {e}");
                if e.mac == Some(mac) && e.step == Step::HttpScript {
                    got_script = true;
                }
                seen.push(e);
            }
            Err(_) => continue,
        }
        if got_script {
            break;
        }
    }
    drop(qemu);
    let _ = stop_tx.send(());
    let _ = server.join();
    assert!(
        seen.iter()
            .any(|e| e.mac == Some(mac) && e.step == Step::Offer && e.detail.contains("ipxe")),
        "no DHCP offer to iPXE: {seen:?}"
    );
    assert!(got_script, "iPXE never fetched its script: {seen:?}");
    drop(Command::new("true"));
}
