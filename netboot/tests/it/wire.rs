//! What a QEMU guest's NIC sent and received, read from the pcap QEMU's
//! `filter-dump` wrote. Each check looks for any packet that fits, so
//! firmware retransmissions and size probes do not matter, and TFTP DATA is
//! put back together by block number, duplicates dropped.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use rackcast_netboot::tftp::Packet;

use crate::util::{Dhcp, Seen};

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;

/// UEFI PXE through proxy-DHCP and a boot server on 4011: DISCOVER with
/// PXEClient and arch 7, our address-less OFFER, REQUEST/ACK on 4011 (the
/// ACK back to the port the REQUEST came from), and the boot file over TFTP,
/// byte for byte. Returns what it found, for the log.
pub fn uefi_pxe(
    wire: &[Seen],
    mac: [u8; 6],
    our: Ipv4Addr,
    file: &str,
    boot_file: &[u8],
) -> Result<String, String> {
    let dhcp = dhcp_messages(wire);
    dhcp.iter()
        .find(|(s, d)| {
            s.src.port() == 68
                && s.dst.port() == 67
                && s.src_mac == mac
                && d.op == 1
                && d.chaddr == mac
                && d.kind() == Some(DISCOVER)
                && d.option(60).is_some_and(|v| v.starts_with(b"PXEClient"))
                && d.option(93) == Some(&[0, 7])
        })
        .ok_or("no DHCPDISCOVER from the guest with option 60 PXEClient and option 93 = 7")?;
    dhcp.iter()
        .find(|(s, d)| {
            *s.src.ip() == our
                && s.src.port() == 67
                && s.dst.port() == 68
                && d.op == 2
                && d.chaddr == mac
                && d.kind() == Some(OFFER)
                && d.yiaddr.is_unspecified()
                && d.option(60) == Some(b"PXEClient")
        })
        .ok_or("no OFFER from us with yiaddr 0.0.0.0 and option 60 PXEClient")?;
    let (req, _) = dhcp
        .iter()
        .find(|(s, d)| {
            s.dst == SocketAddrV4::new(our, 4011)
                && s.src_mac == mac
                && d.chaddr == mac
                && d.kind() == Some(REQUEST)
        })
        .ok_or("no DHCPREQUEST from the guest to our port 4011")?;
    // EDK2 asks the boot server from port 4011, not 68: the ACK has to go
    // back to where the REQUEST came from.
    if req.src.port() != 4011 {
        return Err(format!(
            "the 4011 REQUEST came from {}, not port 4011",
            req.src
        ));
    }
    dhcp.iter()
        .find(|(s, d)| {
            s.src == SocketAddrV4::new(our, 4011)
                && s.dst.port() == req.src.port()
                && d.chaddr == mac
                && d.kind() == Some(ACK)
                && (d.file == file || d.option(67) == Some(file.as_bytes()))
        })
        .ok_or_else(|| {
            format!(
                "no ACK from our 4011 naming {file} back to the REQUEST's port {}",
                req.src.port()
            )
        })?;
    let blocks = tftp_download(wire, mac, our, file, boot_file)?;
    Ok(format!(
        "wire: PXE DISCOVER/OFFER, REQUEST {} -> {our}:4011 and ACK back, {file} in {blocks} DATA blocks",
        req.src
    ))
}

/// iPXE (SeaBIOS ROM) through proxy-DHCP: DISCOVER with user class iPXE,
/// our OFFER with the script URL, and the HTTP GETs of the script and of the
/// second stage it chains, answered by us.
pub fn ipxe_script(
    wire: &[Seen],
    mac: [u8; 6],
    our: Ipv4Addr,
    script_url: &str,
) -> Result<String, String> {
    let dhcp = dhcp_messages(wire);
    dhcp.iter()
        .find(|(s, d)| {
            s.src_mac == mac
                && s.dst.port() == 67
                && d.kind() == Some(DISCOVER)
                && d.option(77) == Some(b"iPXE")
                && d.option(60).is_some_and(|v| v.starts_with(b"PXEClient"))
        })
        .ok_or("no DHCPDISCOVER from iPXE with option 77 iPXE")?;
    dhcp.iter()
        .find(|(s, d)| {
            *s.src.ip() == our
                && d.chaddr == mac
                && d.kind() == Some(OFFER)
                && (d.file == script_url || d.option(67) == Some(script_url.as_bytes()))
        })
        .ok_or_else(|| format!("no OFFER from us with boot file {script_url}"))?;
    let path = script_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .ok_or("script URL has no path")?;
    let script = http_exchange(wire, mac, our, 8080, path, b"rackcast script for")?;
    let stage2 = http_exchange(wire, mac, our, 8080, "/files/stage2.ipxe", b"stage two")?;
    Ok(format!(
        "wire: iPXE DISCOVER (77 iPXE), OFFER {script_url}, GET {path} from {script}, GET stage2 from {stage2}"
    ))
}

/// UEFI HTTP boot: DISCOVER with HTTPClient, our OFFER with the URL and
/// option 60 HTTPClient, and the GET of the file answered by us.
pub fn uefi_http(wire: &[Seen], mac: [u8; 6], our: Ipv4Addr, url: &str) -> Result<String, String> {
    let dhcp = dhcp_messages(wire);
    dhcp.iter()
        .find(|(s, d)| {
            s.src_mac == mac
                && d.kind() == Some(DISCOVER)
                && d.option(60).is_some_and(|v| v.starts_with(b"HTTPClient"))
        })
        .ok_or("no DHCPDISCOVER with option 60 HTTPClient")?;
    dhcp.iter()
        .find(|(s, d)| {
            *s.src.ip() == our
                && d.chaddr == mac
                && d.kind() == Some(OFFER)
                && d.option(60) == Some(b"HTTPClient")
                && (d.file == url || d.option(67) == Some(url.as_bytes()))
        })
        .ok_or_else(|| format!("no OFFER from us with HTTPClient and {url}"))?;
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .ok_or("URL has no path")?;
    let from = http_exchange(wire, mac, our, 8080, path, b"HTTP/1.1 2")?;
    Ok(format!(
        "wire: HTTPClient DISCOVER/OFFER, GET {path} from {from}"
    ))
}

/// One line per packet, for failure messages.
pub fn summary(wire: &[Seen]) -> String {
    let mut lines: Vec<String> = wire
        .iter()
        .take(300)
        .map(|s| {
            let what = if s.tcp {
                "tcp".to_string()
            } else if let Some(d) = Dhcp::parse(&s.payload) {
                format!("dhcp type {:?} file {:?}", d.kind(), d.file)
            } else if let Ok(p) = Packet::parse(&s.payload) {
                match p {
                    Packet::Data { block, data } => format!("tftp DATA {block} ({})", data.len()),
                    other => format!("tftp {other:?}"),
                }
            } else {
                "udp".to_string()
            };
            format!("{} -> {} {} bytes {what}", s.src, s.dst, s.payload.len())
        })
        .collect();
    if wire.len() > 300 {
        lines.push(format!("... {} more", wire.len() - 300));
    }
    lines.join("\n")
}

/// Every UDP datagram on a DHCP or boot-server port that parses as DHCP.
fn dhcp_messages(wire: &[Seen]) -> Vec<(&Seen, Dhcp)> {
    wire.iter()
        .filter(|s| !s.tcp)
        .filter(|s| {
            [67, 68, 4011]
                .iter()
                .any(|&p| s.src.port() == p || s.dst.port() == p)
        })
        .filter_map(|s| Dhcp::parse(&s.payload).map(|d| (s, d)))
        .collect()
}

/// Finds an RRQ for `file` from the guest to our port 69 whose transfer, put
/// back together from our DATA to the RRQ's port, is `expect`; returns the
/// number of blocks.
fn tftp_download(
    wire: &[Seen],
    mac: [u8; 6],
    our: Ipv4Addr,
    file: &str,
    expect: &[u8],
) -> Result<usize, String> {
    let rrqs: Vec<SocketAddrV4> = wire
        .iter()
        .filter(|s| !s.tcp && s.src_mac == mac && s.dst == SocketAddrV4::new(our, 69))
        .filter(|s| matches!(Packet::parse(&s.payload), Ok(Packet::Rrq(r)) if r.filename == file))
        .map(|s| s.src)
        .collect();
    if rrqs.is_empty() {
        return Err(format!("no TFTP RRQ for {file} to {our}:69"));
    }
    let mut best = 0;
    for client in &rrqs {
        let mut blocks: BTreeMap<u16, &[u8]> = BTreeMap::new();
        for s in wire
            .iter()
            .filter(|s| !s.tcp && *s.src.ip() == our && s.dst == *client)
        {
            if let Ok(Packet::Data { block, data }) = Packet::parse(&s.payload) {
                if let Some(seen) = blocks.insert(block, data) {
                    if seen != data {
                        return Err(format!("block {block} to {client} sent twice, differently"));
                    }
                }
            }
        }
        // Files here are under 65535 blocks: no rollover to undo.
        let mut got = Vec::new();
        for (i, (&block, data)) in blocks.iter().enumerate() {
            if usize::from(block) != i + 1 {
                break;
            }
            got.extend_from_slice(data);
        }
        if got == expect {
            return Ok(blocks.len());
        }
        best = best.max(got.len());
    }
    Err(format!(
        "{} RRQ(s) for {file}, but no DATA stream to them carries the file ({best} of {} bytes at best)",
        rrqs.len(),
        expect.len()
    ))
}

/// Finds a `GET path` from the guest to our `port` and a segment from us back
/// to the same connection containing `answer`; returns the guest's address.
fn http_exchange(
    wire: &[Seen],
    mac: [u8; 6],
    our: Ipv4Addr,
    port: u16,
    path: &str,
    answer: &[u8],
) -> Result<SocketAddrV4, String> {
    let get = format!("GET {path} HTTP/1.");
    let server = SocketAddrV4::new(our, port);
    let gets: Vec<SocketAddrV4> = wire
        .iter()
        .filter(|s| s.tcp && s.src_mac == mac && s.dst == server)
        .filter(|s| s.payload.starts_with(get.as_bytes()))
        .map(|s| s.src)
        .collect();
    if gets.is_empty() {
        return Err(format!("no {get:?} to {server}"));
    }
    gets.iter()
        .copied()
        .find(|client| {
            wire.iter().any(|s| {
                s.tcp
                    && s.src == server
                    && s.dst == *client
                    && s.payload.windows(answer.len()).any(|w| w == answer)
            })
        })
        .ok_or_else(|| {
            format!(
                "{get:?} sent, but no answer containing {:?} came back",
                String::from_utf8_lossy(answer)
            )
        })
}
