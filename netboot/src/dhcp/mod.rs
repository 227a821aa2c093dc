//! DHCP and proxy-DHCP: the sans-IO decision core over `dhcproto`, and the
//! socket shell.
//!
//! [`DhcpServer::handle`] takes one datagram with where it came from and the
//! time, and returns at most one reply with where to send it. It never blocks:
//! iPXE waits only about two seconds for a proxy offer.

mod classify;
pub mod leases;
pub mod shell;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};

pub use classify::{classify, ClientInfo};
pub use leases::{Lease, LeaseTable};

use crate::arch::{ClientArch, ClientKind, MacAddr};
use crate::events::Step;
use crate::policy::{local_loader, BootAction, BootPolicy, BootQuery, BootStage};

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The PXE boot-server (proxy "BINL") port.
pub const BOOT_SERVER_PORT: u16 = 4011;

/// How a proxy offer tells firmware PXE clients their boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyStyle {
    /// Offer without option 43 or boot file: the client asks again on port
    /// 4011 and gets the file there. What UEFI firmware expects; the default.
    #[default]
    BootServer,
    /// Offer with the boot file and option 43 "PXE discovery control = 8"
    /// (skip discovery, use the boot file): one round trip fewer.
    Bypass,
}

/// Full-DHCP settings (isolated provisioning networks).
#[derive(Debug, Clone)]
pub struct FullConfig {
    /// Subnet mask handed out.
    pub netmask: Ipv4Addr,
    /// Default gateway, if any.
    pub router: Option<Ipv4Addr>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
}

/// Settings of the decision core.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Our address on the boot network: next-server, server identifier, URLs.
    pub server_ip: Ipv4Addr,
    /// Base URL of our HTTP server, e.g. `http://10.0.0.1:8080`.
    pub http_base: String,
    /// Proxy offer style for firmware PXE.
    pub style: ReplyStyle,
    /// Extra vendor-class prefixes treated as PXE clients.
    pub allow_vendor: Vec<String>,
    /// `Some` in full-DHCP mode.
    pub full: Option<FullConfig>,
    /// Platforms whose [`local_loader`] is in the root: their firmware
    /// clients with no work get it instead of silence.
    pub local_boot: Vec<ClientArch>,
}

/// A datagram as received.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// The local port it arrived on (67 or 4011).
    pub local_port: u16,
    /// The payload.
    pub data: &'a [u8],
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination (255.255.255.255 for broadcasts).
    pub dst: SocketAddrV4,
    /// The encoded message.
    pub data: Vec<u8>,
}

/// What the core decided about one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The reply, if any.
    pub reply: Option<Reply>,
    /// The client, when the datagram parsed.
    pub mac: Option<MacAddr>,
    /// The boot step to log, when worth a line (silence for non-boot clients
    /// in proxy mode is not).
    pub step: Option<Step>,
    /// What to say about it.
    pub detail: String,
    /// The client's address when known (4011 source, full-mode ACK), so TFTP
    /// and HTTP log lines can name the MAC.
    pub client_ip: Option<Ipv4Addr>,
    /// The client's architecture and boot kind, for metrics; `None` when
    /// the datagram did not parse.
    pub client: Option<(ClientArch, Option<ClientKind>)>,
}

impl Decision {
    fn drop_silently() -> Self {
        Decision {
            reply: None,
            mac: None,
            step: None,
            detail: String::new(),
            client_ip: None,
            client: None,
        }
    }
}

/// Counters of the DHCP core.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhcpStats {
    /// Datagrams handled.
    pub received: u64,
    /// Replies produced.
    pub replied: u64,
    /// Datagrams that did not parse; dropped.
    pub malformed: u64,
    /// Well-formed requests not answered.
    pub ignored: u64,
    /// DECLINEs of an address not leased or offered to their sender;
    /// ignored.
    pub declines_refused: u64,
}

/// The DHCP / proxy-DHCP decision core.
#[derive(Debug)]
pub struct DhcpServer {
    cfg: DhcpConfig,
    policy: Arc<dyn BootPolicy>,
    leases: Option<LeaseTable>,
    stats: DhcpStats,
}

impl DhcpServer {
    /// A proxy-DHCP core (`leases` is `None`) or a full one.
    pub fn new(cfg: DhcpConfig, policy: Arc<dyn BootPolicy>, leases: Option<LeaseTable>) -> Self {
        DhcpServer {
            cfg,
            policy,
            leases,
            stats: DhcpStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DhcpStats {
        self.stats
    }

    /// The lease table in full mode.
    pub fn leases(&self) -> Option<&LeaseTable> {
        self.leases.as_ref()
    }

    /// True (once) when leases changed and must be saved.
    pub fn take_leases_dirty(&mut self) -> bool {
        self.leases.as_mut().is_some_and(|l| l.take_dirty())
    }

    /// Decides about one datagram; `now` is unix seconds (leases outlive restarts).
    pub fn handle(&mut self, now: u64, rx: Received<'_>) -> Decision {
        self.stats.received += 1;
        let msg = match parse(rx.data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return Decision::drop_silently();
            }
        };
        let d = self.decide(now, &rx, &msg);
        if d.reply.is_some() {
            self.stats.replied += 1;
        } else {
            self.stats.ignored += 1;
        }
        d
    }

    fn decide(&mut self, now: u64, rx: &Received<'_>, msg: &Message) -> Decision {
        let info = classify(msg, &self.cfg.allow_vendor);
        let mut d = Decision {
            reply: None,
            mac: Some(info.mac),
            step: None,
            detail: String::new(),
            client_ip: None,
            client: Some((info.arch, info.kind)),
        };
        let Some(mtype) = msg.opts().msg_type() else {
            return d;
        };
        if rx.local_port == BOOT_SERVER_PORT {
            if !matches!(mtype, MessageType::Request | MessageType::Inform) {
                return d;
            }
            let Some(kind) = info.kind else {
                return d;
            };
            let boot = self.boot_info(&info, kind, BootStage::BootServer);
            let Some((file, why)) = boot else {
                d.step = Some(Step::Ignored);
                d.detail = format!(
                    "4011 {} {kind}: {}",
                    info.arch, "policy says no network boot"
                );
                return d;
            };
            let mut reply = self.reply_base(msg, MessageType::Ack, &info);
            reply.set_ciaddr(msg.ciaddr());
            set_boot(&mut reply, self.cfg.server_ip, &file, &info, kind);
            if let Some(item) = &info.boot_item {
                // Echo the requested boot item (type, layer) as PXE expects.
                let mut o43 = vec![71, item.len() as u8];
                o43.extend_from_slice(item);
                o43.push(255);
                reply.opts_mut().insert(DhcpOption::VendorExtensions(o43));
            }
            let dst = if rx.src.ip().is_unspecified() {
                SocketAddrV4::new(
                    nonzero(msg.ciaddr()).unwrap_or(Ipv4Addr::BROADCAST),
                    rx.src.port(),
                )
            } else {
                rx.src
            };
            d.client_ip = nonzero(*dst.ip()).filter(|ip| !ip.is_broadcast());
            d.step = Some(Step::BootServerAck);
            d.detail = format!("{} {kind} boot file {file} ({why})", info.arch);
            d.reply = encode(&reply).map(|data| Reply { dst, data });
            return d;
        }
        if self.leases.is_some() {
            return self.decide_full(now, rx, msg, mtype, &info, d);
        }
        // Proxy mode on 67: only DISCOVERs of boot clients get an offer.
        if mtype != MessageType::Discover {
            return d;
        }
        let Some(kind) = info.kind else {
            return d;
        };
        let boot = self.boot_info(&info, kind, BootStage::Discover);
        let Some((file, why)) = boot else {
            d.step = Some(Step::Ignored);
            d.detail = format!("{} {kind}: policy says no network boot", info.arch);
            return d;
        };
        let mut reply = self.reply_base(msg, MessageType::Offer, &info);
        let deferred = kind == ClientKind::Pxe && self.cfg.style == ReplyStyle::BootServer;
        if deferred {
            reply.set_siaddr(self.cfg.server_ip);
            d.detail = format!(
                "{} {kind} proxy offer, boot file {file} on 4011 ({why})",
                info.arch
            );
        } else {
            set_boot(&mut reply, self.cfg.server_ip, &file, &info, kind);
            if kind == ClientKind::Pxe {
                reply
                    .opts_mut()
                    .insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            }
            d.detail = format!("{} {kind} proxy offer, boot file {file} ({why})", info.arch);
        }
        d.step = Some(Step::Offer);
        d.reply = encode(&reply).map(|data| Reply {
            dst: destination(msg, rx),
            data,
        });
        d
    }

    fn decide_full(
        &mut self,
        now: u64,
        rx: &Received<'_>,
        msg: &Message,
        mtype: MessageType,
        info: &ClientInfo,
        mut d: Decision,
    ) -> Decision {
        let requested = msg
            .opts()
            .get(OptionCode::RequestedIpAddress)
            .and_then(|o| match o {
                DhcpOption::RequestedIpAddress(ip) => Some(*ip),
                _ => None,
            });
        let server_id = msg
            .opts()
            .get(OptionCode::ServerIdentifier)
            .and_then(|o| match o {
                DhcpOption::ServerIdentifier(ip) => Some(*ip),
                _ => None,
            });
        let Some(leases) = self.leases.as_mut() else {
            return d;
        };
        let (rtype, yiaddr) = match mtype {
            MessageType::Discover => match leases.offer(now, info.mac, requested) {
                Some(ip) => (MessageType::Offer, ip),
                None => {
                    d.step = Some(Step::Ignored);
                    d.detail = "pool exhausted".into();
                    return d;
                }
            },
            MessageType::Request => {
                if server_id.is_some_and(|s| s != self.cfg.server_ip) {
                    return d; // the client chose another server
                }
                let Some(ip) = requested.or_else(|| nonzero(msg.ciaddr())) else {
                    return d;
                };
                if leases.request(now, info.mac, ip) {
                    (MessageType::Ack, ip)
                } else {
                    let mut nak = Message::default();
                    fill_header(&mut nak, msg);
                    nak.opts_mut()
                        .insert(DhcpOption::MessageType(MessageType::Nak));
                    nak.opts_mut()
                        .insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
                    d.step = Some(Step::Nak);
                    d.detail = format!("{ip} is not theirs");
                    let dst = if msg.giaddr().is_unspecified() {
                        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                    } else {
                        SocketAddrV4::new(msg.giaddr(), SERVER_PORT)
                    };
                    d.reply = encode(&nak).map(|data| Reply { dst, data });
                    return d;
                }
            }
            MessageType::Release => {
                leases.release(info.mac, msg.ciaddr());
                d.step = Some(Step::Released);
                d.detail = format!("released {}", msg.ciaddr());
                return d;
            }
            MessageType::Decline => {
                let Some(ip) = requested else {
                    return d;
                };
                if leases.decline(now, info.mac, ip) {
                    d.step = Some(Step::Released);
                    d.detail = format!("declined {ip}");
                } else {
                    self.stats.declines_refused += 1;
                    d.step = Some(Step::Ignored);
                    d.detail = format!("DECLINE of {ip}, which is not theirs, ignored");
                }
                return d;
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            _ => return d,
        };
        let lease_secs = leases.lease_secs();
        let mut reply = self.reply_base(msg, rtype, info);
        reply.set_yiaddr(yiaddr);
        if let Some(full) = &self.cfg.full {
            let o = reply.opts_mut();
            o.insert(DhcpOption::SubnetMask(full.netmask));
            if let Some(r) = full.router {
                o.insert(DhcpOption::Router(vec![r]));
            }
            if !full.dns.is_empty() {
                o.insert(DhcpOption::DomainNameServer(full.dns.clone()));
            }
        }
        if mtype != MessageType::Inform {
            let o = reply.opts_mut();
            o.insert(DhcpOption::AddressLeaseTime(lease_secs));
            o.insert(DhcpOption::Renewal(lease_secs / 2));
            o.insert(DhcpOption::Rebinding(lease_secs / 8 * 7));
        }
        let mut detail = format!("{yiaddr}");
        if info.kind.is_none() {
            // A plain client on the provisioning network: address only.
            reply.opts_mut().remove(OptionCode::ClassIdentifier);
        }
        if let Some(kind) = info.kind {
            let stage = BootStage::Discover;
            match self.boot_info(info, kind, stage) {
                Some((file, why)) => {
                    set_boot(&mut reply, self.cfg.server_ip, &file, info, kind);
                    detail = format!("{yiaddr} {} {kind} boot file {file} ({why})", info.arch);
                }
                None => {
                    reply.opts_mut().remove(OptionCode::ClassIdentifier);
                    detail = format!("{yiaddr} {} {kind}, no network boot", info.arch);
                }
            }
        }
        d.step = Some(if rtype == MessageType::Offer {
            Step::Offer
        } else {
            Step::Ack
        });
        if rtype == MessageType::Ack {
            d.client_ip = nonzero(yiaddr);
        }
        d.detail = detail;
        d.reply = encode(&reply).map(|data| Reply {
            dst: destination(msg, rx),
            data,
        });
        d
    }

    /// What to boot: `(file or URL, reason)`, or `None` to stay silent.
    fn boot_info(
        &self,
        info: &ClientInfo,
        kind: ClientKind,
        stage: BootStage,
    ) -> Option<(String, String)> {
        let action = self.policy.decide(&BootQuery {
            mac: info.mac,
            uuid: info.uuid,
            arch: info.arch,
            kind,
            stage,
        });
        let base = &self.cfg.http_base;
        // Dashes, not colons: iPXE percent-encodes ':' in URL paths.
        let script_url = || {
            let mac = info.mac.to_string().replace(':', "-");
            format!("{base}/ipxe/{mac}?arch={}", info.arch.raw())
        };
        let out = match (kind, &action) {
            (_, BootAction::Ignore) => None,
            (ClientKind::Ipxe, _) => Some((script_url(), "ipxe script")),
            (ClientKind::Pxe, BootAction::LocalDisk) => self
                .local_loader(info.arch)
                .map(|l| (l.to_string(), "local loader")),
            (ClientKind::Http, BootAction::LocalDisk) => self
                .local_loader(info.arch)
                .map(|l| (format!("{base}/files/{l}"), "local loader")),
            (ClientKind::Pxe, BootAction::ChainFile(f)) => Some((f.clone(), "chain")),
            (ClientKind::Http, BootAction::ChainFile(f)) => {
                Some((format!("{base}/files/{f}"), "chain"))
            }
            (ClientKind::Pxe, BootAction::IpxeScript(_)) => self
                .policy
                .ipxe_loader(info.arch)
                .map(|l| (l, "ipxe loader")),
            (ClientKind::Http, BootAction::IpxeScript(_)) => self
                .policy
                .ipxe_loader(info.arch)
                .map(|l| (format!("{base}/files/{l}"), "ipxe loader")),
        };
        // A boot file must fit the 128-byte `file` field.
        out.filter(|(f, _)| f.len() < 128)
            .map(|(f, w)| (f, w.to_string()))
    }

    /// The platform's quick-local-boot loader, when the root has it.
    fn local_loader(&self, arch: ClientArch) -> Option<&'static str> {
        local_loader(arch).filter(|_| self.cfg.local_boot.contains(&arch.platform()))
    }

    fn reply_base(&self, req: &Message, mtype: MessageType, info: &ClientInfo) -> Message {
        let mut m = Message::default();
        fill_header(&mut m, req);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(mtype));
        o.insert(DhcpOption::ServerIdentifier(self.cfg.server_ip));
        let class = if info.kind == Some(ClientKind::Http) {
            "HTTPClient"
        } else {
            "PXEClient"
        };
        o.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        if let Some(guid) = &info.guid {
            o.insert(DhcpOption::ClientMachineIdentifier(guid.clone()));
        }
        m
    }
}

/// Decodes a request, refusing what `dhcproto` would mis-handle.
pub fn parse(data: &[u8]) -> crate::Result<Message> {
    classify::check_raw(data)?;
    let msg = Message::decode(&mut Decoder::new(data))
        .map_err(|e| crate::Error::malformed("dhcp", e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(crate::Error::malformed("dhcp", "not a BOOTREQUEST"));
    }
    Ok(msg)
}

fn fill_header(m: &mut Message, req: &Message) {
    m.set_opcode(Opcode::BootReply);
    m.set_htype(req.htype());
    m.set_xid(req.xid());
    m.set_flags(req.flags());
    m.set_giaddr(req.giaddr());
    m.set_chaddr(req.chaddr());
    m.set_secs(0);
}

fn set_boot(m: &mut Message, server: Ipv4Addr, file: &str, _info: &ClientInfo, kind: ClientKind) {
    m.set_siaddr(server);
    m.set_fname_str(file);
    if kind != ClientKind::Pxe {
        // Some HTTP boot and iPXE builds read the URL from option 67 only.
        m.opts_mut()
            .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
}

fn nonzero(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    (!ip.is_unspecified()).then_some(ip)
}

/// Where a reply to a port-67 request goes: the relay, the client's own
/// address, or a broadcast to the port the request came from.
fn destination(req: &Message, rx: &Received<'_>) -> SocketAddrV4 {
    if !req.giaddr().is_unspecified() {
        return SocketAddrV4::new(req.giaddr(), SERVER_PORT);
    }
    let port = if rx.src.port() == 0 {
        CLIENT_PORT
    } else {
        rx.src.port()
    };
    match nonzero(req.ciaddr()) {
        Some(ip) => SocketAddrV4::new(ip, port),
        None => SocketAddrV4::new(Ipv4Addr::BROADCAST, port),
    }
}

fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut v = m.to_vec().ok()?;
    // Pad to the BOOTP minimum: some PXE ROMs drop shorter replies.
    if v.len() < 300 {
        v.resize(300, 0);
    }
    Some(v)
}

/// Reservations type used by the command-line front end.
pub type Reservations = HashMap<MacAddr, Ipv4Addr>;

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
