//! Cast packets: parsing never panics, and authenticated-but-hostile packets
//! fed to a receiver never panic it either.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rackcast_engine::cast::wire::{self, Announce, Header, PacketType, SessionKey, Status};
use rackcast_engine::cast::{Receiver, ReceiverConfig, ReedSolomon};

fuzz_target!(|data: &[u8]| {
    let key = SessionKey::from_secret(b"fuzz key, sixteen bytes or more");
    let _ = wire::parse(&key, data);
    let _ = Status::parse(data);
    let _ = wire::parse_repairs(data);
    let _ = wire::parse_acked(data);
    let _ = Announce::parse(data);
    // Split the input into packets, sign each with the right key and feed
    // them to one receiver: the MAC passes, so the receiver's logic is what
    // gets exercised.
    let now = Instant::now();
    let mut rx = Receiver::new(ReceiverConfig::new(key.clone(), 1), Arc::new(ReedSolomon), now);
    let from = "127.0.0.1:9".parse().unwrap();
    let mut buf = Vec::new();
    // Input: a sequence of [length][packet fields and payload].
    let mut rest = data;
    for n in 0..256u64 {
        let Some((&len, tail)) = rest.split_first() else { break };
        let len = (len as usize).min(tail.len());
        let (p, next) = tail.split_at(len);
        rest = next;
        if p.len() < 5 {
            continue;
        }
        let kind = match p[0] % 6 {
            0 => PacketType::Announce,
            1 => PacketType::Symbol,
            2 => PacketType::Status,
            3 => PacketType::Repairs,
            4 => PacketType::Acked,
            _ => PacketType::End,
        };
        let h = Header {
            kind,
            session: (p[1] % 2) as u64,
            seq: u64::from(p[2]),
            object: if p[3] == 0xff { u32::MAX } else { u32::from(p[3] % 8) },
            symbol: u32::from(p[4]),
        };
        buf.clear();
        wire::emit(&key, &h, &p[5..], &mut buf);
        let t = now + Duration::from_millis(n);
        rx.handle_datagram(t, from, &buf);
        while rx.poll_event().is_some() {}
        let mut out = Vec::new();
        let _ = rx.poll_transmit(t, &mut out);
    }
});
