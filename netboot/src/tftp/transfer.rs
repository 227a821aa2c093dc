//! One TFTP read transfer as a sans-IO state machine: feed it packets and
//! timeouts with `now`, take packets to send from [`Transfer::poll_transmit`].
//!
//! Blocks are counted internally as `u64` and put on the wire modulo 65536,
//! so files past 65535 blocks roll over to block 0 as tftp-hpa, atftp and
//! curl expect. Duplicate ACKs never trigger a retransmission (the
//! Sorcerer's Apprentice bug); only the retransmit timer does, with back-off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::budget::{FlightBudget, Reservation};
use super::netascii::NetasciiBlocks;
use super::packet::{ErrorCode, Packet, Request};

/// IPv4 (20) and UDP (8) headers, and the TFTP DATA header (4).
const V4_OVERHEAD: u32 = 20 + 8 + 4;
/// IPv6 (40) and UDP (8) headers, and the TFTP DATA header (4).
const V6_OVERHEAD: u32 = 40 + 8 + 4;

/// Limits a transfer negotiates within.
#[derive(Debug, Clone)]
pub struct TransferLimits {
    /// Largest blksize granted. The server lowers it further per client to
    /// that client's path MTU minus IP, UDP and TFTP headers.
    pub max_blksize: u16,
    /// Largest windowsize granted (RFC 7440).
    pub max_windowsize: u16,
    /// Cap on unacknowledged payload bytes per transfer; the granted
    /// windowsize is lowered so that `windowsize * blksize` stays under it.
    pub max_bytes_in_flight: usize,
    /// Cap on unacknowledged payload bytes across all transfers of one
    /// server: a transfer's windowsize is lowered to fit in what the running
    /// ones leave, down to one block.
    pub max_total_bytes_in_flight: usize,
    /// First retransmit timeout when the client asks for none.
    pub initial_timeout: Duration,
    /// Back-off stops doubling here. A client's `timeout` option above it
    /// is not honoured (left out of the OACK, RFC 2349 allows no other
    /// value): a client asking 255 s would otherwise hold its transfer,
    /// and its share of the caps, for half an hour of silence.
    pub max_timeout: Duration,
    /// Retransmissions of one window before the client is given up on.
    pub max_retries: u32,
    /// Transfers one server runs at once; requests beyond get ERROR 0.
    pub max_transfers: usize,
    /// Transfers one client address runs at once (each from its own port);
    /// requests beyond get ERROR 0.
    pub max_transfers_per_client: usize,
}

impl TransferLimits {
    /// These limits with `max_blksize` lowered so that one DATA packet fits
    /// in a path MTU of `mtu` bytes over IPv4 or IPv6.
    pub fn clamped_to_mtu(&self, mtu: u32, ipv6: bool) -> TransferLimits {
        TransferLimits {
            max_blksize: self.max_blksize.min(blksize_for_mtu(mtu, ipv6)),
            ..self.clone()
        }
    }
}

/// The largest blksize whose DATA packet fits in one `mtu`-byte IP packet
/// (at least 8, the smallest RFC 2348 allows).
pub fn blksize_for_mtu(mtu: u32, ipv6: bool) -> u16 {
    let overhead = if ipv6 { V6_OVERHEAD } else { V4_OVERHEAD };
    mtu.saturating_sub(overhead).clamp(8, 65464) as u16
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits {
            max_blksize: 1468,
            max_windowsize: 64,
            max_bytes_in_flight: 256 * 1024,
            max_total_bytes_in_flight: 64 * 1024 * 1024,
            initial_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
            max_retries: 6,
            max_transfers: 1024,
            max_transfers_per_client: 8,
        }
    }
}

/// Options the server honoured (and so put in the OACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiated {
    /// Granted blksize, when the client asked.
    pub blksize: Option<u16>,
    /// Granted windowsize, when the client asked.
    pub windowsize: Option<u16>,
    /// Echoed timeout in seconds, when the client asked.
    pub timeout: Option<u8>,
    /// Transfer size sent back, when the client asked.
    pub tsize: Option<u64>,
}

/// A packet to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// DATA with this wire block number; the payload is a slice of the shared file buffer.
    Data {
        /// Wire block number.
        block: u16,
        /// Payload, up to blksize bytes.
        payload: Bytes,
    },
    /// A complete control packet (OACK).
    Control(Bytes),
}

impl Transmit {
    /// Appends the datagram to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Transmit::Data { block, payload } => Packet::Data {
                block: *block,
                data: payload,
            }
            .emit(out),
            Transmit::Control(b) => out.extend_from_slice(b),
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The last block was acknowledged.
    Complete,
    /// The client sent an ERROR (code 8 after a size probe is normal).
    ClientError {
        /// Its code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The client stopped answering.
    TimedOut,
}

/// A refusal of a request, to be sent as an ERROR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The TFTP error code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

/// What a transfer sends: slices of the shared file, or its netascii
/// conversion made as the transfer goes.
#[derive(Debug)]
enum Body {
    Octet(Bytes),
    Netascii(NetasciiBlocks),
}

/// One read transfer.
#[derive(Debug)]
pub struct Transfer {
    body: Body,
    /// The file's size (before any netascii conversion).
    len: usize,
    blksize: usize,
    window: u64,
    /// Highest block index acknowledged (0: none yet, or the OACK).
    acked: u64,
    /// Next block index to send.
    next: u64,
    oack: Option<Bytes>,
    oack_sent: bool,
    base_rto: Duration,
    rto: Duration,
    max_rto: Duration,
    retries: u32,
    max_retries: u32,
    deadline: Option<Instant>,
    outcome: Option<Outcome>,
    negotiated: Negotiated,
    /// This transfer's share of the server's bytes in flight, held until it ends.
    reservation: Option<Reservation>,
    window_lowered_by_global_cap: bool,
}

impl Transfer {
    /// Starts serving `data` for `req` (an RRQ already resolved to its file),
    /// with no server-wide cap on bytes in flight.
    pub fn start(
        now: Instant,
        data: Bytes,
        req: &Request<'_>,
        limits: &TransferLimits,
    ) -> Result<Transfer, Refusal> {
        Self::start_inner(now, data, req, limits, None)
    }

    /// Like [`Transfer::start`], with the window also fitted into what the
    /// server's other transfers leave of `budget`; the share is held until
    /// the transfer ends or is dropped.
    pub fn start_within(
        now: Instant,
        data: Bytes,
        req: &Request<'_>,
        limits: &TransferLimits,
        budget: &Arc<FlightBudget>,
    ) -> Result<Transfer, Refusal> {
        Self::start_inner(now, data, req, limits, Some(budget))
    }

    fn start_inner(
        now: Instant,
        data: Bytes,
        req: &Request<'_>,
        limits: &TransferLimits,
        budget: Option<&Arc<FlightBudget>>,
    ) -> Result<Transfer, Refusal> {
        let _ = now;
        let netascii = match req.mode.to_ascii_lowercase().as_str() {
            "octet" => false,
            "netascii" => true,
            other => {
                return Err(Refusal {
                    code: ErrorCode::IllegalOperation,
                    message: format!("unsupported mode {other:?}"),
                })
            }
        };
        let mut neg = Negotiated::default();
        for (name, value) in &req.options {
            let name = name.to_ascii_lowercase();
            let Ok(v) = value.trim().parse::<u64>() else {
                continue;
            };
            match name.as_str() {
                "blksize" if neg.blksize.is_none() && v >= 8 => {
                    neg.blksize =
                        Some(v.min(65464).min(u64::from(limits.max_blksize)).max(8) as u16);
                }
                // An empty file's tsize is left out: curl rejects `tsize 0`
                // in an OACK as invalid, and omitting an option is allowed.
                // So is a netascii transfer's: its size is known only once
                // the conversion, made block by block, reaches the end.
                "tsize" if neg.tsize.is_none() && !data.is_empty() && !netascii => {
                    neg.tsize = Some(data.len() as u64)
                }
                "timeout"
                    if neg.timeout.is_none()
                        && v >= 1
                        && v <= limits.max_timeout.as_secs().min(255) =>
                {
                    neg.timeout = Some(v as u8)
                }
                "windowsize" if neg.windowsize.is_none() && (1..=65535).contains(&v) => {
                    neg.windowsize = Some(v.min(u64::from(limits.max_windowsize)).max(1) as u16)
                }
                _ => {}
            }
        }
        let blksize = usize::from(neg.blksize.unwrap_or(512));
        if let Some(w) = neg.windowsize.as_mut() {
            // The client ACKs only after a full window, so the cap on bytes in
            // flight must lower the granted value, not just our sending.
            let cap = (limits.max_bytes_in_flight / blksize).max(1);
            *w = (*w).min(cap.min(65535) as u16);
        }
        let asked = neg.windowsize.unwrap_or(1);
        let reservation = budget.map(|b| b.reserve(asked, blksize));
        let window_lowered_by_global_cap = reservation.as_ref().is_some_and(|r| r.window() < asked);
        if let (Some(w), Some(r)) = (neg.windowsize.as_mut(), &reservation) {
            *w = r.window();
        }
        let oack = (neg != Negotiated::default()).then(|| oack_bytes(&neg));
        let base_rto = neg
            .timeout
            .map(|t| Duration::from_secs(u64::from(t)))
            .unwrap_or(limits.initial_timeout);
        let len = data.len();
        let body = if netascii {
            Body::Netascii(NetasciiBlocks::new(data, blksize))
        } else {
            Body::Octet(data)
        };
        Ok(Transfer {
            body,
            len,
            blksize,
            window: u64::from(neg.windowsize.unwrap_or(1)),
            acked: 0,
            next: 1,
            oack,
            oack_sent: false,
            base_rto,
            rto: base_rto,
            max_rto: limits.max_timeout.max(base_rto),
            retries: 0,
            max_retries: limits.max_retries,
            deadline: None,
            outcome: None,
            negotiated: neg,
            reservation,
            window_lowered_by_global_cap,
        })
    }

    /// What was negotiated.
    pub fn negotiated(&self) -> Negotiated {
        self.negotiated
    }

    /// True when the server-wide cap on bytes in flight granted a smaller
    /// windowsize than the per-transfer limits would have.
    pub fn window_lowered_by_global_cap(&self) -> bool {
        self.window_lowered_by_global_cap
    }

    /// Bytes of the server-wide budget this transfer holds (0 once it ended).
    pub fn reserved_bytes(&self) -> usize {
        self.reservation.as_ref().map_or(0, Reservation::bytes)
    }

    /// Size of the file being served (before any netascii conversion).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of DATA packets the transfer takes (always at least one):
    /// known from the start in octet mode, and in netascii mode once the
    /// conversion has reached the end of the file.
    pub fn total_blocks(&self) -> Option<u64> {
        match &self.body {
            Body::Octet(d) => Some(d.len() as u64 / self.blksize as u64 + 1),
            Body::Netascii(n) => n.last(),
        }
    }

    /// True when the retransmit timer has fired since the client's last
    /// progress: the client has gone quiet.
    pub fn stalled(&self) -> bool {
        self.retries > 0
    }

    /// How the transfer ended, once it has.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// When [`Transfer::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.outcome.is_some() {
            None
        } else {
            self.deadline
        }
    }

    /// The next packet to send now, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if self.outcome.is_some() {
            return None;
        }
        if let Some(oack) = &self.oack {
            if self.oack_sent {
                return None;
            }
            self.oack_sent = true;
            self.deadline.get_or_insert(now + self.rto);
            return Some(Transmit::Control(oack.clone()));
        }
        if self.next > self.acked + self.window {
            return None;
        }
        let i = self.next;
        let payload = match &mut self.body {
            Body::Octet(data) => {
                if i > data.len() as u64 / self.blksize as u64 + 1 {
                    return None;
                }
                let start = ((i - 1) as usize)
                    .saturating_mul(self.blksize)
                    .min(data.len());
                let end = start.saturating_add(self.blksize).min(data.len());
                data.slice(start..end)
            }
            Body::Netascii(n) => n.block(i)?,
        };
        self.next += 1;
        self.deadline.get_or_insert(now + self.rto);
        Some(Transmit::Data {
            block: i as u16,
            payload,
        })
    }

    /// Feeds a packet from the client's transfer ID.
    pub fn handle_packet(&mut self, now: Instant, pkt: &Packet<'_>) {
        if self.outcome.is_some() {
            return;
        }
        match pkt {
            Packet::Ack(n) => self.handle_ack(now, *n),
            Packet::Error { code, message } => self.finish(Outcome::ClientError {
                code: *code,
                message: (*message).to_string(),
            }),
            // Anything else on a read transfer is ignored; the client's own
            // timer recovers from whatever it thinks it did.
            _ => {}
        }
    }

    fn handle_ack(&mut self, now: Instant, n: u16) {
        if self.oack.is_some() {
            if n == 0 && self.oack_sent {
                self.oack = None;
                self.progress(now);
            }
            return;
        }
        let diff = u64::from(n.wrapping_sub(self.acked as u16));
        let sent_up_to = self.next - 1;
        if diff == 0 || self.acked + diff > sent_up_to {
            // Duplicate or stale: never retransmit on it (Sorcerer's Apprentice).
            return;
        }
        self.acked += diff;
        if let Body::Netascii(n) = &mut self.body {
            n.release_through(self.acked);
        }
        if self.total_blocks().is_some_and(|t| self.acked >= t) {
            self.finish(Outcome::Complete);
            return;
        }
        // An ACK inside the window means the client lost what followed:
        // RFC 7440 restarts the window right after it.
        self.next = self.acked + 1;
        self.progress(now);
    }

    /// Ends the transfer and gives its bytes in flight back at once.
    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.reservation = None;
    }

    fn progress(&mut self, _now: Instant) {
        self.retries = 0;
        self.rto = self.base_rto;
        self.deadline = None;
    }

    /// Fires the retransmit timer if `now` is past it.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if self.outcome.is_some() || now < deadline {
            return;
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            self.finish(Outcome::TimedOut);
            return;
        }
        self.rto = (self.rto * 2).min(self.max_rto);
        self.deadline = None;
        if self.oack.is_some() {
            self.oack_sent = false;
        } else {
            self.next = self.acked + 1;
        }
    }
}

fn oack_bytes(n: &Negotiated) -> Bytes {
    let vals: Vec<(&str, String)> = [
        n.blksize.map(|v| ("blksize", v.to_string())),
        n.tsize.map(|v| ("tsize", v.to_string())),
        n.timeout.map(|v| ("timeout", v.to_string())),
        n.windowsize.map(|v| ("windowsize", v.to_string())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let pairs: Vec<(&str, &str)> = vals.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Bytes::from(Packet::Oack(pairs).to_vec())
}

#[cfg(test)]
#[path = "transfer_tests.rs"]
mod tests;
