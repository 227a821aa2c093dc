//! Sending a window of DATA packets in as few syscalls as the kernel allows.
//!
//! The transfer socket gets a UDP generic segmentation offload size
//! (`UDP_SEGMENT`) of one full DATA packet; packets of one window are then
//! laid end to end in one buffer and handed to the kernel in a single
//! `sendto` (the transfer socket is unconnected, so it can hear and answer
//! strays; the segment size is a socket option and applies all the same),
//! which cuts it back into datagrams: every one the segment size except
//! possibly the last, which is exactly the shape of a TFTP window. Anything
//! no longer than one segment (the OACK, a lone block) goes out unchanged.
//! Where GSO is refused (old kernel, a device without checksum offload) the
//! transfer falls back to one `sendto` per packet for good.

use std::io;
use std::net::SocketAddr;

use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
use tokio::net::UdpSocket;

/// Linux caps one GSO send at 64 segments and 64 KiB of payload.
const MAX_SEGMENTS: usize = 64;
const MAX_BATCH_BYTES: usize = 65000;
/// Larger than any OACK this server sends (four options, 20-digit tsize).
const MIN_GSO_SEGMENT: usize = 128;

/// A buffer of same-sized datagrams waiting to go out to one client.
#[derive(Debug)]
pub struct Batch {
    to: SocketAddr,
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// A datagram of another size than the segment was pushed: nothing may follow.
    closed: bool,
    gso: bool,
}

impl Batch {
    /// An empty batch of datagrams to `to` for `sock`, which is given a GSO
    /// segment size of `segment` bytes when the kernel takes it.
    pub fn new(sock: &UdpSocket, segment: usize, to: SocketAddr) -> Self {
        // With a segment smaller than the OACK the kernel would cut the OACK
        // too; such tiny blocks are not worth batching anyway.
        let gso = segment >= MIN_GSO_SEGMENT
            && i32::try_from(segment)
                .is_ok_and(|seg| setsockopt(sock, UdpGsoSegment, &seg).is_ok());
        Batch {
            to,
            buf: Vec::with_capacity(MAX_BATCH_BYTES + 65536),
            segment,
            count: 0,
            closed: false,
            gso,
        }
    }

    /// True when `len` more bytes can join the batch as one datagram.
    pub fn fits(&self, len: usize) -> bool {
        if self.count == 0 {
            return true;
        }
        self.gso
            && !self.closed
            && len <= self.segment
            && self.count < MAX_SEGMENTS
            && self.buf.len() + len <= MAX_BATCH_BYTES
    }

    /// Appends one datagram, written by `write` at the end of the buffer.
    /// Call only when [`Batch::fits`] said yes.
    pub fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        write(&mut self.buf);
        if self.buf.len() - start != self.segment {
            self.closed = true;
        }
        self.count += 1;
    }

    /// Sends what is buffered and empties the batch. Send errors (ICMP
    /// unreachable) are dropped: the transfer handles them like loss.
    pub async fn flush(&mut self, sock: &UdpSocket) {
        match self.count {
            0 => {}
            1 => {
                let _ = sock.send_to(&self.buf, self.to).await;
            }
            _ => {
                if let Err(e) = sock.send_to(&self.buf, self.to).await {
                    if gso_unsupported(&e) {
                        self.gso = false;
                        for d in self.buf.chunks(self.segment) {
                            let _ = sock.send_to(d, self.to).await;
                        }
                    }
                }
            }
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

/// Errors by which the kernel or device says "no GSO here" (as opposed to
/// the peer being unreachable, which is loss).
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EIO | nix::libc::EINVAL | nix::libc::ENOPROTOOPT | nix::libc::EOPNOTSUPP)
    ) || e.kind() == io::ErrorKind::InvalidInput
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn window_arrives_as_separate_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut batch = Batch::new(&tx, 516, rx.local_addr().unwrap());
        // OACK-sized, then three full blocks and a short last one.
        let sizes = [20, 516, 516, 516, 100];
        for (i, &n) in sizes.iter().enumerate() {
            if !batch.fits(n) {
                batch.flush(&tx).await;
            }
            batch.push(|out| out.extend(std::iter::repeat_n(i as u8, n)));
        }
        batch.flush(&tx).await;
        assert!(batch.gso, "GSO must work with sendto on loopback");
        let mut buf = [0u8; 4096];
        for (i, &n) in sizes.iter().enumerate() {
            let got = rx.recv(&mut buf).await.unwrap();
            assert_eq!(got, n, "datagram {i}");
            assert!(buf[..got].iter().all(|&b| b == i as u8), "datagram {i}");
        }
    }
}
