//! The technician at the console, on real firmware under QEMU TCG: keys
//! go in through each QEMU's monitor (`sendkey`), and the test reads the
//! screen (SeaBIOS: the VGA text memory, through the monitor; OVMF: the
//! serial log, where it copies its console). A key is sent only once the
//! screen shows what waits for it: iPXE drops keys typed while it waits on
//! the network or draws a menu.
//!
//! Two machines nobody enrolled, blank disks, on the e2e segment (see
//! `main.rs`): SeaBIOS with the NIC's iPXE ROM, and OVMF with firmware PXE
//! chained to ipxe.efi. Each, from its console alone:
//! 1. presses the menu key at the prompt, chooses "register", types a
//!    name and (SeaBIOS: first a wrong PIN, which creates nothing and is
//!    audited) the PIN; it boots the environment, its agent registers with
//!    its inventory and the register job completes;
//! 2. back at the prompt, presses the key again, chooses "deploy", picks
//!    the library's image and types the PIN; the disk is imaged over
//!    multicast and verified, and the job says which console started it;
//! 3. at the prompt once more, presses nothing: it boots its disk, and
//!    the disk's own marker appears.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rackcast_tests::{env_build_named, kernel_cache, rc, read_lossy};

use super::{
    facilities, golden_image, make_ca, run_ok, work_dir, Firmware, Lan, Target, BIOS_MARKER,
    DISK_BYTES, ONE_QEMU, UEFI_MARKER,
};

const PIN: &str = "2468";
/// The targets' part, every QEMU killed after it (two environment boots
/// and an imaging each, side by side).
const LIMIT: Duration = Duration::from_secs(420);

/// The serial log's text: ANSI escape sequences and carriage returns
/// removed.
fn serial_text(serial: &Path) -> String {
    let raw = read_lossy(serial);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final byte in @..~.
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The 80x25 VGA text screen from `xp /2000hx 0xb8000` output: each
/// halfword is a cell, its low byte the character.
fn vga_text(dump: &str) -> String {
    let mut out = String::with_capacity(2100);
    let cells = dump
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, v)| v))
        .flat_map(str::split_whitespace)
        .filter_map(|w| u16::from_str_radix(w.trim_start_matches("0x"), 16).ok());
    for (i, cell) in cells.enumerate() {
        if i > 0 && i % 80 == 0 {
            out.push('\n');
        }
        let c = (cell & 0xff) as u8;
        out.push(if c.is_ascii_graphic() { c as char } else { ' ' });
    }
    out
}

/// Whether a menu's countdown, `(N)`, follows `title` in `text`: iPXE
/// draws the whole menu before it counts, and only then reads keys (one
/// sent while it draws is lost).
fn counting(text: &str, title: &str) -> bool {
    let Some(at) = text.rfind(title) else {
        return false;
    };
    let rest = &text[at..];
    rest.match_indices('(').any(|(i, _)| {
        let digits: String = rest[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        !digits.is_empty() && rest[i + 1 + digits.len()..].starts_with(')')
    })
}

/// One machine's keyboard (its QEMU monitor) and screen: under SeaBIOS
/// the VGA text memory (iPXE writes nowhere else), under OVMF the serial
/// log from a mark on (OVMF copies its console there).
struct Console {
    name: String,
    serial: PathBuf,
    vga: bool,
    /// Serial text before this offset is an earlier screen.
    mark: usize,
    monitor: UnixStream,
}

impl Console {
    fn open(t: &Target) -> Console {
        let path = t.monitor.clone().unwrap();
        let start = Instant::now();
        let monitor = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(start.elapsed() < Duration::from_secs(20), "monitor: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        monitor
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut c = Console {
            name: t.name.clone(),
            serial: t.serial.clone(),
            vga: t.fw == Firmware::SeaBios,
            mark: 0,
            monitor,
        };
        c.command("info status");
        c
    }

    /// Runs a monitor command; its output, up to the next `(qemu) ` prompt.
    fn command(&mut self, cmd: &str) -> String {
        if !cmd.is_empty() {
            self.monitor
                .write_all(format!("{cmd}\n").as_bytes())
                .unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"(qemu) ") {
            let n = self.monitor.read(&mut buf).expect("QEMU monitor");
            assert!(n > 0, "QEMU monitor closed");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// What is on screen now (serial: since the mark).
    fn text(&mut self) -> String {
        if self.vga {
            vga_text(&self.command("xp /2000hx 0xb8000"))
        } else {
            let t = serial_text(&self.serial);
            t.get(self.mark..).unwrap_or("").to_string()
        }
    }

    /// From here on, only new screens count.
    fn mark(&mut self) {
        if !self.vga {
            self.mark = serial_text(&self.serial).len();
        }
    }

    /// Presses one key (QEMU's names: `m`, `ret`, `up`, `minus`).
    fn key(&mut self, k: &str) {
        self.command(&format!("sendkey {k}"));
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Types `text` (letters, digits and `-`), then Enter.
    fn line(&mut self, text: &str) {
        for c in text.chars() {
            let k = match c {
                '-' => "minus".to_string(),
                c => c.to_string(),
            };
            self.key(&k);
        }
        self.key("ret");
    }

    /// Waits until `ready` holds for the screen.
    fn until(&mut self, what: &str, deadline: Instant, ready: impl Fn(&str) -> bool) {
        loop {
            let t = self.text();
            if ready(&t) {
                // Let the firmware finish drawing and start reading keys.
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} never appeared; screen:\n{t}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `what` is on screen.
    fn wait(&mut self, what: &str, deadline: Instant) {
        self.until(&format!("{what:?}"), deadline, |t| t.contains(what));
    }
}

/// What one technician does at one machine.
struct Technician {
    console: Console,
    deadline: Instant,
}

impl Technician {
    /// Waits for a menu titled `title` to be drawn and counting down.
    fn menu_ready(&mut self, title: &str) {
        let what = format!("menu {title:?} counting down");
        self.console
            .until(&what, self.deadline, |t| counting(t, title));
    }

    /// Presses `key` until `then` is on screen (a key iPXE was not yet
    /// reading is lost).
    fn press_for(&mut self, key: &str, then: &str) {
        for _ in 0..5 {
            self.console.mark();
            self.console.key(key);
            let tried = Instant::now();
            while tried.elapsed() < Duration::from_secs(5) {
                if self.console.text().contains(then) {
                    std::thread::sleep(Duration::from_millis(300));
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let screen = self.console.text();
        panic!(
            "{}: {key} never brought {then:?}:\n{screen}",
            self.console.name
        );
    }

    /// At the next prompt, the menu key; then the menu, ready for keys.
    fn open_menu(&mut self) {
        self.console.wait("for the menu", self.deadline);
        self.console.mark();
        self.console.key("m");
        self.menu_ready("rackcast console:");
    }

    /// At iPXE's login: no user name, then `secret`.
    fn login(&mut self, secret: &str) {
        self.console.key("ret");
        self.console.mark();
        self.console.line(secret);
    }

    fn register(&mut self, name: &str, wrong_first: bool) {
        self.open_menu();
        self.press_for("r", "Name for this machine:");
        self.console.mark();
        self.console.line(name);
        self.console.wait("Password:", self.deadline);
        if wrong_first {
            self.login("0000");
            self.console.wait("wrong PIN", self.deadline);
            self.console.mark();
            self.console.key("ret");
            self.menu_ready("rackcast console:");
            // iPXE keeps the name typed before: Enter takes it.
            self.press_for("r", "Name for this machine:");
            self.console.mark();
            self.console.key("ret");
            self.console.wait("Password:", self.deadline);
        }
        self.login(PIN);
        self.console.wait("started", self.deadline);
        self.console.mark();
    }

    fn deploy(&mut self) {
        self.open_menu();
        self.console.mark();
        self.console.key("d");
        self.menu_ready("onto this");
        // "Back" is highlighted (the default, should the technician walk
        // away); the image is the item above it.
        self.console.key("up");
        self.press_for("ret", "Password:");
        self.login(PIN);
        self.console.wait("started", self.deadline);
    }
}

#[test]
fn a_technician_registers_and_images_a_machine_from_its_console_on_seabios_and_ovmf() {
    if !facilities() {
        return;
    }
    let Some(cache) = kernel_cache() else { return };
    let _one = ONE_QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, _work) = work_dir();
    let dir = &dir;
    let boot_root = dir.join("boot");
    std::fs::create_dir_all(&boot_root).unwrap();
    let ca = make_ca(&dir.join("data"));
    env_build_named(&cache, &boot_root.join("linux-x64"), None, Some(&ca));
    std::fs::copy("/usr/lib/ipxe/ipxe.efi", boot_root.join("ipxe.efi")).unwrap();
    run_ok(
        Command::new(rc())
            .args(["env", "local-boot", "--root"])
            .arg(&boot_root),
    );
    let (golden, image) = golden_image(dir);
    let pin = dir.join("console.pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let mut lan = Lan::new(dir, 2);
    lan.start_server(
        dir,
        &boot_root,
        &format!("menu_pin_file = \"{}\"\nmenu_timeout = 5\n", pin.display()),
    );
    let up = lan.upload("golden", &image);
    assert!((200..300).contains(&up.0), "upload: {up:?}");

    let fws = [
        (Firmware::SeaBios, "tech-bios"),
        (Firmware::Ovmf, "tech-uefi"),
    ];
    let mut targets: Vec<Target> = fws
        .iter()
        .enumerate()
        .map(|(i, (fw, name))| {
            let disk = dir.join(format!("{name}.raw"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(DISK_BYTES as u64)
                .unwrap();
            Target {
                mac: format!("52:54:00:c0:e2:{:02x}", i + 1),
                fw: *fw,
                disk,
                serial: dir.join(format!("{name}.serial")),
                qemu_log: dir.join(format!("{name}.qemu")),
                name: name.to_string(),
                qemu: None,
                monitor: Some(dir.join(format!("{name}.monitor"))),
                registered: None,
                rebooted: None,
                marker: None,
            }
        })
        .collect();
    let start = Instant::now();
    let deadline = start + LIMIT;
    for (i, t) in targets.iter_mut().enumerate() {
        t.start(&lan, &lan.taps[i].clone(), dir);
    }
    let ctx = |lan: &Lan, targets: &[Target]| {
        format!(
            "{}\n=== server\n{}",
            targets.iter().map(Target::context).collect::<String>(),
            read_lossy(&lan.server_log)
        )
    };

    let job_of = |lan: &Lan, mac: &str, name: &str| -> Option<serde_json::Value> {
        let jobs = lan.api_ok("GET", "/api/v1/jobs", None);
        jobs.as_array()?
            .iter()
            .find(|j| j["name"] == name && j["spec"]["targets"][0] == mac)
            .cloned()
    };
    let wait_job = |lan: &Lan, targets: &[Target], mac: &str, name: &str| loop {
        if let Some(j) = job_of(lan, mac, name) {
            if j["status"] != "running" {
                assert_eq!(j["status"], "done", "{j:#}\n{}", ctx(lan, targets));
                return j;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} on {mac} not done within {LIMIT:?}\n{}",
            ctx(lan, targets)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut techs: Vec<Technician> = targets
        .iter()
        .map(|t| Technician {
            console: Console::open(t),
            deadline,
        })
        .collect();

    // Each technician at their machine at once, driven by its screen alone:
    // register (SeaBIOS tries a wrong PIN first), then, when the machine
    // is back at its prompt after the register job, deploy.
    std::thread::scope(|s| {
        for (i, tech) in techs.iter_mut().enumerate() {
            let name = fws[i].1;
            s.spawn(move || {
                tech.register(name, i == 0);
                tech.deploy();
            });
        }
    });
    let audit = lan.api_ok("GET", "/api/v1/audit", None);
    let refused: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"] == 403)
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#}");
    assert_eq!(refused[0]["origin"], format!("console {}", targets[0].mac));
    assert_eq!(refused[0]["action"], "console register");
    for (t, (_, name)) in targets.iter().zip(fws) {
        let j = wait_job(&lan, &targets, &t.mac, &format!("register {name}"));
        assert_eq!(j["spec"]["origin"], format!("console {} by pin", t.mac));
        let v = lan.api_ok("GET", &format!("/api/v1/targets/{}", t.mac), None);
        assert_eq!(v["name"], *name, "{v:#}");
        assert!(
            v["inventory"]["memory"].as_u64().unwrap_or(0) > 0,
            "no inventory: {v:#}"
        );
        assert!(
            !v["inventory"]["disks"].as_array().unwrap().is_empty(),
            "{v:#}"
        );
    }

    // The deploy jobs: imaged and verified, started from the consoles.
    for t in &targets {
        let j = wait_job(&lan, &targets, &t.mac, "deploy golden");
        assert_eq!(j["spec"]["origin"], format!("console {} by pin", t.mac));
        assert_eq!(j["targets"][0]["status"], "done", "{j:#}");
        eprintln!(
            "{}: imaged from its console after {:.1?}",
            t.name,
            start.elapsed()
        );
    }

    // Then, with no key at the prompt: the disk, and its marker.
    for t in &targets {
        let marker = match t.fw {
            Firmware::SeaBios => BIOS_MARKER,
            _ => UEFI_MARKER,
        };
        while !read_lossy(&t.serial).contains(marker) {
            assert!(
                Instant::now() < deadline,
                "{}: no disk boot\n{}",
                t.name,
                ctx(&lan, &targets)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        eprintln!("{}: its disk booted after {:.1?}", t.name, start.elapsed());
    }
    for t in &targets {
        let disk = std::fs::read(&t.disk).unwrap();
        let gold = std::fs::read(&golden).unwrap();
        assert!(
            blake3::hash(&disk) == blake3::hash(&gold),
            "{}: the disk is not the golden disk",
            t.name
        );
    }
    // The PIN never reached the server's log.
    assert!(!read_lossy(&lan.server_log).contains(PIN));
}
