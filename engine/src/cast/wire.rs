//! The cast wire format: one fixed header, a payload, a keyed MAC.
//!
//! ```text
//! 0   2  magic "RC"
//! 2   1  version (3)
//! 3   1  packet type (1 announce, 2 symbol, 3 status, 4 end, 5 acked: ids of
//!        receivers whose "done" the sender recorded, 8 bytes each; 6 repairs:
//!        the repairs the sender has scheduled, (object, symbols) 8 bytes each)
//! 4   8  session id
//! 12  8  sequence number (per sender: the data stream; per receiver: its statuses)
//! 20  4  object: chunk number, or INDEX_OBJECT for the image index
//! 24  4  symbol id (0..k source symbols, k.. repair symbols)
//! 28  2  payload length
//! 30  2  reserved (0)
//! 32  n  payload
//! 32+n 16 MAC: keyed BLAKE3 (session key) over bytes 0..32+n, truncated
//! ```
//!
//! Every packet is authenticated: a receiver drops (and counts) anything whose
//! MAC fails, whose session differs, or that does not parse, before looking at
//! its payload. Data and control packets never exceed the symbol size chosen
//! from the path MTU, and a full status fits a 576-byte IPv4 datagram, so no
//! packet is fragmented.
//!
//! Freshness is not in the MAC: a key holder's old packets verify forever.
//! Version 2 adds what a receiver and a sender need to tell a live peer from a
//! replay: a receiver's random nonce in its statuses, echoed by the sender's
//! announces (an unpinned receiver adopts only a session that echoed it), and
//! status sequence numbers the sender keeps per receiver.
//!
//! Version 3 makes feedback scale with the group: the announce carries the
//! group size, the heartbeat period and the report backoff the sender wants,
//! and the sender echoes the repairs it has scheduled (`Repairs`) so that a
//! receiver whose needs are already answered stays silent.

use subtle::ConstantTimeEq;

use super::CastError;

/// Magic at the start of every packet.
pub const MAGIC: [u8; 2] = *b"RC";
/// Wire version (3: group-scaled feedback; 2 added the status nonce and
/// the announce echoes).
pub const VERSION: u8 = 3;
/// Header length.
pub const HEADER_LEN: usize = 32;
/// MAC length.
pub const MAC_LEN: usize = 16;
/// Header + MAC: what a packet costs beyond its payload.
pub const OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// IPv4 + UDP header bytes, for sizing payloads to an MTU.
pub const IP_UDP_OVERHEAD: usize = 20 + 8;
/// The object number that carries the image index instead of a chunk.
pub const INDEX_OBJECT: u32 = u32::MAX;

/// Packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Sender -> group: session parameters.
    Announce = 1,
    /// Sender -> group: one FEC symbol of a chunk frame or of the index.
    Symbol = 2,
    /// Receiver -> sender (unicast): progress and needs.
    Status = 3,
    /// Sender -> group: the session is over.
    End = 4,
    /// Sender -> group: receivers whose "done" status it has recorded (they
    /// may leave without waiting for the session to end).
    Acked = 5,
    /// Sender -> group: repairs it has scheduled, as (object, symbols it
    /// will send): a receiver that needs no more than that stays silent.
    Repairs = 6,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<PacketType> {
        Some(match v {
            1 => PacketType::Announce,
            2 => PacketType::Symbol,
            3 => PacketType::Status,
            4 => PacketType::End,
            5 => PacketType::Acked,
            6 => PacketType::Repairs,
            _ => return None,
        })
    }
}

/// A packet's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Packet type.
    pub kind: PacketType,
    /// Session id.
    pub session: u64,
    /// Sequence number.
    pub seq: u64,
    /// Chunk number or [`INDEX_OBJECT`].
    pub object: u32,
    /// Symbol id.
    pub symbol: u32,
}

/// The session key: a keyed BLAKE3 key.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey(pub [u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// Derives a session key from key-file bytes of any length.
    pub fn from_secret(secret: &[u8]) -> SessionKey {
        SessionKey(blake3::derive_key("rackcast cast session key v1", secret))
    }

    /// A short name of the key: tells which key a [`Verified`] packet was
    /// checked under, without holding the key.
    pub fn fingerprint(&self) -> [u8; 8] {
        let h = blake3::hash(&self.0);
        let mut out = [0u8; 8];
        out.copy_from_slice(&h.as_bytes()[..8]);
        out
    }

    fn mac(&self, bytes: &[u8]) -> [u8; MAC_LEN] {
        let h = blake3::keyed_hash(&self.0, bytes);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&h.as_bytes()[..MAC_LEN]);
        out
    }
}

/// Appends a complete packet (header, payload, MAC) to `out`.
pub fn emit(key: &SessionKey, h: &Header, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(h.kind as u8);
    out.extend_from_slice(&h.session.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.extend_from_slice(&h.object.to_le_bytes());
    out.extend_from_slice(&h.symbol.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let mac = key.mac(&out[start..]);
    out.extend_from_slice(&mac);
}

/// Checks and decodes a packet: returns the header and the payload.
pub fn parse<'a>(key: &SessionKey, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), CastError> {
    if bytes.len() < OVERHEAD {
        return Err(CastError::Malformed("shorter than header and MAC"));
    }
    if bytes[0..2] != MAGIC {
        return Err(CastError::Malformed("bad magic"));
    }
    if bytes[2] != VERSION {
        return Err(CastError::Malformed("unknown version"));
    }
    let len = u16::from_le_bytes([bytes[28], bytes[29]]) as usize;
    if bytes.len() != OVERHEAD + len {
        return Err(CastError::Malformed("length does not match"));
    }
    let (body, mac) = bytes.split_at(HEADER_LEN + len);
    // Constant time: a timing oracle on the tag would let a forger find it
    // byte by byte.
    if !bool::from(key.mac(body).ct_eq(mac)) {
        return Err(CastError::BadMac);
    }
    let kind = PacketType::from_u8(bytes[3]).ok_or(CastError::Malformed("unknown packet type"))?;
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    Ok((
        Header {
            kind,
            session: u64_at(4),
            seq: u64_at(12),
            object: u32_at(20),
            symbol: u32_at(24),
        },
        &body[HEADER_LEN..],
    ))
}

/// A packet whose MAC verified, with the fingerprint of the key it verified
/// under. Only [`verify`] makes one, so a receiver can take a packet checked
/// once for many receivers holding the same key (the simulation's thousands)
/// and still refuse one checked under another key.
#[derive(Debug, Clone, Copy)]
pub struct Verified<'a> {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
    key: [u8; 8],
}

impl Verified<'_> {
    /// Whether this packet verified under `fingerprint`'s key.
    pub fn under(&self, fingerprint: &[u8; 8]) -> bool {
        self.key == *fingerprint
    }
}

/// [`parse`], keeping the key's fingerprint with the result.
pub fn verify<'a>(key: &SessionKey, bytes: &'a [u8]) -> Result<Verified<'a>, CastError> {
    let (header, payload) = parse(key, bytes)?;
    Ok(Verified {
        header,
        payload,
        key: key.fingerprint(),
    })
}

/// Largest even symbol size that fits an MTU without fragmentation.
pub fn symbol_size_for_mtu(mtu: usize) -> usize {
    (mtu.saturating_sub(IP_UDP_OVERHEAD + OVERHEAD)) & !1
}

/// Session parameters, carried by announce packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Symbol size in bytes (even).
    pub symbol_size: u32,
    /// Number of chunks in the image.
    pub chunk_count: u32,
    /// Length of the encoded index.
    pub index_len: u32,
    /// Image root: BLAKE3 of the index.
    pub root: [u8; 32],
    /// Whether the sender is transmitting yet (false while waiting for receivers).
    pub running: bool,
    /// Receivers the sender tracks: scales the receivers' report backoff.
    pub group: u32,
    /// Period of a receiver's heartbeat status, in milliseconds, scaled by
    /// the sender so that heartbeats from the whole group stay within its
    /// budget.
    pub heartbeat_ms: u32,
    /// Longest a receiver waits, in microseconds, before it reports a
    /// deficit, so that one report (echoed in `Repairs`) silences the rest.
    pub backoff_us: u32,
    /// The object whose visit ended last, if any: with no symbol of another
    /// object to follow it (the sender went quiet), this is how a receiver
    /// learns that a visit is over.
    pub ended: Option<u32>,
    /// Join nonces of receivers that asked to join and have not yet adopted
    /// the session (see [`Status::joining`]): proof that this sender is live.
    pub echoes: Vec<u64>,
}

impl Announce {
    /// Length of the fixed part; the echoes follow, 8 bytes each.
    pub const LEN: usize = 4 + 4 + 4 + 32 + 1 + 4 + 4 + 4 + 1 + 4;

    /// Most echoes an announce carries when packets are `symbol_size` bytes
    /// of payload: an announce is never larger than a symbol packet.
    pub fn max_echoes(symbol_size: usize) -> usize {
        symbol_size.saturating_sub(Self::LEN) / 8
    }

    /// Encodes.
    pub fn emit(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN + 8 * self.echoes.len());
        v.extend_from_slice(&self.symbol_size.to_le_bytes());
        v.extend_from_slice(&self.chunk_count.to_le_bytes());
        v.extend_from_slice(&self.index_len.to_le_bytes());
        v.extend_from_slice(&self.root);
        v.push(self.running as u8);
        v.extend_from_slice(&self.group.to_le_bytes());
        v.extend_from_slice(&self.heartbeat_ms.to_le_bytes());
        v.extend_from_slice(&self.backoff_us.to_le_bytes());
        v.push(self.ended.is_some() as u8);
        v.extend_from_slice(&self.ended.unwrap_or(0).to_le_bytes());
        for n in &self.echoes {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v
    }

    /// Decodes.
    pub fn parse(b: &[u8]) -> Result<Announce, CastError> {
        if b.len() < Self::LEN || (b.len() - Self::LEN) % 8 != 0 {
            return Err(CastError::Malformed("announce length"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let symbol_size = u32_at(0);
        if symbol_size == 0 || symbol_size % 2 != 0 || symbol_size > 65_000 {
            return Err(CastError::Malformed("announce symbol size"));
        }
        Ok(Announce {
            symbol_size,
            chunk_count: u32_at(4),
            index_len: u32_at(8),
            root: b[12..44].try_into().expect("32 bytes"),
            running: b[44] != 0,
            group: u32_at(45),
            heartbeat_ms: u32_at(49),
            backoff_us: u32_at(53),
            ended: (b[57] != 0).then(|| u32_at(58)),
            echoes: b[Self::LEN..]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        })
    }
}

/// Encodes an [`PacketType::Acked`] payload: receiver ids, 8 bytes each.
pub fn emit_acked(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// Decodes an [`PacketType::Acked`] payload.
pub fn parse_acked(b: &[u8]) -> Result<Vec<u64>, CastError> {
    if b.len() % 8 != 0 {
        return Err(CastError::Malformed("acked length"));
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Encodes a [`PacketType::Repairs`] payload: (object, symbols), 8 bytes each.
pub fn emit_repairs(repairs: &[(u32, u32)]) -> Vec<u8> {
    repairs
        .iter()
        .flat_map(|&(o, n)| o.to_le_bytes().into_iter().chain(n.to_le_bytes()))
        .collect()
}

/// Decodes a [`PacketType::Repairs`] payload.
pub fn parse_repairs(b: &[u8]) -> Result<Vec<(u32, u32)>, CastError> {
    if b.len() % 8 != 0 {
        return Err(CastError::Malformed("repairs length"));
    }
    Ok(b.chunks_exact(8)
        .map(|c| {
            let u = |i: usize| u32::from_le_bytes(c[i..i + 4].try_into().expect("4 bytes"));
            (u(0), u(4))
        })
        .collect())
}

/// Most entries of an id or repair list (`Acked`, `Repairs`) per packet:
/// a symbol's worth, and never fewer than 60 (480 bytes, which with the
/// headers, 556 in all, still crosses any IPv4 path unfragmented).
pub fn max_list_entries(symbol_size: usize) -> usize {
    (symbol_size / 8).max(60)
}

/// A receiver's report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The receiver's id (random per run; stable across its restarts only if configured).
    pub receiver: u64,
    /// Random per run of the receiver: its join nonce, and the incarnation
    /// its status sequence numbers count within (a restart starts them again).
    pub nonce: u64,
    /// The receiver has not adopted a session yet and asks this sender to
    /// echo `nonce` in its announces.
    pub joining: bool,
    /// Whether it holds the verified index.
    pub has_index: bool,
    /// Whether it has every chunk written and verified.
    pub done: bool,
    /// Chunks complete.
    pub chunks_done: u32,
    /// Loss measured on the data stream since the last status, parts per million.
    pub loss_ppm: u32,
    /// Bytes decoded but not yet durable on disk.
    pub write_backlog: u64,
    /// Highest sender sequence number processed: the status describes the
    /// receiver's state after that packet, so the sender can tell a status
    /// that predates its latest symbols from one that follows them.
    pub highest_seq: u64,
    /// Chunks still needed, as ranges (start, count), lowest first.
    pub needed: Vec<(u32, u32)>,
    /// Whether more needed ranges exist beyond the last listed one.
    pub needed_truncated: bool,
    /// Chunks partly received: (chunk, symbols still missing).
    pub deficits: Vec<(u32, u32)>,
}

impl Status {
    /// Length of the fixed part; the ranges and deficits follow, 8 bytes each.
    pub const FIXED_LEN: usize = 43;
    /// Most needed ranges a status carries.
    pub const MAX_NEEDED: usize = 32;
    /// Most deficits a status carries.
    pub const MAX_DEFICITS: usize = 24;
    /// The largest status payload: with the header, MAC, UDP and IPv4
    /// headers it is 567 bytes, so a status crosses any IPv4 path (576)
    /// unfragmented.
    pub const MAX_LEN: usize = Self::FIXED_LEN + 8 * (Self::MAX_NEEDED + Self::MAX_DEFICITS);

    /// Encodes.
    pub fn emit(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(Self::FIXED_LEN + 8 * (self.needed.len() + self.deficits.len()));
        v.extend_from_slice(&self.receiver.to_le_bytes());
        v.extend_from_slice(&self.nonce.to_le_bytes());
        v.push(
            self.has_index as u8
                | (self.done as u8) << 1
                | (self.needed_truncated as u8) << 2
                | (self.joining as u8) << 3,
        );
        v.extend_from_slice(&self.chunks_done.to_le_bytes());
        v.extend_from_slice(&self.loss_ppm.to_le_bytes());
        v.extend_from_slice(&self.write_backlog.to_le_bytes());
        v.extend_from_slice(&self.highest_seq.to_le_bytes());
        v.push(self.needed.len().min(Self::MAX_NEEDED) as u8);
        v.push(self.deficits.len().min(Self::MAX_DEFICITS) as u8);
        for &(a, b) in self.needed.iter().take(Self::MAX_NEEDED) {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&b.to_le_bytes());
        }
        for &(a, b) in self.deficits.iter().take(Self::MAX_DEFICITS) {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&b.to_le_bytes());
        }
        v
    }

    /// Decodes.
    pub fn parse(b: &[u8]) -> Result<Status, CastError> {
        if b.len() < Self::FIXED_LEN {
            return Err(CastError::Malformed("status too short"));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let flags = b[16];
        let (n_need, n_def) = (b[41] as usize, b[42] as usize);
        if n_need > Self::MAX_NEEDED
            || n_def > Self::MAX_DEFICITS
            || b.len() != Self::FIXED_LEN + 8 * (n_need + n_def)
        {
            return Err(CastError::Malformed("status entry count"));
        }
        let pairs = |from: usize, n: usize| -> Vec<(u32, u32)> {
            (0..n)
                .map(|i| (u32_at(from + 8 * i), u32_at(from + 8 * i + 4)))
                .collect()
        };
        Ok(Status {
            receiver: u64_at(0),
            nonce: u64_at(8),
            has_index: flags & 1 != 0,
            done: flags & 2 != 0,
            needed_truncated: flags & 4 != 0,
            joining: flags & 8 != 0,
            chunks_done: u32_at(17),
            loss_ppm: u32_at(21),
            write_backlog: u64_at(25),
            highest_seq: u64_at(33),
            needed: pairs(Self::FIXED_LEN, n_need),
            deficits: pairs(Self::FIXED_LEN + 8 * n_need, n_def),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_every_flip_is_rejected() {
        let key = SessionKey::from_secret(b"k");
        let h = Header {
            kind: PacketType::Symbol,
            session: 7,
            seq: 99,
            object: 3,
            symbol: 12,
        };
        let mut buf = Vec::new();
        emit(&key, &h, b"payload", &mut buf);
        let (h2, p) = parse(&key, &buf).unwrap();
        assert_eq!((h2, p), (h, &b"payload"[..]));
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 1;
            assert!(parse(&key, &bad).is_err(), "flip at {i}");
        }
        assert!(matches!(
            parse(&SessionKey::from_secret(b"other"), &buf),
            Err(CastError::BadMac)
        ));
        for n in 0..buf.len() {
            assert!(parse(&key, &buf[..n]).is_err());
        }
    }

    #[test]
    fn status_round_trip() {
        let s = Status {
            receiver: 5,
            nonce: 0x0123_4567_89ab_cdef,
            joining: true,
            has_index: true,
            done: false,
            chunks_done: 10,
            loss_ppm: 12_000,
            write_backlog: 1 << 20,
            highest_seq: 12345,
            needed: vec![(3, 4), (100, 1)],
            needed_truncated: true,
            deficits: vec![(3, 17)],
        };
        assert_eq!(Status::parse(&s.emit()).unwrap(), s);
        let bytes = s.emit();
        for n in 0..bytes.len() {
            assert!(Status::parse(&bytes[..n]).is_err(), "truncated to {n}");
        }
        // Any single byte changed: an error or a different status, never a panic.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Status::parse(&b);
            }
        }
    }

    #[test]
    fn acked_round_trip_and_bad_length() {
        let ids = [1u64, u64::MAX, 0x1234_5678_9abc_def0];
        assert_eq!(parse_acked(&emit_acked(&ids)).unwrap(), ids);
        assert!(parse_acked(&[]).unwrap().is_empty());
        for n in [1, 7, 9, 23] {
            assert!(parse_acked(&vec![0u8; n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn a_full_status_fits_a_576_byte_datagram() {
        let full = Status {
            needed: vec![(1, 1); Status::MAX_NEEDED + 5],
            deficits: vec![(2, 3); Status::MAX_DEFICITS + 5],
            ..Status::default()
        };
        let payload = full.emit();
        assert_eq!(payload.len(), Status::MAX_LEN);
        assert!(payload.len() + OVERHEAD + IP_UDP_OVERHEAD <= 576);
        let back = Status::parse(&payload).unwrap();
        assert_eq!(back.needed.len(), Status::MAX_NEEDED);
        assert_eq!(back.deficits.len(), Status::MAX_DEFICITS);
    }

    #[test]
    fn announce_echoes_round_trip_and_fit_a_symbol_packet() {
        let s = 1424;
        let a = Announce {
            symbol_size: s as u32,
            chunk_count: 9,
            index_len: 700,
            root: [7; 32],
            running: true,
            group: 10_000,
            heartbeat_ms: 20_000,
            backoff_us: 10_000,
            ended: Some(3),
            echoes: (0..Announce::max_echoes(s) as u64).collect(),
        };
        let b = a.emit();
        assert!(b.len() <= s);
        assert_eq!(Announce::parse(&b).unwrap(), a);
        for n in [0, Announce::LEN - 1, Announce::LEN + 1, Announce::LEN + 7] {
            assert!(Announce::parse(&b[..n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn repairs_round_trip_and_bad_length() {
        let r = [(1u32, 2u32), (INDEX_OBJECT, 300)];
        assert_eq!(parse_repairs(&emit_repairs(&r)).unwrap(), r);
        for n in [1, 7, 9, 12] {
            assert!(parse_repairs(&vec![0u8; n]).is_err(), "{n} bytes");
        }
        assert!(max_list_entries(128) * 8 + OVERHEAD + IP_UDP_OVERHEAD <= 576);
    }

    #[test]
    fn symbols_fit_the_mtu() {
        assert_eq!(symbol_size_for_mtu(1500), 1424);
        assert_eq!(symbol_size_for_mtu(1500) + OVERHEAD + IP_UDP_OVERHEAD, 1500);
        assert!(symbol_size_for_mtu(9000) > 8900);
    }
}
