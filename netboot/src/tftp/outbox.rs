//! Datagrams to many clients out of one shared transfer socket, in as few
//! syscalls as the kernel allows.
//!
//! Everything a shard's transfers want to send after one round of input is
//! queued here and goes out in `sendmmsg` calls of up to 64 messages, each to
//! its own client. The DATA packets of one window to one client become one
//! message with a UDP generic segmentation offload size (`UDP_SEGMENT`
//! control message) of one full DATA packet: laid end to end, the kernel cuts
//! them back into datagrams, every one the segment size except possibly the
//! last, which is exactly the shape of a TFTP window. A message is a list of
//! slices (a 4-byte DATA header, then the payload straight from the file's
//! shared `Bytes`), so nothing is copied before the kernel's own copy.
//!
//! `sendmmsg` takes one set of control messages for the whole call, so
//! windows are grouped by segment size, and single datagrams go without one.
//! Where GSO is refused (a device without checksum offload) the window is
//! sent datagram by datagram, and for good once the error says "no GSO here".

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::Bytes;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::transfer::Transmit;

/// Linux caps one GSO send at 64 segments and 64 KiB of payload.
const MAX_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65000;
/// Messages per `sendmmsg` call (the kernel's UIO_MAXIOV bounds slices per
/// message at 1024; a window message has at most 128).
const MAX_MESSAGES: usize = 64;

#[derive(Debug)]
enum Part {
    /// A DATA header, by index into `Outbox::heads`.
    Head(usize),
    Body(Bytes),
}

#[derive(Debug)]
struct Message {
    to: SocketAddr,
    /// Indices into `Outbox::parts`.
    parts: std::ops::Range<usize>,
    /// Length of every datagram but the last, for a window of several.
    segment: usize,
    datagrams: usize,
    bytes: usize,
    /// A datagram shorter than the segment was added: nothing may follow.
    closed: bool,
}

/// Datagrams queued for one socket.
#[derive(Debug)]
pub struct Outbox {
    heads: Vec<[u8; 4]>,
    parts: Vec<Part>,
    msgs: Vec<Message>,
    gso: bool,
    /// Sends refused by the kernel (the datagrams are lost; the transfers'
    /// timers recover).
    pub send_errors: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            heads: Vec::new(),
            parts: Vec::new(),
            msgs: Vec::new(),
            gso: true,
            send_errors: 0,
        }
    }
}

impl Outbox {
    /// True when nothing is queued.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Datagrams queued.
    #[cfg(test)]
    pub fn datagrams(&self) -> usize {
        self.msgs.iter().map(|m| m.datagrams).sum()
    }

    /// Queues one packet to `to`. DATA packets to the same client queued
    /// back to back join one GSO message while they have the same length.
    pub fn push(&mut self, to: SocketAddr, tx: Transmit) {
        match tx {
            Transmit::Control(b) => self.push_control(to, b),
            Transmit::Data { block, payload } => {
                let len = 4 + payload.len();
                let head = self.heads.len();
                let [hi, lo] = block.to_be_bytes();
                self.heads.push([0, 3, hi, lo]);
                let joins = self.gso
                    && self.msgs.last().is_some_and(|m| {
                        m.to == to
                            && !m.closed
                            && m.segment != 0
                            && len <= m.segment
                            && m.datagrams < MAX_SEGMENTS
                            && m.bytes + len <= MAX_GSO_BYTES
                    });
                let start = self.parts.len();
                self.parts.push(Part::Head(head));
                self.parts.push(Part::Body(payload));
                if joins {
                    let m = self.msgs.last_mut().expect("checked above");
                    m.parts.end = self.parts.len();
                    m.datagrams += 1;
                    m.bytes += len;
                    m.closed = len < m.segment;
                } else {
                    // A window too long for one message goes on in another
                    // with the same segment size, so that both land in the
                    // same `sendmmsg` group and keep their order.
                    let segment = match self.msgs.last() {
                        Some(m)
                            if m.to == to && !m.closed && m.segment != 0 && len <= m.segment =>
                        {
                            m.segment
                        }
                        _ => len,
                    };
                    self.msgs.push(Message {
                        to,
                        parts: start..self.parts.len(),
                        segment,
                        datagrams: 1,
                        bytes: len,
                        closed: false,
                    });
                }
            }
        }
    }

    /// Queues a control packet (OACK, ERROR) as a message of its own.
    pub fn push_control(&mut self, to: SocketAddr, b: Bytes) {
        let start = self.parts.len();
        let len = b.len();
        self.parts.push(Part::Body(b));
        self.msgs.push(Message {
            to,
            parts: start..self.parts.len(),
            segment: 0,
            datagrams: 1,
            bytes: len,
            closed: true,
        });
    }

    /// Sends everything queued and empties the box. Waits while the socket
    /// buffer is full; a message the kernel refuses is dropped (counted in
    /// [`Outbox::send_errors`]) like a lost packet.
    pub async fn flush(&mut self, sock: &UdpSocket) {
        if self.msgs.is_empty() {
            return;
        }
        let mut msgs = std::mem::take(&mut self.msgs);
        // Grouped by segment size (control packets: 0). The sort is stable
        // and one client's DATA in one flush all share a segment size, so
        // its datagrams keep their order.
        msgs.sort_by_key(|m| m.segment);
        let mut rest = &msgs[..];
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .take_while(|m| m.segment == first.segment)
                .count();
            let (group, tail) = rest.split_at(n);
            let gso = group.iter().any(|m| m.datagrams > 1);
            self.send_group(sock, group, gso.then_some(first.segment))
                .await;
            rest = tail;
        }
        self.heads.clear();
        self.parts.clear();
    }

    async fn send_group(&mut self, sock: &UdpSocket, msgs: &[Message], segment: Option<usize>) {
        let mut at = 0;
        while at < msgs.len() {
            let end = (at + MAX_MESSAGES).min(msgs.len());
            let batch = &msgs[at..end];
            let r = sock.try_io(Interest::WRITABLE, || {
                send_mmsg(sock, &self.heads, &self.parts, batch, segment)
            });
            match r {
                Ok(sent) => at += sent.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if sock.writable().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // The first message of the batch was refused.
                    let m = &batch[0];
                    if segment.is_some() {
                        if gso_unsupported(&e) {
                            self.gso = false;
                        }
                        self.send_split(sock, m).await;
                    } else {
                        self.send_errors += 1;
                    }
                    at += 1;
                }
            }
        }
    }

    /// Sends a window datagram by datagram (GSO refused).
    async fn send_split(&mut self, sock: &UdpSocket, m: &Message) {
        for pair in self.parts[m.parts.clone()].chunks(2) {
            let mut d = Vec::with_capacity(m.segment);
            for p in pair {
                match p {
                    Part::Head(i) => d.extend_from_slice(&self.heads[*i]),
                    Part::Body(b) => d.extend_from_slice(b),
                }
            }
            if sock.send_to(&d, m.to).await.is_err() {
                self.send_errors += 1;
            }
        }
    }
}

/// One `sendmmsg` of `msgs` (at most [`MAX_MESSAGES`]); the number sent.
fn send_mmsg(
    sock: &UdpSocket,
    heads: &[[u8; 4]],
    parts: &[Part],
    msgs: &[Message],
    segment: Option<usize>,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov: Vec<IoSlice<'_>> = parts
        .iter()
        .map(|p| match p {
            Part::Head(i) => IoSlice::new(&heads[*i]),
            Part::Body(b) => IoSlice::new(b),
        })
        .collect();
    let slices: Vec<&[IoSlice<'_>]> = msgs.iter().map(|m| &iov[m.parts.clone()]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = msgs
        .iter()
        .map(|m| Some(SockaddrStorage::from(m.to)))
        .collect();
    let fd = sock.as_raw_fd();
    let seg = segment
        .map(u16::try_from)
        .transpose()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let cmsgs: Vec<ControlMessage<'_>> = seg.iter().map(ControlMessage::UdpGsoSegments).collect();
    let mut hdrs = MultiHeaders::<SockaddrStorage>::preallocate(
        msgs.len(),
        seg.map(|_| nix::cmsg_space!(u16)),
    );
    let sent = sendmmsg(
        fd,
        &mut hdrs,
        &slices,
        &addrs,
        &cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )?
    .count();
    Ok(sent)
}

/// Errors by which the kernel or device says "no GSO here" (as opposed to
/// the peer being unreachable, which is loss).
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EIO | nix::libc::ENOPROTOOPT | nix::libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn windows_to_several_clients_arrive_as_separate_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let file = Bytes::from((0..=255u8).cycle().take(4000).collect::<Vec<u8>>());
        let data = |block: u16, r: std::ops::Range<usize>| Transmit::Data {
            block,
            payload: file.slice(r),
        };
        let mut out = Outbox::default();
        // To a: an OACK, three full 512-byte blocks and a short last one;
        // to b, interleaved: two 1000-byte blocks (another segment size).
        out.push_control(to_a, Bytes::from_static(b"\0\x06blksize\x00512\0"));
        out.push(to_b, data(1, 0..1000));
        out.push(to_b, data(2, 1000..2000));
        for i in 0..3u16 {
            let s = usize::from(i) * 512;
            out.push(to_a, data(i + 1, s..s + 512));
        }
        out.push(to_a, data(4, 1536..1636));
        assert_eq!(out.datagrams(), 7);
        out.flush(&tx).await;
        assert!(out.is_empty());
        assert_eq!(out.send_errors, 0);
        assert!(out.gso, "GSO must work with sendmmsg on loopback");
        let mut buf = [0u8; 4096];
        let n = a.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"\0\x06blksize\x00512\0");
        for (block, range) in [
            (1u16, 0..512),
            (2, 512..1024),
            (3, 1024..1536),
            (4, 1536..1636),
        ] {
            let n = a.recv(&mut buf).await.unwrap();
            assert_eq!(n, 4 + range.len(), "block {block} to a");
            assert_eq!(buf[..4], [0, 3, 0, block as u8]);
            assert_eq!(&buf[4..n], &file[range]);
        }
        for (block, range) in [(1u16, 0..1000), (2, 1000..2000)] {
            let n = b.recv(&mut buf).await.unwrap();
            assert_eq!(n, 4 + range.len(), "block {block} to b");
            assert_eq!(buf[..4], [0, 3, 0, block as u8]);
            assert_eq!(&buf[4..n], &file[range]);
        }
    }
}
