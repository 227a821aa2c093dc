//! `rackcast env build` with Debian's cloud kernel (scripts/fetch-kernel.sh
//! leaves it, with busybox-static, in /var/cache/rackcast/kernel or
//! $RACKCAST_KERNEL_CACHE), then the environment booted under QEMU TCG with a
//! virtio NIC and a virtio disk, asserted on its serial console.
//!
//! As root, the NIC is a tap in a network namespace the test creates, with
//! dnsmasq on the tap as the DHCP server, so the environment's DHCP is real
//! and nothing leaves the namespace; otherwise the NIC sits on an isolated
//! QEMU hub (no DHCP). QEMU runs at most `QEMU_LIMIT` and is killed by PID.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rackcast_engine::sched::api::Environment;

use rackcast_tests::{
    cache, env_build_named, euid, have, kernel_cache, kernel_version, ovmf, rc, rc_agent,
    read_lossy, Qemu,
};

/// Every run's machine: q35 under TCG, 512 MiB, no display or monitor, no
/// reboot (QEMU exits instead), no default NIC.
const HEADLESS: [&str; 13] = [
    "-machine",
    "q35",
    "-accel",
    "tcg",
    "-m",
    "512",
    "-display",
    "none",
    "-monitor",
    "none",
    "-no-reboot",
    "-nic",
    "none",
];
/// Hard limit on one QEMU run.
const QEMU_LIMIT: Duration = Duration::from_secs(90);
const MAC: &str = "52:54:00:7e:00:01";
const HOST_IP: &str = "10.234.0.1";
const DISK_BYTES: u64 = 64 << 20;

/// An environment built into a temporary directory (removed on drop).
struct Built {
    root: tempfile::TempDir,
    dir: PathBuf,
    summary: String,
    kver: String,
}

impl Built {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.join(f)
    }
}

/// Builds the environment from the kernel cache, or `None` (reason printed).
fn build() -> Option<Built> {
    let cache = kernel_cache()?;
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = root.path().join("linux-x64");
    // The CA a server makes before its first start, carried as
    // /etc/rackcast/ca.pem.
    let o = Command::new(rc())
        .args(["server", "--make-ca", "--data"])
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ca = PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
    assert_eq!(ca, root.path().join("data/tls/ca.pem"));
    let summary = env_build_named(&cache, &dir, None, Some(&ca));
    Some(Built {
        root,
        dir,
        summary,
        kver: kernel_version(&cache),
    })
}

fn read_initrd(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
    let mut gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut raw = Vec::new();
    gz.read_to_end(&mut raw).unwrap();
    let mut input = &raw[..];
    let mut out = Vec::new();
    loop {
        let mut r = cpio::NewcReader::new(input).unwrap();
        if r.entry().is_trailer() {
            return out;
        }
        let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        out.push((name, mode, data));
        input = r.finish().unwrap();
    }
}

#[test]
fn build_carries_busybox_modules_agent_and_libraries() {
    let Some(b) = build() else { return };
    let cache = cache();
    assert_eq!(
        std::fs::read(b.path("vmlinuz")).unwrap(),
        std::fs::read(cache.join("vmlinuz")).unwrap(),
        "vmlinuz is the kernel, copied"
    );
    let env: Environment =
        toml::from_str(&std::fs::read_to_string(b.path("env.toml")).unwrap()).unwrap();
    assert_eq!(env.name, "linux-x64");
    assert_eq!(env.kernel.as_deref(), Some("linux-x64/vmlinuz"));
    assert_eq!(env.initrd.as_deref(), Some("linux-x64/initrd.img"));
    assert_eq!(
        env.cmdline,
        "console=ttyS0 rackcast.server={server} rackcast.token={token} rackcast.env={env} quiet"
    );

    let entries = read_initrd(&b.path("initrd.img"));
    let get = |n: &str| {
        entries
            .iter()
            .find(|e| e.0 == n)
            .unwrap_or_else(|| panic!("initrd lacks {n}"))
    };
    const LNK: u32 = 0o120000;
    const REG: u32 = 0o100000;
    assert!(get("init").2.starts_with(b"#!/bin/sh"));
    assert_eq!(get("init").1, REG | 0o755);
    assert_eq!(
        get("bin/busybox").2,
        std::fs::read(cache.join("busybox")).unwrap()
    );
    for applet in [
        "sh", "mount", "insmod", "modprobe", "udhcpc", "ip", "reboot", "poweroff",
    ] {
        let (_, mode, target) = get(&format!("bin/{applet}"));
        assert_eq!(
            (mode & 0o170000, &target[..]),
            (LNK, &b"busybox"[..]),
            "{applet}"
        );
    }
    assert_eq!(get("dev/console").1, 0o020600);
    // The server's CA, for the agent's HTTPS.
    assert_eq!(
        get("etc/rackcast/ca.pem").2,
        std::fs::read(b.root.path().join("data/tls/ca.pem")).unwrap()
    );
    assert!(
        b.summary.contains("as /etc/rackcast/ca.pem"),
        "{}",
        b.summary
    );
    assert_eq!(get("etc/udhcpc/default.script").1, REG | 0o755);
    // The agent: rackcast-agent without its debug information (never the
    // whole rackcast), and its loader and libc.
    let agent = &get("bin/rackcast-agent").2;
    assert!(agent.starts_with(b"\x7fELF"));
    assert!(
        (agent.len() as u64) <= std::fs::metadata(rc_agent()).unwrap().len(),
        "agent grew"
    );
    assert!(
        entries.iter().all(|e| e.0 != "bin/rackcast"),
        "the environment carries the whole rackcast binary"
    );
    assert!(entries.iter().any(|e| e.0 == "lib64/ld-linux-x86-64.so.2"));
    assert!(entries.iter().any(|e| e.0.ends_with("/libc.so.6")));
    // The modules, plain .ko, with a modules.dep of what is carried.
    let kdir = format!("lib/modules/{}", b.kver);
    for m in [
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/char/hw_random/virtio-rng.ko",
    ] {
        assert!(get(&format!("{kdir}/{m}")).2.starts_with(b"\x7fELF"), "{m}");
    }
    let dep = String::from_utf8(get(&format!("{kdir}/modules.dep")).2.clone()).unwrap();
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/net/virtio_net.ko:")
                && l.contains("kernel/drivers/net/net_failover.ko")
                && l.contains("kernel/net/core/failover.ko")),
        "{dep}"
    );
    let conf = String::from_utf8(get("etc/rackcast/build.conf").2.clone()).unwrap();
    let modules = conf
        .lines()
        .find_map(|l| l.strip_prefix("RACKCAST_MODULES='"))
        .unwrap()
        .trim_end_matches('\'');
    let order: Vec<&str> = modules.split(' ').collect();
    let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
    assert!(pos("/failover.ko") < pos("/net_failover.ko"));
    assert!(pos("/net_failover.ko") < pos("/virtio_net.ko"));
    assert!(pos("/virtio.ko") < pos("/virtio_pci.ko"));
    assert!(pos("/virtio_ring.ko") < pos("/virtio_blk.ko"));
    assert!(b.summary.contains("virtio_rng"), "{}", b.summary);
    // What `job distribute --grow` runs: the programs (with their libraries),
    // and loop and xfs in modules.dep for modprobe, but not loaded at boot.
    for t in ["e2fsck", "resize2fs", "xfs_growfs", "losetup"] {
        if ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
        {
            assert!(get(&format!("bin/{t}")).2.starts_with(b"\x7fELF"), "{t}");
        }
    }
    assert!(entries.iter().any(|e| e.0.ends_with("/libext2fs.so.2")));
    assert_eq!(get("etc/mtab").2, b"../proc/self/mounts");
    for m in ["kernel/drivers/block/loop.ko:", "kernel/fs/xfs/xfs.ko:"] {
        assert!(dep.lines().any(|l| l.starts_with(m)), "{m}\n{dep}");
        assert!(
            !modules.contains(m.trim_end_matches(':')),
            "{m} loads at boot"
        );
    }
    let size = std::fs::metadata(b.path("initrd.img")).unwrap().len();
    eprintln!("initrd.img: {size} bytes, {} entries", entries.len());
}

#[test]
fn a_kernel_and_modules_of_different_versions_are_refused() {
    let Some(cache) = kernel_cache() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("lib/modules/9.9.9-other");
    std::fs::create_dir_all(fake.join("kernel")).unwrap();
    std::fs::write(fake.join("modules.order"), "").unwrap();
    let o = Command::new(rc())
        .args(["env", "build", "--kernel"])
        .arg(cache.join("vmlinuz"))
        .arg("--modules")
        .arg(dir.path())
        .arg("--busybox")
        .arg(cache.join("busybox"))
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no kernel module tree there for") || err.contains("are for 9.9.9-other"),
        "{err}"
    );
    let o = Command::new(rc())
        .args(["env", "build", "--kernel"])
        .arg(cache.join("vmlinuz"))
        .arg("--modules")
        .arg(&fake)
        .arg("--busybox")
        .arg(cache.join("busybox"))
        .arg("-o")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("but the modules in"), "{err}");
    assert!(err.contains("are for 9.9.9-other"), "{err}");
}

/// A network namespace with a tap and dnsmasq on it, removed on drop.
struct Lan {
    ns: String,
    tap: String,
    dnsmasq: Option<Child>,
    log: PathBuf,
}

impl Lan {
    fn new(dir: &Path) -> Option<Lan> {
        let is_root = euid() == 0;
        if !is_root || !have("ip") || !have("dnsmasq") {
            eprintln!(
                "NOTE: not root or no ip/dnsmasq: the NIC sits on an isolated QEMU hub, no DHCP"
            );
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = format!(
            "rce{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let tap = format!("{ns}t");
        let run = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        run(&["netns", "add", &ns]);
        let mut lan = Lan {
            ns: ns.clone(),
            tap: tap.clone(),
            dnsmasq: None,
            log: dir.join("dnsmasq.log"),
        };
        run(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        run(&[
            "netns", "exec", &ns, "ip", "tuntap", "add", "dev", &tap, "mode", "tap",
        ]);
        run(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            &tap,
        ]);
        run(&["netns", "exec", &ns, "ip", "link", "set", &tap, "up"]);
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-dynamic",
                &format!("--interface={tap}"),
                "--dhcp-range=10.234.0.100,10.234.0.150,255.255.255.0,1h",
                &format!("--dhcp-option=option:router,{HOST_IP}"),
                &format!("--dhcp-option=option:dns-server,{HOST_IP}"),
                &format!("--dhcp-leasefile={}", dir.join("leases").display()),
                "--pid-file",
                "--log-dhcp",
                "--no-ping",
                &format!("--log-facility={}", lan.log.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        lan.dnsmasq = Some(child);
        Some(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// TCG on two cores: one QEMU at a time.
static ONE_QEMU: Mutex<()> = Mutex::new(());

/// What one boot of the environment left behind.
struct Boot {
    /// Serial console, `\r` removed.
    out: String,
    /// Everything, for assertion messages.
    ctx: String,
    /// QEMU start to the init's marker line.
    to_marker: Option<Duration>,
    /// QEMU's exit status, if it exited (powered off) by itself.
    exited: Option<std::process::ExitStatus>,
    /// True when the NIC was on the test's DHCP segment.
    dhcp: bool,
    server: String,
}

const MARKER: &str = "rackcast-env: up, agent starting";

/// Boots `b` under QEMU TCG (SeaBIOS, or OVMF with `uefi`) until it powers
/// off or `QEMU_LIMIT`.
fn boot(b: &Built, uefi: Option<&(PathBuf, PathBuf)>) -> Boot {
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let serial = work.path().join("serial.log");
    let lan = Lan::new(work.path());

    // The cmdline the server would hand out, plus the test's knobs.
    let env: Environment =
        toml::from_str(&std::fs::read_to_string(b.path("env.toml")).unwrap()).unwrap();
    let server = format!("http://{HOST_IP}:9");
    let cmdline = format!(
        "{} rackcast.poweroff=1 rackcast.agent_timeout=5 rackcast.dhcp={}",
        env.cmdline
            .replace("{server}", &server)
            .replace("{token}", "test-token")
            .replace("{env}", &env.name),
        if lan.is_some() { 4 } else { 1 }
    );
    let netdev = match &lan {
        Some(l) => format!("tap,id=n0,ifname={},script=no,downscript=no", l.tap),
        None => "hubport,id=n0,hubid=0".to_string(),
    };
    let mut args: Vec<String> = HEADLESS.map(String::from).to_vec();
    if let Some((code, vars)) = uefi {
        let v = work.path().join("OVMF_VARS.fd");
        std::fs::copy(vars, &v).unwrap();
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", v.display()),
        ]);
    }
    args.push("-serial".into());
    args.push(format!("file:{}", serial.display()));
    args.extend(["-kernel".into(), b.path("vmlinuz").display().to_string()]);
    args.extend(["-initrd".into(), b.path("initrd.img").display().to_string()]);
    args.extend(["-append".into(), cmdline.clone()]);
    args.extend(["-netdev".into(), netdev]);
    args.extend([
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC},romfile="),
    ]);
    args.extend([
        "-drive".into(),
        format!("file={},format=raw,if=none,id=d0", disk.display()),
    ]);
    args.extend(["-device".into(), "virtio-blk-pci,drive=d0".into()]);
    args.extend(["-device".into(), "virtio-rng-pci".into()]);
    let mut cmd = match &lan {
        Some(l) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &l.ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    let qemu_log = work.path().join("qemu.log");
    let log = std::fs::File::create(&qemu_log).unwrap();
    let start = Instant::now();
    // `ip netns exec` execs QEMU, so the child's PID is QEMU's.
    let mut qemu = Qemu(
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu"),
    );
    let (mut to_marker, mut exited) = (None, None);
    while start.elapsed() < QEMU_LIMIT {
        std::thread::sleep(Duration::from_millis(50));
        if to_marker.is_none() && read_lossy(&serial).contains(MARKER) {
            to_marker = Some(start.elapsed());
        }
        if let Ok(Some(st)) = qemu.0.try_wait() {
            exited = Some(st);
            break;
        }
    }
    let total = start.elapsed();
    drop(qemu);
    let out = read_lossy(&serial);
    let dhcp_log = lan.as_ref().map(|l| read_lossy(&l.log)).unwrap_or_default();
    let ctx = format!(
        "\n--- cmdline\n{cmdline}\n--- serial ({total:?}, qemu exit {exited:?})\n{out}\n--- qemu\n{}\n--- dnsmasq\n{dhcp_log}",
        read_lossy(&qemu_log)
    );
    let guest = out.lines().find(|l| l.starts_with(MARKER)).and_then(|l| {
        l.rsplit_once('[')?
            .1
            .strip_suffix(" s]")?
            .parse::<f64>()
            .ok()
    });
    eprintln!(
        "QEMU TCG ({}): '{MARKER}' {:.2} s wall after QEMU started ({guest:?} s guest uptime); \
         powered off after {:.2} s\n--- serial console\n{out}",
        if uefi.is_some() { "OVMF" } else { "SeaBIOS" },
        to_marker.map_or(f64::NAN, |t| t.as_secs_f64()),
        total.as_secs_f64()
    );
    if lan.is_some() {
        assert!(
            dhcp_log.contains("DHCPACK") && dhcp_log.contains(MAC),
            "dnsmasq did not lease to {MAC}: {ctx}"
        );
    }
    Boot {
        out,
        ctx,
        to_marker,
        exited,
        dhcp: lan.is_some(),
        server,
    }
}

/// What every boot must show, whatever the firmware.
fn assert_common(b: &Built, run: &Boot) {
    let (out, ctx) = (&run.out, &run.ctx);
    let has = |s: &str| out.contains(s);
    assert!(
        has(&format!(
            "rackcast-env: init: kernel {}, environment linux-x64",
            b.kver
        )),
        "init never ran: {ctx}"
    );
    let loaded = out
        .lines()
        .find(|l| l.starts_with("rackcast-env: modules loaded:"))
        .unwrap_or_else(|| panic!("no modules line: {ctx}"));
    for m in [
        "virtio_pci",
        "virtio_net",
        "virtio_blk",
        "virtio_rng",
        "failover",
    ] {
        assert!(
            loaded.split_whitespace().any(|w| w == m),
            "{m} not loaded: {ctx}"
        );
    }
    assert!(!has("rackcast-env: insmod "), "an insmod failed: {ctx}");
    assert!(
        has(&format!("rackcast-env: eth0 present ({MAC})")),
        "no virtio NIC: {ctx}"
    );
    assert!(
        has(&format!("rackcast-env: vda present ({DISK_BYTES} bytes)")),
        "no virtio disk: {ctx}"
    );
    if run.dhcp {
        assert!(
            has("rackcast-env: eth0 lease 10.234.0.1")
                && has(&format!("router {HOST_IP}"))
                && has(&format!("from {HOST_IP}")),
            "no DHCP lease from the test's dnsmasq: {ctx}"
        );
    } else {
        assert!(has("no DHCP lease on any interface"), "{ctx}");
    }
    // The agent binary runs in the environment (its loader and libraries are there).
    assert!(
        has(&format!(
            "rackcast-env: agent binary: rackcast-agent {}",
            env!("CARGO_PKG_VERSION")
        )),
        "the agent binary did not run: {ctx}"
    );
    // The only disk is the agent's; the agent finds its MAC itself.
    let started = format!(
        "{MARKER}: rackcast-agent --on-reboot system --server {} --token-file /run/rackcast/token \
         --ca /etc/rackcast/ca.pem --disk /dev/vda --env linux-x64 [",
        run.server
    );
    assert!(
        has(&started),
        "agent not started as expected ({started}): {ctx}"
    );
    // What the agent said between starting and exiting.
    let said: Vec<&str> = out
        .split(MARKER)
        .nth(1)
        .unwrap_or("")
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("rackcast-env: agent exited"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!said.is_empty(), "the agent printed nothing: {ctx}");
    eprintln!("the agent's first line: {}", said[0]);
    if run.dhcp {
        assert!(
            said.iter().any(|l| l.contains(MAC)),
            "the agent did not identify itself by the NIC's MAC {MAC}: {ctx}"
        );
    }
    assert!(has("rackcast-env: agent exited with status"), "{ctx}");
    assert!(has("rackcast-env: powering off"), "{ctx}");
    assert!(
        run.exited.is_some_and(|s| s.success()),
        "QEMU did not power off by itself within {QEMU_LIMIT:?}: {ctx}"
    );
    assert!(run.to_marker.is_some());
}

#[test]
fn boots_under_qemu_seabios_loads_virtio_gets_dhcp_and_starts_the_agent() {
    let Some(b) = build() else { return };
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    let run = boot(&b, None);
    assert_common(&b, &run);
    assert!(
        run.out.contains("rackcast-env: BIOS firmware"),
        "{}",
        run.ctx
    );
}

#[test]
fn boots_under_qemu_ovmf_with_efivarfs_and_efibootmgr_for_the_agent() {
    let Some(b) = build() else { return };
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    let Some(fw) = ovmf() else {
        eprintln!("SKIP: OVMF not installed");
        return;
    };
    let carried = b
        .summary
        .lines()
        .any(|l| l.starts_with("  efibootmgr ") && !l.contains("not found"));
    if !carried {
        eprintln!("SKIP: no efibootmgr on this machine to carry");
        return;
    }
    let run = boot(&b, Some(&fw));
    assert_common(&b, &run);
    let line = run
        .out
        .lines()
        .find(|l| l.starts_with("rackcast-env: UEFI firmware, "))
        .unwrap_or_else(|| panic!("no UEFI line: {}", run.ctx));
    // efibootmgr ran against the mounted efivarfs and saw OVMF's entries.
    let entries: u32 = line
        .trim_start_matches("rackcast-env: UEFI firmware, ")
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(entries > 0, "efibootmgr saw no boot entries: {}", run.ctx);
}

/// The console menu's maintenance shell: `rackcast.shell=1` gives a root
/// shell on the console instead of the agent; what is typed there runs,
/// and leaving it reboots (QEMU, with `-no-reboot`, exits).
#[test]
fn the_maintenance_shell_is_a_root_shell_on_the_console_and_no_agent() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let Some(b) = build() else { return };
    if !have("qemu-system-x86_64") {
        eprintln!("SKIP: qemu-system-x86_64 not installed");
        return;
    }
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let sock = work.path().join("serial.sock");
    let env: Environment =
        toml::from_str(&std::fs::read_to_string(b.path("env.toml")).unwrap()).unwrap();
    // As the console menu boots it: no token, the shell flag.
    let cmdline = format!(
        "{} rackcast.shell=1 rackcast.dhcp=0",
        env.cmdline
            .replace("{server}", "http://10.234.0.1:9")
            .replace("rackcast.token={token}", "")
            .replace("{env}", &env.name)
    );
    let qemu_log = work.path().join("qemu.log");
    let log = std::fs::File::create(&qemu_log).unwrap();
    let mut qemu = Qemu(
        Command::new("qemu-system-x86_64")
            .args(HEADLESS)
            .arg("-serial")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .arg("-kernel")
            .arg(b.path("vmlinuz"))
            .arg("-initrd")
            .arg(b.path("initrd.img"))
            .args(["-append", &cmdline])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu"),
    );
    let start = Instant::now();
    let mut serial = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(20), "serial: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    serial
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = String::new();
    let mut until = |serial: &mut UnixStream, what: &str| {
        let mut buf = [0u8; 4096];
        while !out.contains(what) {
            assert!(
                start.elapsed() < QEMU_LIMIT,
                "{what:?} never came:\n{out}\n--- qemu\n{}",
                read_lossy(&qemu_log)
            );
            match serial.read(&mut buf) {
                Ok(0) => panic!("serial closed before {what:?}:\n{out}"),
                Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {} // the read timeout: go round
            }
        }
    };
    until(&mut serial, "maintenance shell on the console");
    // The shell reads what is typed: `$((6*7))` shows it ran, `id -u` as whom.
    std::thread::sleep(Duration::from_millis(500));
    serial
        .write_all(b"echo SHELL-$((6*7)) uid=$(id -u); exit\n")
        .unwrap();
    until(&mut serial, "SHELL-42 uid=0");
    until(&mut serial, "rebooting");
    let status = loop {
        if let Ok(Some(st)) = qemu.0.try_wait() {
            break st;
        }
        assert!(start.elapsed() < QEMU_LIMIT, "QEMU did not exit:\n{out}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(!out.contains("agent starting"), "the agent ran:\n{out}");
    eprintln!(
        "maintenance shell: up and answered after {:.1} s (QEMU TCG, SeaBIOS)",
        start.elapsed().as_secs_f64()
    );
}
