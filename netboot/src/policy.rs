//! The boot policy: who boots what. The netboot crate only asks; the
//! deployment server's scheduler (`rackcast_server::SchedPolicy`) and
//! [`StaticPolicy`] (from a config file, for `rackcast netboot`) answer.
//!
//! Answers must come from memory: iPXE waits only about two seconds for a
//! proxy offer, so a policy never does I/O inside [`BootPolicy::decide`].

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;

use crate::arch::{ClientArch, ClientKind, MacAddr};
use crate::error::{Error, Result};

/// Where in the boot the question is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootStage {
    /// A DHCP DISCOVER (or full-mode REQUEST) on port 67.
    Discover,
    /// A boot-server REQUEST on port 4011.
    BootServer,
    /// iPXE fetching its script over HTTP.
    Script,
}

/// The question put to the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootQuery {
    /// The client's hardware address (chaddr).
    pub mac: MacAddr,
    /// The client's SMBIOS UUID from option 97, when it sent a non-zero one.
    pub uuid: Option<[u8; 16]>,
    /// Architecture from raw option 93.
    pub arch: ClientArch,
    /// Firmware PXE, UEFI HTTP boot or iPXE.
    pub kind: ClientKind,
    /// Where in the boot we are.
    pub stage: BootStage,
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootAction {
    /// Stay silent: the firmware moves on to its next boot device.
    Ignore,
    /// Boot the local disk: silence for firmware, `exit`/`sanboot` for iPXE.
    LocalDisk,
    /// Chain this file, a path relative to the served root (TFTP for PXE,
    /// HTTP for HTTP boot and iPXE).
    ChainFile(String),
    /// Run this iPXE script (firmware clients are first handed the iPXE
    /// loader for their architecture). `{server}`, `{http}` and `{mac}` are
    /// replaced when served, because under proxy-DHCP iPXE's `${next-server}`
    /// names the primary DHCP server, not us.
    IpxeScript(String),
}

/// Decides, per client, what to boot.
pub trait BootPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// Answers `query` from memory.
    fn decide(&self, query: &BootQuery) -> BootAction;

    /// The first-stage iPXE loader for `arch` (a path under the root), used
    /// when a firmware client must run an iPXE script.
    fn ipxe_loader(&self, arch: ClientArch) -> Option<String> {
        default_loader(arch)
    }

    /// A file the policy produces instead of the root (e.g. a generated
    /// config); checked before the root by TFTP and HTTP.
    fn virtual_file(&self, _path: &str) -> Option<Bytes> {
        None
    }

    /// Answers a preboot console request (`GET /console/<mac>/<action>`,
    /// from an iPXE menu the policy served) with an iPXE script. Unlike
    /// [`BootPolicy::decide`] the answer may take I/O, so it comes as a
    /// future; `None` (the default) answers 404: no console here.
    fn console(&self, _req: ConsoleRequest) -> Option<ConsoleAnswer> {
        None
    }
}

/// A request from the preboot console: a technician's menu choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRequest {
    /// The machine, already checked to be the requesting peer.
    pub mac: MacAddr,
    /// Its architecture (`arch=` in the query, raw option 93).
    pub arch: ClientArch,
    /// What was chosen: the path's last segment (`menu`, `register`, ...).
    pub action: String,
    /// The query's parameters, percent-decoded.
    pub params: Vec<(String, String)>,
    /// The user name and password of the request's HTTP Basic
    /// authorization: iPXE sends what `login` asked for when the answer
    /// was [`ConsoleReply::Login`] and the script's URL carries them
    /// (`{http-login}`). Never log the password.
    pub login: Option<(String, String)>,
}

/// What a console request is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleReply {
    /// This iPXE script (`{http}`, `{http-login}`, `{server}` and `{mac}`
    /// filled in when served).
    Script(String),
    /// 401 with a Basic challenge: credentials are needed. iPXE then
    /// retries with the ones in the URL.
    Login,
}

impl ConsoleRequest {
    /// The first value of parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A console answer to come.
pub type ConsoleAnswer = std::pin::Pin<Box<dyn std::future::Future<Output = ConsoleReply> + Send>>;

/// The usual iPXE binary names per platform.
pub fn default_loader(arch: ClientArch) -> Option<String> {
    match arch.platform() {
        ClientArch::X86Bios => Some("undionly.kpxe".into()),
        ClientArch::X64Uefi => Some("ipxe.efi".into()),
        ClientArch::X86Uefi => Some("ipxe-i386.efi".into()),
        ClientArch::Arm64Uefi => Some("ipxe-arm64.efi".into()),
        _ => None,
    }
}

/// The quick-local-boot loader for `arch`, a path under the root: a GRUB
/// that chains the first EFI loader it finds on a local disk
/// (`rackcast env local-boot` writes it). A UEFI machine set to boot from
/// the network first, with no work, gets it and reaches its disk in
/// seconds; silence would cost it the firmware's PXE and HTTP boot
/// timeouts (2-3 minutes) before the disk.
pub fn local_loader(arch: ClientArch) -> Option<&'static str> {
    match arch.platform() {
        ClientArch::X64Uefi => Some("rackcast-local-x64.efi"),
        ClientArch::Arm64Uefi => Some("rackcast-local-arm64.efi"),
        _ => None,
    }
}

/// A policy from a TOML file: per-MAC rules and a default rule.
///
/// ```toml
/// [default]
/// action = "script"            # ignore | local | chain | script
/// script = "#!ipxe\nchain http://{server}/files/vmlinuz"
///
/// [loaders]                    # optional: iPXE loader per platform
/// x64-uefi = "ipxe.efi"
///
/// [[host]]
/// mac = "52:54:00:12:34:56"
/// action = "chain"
/// file = "bootx64.efi"
///
/// [files]                      # optional: virtual files served by TFTP/HTTP
/// "hello.txt" = "hi"
/// ```
#[derive(Debug, Clone, Default)]
pub struct StaticPolicy {
    default: Rule,
    hosts: HashMap<MacAddr, Rule>,
    loaders: HashMap<String, String>,
    files: HashMap<String, Bytes>,
}

/// One rule: what a class of clients boots, optionally per client kind.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: BootAction,
    /// Overrides for firmware PXE / HTTP boot clients (e.g. chain a loader first).
    by_kind: HashMap<String, BootAction>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            action: BootAction::Ignore,
            by_kind: HashMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    default: Option<RuleConfig>,
    #[serde(default)]
    host: Vec<HostConfig>,
    #[serde(default)]
    loaders: HashMap<String, String>,
    #[serde(default)]
    files: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    action: String,
    file: Option<String>,
    script: Option<String>,
    /// Per client kind overrides: `pxe`, `http-boot`, `ipxe`.
    #[serde(default)]
    kind: HashMap<String, RuleConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostConfig {
    mac: String,
    #[serde(flatten)]
    rule: RuleConfig,
}

impl StaticPolicy {
    /// A policy answering `action` to everyone.
    pub fn with_default(action: BootAction) -> Self {
        StaticPolicy {
            default: Rule {
                action,
                by_kind: HashMap::new(),
            },
            ..Self::default()
        }
    }

    /// Sets the rule of one MAC.
    pub fn set_host(&mut self, mac: MacAddr, action: BootAction) {
        self.hosts.insert(
            mac,
            Rule {
                action,
                by_kind: HashMap::new(),
            },
        );
    }

    /// Adds a virtual file.
    pub fn add_file(&mut self, path: &str, data: Bytes) {
        self.files.insert(path.to_string(), data);
    }

    /// Parses the TOML text of a policy file.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: FileConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let mut policy = StaticPolicy {
            loaders: cfg.loaders,
            files: cfg
                .files
                .into_iter()
                .map(|(k, v)| (k, Bytes::from(v)))
                .collect(),
            ..Self::default()
        };
        if let Some(d) = cfg.default {
            policy.default = rule_from(&d, "default")?;
        }
        for h in cfg.host {
            let mac = MacAddr::parse(&h.mac)?;
            policy.hosts.insert(mac, rule_from(&h.rule, &h.mac)?);
        }
        Ok(policy)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

impl BootPolicy for StaticPolicy {
    fn decide(&self, q: &BootQuery) -> BootAction {
        let rule = self.hosts.get(&q.mac).unwrap_or(&self.default);
        rule.by_kind
            .get(&q.kind.to_string())
            .unwrap_or(&rule.action)
            .clone()
    }

    fn ipxe_loader(&self, arch: ClientArch) -> Option<String> {
        self.loaders
            .get(&arch.platform().name())
            .cloned()
            .or_else(|| default_loader(arch))
    }

    fn virtual_file(&self, path: &str) -> Option<Bytes> {
        self.files.get(path).cloned()
    }
}

fn action_from(r: &RuleConfig, who: &str) -> Result<BootAction> {
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| Error::Config(format!("{who}: action {:?} needs `{what}`", r.action)))
    };
    Ok(match r.action.as_str() {
        "ignore" => BootAction::Ignore,
        "local" => BootAction::LocalDisk,
        "chain" => BootAction::ChainFile(need(&r.file, "file")?),
        "script" => BootAction::IpxeScript(need(&r.script, "script")?),
        other => {
            return Err(Error::Config(format!(
                "{who}: unknown action {other:?} (ignore, local, chain, script)"
            )))
        }
    })
}

fn rule_from(r: &RuleConfig, who: &str) -> Result<Rule> {
    let mut by_kind = HashMap::new();
    for (k, v) in &r.kind {
        if !matches!(k.as_str(), "pxe" | "http-boot" | "ipxe") {
            return Err(Error::Config(format!("{who}: unknown client kind {k:?}")));
        }
        by_kind.insert(k.clone(), action_from(v, who)?);
    }
    Ok(Rule {
        action: action_from(r, who)?,
        by_kind,
    })
}

/// The iPXE script text for `action`, with placeholders filled in; `None`
/// when the client should get nothing.
pub fn ipxe_script(
    action: &BootAction,
    arch: ClientArch,
    server: &str,
    http: &str,
    mac: MacAddr,
) -> Option<String> {
    let fill = |s: &str| {
        s.replace("{server}", server)
            .replace("{http}", http)
            .replace("{mac}", &mac.to_string())
    };
    match action {
        BootAction::Ignore => None,
        BootAction::LocalDisk if arch.is_bios() => {
            Some("#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n".into())
        }
        // `|| exit`: without the loader in the root (a 404), back to the
        // firmware as before.
        BootAction::LocalDisk => Some(match local_loader(arch) {
            Some(l) => format!("#!ipxe\nchain {http}/files/{l} || exit\n"),
            None => "#!ipxe\nexit\n".into(),
        }),
        BootAction::ChainFile(f) => Some(format!("#!ipxe\nchain {http}/files/{f}\n")),
        BootAction::IpxeScript(s) => Some(fill(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 1, 2, 3]);

    fn q(kind: ClientKind) -> BootQuery {
        BootQuery {
            mac: MAC,
            uuid: None,
            arch: ClientArch::X64Uefi,
            kind,
            stage: BootStage::Discover,
        }
    }

    #[test]
    fn toml_per_mac_kind_and_default() {
        let p = StaticPolicy::from_toml(
            r##"
            [default]
            action = "local"
            [loaders]
            x64-uefi = "my-ipxe.efi"
            [[host]]
            mac = "52:54:00:01:02:03"
            action = "script"
            script = "#!ipxe\nchain http://{server}/x?m={mac}"
            [host.kind.pxe]
            action = "chain"
            file = "boot.efi"
            "##,
        )
        .unwrap();
        assert_eq!(
            p.decide(&q(ClientKind::Pxe)),
            BootAction::ChainFile("boot.efi".into())
        );
        assert!(matches!(
            p.decide(&q(ClientKind::Ipxe)),
            BootAction::IpxeScript(_)
        ));
        let mut other = q(ClientKind::Ipxe);
        other.mac = MacAddr([1; 6]);
        assert_eq!(p.decide(&other), BootAction::LocalDisk);
        assert_eq!(
            p.ipxe_loader(ClientArch::X64UefiHttp).as_deref(),
            Some("my-ipxe.efi")
        );
        assert_eq!(
            p.ipxe_loader(ClientArch::X86Bios).as_deref(),
            Some("undionly.kpxe")
        );
        let s = ipxe_script(
            &p.decide(&q(ClientKind::Ipxe)),
            ClientArch::X64Uefi,
            "10.0.0.1",
            "http://10.0.0.1:80",
            MAC,
        )
        .unwrap();
        assert_eq!(s, "#!ipxe\nchain http://10.0.0.1/x?m=52:54:00:01:02:03");
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(StaticPolicy::from_toml("[default]\naction = \"chain\"\n").is_err());
        assert!(StaticPolicy::from_toml("[default]\naction = \"reboot\"\n").is_err());
        assert!(StaticPolicy::from_toml("[[host]]\nmac = \"zz\"\naction = \"local\"\n").is_err());
    }

    #[test]
    fn local_disk_script_per_firmware() {
        let bios = ipxe_script(&BootAction::LocalDisk, ClientArch::X86Bios, "s", "h", MAC).unwrap();
        assert!(bios.contains("sanboot"));
        let efi = ipxe_script(&BootAction::LocalDisk, ClientArch::X64Uefi, "s", "h", MAC).unwrap();
        assert_eq!(
            efi,
            "#!ipxe\nchain h/files/rackcast-local-x64.efi || exit\n"
        );
        let http = ClientArch::from_raw(19);
        let arm = ipxe_script(&BootAction::LocalDisk, http, "s", "h", MAC).unwrap();
        assert!(
            arm.contains("h/files/rackcast-local-arm64.efi || exit"),
            "{arm}"
        );
        let ia32 = ipxe_script(&BootAction::LocalDisk, ClientArch::X86Uefi, "s", "h", MAC);
        assert_eq!(ia32.unwrap(), "#!ipxe\nexit\n");
        assert!(ipxe_script(&BootAction::Ignore, ClientArch::X64Uefi, "s", "h", MAC).is_none());
    }
}
