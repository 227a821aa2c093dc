//! Booting: what the kernel command line says about the server, the UEFI
//! one-time network boot (`efibootmgr`), and the reboot itself.

use std::path::Path;
use std::process::Command;

use crate::error::{AgentError, Result};

/// The `rackcast.*` parameters of a kernel command line, as put there by
/// the environment's boot definition (`rackcast.server={server}` ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    /// `rackcast.server=URL`.
    pub server: Option<String>,
    /// `rackcast.token=T` (the enrollment token).
    pub token: Option<String>,
    /// `rackcast.env=NAME`: the environment this kernel is.
    pub env: Option<String>,
    /// `rackcast.disk=PATH`: the default disk.
    pub disk: Option<String>,
}

impl KernelArgs {
    /// Parses `/proc/cmdline` text.
    pub fn parse(cmdline: &str) -> KernelArgs {
        KernelArgs {
            server: cmdline_value(cmdline, "rackcast.server"),
            token: cmdline_value(cmdline, "rackcast.token"),
            env: cmdline_value(cmdline, "rackcast.env"),
            disk: cmdline_value(cmdline, "rackcast.disk"),
        }
    }

    /// Whether this kernel was booted by a rackcast server (the agent runs
    /// in an automation environment, so rebooting the machine is its job).
    pub fn booted_by_rackcast(&self) -> bool {
        self.server.is_some()
    }
}

/// The value of `key=value` on a kernel command line; the last one wins (as
/// in the kernel). Double quotes group words: `key="a b"` and `"key=a b"`.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline_words(cmdline)
        .into_iter()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            (k == key).then(|| v.to_string())
        })
        .next_back()
}

fn cmdline_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// One `BootXXXX` entry of `efibootmgr -v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The entry number (the hex digits of `BootXXXX`).
    pub num: u16,
    /// Marked active (`*`).
    pub active: bool,
    /// The description, e.g. `UEFI PXEv4 (MAC:525400123456)`.
    pub label: String,
    /// The device path, when printed (`-v`).
    pub path: String,
}

impl BootEntry {
    /// Whether the entry boots from the network (PXE, HTTP boot, iPXE).
    pub fn is_network(&self) -> bool {
        let text = format!("{} {}", self.label, self.path).to_ascii_lowercase();
        [
            "pxe", "network", "ipv4(", "ipv6(", "http", "mac(", "iba ", "nic",
        ]
        .iter()
        .any(|w| text.contains(w))
    }
}

/// What `efibootmgr -v` printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// `BootCurrent`.
    pub current: Option<u16>,
    /// `BootNext`, when set.
    pub next: Option<u16>,
    /// `BootOrder`.
    pub order: Vec<u16>,
    /// The entries, as listed.
    pub entries: Vec<BootEntry>,
}

/// Parses `efibootmgr` (or `efibootmgr -v`) output; lines it does not know
/// are skipped.
pub fn parse_efibootmgr(text: &str) -> BootConfig {
    let mut cfg = BootConfig::default();
    let hex = |s: &str| u16::from_str_radix(s.trim(), 16).ok();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("BootCurrent:") {
            cfg.current = hex(v);
        } else if let Some(v) = line.strip_prefix("BootNext:") {
            cfg.next = hex(v);
        } else if let Some(v) = line.strip_prefix("BootOrder:") {
            cfg.order = v.split(',').filter_map(hex).collect();
        } else if let Some(rest) = line.strip_prefix("Boot") {
            let (Some(digits), Some(tail)) = (rest.get(..4), rest.get(4..)) else {
                continue;
            };
            let Some(num) = hex(digits).filter(|_| digits.bytes().all(|b| b.is_ascii_hexdigit()))
            else {
                continue;
            };
            let active = tail.starts_with('*');
            let tail = tail.strip_prefix('*').unwrap_or(tail);
            let (label, path) = match tail.split_once('\t') {
                Some((l, p)) => (l.trim(), p.trim()),
                None => (tail.trim(), ""),
            };
            cfg.entries.push(BootEntry {
                num,
                active,
                label: label.to_string(),
                path: path.to_string(),
            });
        }
    }
    cfg
}

/// The network entry to boot next: active ones first, then one on the NIC
/// with `mac` (when given), IPv4 before IPv6, PXE before HTTP, then in
/// `BootOrder` order.
pub fn pick_network_entry(cfg: &BootConfig, mac: Option<&str>) -> Option<u16> {
    let mac = mac.map(|m| m.replace([':', '-'], "").to_ascii_lowercase());
    cfg.entries
        .iter()
        .filter(|e| e.is_network())
        .min_by_key(|e| {
            let text = format!("{} {}", e.label, e.path).to_ascii_lowercase();
            let on_our_nic = mac.as_ref().is_some_and(|m| text.contains(m.as_str()));
            let order = cfg
                .order
                .iter()
                .position(|n| *n == e.num)
                .unwrap_or(usize::MAX);
            (
                !e.active,
                !on_our_nic,
                text.contains("ipv6"),
                text.contains("http"),
                order,
                e.num,
            )
        })
        .map(|e| e.num)
}

/// Whether the machine booted through UEFI (so `efibootmgr` can work).
pub fn is_uefi() -> bool {
    Path::new("/sys/firmware/efi").exists()
}

/// Sets UEFI `BootNext` to the best network entry, so the next boot (only)
/// asks the network. Returns the entry chosen.
pub fn set_network_boot_next(mac: Option<&str>) -> Result<BootEntry> {
    let out = run_capture("efibootmgr", &["-v"])?;
    let cfg = parse_efibootmgr(&out);
    let num = pick_network_entry(&cfg, mac).ok_or_else(|| {
        AgentError::BootNext(format!(
            "no network boot entry among {} entries",
            cfg.entries.len()
        ))
    })?;
    run_capture("efibootmgr", &["-n", &format!("{num:04X}")])?;
    Ok(cfg
        .entries
        .into_iter()
        .find(|e| e.num == num)
        .unwrap_or(BootEntry {
            num,
            active: true,
            label: String::new(),
            path: String::new(),
        }))
}

/// Runs the reboot command. Returns only if the command returned success
/// without the machine going down yet (the caller then just waits).
pub fn reboot(command: &[String]) -> Result<()> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| AgentError::Config("the reboot command is empty".into()))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_capture(program, &args)
        .map(|_| ())
        .map_err(|e| match e {
            AgentError::BootNext(detail) => AgentError::Reboot {
                command: command.join(" "),
                detail,
            },
            e => e,
        })
}

fn run_capture(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| AgentError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(AgentError::BootNext(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let k = KernelArgs::parse(
            "BOOT_IMAGE=/vmlinuz root=/dev/ram0 rackcast.server=http://10.0.0.1:8080 \
             rackcast.token=abc123 rackcast.env=linux-x64 quiet\n",
        );
        assert_eq!(k.server.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(k.token.as_deref(), Some("abc123"));
        assert_eq!(k.env.as_deref(), Some("linux-x64"));
        assert_eq!(k.disk, None);
        assert!(k.booted_by_rackcast());
        assert!(!KernelArgs::parse("quiet splash").booted_by_rackcast());
    }

    #[test]
    fn kernel_command_line_quotes_and_last_wins() {
        let c =
            r#"a "rackcast.disk=/dev/disk/by-id/my disk" rackcast.env="one" rackcast.env=two x="#;
        assert_eq!(
            cmdline_value(c, "rackcast.disk").as_deref(),
            Some("/dev/disk/by-id/my disk")
        );
        assert_eq!(cmdline_value(c, "rackcast.env").as_deref(), Some("two"));
        assert_eq!(cmdline_value(c, "x").as_deref(), Some(""));
        assert_eq!(cmdline_value(c, "a"), None, "a flag without = has no value");
        assert_eq!(cmdline_value(c, "rackcast"), None);
        assert_eq!(
            cmdline_value(r#"k="a b""#, "k").as_deref(),
            Some("a b"),
            "quotes in the value"
        );
    }

    const OVMF: &str = "BootCurrent: 0001
Timeout: 0 seconds
BootOrder: 0001,0000,0002,0003,0004
Boot0000* UiApp\tFvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)
Boot0001* UEFI QEMU HARDDISK QM00001 \tPciRoot(0x0)/Pci(0x1,0x1)/Ata(0x0)
Boot0002* UEFI HTTPv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)/Uri()
Boot0003* UEFI PXEv6 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv6([::]:<->[::]:,0,Static)
Boot0004* UEFI PXEv4 (MAC:525400123456)\tPciRoot(0x0)/Pci(0x3,0x0)/MAC(525400123456,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)
Boot0005  UEFI PXEv4 (MAC:5254000000ff)\tPciRoot(0x0)/Pci(0x4,0x0)/MAC(5254000000ff,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)
      dp: 02 01 0c 00 d0 41 03 0a 00 00 00 00
";

    #[test]
    fn efibootmgr_verbose_output() {
        let c = parse_efibootmgr(OVMF);
        assert_eq!(c.current, Some(1));
        assert_eq!(c.next, None);
        assert_eq!(c.order, [1, 0, 2, 3, 4]);
        assert_eq!(c.entries.len(), 6);
        assert_eq!(c.entries[4].label, "UEFI PXEv4 (MAC:525400123456)");
        assert!(c.entries[4].path.starts_with("PciRoot(0x0)"));
        assert!(!c.entries[5].active);
        let disk = &c.entries[1];
        assert_eq!(disk.label, "UEFI QEMU HARDDISK QM00001");
        assert!(!disk.is_network());
        assert!(!c.entries[0].is_network());
    }

    #[test]
    fn network_entry_prefers_active_ipv4_pxe_on_our_nic() {
        let c = parse_efibootmgr(OVMF);
        assert_eq!(pick_network_entry(&c, None), Some(4));
        assert_eq!(pick_network_entry(&c, Some("52:54:00:12:34:56")), Some(4));
        // The inactive entry is on our NIC, but an active one still wins.
        assert_eq!(pick_network_entry(&c, Some("52:54:00:00:00:ff")), Some(4));
        let none = parse_efibootmgr("BootOrder: 0001\nBoot0001* Linux Boot Manager\tHD(1,GPT)\n");
        assert_eq!(pick_network_entry(&none, None), None);
    }

    #[test]
    fn efibootmgr_plain_output_with_boot_next() {
        let text = "BootCurrent: 0003
BootNext: 0007
Timeout: 1 seconds
BootOrder: 0003,0007,0001
Boot0001* Hard Drive
Boot0003* debian
Boot0007* Network Card
Bootable junk line
";
        let c = parse_efibootmgr(text);
        assert_eq!(c.next, Some(7));
        assert_eq!(c.entries.len(), 3);
        assert_eq!(pick_network_entry(&c, Some("aa:bb:cc:dd:ee:ff")), Some(7));
    }
}
