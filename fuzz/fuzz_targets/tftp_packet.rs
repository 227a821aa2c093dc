//! The TFTP packet parser, and a transfer fed the parsed packet: never panic,
//! and whatever parses re-emits to something that parses the same.
#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rackcast_netboot::tftp::{Packet, Transfer, TransferLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Packet::parse(data) else { return };
    let again = p.to_vec();
    assert_eq!(Packet::parse(&again).ok(), Some(p.clone()));
    let now = Instant::now();
    if let Packet::Rrq(req) = &p {
        if let Ok(mut t) = Transfer::start(now, Bytes::from_static(&[7u8; 3000]), req, &TransferLimits::default()) {
            while t.poll_transmit(now).is_some() {}
            t.handle_packet(now, &Packet::Ack(0));
            t.handle_packet(now, &Packet::Ack(1));
            t.handle_timeout(now + std::time::Duration::from_secs(100));
        }
    }
});
