//! Zero touch: a powered-off QEMU target with a blank disk behind a BMC —
//! Redfish (sushy-emulator) or IPMI (virtualbmc), each in front of a
//! libvirt daemon of the test's own. `rackcast job distribute` alone powers
//! it on into PXE through the BMC; it boots the environment, is imaged over
//! multicast and boots its disk (the marker on its serial log), with no
//! other action by the test.
//!
//! The libvirt daemon runs unprivileged in session mode, all of it in the
//! test's temporary directory: root's libvirtd is always the system daemon
//! (system directories, and libvirt-daemon-system pulls in systemd). It
//! runs as `nobody` in a mount namespace of its own where a private
//! `/dev/net/tun` node it may open is bound over the real one, on a tap the
//! test made for it on a bridge with no uplink.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rackcast_tests::emu::{free_udp_port, Sushy, PASSWORD, USER};
use rackcast_tests::{env_build_named, euid, have, kernel_cache, rc, read_lossy};

use super::{golden_image, make_ca, run_ok, BIOS_MARKER, ONE_QEMU};

const IP: &str = "10.236.0.1";
const PORT: u16 = 7310;
const MAC: &str = "52:54:00:e2:e0:77";
/// virtualbmc's IPMI server, in the same venv as sushy-tools.
fn venv() -> std::path::PathBuf {
    std::env::var_os("RACKCAST_VENV")
        .map(Into::into)
        .unwrap_or_else(|| "/var/cache/rackcast/venv".into())
}
/// From `job distribute` to the marker of its disk, with room for a busy
/// CI machine (measured: see the test's output).
const LIMIT: Duration = Duration::from_secs(150);

/// A bridge and a tap in the root namespace, removed on drop.
struct RootNet {
    br: String,
    tap: String,
}

impl RootNet {
    fn new(owner: &str) -> RootNet {
        let p = std::process::id() % 10_000;
        let (br, tap) = (format!("rzb{p}"), format!("rzt{p}"));
        let _ = Command::new("ip").args(["link", "del", &tap]).output();
        let _ = Command::new("ip").args(["link", "del", &br]).output();
        let net = RootNet { br, tap };
        let ip = |a: &[&str]| run_ok(Command::new("ip").args(a));
        ip(&["link", "add", &net.br, "type", "bridge"]);
        ip(&[
            "link",
            "set",
            &net.br,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["addr", "add", &format!("{IP}/24"), "dev", &net.br]);
        ip(&["link", "set", &net.br, "up"]);
        ip(&[
            "tuntap", "add", "dev", &net.tap, "mode", "tap", "user", owner,
        ]);
        ip(&["link", "set", &net.tap, "master", &net.br]);
        ip(&["link", "set", &net.tap, "up"]);
        net
    }
}

impl Drop for RootNet {
    fn drop(&mut self) {
        for dev in [&self.tap, &self.br] {
            let _ = Command::new("ip").args(["link", "del", dev]).output();
        }
    }
}

/// The test's own libvirt daemon and its one domain; on drop the domain is
/// destroyed and undefined and the daemon killed by PID.
struct Libvirt {
    uri: String,
    daemon: Child,
    domain: Option<String>,
}

impl Libvirt {
    /// Starts libvirtd as `nobody` in session mode under `dir` (which it owns).
    fn start(dir: &Path) -> Libvirt {
        for d in ["config/libvirt", "run", "cache", "data", "home"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // No virtlogd: QEMU's output goes to files.
        std::fs::write(
            dir.join("config/libvirt/qemu.conf"),
            "stdio_handler = \"file\"\n",
        )
        .unwrap();
        run_ok(
            Command::new("mknod")
                .arg(dir.join("tun"))
                .args(["c", "10", "200"]),
        );
        run_ok(
            Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(dir),
        );
        run_ok(Command::new("chmod").arg("700").arg(dir.join("run")));
        run_ok(Command::new("chmod").arg("600").arg(dir.join("tun")));
        let d = dir.display();
        let script = format!(
            "set -e\nmount --bind {d}/tun /dev/net/tun\n\
             exec setpriv --reuid=nobody --regid=nogroup --clear-groups env -i \
             PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME={d}/home XDG_CONFIG_HOME={d}/config \
             XDG_RUNTIME_DIR={d}/run XDG_CACHE_HOME={d}/cache XDG_DATA_HOME={d}/data \
             /usr/sbin/libvirtd --timeout 0\n"
        );
        let log = std::fs::File::create(dir.join("libvirtd.out")).unwrap();
        let daemon = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare libvirtd");
        let mut lv = Libvirt {
            uri: format!("qemu:///session?socket={d}/run/libvirt/libvirt-sock"),
            daemon,
            domain: None,
        };
        let start = Instant::now();
        while !Command::new("virsh")
            .args(["-c", &lv.uri, "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            if let Ok(Some(st)) = lv.daemon.try_wait() {
                panic!(
                    "libvirtd exited ({st}): {}",
                    read_lossy(&dir.join("libvirtd.out"))
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "libvirtd not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        lv
    }

    fn virsh(&self, args: &[&str]) -> String {
        run_ok(Command::new("virsh").args(["-c", &self.uri]).args(args))
    }

    /// Defines (does not start) a SeaBIOS domain: `disk` on virtio, its NIC
    /// on `tap`, the serial console appended to `serial`; it boots its disk
    /// first, as a server in a rack would.
    fn define(&mut self, dir: &Path, disk: &Path, tap: &str, serial: &Path) {
        let name = format!("rz{}", std::process::id());
        let xml = format!(
            "<domain type='qemu'>\n\
             <name>{name}</name>\n\
             <memory unit='MiB'>512</memory>\n<vcpu>1</vcpu>\n\
             <os><type arch='x86_64' machine='pc'>hvm</type><bios useserial='yes'/></os>\n\
             <devices>\n\
             <emulator>/usr/bin/qemu-system-x86_64</emulator>\n\
             <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/><boot order='1'/></disk>\n\
             <interface type='ethernet'><mac address='{MAC}'/>\
             <target dev='{tap}' managed='no'/><model type='virtio'/><boot order='2'/></interface>\n\
             <serial type='file'><source path='{}' append='on'/></serial>\n\
             <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n\
             <memballoon model='none'/>\n\
             </devices>\n</domain>\n",
            disk.display(),
            serial.display()
        );
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        self.virsh(&["define", &file.display().to_string()]);
        self.domain = Some(name);
    }

    fn state(&self) -> String {
        let name = self.domain.as_deref().unwrap();
        self.virsh(&["domstate", name]).trim().to_string()
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if let Some(name) = &self.domain {
            for a in [
                &["destroy", name.as_str()][..],
                &["undefine", name.as_str()],
            ] {
                let _ = Command::new("virsh")
                    .args(["-c", &self.uri])
                    .args(a)
                    .output();
            }
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// virtualbmc's daemon and the IPMI server it runs for the domain, in a
/// process group of their own, killed by it on drop.
struct Vbmc {
    daemon: Child,
    port: u16,
}

impl Vbmc {
    /// An IPMI BMC on a free loopback port for `domain` of `uri`; None
    /// (printed) when virtualbmc is not installed.
    fn start(dir: &Path, uri: &str, domain: &str) -> Option<Vbmc> {
        use std::os::unix::process::CommandExt;
        let bin = venv().join("bin");
        if !bin.join("vbmcd").is_file() {
            eprintln!(
                "SKIP: virtualbmc missing from {} (scripts/deps.sh test)",
                bin.display()
            );
            return None;
        }
        let d = dir.join("vbmc");
        std::fs::create_dir_all(d.join("cfg")).unwrap();
        let conf = d.join("vbmc.conf");
        let control = free_udp_port();
        std::fs::write(
            &conf,
            format!(
                "[default]\nconfig_dir = {0}/cfg\npid_file = {0}/vbmcd.pid\nserver_port = {control}\n\
                 [log]\nlogfile = {0}/vbmcd.log\n",
                d.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("vbmcd.out")).unwrap();
        let daemon = Command::new(bin.join("vbmcd"))
            .arg("--foreground")
            .env("VIRTUALBMC_CONFIG", &conf)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("vbmcd");
        let v = Vbmc {
            daemon,
            port: free_udp_port(),
        };
        let vbmc = |args: &[&str]| {
            Command::new(bin.join("vbmc"))
                .args(args)
                .env("VIRTUALBMC_CONFIG", &conf)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let port = v.port.to_string();
        let start = Instant::now();
        // The daemon takes a moment to listen for its CLI.
        while !vbmc(&[
            "add",
            domain,
            "--port",
            &port,
            "--address",
            "127.0.0.1",
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--libvirt-uri",
            uri,
        ]) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "vbmcd not ready: {}",
                read_lossy(&d.join("vbmcd.out"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            vbmc(&["start", domain]),
            "vbmc start: {}",
            read_lossy(&d.join("vbmcd.log"))
        );
        Some(v)
    }
}

impl Drop for Vbmc {
    fn drop(&mut self) {
        // The daemon and the IPMI server it forked for the domain.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.daemon.id())])
            .output();
        let _ = self.daemon.wait();
    }
}

/// Which BMC the dark target has.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Redfish,
    Ipmi,
}

/// Skips (printing why) unless libvirt and the emulator are here.
fn facilities() -> bool {
    if euid() != 0 {
        eprintln!("SKIP: needs root for the bridge, the tap and the daemon's namespace");
        return false;
    }
    for bin in [
        "qemu-system-x86_64",
        "ip",
        "virsh",
        "unshare",
        "setpriv",
        "mknod",
    ] {
        if !have(bin) {
            eprintln!("SKIP: {bin} not installed (scripts/deps.sh test)");
            return false;
        }
    }
    if !Path::new("/usr/sbin/libvirtd").exists() {
        eprintln!("SKIP: /usr/sbin/libvirtd not installed (scripts/deps.sh test)");
        return false;
    }
    true
}

#[test]
fn job_distribute_alone_powers_a_dark_target_on_through_redfish_images_it_and_it_boots_its_disk() {
    zero_touch(Kind::Redfish);
}

#[test]
fn job_distribute_alone_powers_a_dark_target_on_through_ipmi_images_it_and_it_boots_its_disk() {
    zero_touch(Kind::Ipmi);
}

fn zero_touch(kind: Kind) {
    if !facilities() {
        return;
    }
    let Some(cache) = kernel_cache() else { return };
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = work.path();
    let boot_root = dir.join("boot");
    let ca = make_ca(&dir.join("data"));
    env_build_named(&cache, &boot_root.join("linux-x64"), None, Some(&ca));
    let (_, image) = golden_image(dir);

    // The machine: dark, a blank disk, its BMC in front.
    let net = RootNet::new("nobody");
    let lvdir = dir.join("libvirt");
    std::fs::create_dir_all(&lvdir).unwrap();
    let disk = lvdir.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let serial = lvdir.join("serial.log");
    let mut lv = Libvirt::start(&lvdir);
    lv.define(&lvdir, &disk, &net.tap, &serial);
    assert_eq!(lv.state(), "shut off");
    let (mut sushy, mut vbmc) = (None, None);
    let addr = match kind {
        Kind::Redfish => {
            let Some(s) = Sushy::start_on(true, &lv.uri) else {
                return;
            };
            sushy.insert(s).addr()
        }
        Kind::Ipmi => {
            let domain = lv.domain.clone().unwrap();
            let Some(v) = Vbmc::start(&lvdir, &lv.uri, &domain) else {
                return;
            };
            format!("ipmi://127.0.0.1:{}", vbmc.insert(v).port)
        }
    };

    // The server, answering DHCP itself on the bridge.
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = \"{}\"\nlisten = \"{IP}:{PORT}\"\npublic_url = \"https://{IP}:{PORT}\"\n\
             cast_addr = \"{IP}\"\ncast_rate = 20000000\ncast_mtu = 1500\npoll_wait = 5\n\
             boot_timeout = 240\nbmc_poll = 2\n\
             [netboot]\niface = \"{}\"\nmode = \"full\"\nserver_ip = \"{IP}\"\nroot = \"{}\"\n\
             pool = [\"10.236.0.100\", \"10.236.0.199\"]\n\
             tftp = \"{IP}:69\"\nhttp = \"{IP}:8080\"\n",
            dir.join("data").display(),
            net.br,
            boot_root.display()
        ),
    )
    .unwrap();
    let server_log = dir.join("server.log");
    let mut server = super::Proc(
        Command::new(rc())
            .args(["server", "--config", &cfg.display().to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&server_log).unwrap())
            .spawn()
            .expect("rackcast server"),
    );
    let token = dir.join("data/admin.token");
    let start = Instant::now();
    while !std::fs::read_to_string(&token).is_ok_and(|t| !t.trim().is_empty())
        || std::net::TcpStream::connect((IP, PORT)).is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            read_lossy(&server_log)
        );
        if let Ok(Some(st)) = server.0.try_wait() {
            panic!("server exited {st}: {}", read_lossy(&server_log));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = std::fs::read_to_string(&token).unwrap().trim().to_string();
    let cli = || {
        let mut c = Command::new(rc());
        c.env("RACKCAST_SERVER", format!("https://{IP}:{PORT}"))
            .env("RACKCAST_TOKEN", &token)
            .env("RACKCAST_CA", &ca);
        c
    };
    let pw = dir.join("bmc.pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    run_ok(
        cli()
            .args(["image", "upload"])
            .arg(&image)
            .args(["--name", "golden"]),
    );
    run_ok(cli().args([
        "target",
        "add",
        MAC,
        "--name",
        "dark-01",
        "--bmc",
        &addr,
        "--bmc-user",
        USER,
        "--bmc-password-file",
        &pw.display().to_string(),
        "--bmc-insecure",
    ]));

    // The only action: job distribute.
    let t0 = Instant::now();
    let id = run_ok(cli().args(["job", "distribute", "--image", "golden", "--targets", MAC]));
    // stdout has the id; stderr (joined after it) says how to follow it.
    let id = id.lines().next().unwrap_or_default().trim().to_string();
    let watch = run_ok(cli().args(["job", "watch", &id, "--timeout", "300"]));
    let verified = t0.elapsed();
    let via = match kind {
        Kind::Redfish => "Redfish via sushy-emulator",
        Kind::Ipmi => "IPMI via virtualbmc",
    };
    // Both BMCs apply a one-time boot device when the domain starts, not
    // at the agent's own warm reboot: that reboot comes back to the
    // network, the server holds it and cycles it into its disk.
    while !read_lossy(&serial).contains(BIOS_MARKER) {
        assert!(
            t0.elapsed() < LIMIT,
            "no disk boot within {LIMIT:?}:\n{watch}\n--- serial\n{}\n--- server\n{}",
            read_lossy(&serial),
            read_lossy(&server_log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "zero touch: job distribute to verified {:.1} s, to the disk's own boot {:.1} s \
         (QEMU TCG, SeaBIOS, {via})",
        verified.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
    );
    let log = read_lossy(&server_log);
    assert!(log.contains("HttpScript"), "it never netbooted: {log}");
    assert!(
        !log.contains(PASSWORD) && !watch.contains(PASSWORD),
        "the BMC password leaked"
    );
    // Its next boot is its disk again, set through the BMC.
    assert_eq!(lv.state(), "running");
    let disk_set = Instant::now();
    if let Some(bmc) = &sushy {
        let sys = bmc.get(&bmc.system());
        assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Hdd", "{sys}");
    }
    if vbmc.is_some() {
        let name = lv.domain.clone().unwrap();
        // The server sets it right after the last report: allow it a moment.
        let mut xml = lv.virsh(&["dumpxml", "--inactive", &name]);
        while !xml.contains("<boot dev='hd'/>") && disk_set.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
            xml = lv.virsh(&["dumpxml", "--inactive", &name]);
        }
        assert!(xml.contains("<boot dev='hd'/>"), "{xml}");
    }
    drop((sushy, vbmc));
}
