//! End to end on real firmware, under QEMU TCG, time-bounded.
//!
//! In network namespaces the test creates and removes: a LAN namespace with
//! a bridge, one tap per target and `rackcast server` (operator + agent API,
//! cast sessions, netboot in proxy mode) on the bridge, and beside it a
//! separate primary DHCP server (dnsmasq, addresses only, plus bare IPv6
//! router advertisements so iPXE does not wait for them) in its own
//! namespace on a veth into the bridge. Nothing leaves the namespaces; the
//! test talks to the API with curl inside the LAN namespace.
//!
//! Targets (QEMU TCG, 512 MiB, a blank virtio disk the size of the golden
//! disk): SeaBIOS running the NIC's iPXE ROM, network first then the disk;
//! OVMF with firmware PXE only (no NIC ROM), chained by our proxy-DHCP to
//! Debian's ipxe.efi; and (RACKCAST_E2E_TARGETS=3, the default) OVMF with
//! the NIC's iPXE ROM. The firmware-PXE OVMF target has the network first,
//! as servers ship for provisioning; the ROM one the disk first (see
//! `Target::start`).
//!
//! 1. the MACs are enrolled and a Distribute Disk Image job submitted (and,
//!    queued behind it on the first target, a Create Disk Image job and an
//!    environment-switch job), so the boot policy hands each target the
//!    automation environment; every target PXE-boots it and its agent
//!    registers;
//! 2. one multicast session (`min_targets` = all) images them all with a
//!    small hybrid disk: MBR boot code that prints a marker on COM1 (BIOS)
//!    and an MBR partition of type 0xEF (an EFI system partition, FAT) whose
//!    standalone GRUB prints another marker (UEFI);
//! 3. the agents report verified success and reboot; with no work left the
//!    policy gives each network-booting iPXE the console menu's prompt
//!    (the default 3 s; no key is pressed: `console.rs` presses it), then
//!    sends SeaBIOS's iPXE to the disk (`sanboot`), the network-first
//!    OVMF (handed ipxe.efi for the prompt) chains the quick-local-boot
//!    loader (`rackcast env local-boot`), which chains its disk's EFI loader, the
//!    disk-first OVMF boots its now bootable disk, and each marker appears
//!    on its serial console
//!    (the first target, SeaBIOS, first captures its disk and runs the
//!    switch job: a Run Script in the environment it waits in, then one in a
//!    second environment, `maintenance`, built beside the first in the boot
//!    root: it is told to reboot into it, PXE-boots it, registers from it
//!    and runs the script there; only then is it sent to its disk);
//! 4. every target disk equals the golden disk, byte for byte; the image
//!    the first target captured verifies and restores to the golden disk;
//! 5. the switch's witnesses: `target.state` rebooting-to `maintenance`,
//!    then `agent.registered` from `maintenance`; the script's output (its
//!    marker, `rackcast.env=maintenance` from /proc/cmdline) in the run log;
//!    netboot serving the maintenance environment's files.
//!
//! Every QEMU is killed by PID when the test ends (at the latest after
//! `LIMIT`); every wait is bounded. Prints a per-step timing summary.
//! RACKCAST_E2E_KEEP=1 keeps the work directory (logs, disks, server data).
//! `zero_touch` (beside this file) does the same for a dark target behind a BMC.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rackcast_engine::sched::api::Environment;
use rackcast_tests::{env_build_named, euid, have, kernel_cache, ovmf, rc, read_lossy, Qemu};

mod console;
mod zero_touch;

/// One test's QEMU targets at a time: on two cores, TCG guests of two
/// tests at once would starve each other past their limits.
static ONE_QEMU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Hard limit on the targets' part of the test (every QEMU is killed after
/// it); measured: ~36 s for three targets on two cores, ~46 s with the
/// environment switch (beside another CI run).
const LIMIT: Duration = Duration::from_secs(240);
/// The same with RACKCAST_E2E_UEFI_NET_FIRST=1 or RACKCAST_E2E_NO_LOCAL_BOOT=1
/// (OVMF's slow fall-through).
const LIMIT_UEFI_NET_FIRST: Duration = Duration::from_secs(480);

fn uefi_net_first() -> bool {
    std::env::var_os("RACKCAST_E2E_UEFI_NET_FIRST").is_some_and(|v| v == "1")
}

/// RACKCAST_E2E_NO_LOCAL_BOOT=1 leaves the quick-local-boot loader out of
/// the boot root, to time the firmware's own way to the disk (silence).
fn no_local_boot() -> bool {
    std::env::var_os("RACKCAST_E2E_NO_LOCAL_BOOT").is_some_and(|v| v == "1")
}
/// Our address on the segment; the primary DHCP server is `.1`.
const OUR_IP: &str = "10.235.0.2";
const PRIMARY_IP: &str = "10.235.0.1";
const API_PORT: u16 = 7300;
/// The golden disk: 8 MiB, the EFI system partition from 1 MiB to the end.
const DISK_BYTES: usize = 8 << 20;
const ESP_START: usize = 1 << 20;
const BIOS_MARKER: &str = "RACKCAST-E2E: BIOS disk booted";
const UEFI_MARKER: &str = "RACKCAST-E2E: UEFI disk booted";
/// The environment switch's destination and what its script prints.
const MAINT: &str = "maintenance";
const MAINT_MARKER: &str = "RACKCAST-IN-MAINTENANCE";

/// Sector 0 of the golden disk: real-mode code, then the marker, a disk
/// signature, one MBR partition (type 0xEF: an EFI system partition, which
/// UEFI firmware boots from `\EFI\BOOT\BOOTX64.EFI`) and 0x55AA. SeaBIOS
/// loads it at 0000:7C00 and jumps to it.
fn mbr() -> [u8; 512] {
    #[rustfmt::skip]
    let code: [u8; 23] = [
        0xfa,             // 00 cli
        0x31, 0xc0,       // 01 xor ax, ax
        0x8e, 0xd8,       // 03 mov ds, ax
        0xbe, 0x17, 0x7c, // 05 mov si, 0x7c17      ; the message, right after the code
        0xba, 0xf8, 0x03, // 08 mov dx, 0x3f8       ; COM1 data register
        0xfc,             // 0b cld
        0xac,             // 0c next: lodsb          ; al = [ds:si++]
        0x84, 0xc0,       // 0d test al, al
        0x74, 0x03,       // 0f jz done (0x14)
        0xee,             // 11 out dx, al
        0xeb, 0xf8,       // 12 jmp next (0x0c)
        0xf4,             // 14 done: hlt
        0xeb, 0xfd,       // 15 jmp done (0x14)
    ];
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(&code);
    let msg = format!("{BIOS_MARKER}\r\n\0");
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg.as_bytes());
    s[440..444].copy_from_slice(b"RCE2");
    let start = (ESP_START / 512) as u32;
    let count = ((DISK_BYTES - ESP_START) / 512) as u32;
    // status, CHS first (unused: LBA), type 0xEF, CHS last, LBA start, sectors.
    s[446..454].copy_from_slice(&[0x00, 0xfe, 0xff, 0xff, 0xef, 0xfe, 0xff, 0xff]);
    s[454..458].copy_from_slice(&start.to_le_bytes());
    s[458..462].copy_from_slice(&count.to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{c:?} failed: {text}");
    text
}

/// The golden disk: the MBR above and a FAT ESP holding a standalone GRUB
/// whose embedded grub.cfg prints the UEFI marker on the serial port.
fn golden_disk(dir: &Path) -> PathBuf {
    let cfg = dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_output serial\necho \"{UEFI_MARKER}\"\nhalt\n"
        ),
    )
    .unwrap();
    let efi = dir.join("BOOTX64.EFI");
    let mods = "serial terminal echo halt";
    run_ok(
        Command::new("grub-mkstandalone")
            .args(["-O", "x86_64-efi", "-o"])
            .arg(&efi)
            .arg(format!("--modules={mods}"))
            .arg(format!("--install-modules={mods} normal configfile"))
            .args(["--locales=", "--fonts=", "--themes="])
            .arg(format!("boot/grub/grub.cfg={}", cfg.display())),
    );
    let esp = dir.join("esp.img");
    let sectors = (DISK_BYTES - ESP_START) / 512;
    std::fs::File::create(&esp)
        .unwrap()
        .set_len((DISK_BYTES - ESP_START) as u64)
        .unwrap();
    let img = format!("{}", esp.display());
    run_ok(Command::new("mformat").args([
        "-i",
        &img,
        "-T",
        &sectors.to_string(),
        "-h",
        "64",
        "-s",
        "32",
        "-v",
        "ESP",
        "::",
    ]));
    run_ok(Command::new("mmd").args(["-i", &img, "::/EFI", "::/EFI/BOOT"]));
    run_ok(
        Command::new("mcopy")
            .args(["-i", &img])
            .arg(&efi)
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    );
    let mut disk = vec![0u8; DISK_BYTES];
    disk[..512].copy_from_slice(&mbr());
    let fat = std::fs::read(&esp).unwrap();
    disk[ESP_START..ESP_START + fat.len()].copy_from_slice(&fat);
    let path = dir.join("golden.raw");
    std::fs::write(&path, &disk).unwrap();
    path
}

/// A network namespace, removed (with its interfaces) on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(argv);
        c
    }

    fn exec(&self, argv: &[&str]) -> String {
        run_ok(&mut self.command(argv))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// What the environment's grow tools must print (see [`grow_probe`]).
const GROW_MARKER: &str = "RACKCAST-GROW-OK";

/// A script that runs, inside the automation environment, what `job
/// distribute --grow` runs there (the writer's layout.rs): loads the loop
/// and xfs modules on demand, and grows a 4 MiB ext4 (made here, carried
/// in the script) to 32 MiB through util-linux losetup, e2fsck and
/// resize2fs; then prints [`GROW_MARKER`]. losetup by its path: busybox's
/// shell prefers its own applet (no --sizelimit) to a program on PATH;
/// the agent execs the carried program.
fn grow_probe(dir: &Path) -> String {
    use base64::Engine as _;
    let fs = dir.join("grow-probe.ext4");
    std::fs::File::create(&fs)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&fs),
    );
    let gz = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -9 -c {} | base64 -w0", fs.display())),
    );
    // Checked here too, so a bad encoding fails as such, not in the guest.
    base64::engine::general_purpose::STANDARD
        .decode(gz.trim())
        .expect("base64 of the probe filesystem");
    format!(
        "set -e\n\
         modprobe loop\n\
         modprobe xfs\n\
         grep -qw xfs /proc/filesystems\n\
         xfs_growfs -V\n\
         echo '{}' | base64 -d | gunzip > /tmp/grow.img\n\
         dd if=/dev/zero of=/tmp/grow.img bs=1 count=0 seek=33554432 2>/dev/null\n\
         d=$(/bin/losetup --find --show --offset 0 --sizelimit 33554432 /tmp/grow.img)\n\
         e2fsck -fy \"$d\" >/dev/null || [ $? -eq 1 ]\n\
         resize2fs \"$d\" 2>&1\n\
         /bin/losetup -d \"$d\"\n\
         echo {GROW_MARKER}\n",
        gz.trim()
    )
}

/// A child process killed by PID on drop (dnsmasq, the server).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The segment: LAN namespace with bridge, taps, our server; the primary
/// DHCP server in its own namespace. Field order is drop order: processes
/// go before their namespaces.
struct Lan {
    server: Option<Proc>,
    _dnsmasq: Proc,
    lan: Netns,
    _primary: Netns,
    taps: Vec<String>,
    br: String,
    dhcp_log: PathBuf,
    server_log: PathBuf,
    url: String,
    token: String,
    /// The server's CA certificate, for curl.
    ca: String,
}

impl Lan {
    fn new(dir: &Path, targets: usize) -> Lan {
        let p = format!("rk{}", std::process::id() % 10_000);
        let lan = Netns::new(format!("{p}l"));
        let primary = Netns::new(format!("{p}d"));
        let br = format!("{p}b");
        let (v_lan, v_dhcp) = (format!("{p}v"), format!("{p}w"));
        lan.exec(&["ip", "link", "add", &br, "type", "bridge"]);
        // Flood multicast to every port whatever IGMP snooping has seen.
        lan.exec(&[
            "ip",
            "link",
            "set",
            &br,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        let mut taps = Vec::new();
        for i in 0..targets {
            let tap = format!("{p}t{i}");
            lan.exec(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
            lan.exec(&["ip", "link", "set", &tap, "master", &br]);
            lan.exec(&["ip", "link", "set", &tap, "up"]);
            taps.push(tap);
        }
        lan.exec(&[
            "ip", "link", "add", &v_lan, "type", "veth", "peer", "name", &v_dhcp,
        ]);
        lan.exec(&["ip", "link", "set", &v_dhcp, "netns", &primary.0]);
        lan.exec(&["ip", "link", "set", &v_lan, "master", &br]);
        lan.exec(&["ip", "addr", "add", &format!("{OUR_IP}/24"), "dev", &br]);
        lan.exec(&["ip", "link", "set", &v_lan, "up"]);
        lan.exec(&["ip", "link", "set", &br, "up"]);
        primary.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{PRIMARY_IP}/24"),
            "dev",
            &v_dhcp,
        ]);
        primary.exec(&[
            "ip",
            "addr",
            "add",
            "fd00:235::1/64",
            "dev",
            &v_dhcp,
            "nodad",
        ]);
        primary.exec(&["ip", "link", "set", &v_dhcp, "up"]);
        let dhcp_log = dir.join("dnsmasq.log");
        // Addresses only: no boot file, no next-server, no PXE service; and
        // router advertisements without managed/other flags.
        let dnsmasq = primary
            .command(&[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
                "--bind-interfaces",
                &format!("--interface={v_dhcp}"),
                "--dhcp-range=10.235.0.100,10.235.0.199,255.255.255.0,1h",
                "--dhcp-range=fd00:235::,ra-only",
                "--enable-ra",
                &format!("--dhcp-leasefile={}", dir.join("leases").display()),
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
            server: None,
            _dnsmasq: Proc(dnsmasq),
            lan,
            _primary: primary,
            taps,
            br,
            dhcp_log,
            server_log: dir.join("server.log"),
            url: format!("https://{OUR_IP}:{API_PORT}"),
            token: String::new(),
            ca: dir.join("data/tls/ca.pem").display().to_string(),
        }
    }

    /// Starts `rackcast server` on the bridge, netboot in proxy mode;
    /// `extra` is more top-level config.
    fn start_server(&mut self, dir: &Path, boot_root: &Path, extra: &str) {
        let data = dir.join("data");
        let cfg = dir.join("server.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"data = "{}"
listen = "{OUR_IP}:{API_PORT}"
public_url = "https://{OUR_IP}:{API_PORT}"
cast_addr = "{OUR_IP}"
cast_rate = 20000000
cast_mtu = 1500
poll_wait = 5
boot_timeout = 240
{extra}
[netboot]
iface = "{}"
mode = "proxy"
server_ip = "{OUR_IP}"
root = "{}"
"#,
                data.display(),
                self.br,
                boot_root.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(&self.server_log).unwrap();
        let mut child = self
            .lan
            .command(&[rc(), "server", "--config", &cfg.display().to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("rackcast server");
        let out = child.stdout.take().unwrap();
        self.server = Some(Proc(child));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("listening ") => break,
                Ok(_) => {}
                Err(_) => panic!("server did not start: {}", read_lossy(&self.server_log)),
            }
        }
        self.token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// An operator API call through curl inside the LAN namespace:
    /// (HTTP status, JSON body or Null).
    fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let url = format!("{}{path}", self.url);
        let auth = format!("Authorization: Bearer {}", self.token);
        let mut c = self.lan.command(&[
            "curl",
            "-sS",
            "--cacert",
            &self.ca,
            "-m",
            "30",
            "-X",
            method,
            "-H",
            &auth,
            "-w",
            "\n%{http_code}",
        ]);
        if body.is_some() {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        c.arg(&url);
        self.curl(c, body.map(|b| b.to_string().into_bytes()))
    }

    fn upload(&self, name: &str, file: &Path) -> (u16, serde_json::Value) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let mut c = self.lan.command(&[
            "curl",
            "-sS",
            "--cacert",
            &self.ca,
            "-m",
            "60",
            "-H",
            &auth,
            "-w",
            "\n%{http_code}",
            "-T",
            &file.display().to_string(),
        ]);
        c.arg(format!("{}/api/v1/images/{name}", self.url));
        self.curl(c, None)
    }

    /// The stored events of one job, or all (the replay of the SSE stream).
    fn events(&self, job: Option<u64>) -> Vec<serde_json::Value> {
        let auth = format!("Authorization: Bearer {}", self.token);
        let url = match job {
            Some(job) => format!("{}/api/v1/events?job={job}", self.url),
            None => format!("{}/api/v1/events", self.url),
        };
        // The stream stays open: take what the replay sent within 3 s.
        let o = self
            .lan
            .command(&[
                "curl", "-sS", "--cacert", &self.ca, "-N", "-m", "3", "-H", &auth, &url,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }

    fn curl(&self, mut c: Command, body: Option<Vec<u8>>) -> (u16, serde_json::Value) {
        use std::io::Write;
        let mut child = c
            .stdin(if body.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("curl");
        if let Some(b) = body {
            child.stdin.take().unwrap().write_all(&b).unwrap();
        }
        let o = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (json, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code = code.trim().parse().unwrap_or(0);
        assert!(
            code != 0,
            "curl {c:?}: {}{}",
            text,
            String::from_utf8_lossy(&o.stderr)
        );
        (
            code,
            serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
        )
    }

    fn api_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let (code, v) = self.api(method, path, body);
        assert!(
            (200..300).contains(&code),
            "{method} {path}: {code} {v}\n{}",
            read_lossy(&self.server_log)
        );
        v
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Firmware {
    /// SeaBIOS running the NIC's iPXE ROM.
    SeaBios,
    /// OVMF's own PXE (no NIC ROM), chained by our proxy-DHCP to ipxe.efi.
    Ovmf,
    /// OVMF with the NIC's iPXE ROM (iPXE is a firmware boot option).
    OvmfIpxeRom,
}

/// One QEMU target and what the test has seen of it.
struct Target {
    name: String,
    mac: String,
    fw: Firmware,
    disk: PathBuf,
    serial: PathBuf,
    qemu_log: PathBuf,
    qemu: Option<Qemu>,
    /// A QEMU monitor socket to send keys and read the screen through.
    monitor: Option<PathBuf>,
    registered: Option<Duration>,
    /// Where in the serial log the environment last said it reboots into
    /// the local disk, and when that was seen.
    rebooted: Option<(usize, Duration)>,
    marker: Option<Duration>,
}

impl Target {
    fn marker(&self) -> &'static str {
        match self.fw {
            Firmware::SeaBios => BIOS_MARKER,
            Firmware::Ovmf | Firmware::OvmfIpxeRom => UEFI_MARKER,
        }
    }

    fn start(&mut self, lan: &Lan, tap: &str, dir: &Path) {
        let mut args: Vec<String> = [
            "qemu-system-x86_64",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-display",
            "none",
            "-nic",
            "none",
        ]
        .map(String::from)
        .to_vec();
        match &self.monitor {
            Some(m) => args.extend([
                "-monitor".into(),
                format!("unix:{},server=on,wait=off", m.display()),
            ]),
            None => args.extend(["-monitor".into(), "none".into()]),
        }
        // SeaBIOS: the network, then the disk (iPXE's `sanboot` from our
        // policy boots it). Firmware-PXE OVMF: the network first too, as
        // servers ship; with no work it gets the quick-local-boot loader
        // (without it, OVMF's way through an unanswered PXEv4, HTTPv4 and
        // HTTPv6 to the disk after them takes 2-3 minutes under TCG:
        // RACKCAST_E2E_NO_LOCAL_BOOT=1 shows it). OVMF with the iPXE ROM:
        // the disk first, the other way UEFI servers are set up (the agent
        // sets BootNext to reach the network when it must; a blank disk
        // falls through to the network at once).
        // RACKCAST_E2E_UEFI_NET_FIRST=1 puts the network first there too.
        let net_first = matches!(self.fw, Firmware::SeaBios | Firmware::Ovmf) || uefi_net_first();
        let (nic, disk) = if net_first { (1, 2) } else { (2, 1) };
        if self.fw != Firmware::SeaBios {
            // As on a server with IPv6 PXE switched off in its setup.
            args.extend([
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv6PXESupport,string=n".into(),
            ]);
            let (code, vars) = ovmf().unwrap();
            let v = dir.join(format!("{}-vars.fd", self.name));
            std::fs::copy(vars, &v).unwrap();
            args.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", v.display()),
            ]);
        }
        args.extend([
            "-serial".into(),
            format!("file:{}", self.serial.display()),
            "-netdev".into(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
            // The NIC's default ROM is QEMU's iPXE (BIOS and EFI images).
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=n0,mac={},bootindex={nic}{}",
                self.mac,
                if self.fw == Firmware::Ovmf {
                    ",romfile="
                } else {
                    ""
                }
            ),
            "-drive".into(),
            format!("file={},format=raw,if=none,id=d0", self.disk.display()),
            "-device".into(),
            format!("virtio-blk-pci,drive=d0,bootindex={disk}"),
            "-device".into(),
            "virtio-rng-pci".into(),
        ]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = std::fs::File::create(&self.qemu_log).unwrap();
        // `ip netns exec` execs QEMU, so the child's PID is QEMU's.
        let child = lan
            .lan
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("qemu");
        self.qemu = Some(Qemu(child));
    }

    fn context(&self) -> String {
        format!(
            "\n=== {} ({:?}, {}) serial\n{}\n=== qemu\n{}",
            self.name,
            self.fw,
            self.mac,
            read_lossy(&self.serial),
            read_lossy(&self.qemu_log)
        )
    }
}

/// The test's work directory under /var/tmp, and its guard: removed when
/// the guard drops, unless RACKCAST_E2E_KEEP=1 (logs, disks and server
/// data kept, the path printed).
fn work_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = work.path().to_path_buf();
    if std::env::var_os("RACKCAST_E2E_KEEP").is_some_and(|v| v == "1") {
        eprintln!("keeping {}", work.keep().display());
        return (dir, None);
    }
    (dir, Some(work))
}

/// The golden disk in `dir` and its image (1 MiB chunks).
fn golden_image(dir: &Path) -> (PathBuf, PathBuf) {
    let golden = golden_disk(dir);
    let image = dir.join("golden.rcimg");
    run_ok(
        Command::new(rc())
            .args(["image", "create", "--chunk-size", "1M"])
            .arg(&golden)
            .arg(&image),
    );
    (golden, image)
}

/// `rackcast server --make-ca`: the CA of the server to be started on `data`.
fn make_ca(data: &Path) -> PathBuf {
    let o = Command::new(rc())
        .args(["server", "--make-ca", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    PathBuf::from(String::from_utf8(o.stdout).unwrap().trim())
}

/// Skips (printing why) unless every facility is here.
fn facilities() -> bool {
    if euid() != 0 {
        eprintln!("SKIP: needs root for network namespaces and taps");
        return false;
    }
    for bin in [
        "qemu-system-x86_64",
        "ip",
        "dnsmasq",
        "curl",
        "grub-mkstandalone",
        "mformat",
        "mmd",
        "mcopy",
    ] {
        if !have(bin) {
            eprintln!("SKIP: {bin} not installed (scripts/deps.sh test)");
            return false;
        }
    }
    for f in [
        "/usr/lib/ipxe/ipxe.efi",
        "/usr/lib/grub/x86_64-efi/normal.mod",
    ] {
        if !Path::new(f).exists() {
            eprintln!("SKIP: no {f} (scripts/deps.sh test)");
            return false;
        }
    }
    if ovmf().is_none() {
        eprintln!("SKIP: OVMF not installed");
        return false;
    }
    true
}

#[test]
fn pxe_boot_register_multicast_image_reboot_to_local_disk_on_seabios_and_ovmf() {
    if !facilities() {
        return;
    }
    let Some(cache) = kernel_cache() else { return };
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let count: usize = std::env::var("RACKCAST_E2E_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(2, 3);
    let t0 = Instant::now();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let mut lap = Instant::now();
    let mut step = |name: &str, steps: &mut Vec<(String, Duration)>| {
        steps.push((name.to_string(), lap.elapsed()));
        eprintln!("step {name}: {:.1} s", lap.elapsed().as_secs_f64());
        lap = Instant::now();
    };

    let (dir, _work) = work_dir();
    let dir = &dir;
    let boot_root = dir.join("boot");
    std::fs::create_dir_all(&boot_root).unwrap();
    // The server's CA, made before its first start as an operator would, so
    // the environments carry it and their agents trust the server's HTTPS.
    let ca = make_ca(&dir.join("data"));
    env_build_named(&cache, &boot_root.join("linux-x64"), None, Some(&ca));
    // The second environment, the switch's destination: the same kernel
    // under another name; the server loads it from the boot root at start.
    env_build_named(&cache, &boot_root.join(MAINT), Some(MAINT), Some(&ca));
    for f in ["ipxe.efi", "undionly.kpxe"] {
        let src = Path::new("/usr/lib/ipxe").join(f);
        if src.exists() {
            std::fs::copy(&src, boot_root.join(f)).unwrap();
        }
    }
    if !no_local_boot() {
        run_ok(
            Command::new(rc())
                .args(["env", "local-boot", "--root"])
                .arg(&boot_root),
        );
    }
    let env: Environment =
        toml::from_str(&std::fs::read_to_string(boot_root.join("linux-x64/env.toml")).unwrap())
            .unwrap();
    step("env build (two environments)", &mut steps);

    let (golden, image) = golden_image(dir);
    step("golden disk + image create", &mut steps);

    let mut lan = Lan::new(dir, count);
    // Timing the firmware's own way to the disk needs the menu off too:
    // with it, every machine with no work is handed iPXE for the prompt.
    let menu = if no_local_boot() {
        "menu_timeout = 0\n"
    } else {
        ""
    };
    lan.start_server(dir, &boot_root, menu);
    lan.api_ok(
        "PUT",
        &format!("/api/v1/environments/{}", env.name),
        Some(&serde_json::to_value(&env).unwrap()),
    );
    let envs = lan.api_ok("GET", "/api/v1/environments", None);
    assert!(
        envs.as_array()
            .is_some_and(|a| a.iter().any(|e| e["name"] == MAINT)),
        "the server did not load {MAINT} from the boot root: {envs}"
    );
    let up = lan.upload("golden", &image);
    assert!((200..300).contains(&up.0), "upload: {up:?}");
    let fws = [Firmware::SeaBios, Firmware::Ovmf, Firmware::OvmfIpxeRom];
    let mut targets: Vec<Target> = (0..count)
        .map(|i| {
            let name = format!(
                "t{i}-{}",
                match fws[i] {
                    Firmware::SeaBios => "seabios",
                    Firmware::Ovmf => "ovmf",
                    Firmware::OvmfIpxeRom => "ovmf-ipxe-rom",
                }
            );
            let disk = dir.join(format!("{name}.raw"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(DISK_BYTES as u64)
                .unwrap();
            Target {
                mac: format!("52:54:00:e2:e0:{:02x}", i + 1),
                fw: fws[i],
                disk,
                serial: dir.join(format!("{name}.serial")),
                qemu_log: dir.join(format!("{name}.qemu")),
                name,
                qemu: None,
                monitor: None,
                registered: None,
                rebooted: None,
                marker: None,
            }
        })
        .collect();
    for t in &targets {
        lan.api_ok(
            "POST",
            "/api/v1/targets",
            Some(&serde_json::json!({"mac": t.mac, "name": t.name})),
        );
    }
    let macs: Vec<&str> = targets.iter().map(|t| t.mac.as_str()).collect();
    let job = lan.api_ok(
        "POST",
        "/api/v1/jobs",
        Some(&serde_json::json!({
            "name": "e2e",
            "targets": macs,
            "cast": {"min_targets": count, "max_wait": 240},
            "task": [{"kind": "distribute", "image": "golden", "disk": "/dev/vda", "verify": "full"}],
        })),
    );
    let job = job["id"].as_u64().expect("job id");
    // Queued behind the distribution on the first target: Create Disk Image
    // of what it was just given, in the same boot.
    let create = lan.api_ok(
        "POST",
        "/api/v1/jobs",
        Some(&serde_json::json!({
            "name": "e2e capture",
            "targets": [targets[0].mac],
            "task": [{"kind": "create", "image": "captured", "disk": "/dev/vda"}],
        })),
    );
    let create = create["id"].as_u64().expect("job id");
    // The environment switch, queued behind those on the same target: a
    // task in the environment it waits in, then one that needs another; it
    // is told to reboot into that (BIOS, network first: PXE again, and the
    // policy hands it the maintenance environment), runs the task there,
    // and with no work left goes to its disk.
    let switch = lan.api_ok(
        "POST",
        "/api/v1/jobs",
        Some(&serde_json::json!({
            "name": "e2e environment switch",
            "targets": [targets[0].mac],
            "task": [
                {"kind": "script", "env": env.name,
                 "script": format!("echo RACKCAST-IN-DEFAULT\n{}", grow_probe(dir))},
                {"kind": "script", "env": MAINT,
                 "script": format!("echo {MAINT_MARKER}; cat /proc/cmdline")},
            ],
        })),
    );
    let switch = switch["id"].as_u64().expect("job id");
    step("namespaces + server + enroll + submit", &mut steps);

    // The targets' part, bounded by LIMIT.
    let limit = if uefi_net_first() || no_local_boot() {
        LIMIT_UEFI_NET_FIRST
    } else {
        LIMIT
    };
    let start = Instant::now();
    for (i, t) in targets.iter_mut().enumerate() {
        t.start(&lan, &lan.taps[i].clone(), dir);
    }
    let (mut job_done, mut job_view) = (None, serde_json::Value::Null);
    let mut create_done = None;
    let (mut switch_done, mut switch_view) = (None, serde_json::Value::Null);
    let mut last_poll = Instant::now() - Duration::from_secs(10);
    let ctx = |targets: &[Target], lan: &Lan, job_view: &serde_json::Value| {
        format!(
            "{}\n=== job\n{job_view:#}\n=== server\n{}\n=== primary DHCP\n{}",
            targets.iter().map(Target::context).collect::<String>(),
            read_lossy(&lan.server_log),
            read_lossy(&lan.dhcp_log)
        )
    };
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = start.elapsed();
        for t in targets.iter_mut() {
            if t.marker.is_none() {
                let out = read_lossy(&t.serial);
                // The marker counts only after the environment rebooted.
                if let Some(after) = out.rfind("rebooting into local") {
                    if t.rebooted.is_none_or(|(at, _)| at != after) {
                        t.rebooted = Some((after, now));
                    }
                    if out[after..].contains(t.marker()) {
                        t.marker = Some(now);
                        eprintln!("{}: marker on its serial console after {now:.1?}", t.name);
                    }
                }
            }
        }
        if last_poll.elapsed() >= Duration::from_secs(1) {
            last_poll = Instant::now();
            let list = lan.api_ok("GET", "/api/v1/targets", None);
            for t in targets.iter_mut().filter(|t| t.registered.is_none()) {
                let seen = list.as_array().into_iter().flatten().any(|x| {
                    x["mac"] == t.mac.as_str() && x["last_seen"].as_u64().unwrap_or(0) > 0
                });
                if seen {
                    t.registered = Some(now);
                    eprintln!("{}: agent registered after {now:.1?}", t.name);
                }
            }
            job_view = lan.api_ok("GET", &format!("/api/v1/jobs/{job}"), None);
            if job_done.is_none() && job_view["status"] != "running" {
                job_done = Some(now);
                eprintln!("job {job}: {} after {now:.1?}", job_view["status"]);
                assert_eq!(
                    job_view["status"],
                    "done",
                    "the job failed: {}",
                    ctx(&targets, &lan, &job_view)
                );
            }
            let create_view = lan.api_ok("GET", &format!("/api/v1/jobs/{create}"), None);
            if create_done.is_none() && create_view["status"] != "running" {
                create_done = Some(now);
                eprintln!("job {create}: {} after {now:.1?}", create_view["status"]);
                assert_eq!(
                    create_view["status"],
                    "done",
                    "the create job failed: {}",
                    ctx(&targets, &lan, &create_view)
                );
            }
            switch_view = lan.api_ok("GET", &format!("/api/v1/jobs/{switch}"), None);
            if switch_done.is_none() && switch_view["status"] != "running" {
                switch_done = Some(now);
                eprintln!("job {switch}: {} after {now:.1?}", switch_view["status"]);
                assert_eq!(
                    switch_view["status"],
                    "done",
                    "the switch job failed: {}",
                    ctx(&targets, &lan, &switch_view)
                );
            }
        }
        if job_done.is_some()
            && create_done.is_some()
            && switch_done.is_some()
            && targets.iter().all(|t| t.marker.is_some())
        {
            break;
        }
        // GRUB's `halt` powers the UEFI target off after its marker; any
        // other exit is a failure.
        let early = targets.iter_mut().position(|t| {
            t.marker.is_none()
                && t.qemu
                    .as_mut()
                    .is_some_and(|q| matches!(q.0.try_wait(), Ok(Some(_))))
                && !read_lossy(&t.serial).contains(t.marker())
        });
        if let Some(i) = early {
            let name = targets[i].name.clone();
            panic!("{name} exited early: {}", ctx(&targets, &lan, &job_view));
        }
        assert!(
            start.elapsed() < limit,
            "not done within {limit:?}: registered {:?}, job {job_done:?}, markers {:?}{}",
            targets.iter().map(|t| t.registered).collect::<Vec<_>>(),
            targets.iter().map(|t| t.marker).collect::<Vec<_>>(),
            ctx(&targets, &lan, &job_view)
        );
    }
    let total = start.elapsed();
    step("targets: PXE boot, image, reboot to the disk", &mut steps);
    for t in targets.iter_mut() {
        t.qemu = None; // killed by PID
    }
    let reg = targets.iter().filter_map(|t| t.registered).max().unwrap();
    steps.push((
        "  of which: QEMU start to every agent registered".into(),
        reg,
    ));
    steps.push((
        "  of which: all registered to the job done (one multicast session)".into(),
        job_done.unwrap().saturating_sub(reg),
    ));
    steps.push((
        "  of which: job done to every disk's marker".into(),
        total.saturating_sub(job_done.unwrap()),
    ));

    // The job's witnesses: one session, every target verified.
    for r in job_view["targets"].as_array().unwrap() {
        assert_eq!(r["status"], "done", "{r}");
    }
    // The replays (each takes its 3 s), side by side: the distribution's,
    // the switch job's and every event (agent.registered belongs to no job).
    let (ev, sev, all) = std::thread::scope(|s| {
        let (a, b) = (
            s.spawn(|| lan.events(Some(job))),
            s.spawn(|| lan.events(Some(switch))),
        );
        let all = lan.events(None);
        (a.join().unwrap(), b.join().unwrap(), all)
    });
    let sessions: Vec<_> = ev.iter().filter(|e| e["kind"] == "cast.started").collect();
    assert_eq!(sessions.len(), 1, "one multicast session for all: {ev:#?}");
    assert_eq!(sessions[0]["detail"]["receivers"], count, "{ev:#?}");
    let ended = ev
        .iter()
        .find(|e| e["kind"] == "cast.ended")
        .expect("cast.ended");
    assert_eq!(ended["detail"]["done"], count, "{ended}");
    eprintln!("cast session: {}", ended["detail"]);
    for t in &targets {
        let out = read_lossy(&t.serial);
        let c = || ctx(&targets, &lan, &job_view);
        assert!(
            out.contains("rackcast-env: up, agent starting"),
            "{} never ran the environment: {}",
            t.name,
            c()
        );
        assert!(
            out.contains(if t.fw != Firmware::SeaBios {
                "rackcast-env: UEFI firmware"
            } else {
                "rackcast-env: BIOS firmware"
            }),
            "{}: {}",
            t.name,
            c()
        );
    }
    // Netboot's own events (the server logs them): every target was handed
    // the environment's script; the firmware-PXE OVMF was chained to
    // ipxe.efi over TFTP first; the SeaBIOS target's iPXE, booting again
    // after its work, was sent to its disk by the policy.
    let log = read_lossy(&lan.server_log);
    let said = |mac: &str, step: &str, what: &str| {
        log.lines()
            .any(|l| l.contains(mac) && l.contains(step) && l.contains(what))
    };
    for t in &targets {
        assert!(
            said(&t.mac, "HttpScript", "linux-x64/vmlinuz"),
            "{} never fetched the environment's iPXE script: {log}",
            t.name
        );
        match t.fw {
            // With no work, the menu prompt (the default 3 s, no key
            // pressed), then the disk.
            Firmware::SeaBios => assert!(
                said(&t.mac, "HttpScript", "/menu?arch=0"),
                "{}: the policy never sent it its menu prompt: {log}",
                t.name
            ),
            Firmware::Ovmf => {
                assert!(
                    said(&t.mac, "TftpDone", "ipxe.efi"),
                    "{}: firmware PXE was not chained to ipxe.efi: {log}",
                    t.name
                );
                assert!(
                    no_local_boot() || said(&t.mac, "HttpFile", "rackcast-local-x64.efi"),
                    "{}: with no work, iPXE did not chain the local loader after the prompt: {log}",
                    t.name
                );
            }
            Firmware::OvmfIpxeRom => {}
        }
    }
    let dhcp = read_lossy(&lan.dhcp_log);
    for t in &targets {
        assert!(
            dhcp.lines()
                .any(|l| l.contains("DHCPACK") && l.contains("10.235.0.1") && l.contains(&t.mac)),
            "the primary DHCP server never leased to {}: {dhcp}",
            t.mac
        );
    }

    // 4. Every disk equals the golden disk.
    let want = std::fs::read(&golden).unwrap();
    for t in &targets {
        let got = std::fs::read(&t.disk).unwrap();
        assert!(
            got == want,
            "{} differs from the golden disk (blake3 {} vs {})",
            t.name,
            blake3::hash(&got).to_hex(),
            blake3::hash(&want).to_hex()
        );
    }
    step(
        "job events (3 x 3 s SSE replay, in parallel), logs, disk hashes",
        &mut steps,
    );

    // 5. The environment switch: the first target, waiting in the default
    // environment after its run script there, was told to reboot into the
    // maintenance environment, registered from it and ran the task there.
    let t = &targets[0];
    let c = || ctx(&targets, &lan, &switch_view);
    let rebooting = all
        .iter()
        .find(|e| {
            e["kind"] == "target.state"
                && e["target"] == t.mac.as_str()
                && e["job"] == switch
                && e["detail"]["state"] == "rebooting-to"
                && e["detail"]["env"] == MAINT
        })
        .unwrap_or_else(|| panic!("no rebooting-to {MAINT} for {}: {all:#?}", t.name));
    let arrived = all
        .iter()
        .find(|e| {
            e["kind"] == "agent.registered"
                && e["target"] == t.mac.as_str()
                && e["detail"]["env"] == MAINT
                && e["seq"].as_u64() > rebooting["seq"].as_u64()
        })
        .unwrap_or_else(|| {
            panic!(
                "{} never registered from {MAINT} after the reboot: {all:#?}",
                t.name
            )
        });
    let boot_ms = arrived["at"].as_u64().unwrap() - rebooting["at"].as_u64().unwrap();
    eprintln!("switch: {rebooting}\n        {arrived}");
    // The job's own replay carries the reboot too.
    assert!(
        sev.iter().any(|e| e["seq"] == rebooting["seq"]),
        "the switch job's events lack its reboot: {sev:#?}"
    );
    let run = &switch_view["targets"][0];
    assert_eq!(run["status"], "done", "{run}");
    let runlog = run["log"].as_str().unwrap_or_default();
    // The environment's grow tools ran: 4 MiB of 4 KiB blocks became 32 MiB.
    assert!(
        runlog.contains(GROW_MARKER) && runlog.contains("is now 8192 (4k) blocks long"),
        "the grow probe failed in the environment: {runlog:?}{}",
        c()
    );
    assert!(
        runlog.contains(MAINT_MARKER) && runlog.contains(&format!("rackcast.env={MAINT}")),
        "the maintenance script's output is not in the run log: {runlog:?}{}",
        c()
    );
    let serial = read_lossy(&t.serial);
    let after = serial
        .find(&format!("rebooting into {MAINT}"))
        .unwrap_or(serial.len());
    assert!(
        serial[after..].contains(&format!("--env {MAINT}")),
        "{}'s agent never started in {MAINT}: {}",
        t.name,
        c()
    );
    assert!(
        said(&t.mac, "HttpScript", &format!("{MAINT}/vmlinuz")),
        "{} never fetched the {MAINT} environment's iPXE script: {log}",
        t.name
    );
    for f in ["vmlinuz", "initrd.img"] {
        assert!(
            log.lines()
                .any(|l| l.contains("HttpFile") && l.contains(&format!("{MAINT}/{f}"))),
            "nobody fetched {MAINT}/{f}: {log}"
        );
    }
    steps.push((
        format!(
            "  environment switch on {}: rebooting-to to registered",
            t.name
        ),
        Duration::from_millis(boot_ms),
    ));
    step("environment switch: events, run log, logs", &mut steps);

    // The captured image verifies and restores to the golden disk.
    // The library is content-addressed: the bytes live under their root.
    let view = lan.api_ok("GET", "/api/v1/images/captured", None);
    let captured = dir.join(format!(
        "data/images/by-root/{}.rcimg",
        view["root"].as_str().expect("the captured image's root")
    ));
    eprintln!(
        "captured image: {}",
        run_ok(Command::new(rc()).args(["image", "verify"]).arg(&captured)).trim()
    );
    let restored = dir.join("restored.raw");
    run_ok(
        Command::new(rc())
            .args(["image", "restore"])
            .arg(&captured)
            .arg(&restored),
    );
    assert!(
        std::fs::read(&restored).unwrap() == want,
        "the captured image does not restore to the golden disk"
    );
    steps.push((
        format!(
            "  create disk image on {} after the distribution (polled each 1 s)",
            targets[0].name
        ),
        create_done.unwrap().saturating_sub(job_done.unwrap()),
    ));
    step("verify + restore the captured image", &mut steps);

    eprintln!("\n--- e2e timing ({count} targets) ---");
    for (name, d) in &steps {
        eprintln!("{:>8.1} s  {name}", d.as_secs_f64());
    }
    for t in &targets {
        let marker = t.marker.unwrap();
        eprintln!(
            "          {} ({:?}): registered {:.1} s, marker {:.1} s after QEMU start, \
             {:.1} s after the environment's reboot",
            t.name,
            t.fw,
            t.registered.unwrap().as_secs_f64(),
            marker.as_secs_f64(),
            t.rebooted
                .map_or(0.0, |(_, at)| marker.saturating_sub(at).as_secs_f64())
        );
    }
    eprintln!("{:>8.1} s  total", t0.elapsed().as_secs_f64());
}
