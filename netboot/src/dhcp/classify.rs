//! Who is asking: MAC, architecture (raw option 93), client kind, UUID.

use dhcproto::v4::{DhcpOption, Message, OptionCode, UnknownOption};

use crate::arch::{ClientArch, ClientKind, MacAddr};
use crate::error::{Error, Result};

/// What a request says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// chaddr.
    pub mac: MacAddr,
    /// From raw option 93, else the vendor class's `Arch:` field, else BIOS.
    pub arch: ClientArch,
    /// `None` for a client that is not booting from the network.
    pub kind: Option<ClientKind>,
    /// Option 97 exactly as sent, to echo (missing and all-zero are fine).
    pub guid: Option<Vec<u8>>,
    /// The UUID inside option 97 when it is a non-zero type-0 GUID.
    pub uuid: Option<[u8; 16]>,
    /// PXE boot item (option 43 sub-option 71) of a 4011 request.
    pub boot_item: Option<Vec<u8>>,
}

/// Classifies a parsed request. `allow_vendor` lists extra vendor-class
/// prefixes to treat as PXE clients.
pub fn classify(msg: &Message, allow_vendor: &[String]) -> ClientInfo {
    let mut mac = [0u8; 6];
    let ch = msg.chaddr();
    let n = ch.len().min(6);
    mac[..n].copy_from_slice(&ch[..n]);
    let opts = msg.opts();
    let vendor: &[u8] = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v,
        _ => &[],
    };
    let is_pxe = vendor.starts_with(b"PXEClient");
    let is_http = vendor.starts_with(b"HTTPClient");
    let allowed = allow_vendor
        .iter()
        .any(|p| !p.is_empty() && vendor.starts_with(p.as_bytes()));
    let user_ipxe = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(u)) => is_ipxe_user_class(u),
        _ => false,
    };
    let has_175 = opts.get(OptionCode::Unknown(175)).is_some()
        || opts
            .iter()
            .any(|(_, o)| matches!(o, DhcpOption::Unknown(u) if is_175(u)));
    let kind = if (user_ipxe || has_175) && (is_pxe || is_http || allowed || has_175) {
        Some(ClientKind::Ipxe)
    } else if is_http {
        Some(ClientKind::Http)
    } else if is_pxe || allowed {
        Some(ClientKind::Pxe)
    } else {
        None
    };
    let raw_arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        _ => None,
    }
    .or_else(|| vendor_arch(vendor));
    let arch = ClientArch::from_raw(raw_arch.unwrap_or(0));
    let guid = match opts.get(OptionCode::ClientMachineIdentifier) {
        Some(DhcpOption::ClientMachineIdentifier(g)) => Some(g.clone()),
        _ => None,
    };
    let uuid = guid.as_ref().and_then(|g| {
        if g.len() == 17 && g[0] == 0 && g[1..].iter().any(|&b| b != 0) {
            let mut u = [0u8; 16];
            u.copy_from_slice(&g[1..]);
            Some(u)
        } else {
            None
        }
    });
    let boot_item = match opts.get(OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(v)) => sub_option(v, 71).map(<[u8]>::to_vec),
        _ => None,
    };
    ClientInfo {
        mac: MacAddr(mac),
        arch,
        kind,
        guid,
        uuid,
        boot_item,
    }
}

fn is_175(u: &UnknownOption) -> bool {
    u8::from(u.code()) == 175
}

/// iPXE sends the bare bytes `iPXE`; RFC 3004 clients length-prefix each class.
fn is_ipxe_user_class(u: &[u8]) -> bool {
    if u == b"iPXE" {
        return true;
    }
    let mut rest = u;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return false;
        }
        if &tail[..len] == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// `PXEClient:Arch:00007:UNDI:003016` carries the architecture too.
fn vendor_arch(vendor: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(vendor).ok()?;
    let mut it = s.split(':');
    while let Some(f) = it.next() {
        if f == "Arch" {
            return it.next()?.parse().ok();
        }
    }
    None
}

fn sub_option(enc: &[u8], code: u8) -> Option<&[u8]> {
    let mut i = 0;
    while i < enc.len() {
        let c = enc[i];
        if c == 255 {
            return None;
        }
        if c == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*enc.get(i + 1)?);
        let val = enc.get(i + 2..i + 2 + len)?;
        if c == code {
            return Some(val);
        }
        i += 2 + len;
    }
    None
}

/// Structural check of the raw datagram before `dhcproto` sees it: the BOOTP
/// header, the magic cookie, option bounds, and the fixed lengths that
/// `dhcproto` only checks with `debug_assert!` (a malformed packet must be
/// dropped, never panic a debug build).
pub fn check_raw(data: &[u8]) -> Result<()> {
    const HEADER: usize = 236;
    let bad = |r: &str| Err(Error::malformed("dhcp", r));
    if data.len() < HEADER + 4 {
        return bad("shorter than a BOOTP header");
    }
    if data[1] != 1 || data[2] != 6 {
        return bad("not Ethernet (htype 1, hlen 6)");
    }
    if data[HEADER..HEADER + 4] != [99, 130, 83, 99] {
        return bad("no DHCP magic cookie");
    }
    let opts = &data[HEADER + 4..];
    let mut i = 0;
    while i < opts.len() {
        let code = opts[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => return Ok(()),
            _ => {}
        }
        let Some(&len) = opts.get(i + 1) else {
            return bad("option without length");
        };
        let len = usize::from(len);
        if i + 2 + len > opts.len() {
            return bad("option past the end");
        }
        let fixed = match code {
            80 => Some(0),
            94 => Some(3),
            152..=155 => Some(4),
            _ => None,
        };
        if fixed.is_some_and(|f| f != len) {
            return bad("option with wrong fixed length");
        }
        i += 2 + len;
    }
    Ok(())
}
