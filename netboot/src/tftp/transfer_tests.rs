use super::*;
use crate::tftp::budget::FlightBudget;

fn rrq<'a>(opts: &[(&'a str, &'a str)]) -> Request<'a> {
    Request {
        filename: "f",
        mode: "octet",
        options: opts.to_vec(),
    }
}

fn data(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// A client that ACKs each window end in order; returns the bytes received
/// and the number of DATA packets the server sent.
fn run_clean(t: &mut Transfer, window: u64, oack: bool) -> (Vec<u8>, u64) {
    let now = Instant::now();
    let mut got = Vec::new();
    let mut sent = 0;
    let mut expect: u64 = 1;
    if oack {
        assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
        assert!(t.poll_transmit(now).is_none(), "no data before ACK 0");
        t.handle_packet(now, &Packet::Ack(0));
    }
    for _ in 0..10_000_000 {
        if t.outcome().is_some() {
            break;
        }
        let mut last = None;
        let mut n = 0;
        while let Some(tx) = t.poll_transmit(now) {
            let Transmit::Data { block, payload } = tx else {
                panic!("unexpected control")
            };
            sent += 1;
            assert_eq!(block, expect as u16);
            expect += 1;
            got.extend_from_slice(&payload);
            last = Some((block, payload.len()));
            n += 1;
        }
        assert!(n as u64 <= window);
        let (block, _) = last.expect("progress");
        t.handle_packet(now, &Packet::Ack(block));
    }
    (got, sent)
}

#[test]
fn sizes_around_block_boundaries() {
    for len in [0, 1, 511, 512, 513, 1024, 512 * 9] {
        let d = data(len);
        let mut t = Transfer::start(
            Instant::now(),
            d.clone(),
            &rrq(&[]),
            &TransferLimits::default(),
        )
        .unwrap();
        let (got, sent) = run_clean(&mut t, 1, false);
        assert_eq!(got, d.to_vec(), "len {len}");
        assert_eq!(
            sent,
            len as u64 / 512 + 1,
            "a final short (maybe empty) block, len {len}"
        );
        assert_eq!(t.outcome(), Some(&Outcome::Complete));
    }
}

#[test]
fn block_number_rolls_over_past_65535() {
    let len = 512 * 70_000 + 3;
    let d = data(len);
    let mut t = Transfer::start(
        Instant::now(),
        d.clone(),
        &rrq(&[]),
        &TransferLimits::default(),
    )
    .unwrap();
    let (got, sent) = run_clean(&mut t, 1, false);
    assert_eq!(sent, 70_001);
    assert!(got == d.to_vec());
}

#[test]
fn options_negotiated_and_echoed_in_oack() {
    let limits = TransferLimits {
        max_blksize: 1468,
        ..TransferLimits::default()
    };
    let d = data(100_000);
    let req = rrq(&[
        ("BLKSIZE", "9000"),
        ("tsize", "0"),
        ("timeout", "3"),
        ("windowsize", "8"),
        ("unknown", "1"),
    ]);
    let mut t = Transfer::start(Instant::now(), d.clone(), &req, &limits).unwrap();
    let n = t.negotiated();
    assert_eq!(n.blksize, Some(1468), "clamped to path MTU");
    assert_eq!(n.tsize, Some(100_000));
    assert_eq!(n.timeout, Some(3));
    assert_eq!(n.windowsize, Some(8));
    let now = Instant::now();
    let Some(Transmit::Control(oack)) = t.poll_transmit(now) else {
        panic!()
    };
    let Packet::Oack(opts) = Packet::parse(&oack).unwrap() else {
        panic!()
    };
    assert_eq!(
        opts,
        vec![
            ("blksize", "1468"),
            ("tsize", "100000"),
            ("timeout", "3"),
            ("windowsize", "8")
        ]
    );
    let mut t = Transfer::start(now, d.clone(), &req, &limits).unwrap();
    let (got, sent) = run_clean(&mut t, 8, true);
    assert_eq!(got, d.to_vec());
    assert_eq!(sent, 100_000 / 1468 + 1);
}

#[test]
fn no_oack_when_nothing_honoured() {
    let d = data(10);
    let mut t = Transfer::start(
        Instant::now(),
        d,
        &rrq(&[
            ("blksize", "4"),
            ("timeout", "0"),
            ("windowsize", "0"),
            ("foo", "1"),
        ]),
        &TransferLimits::default(),
    )
    .unwrap();
    assert!(matches!(
        t.poll_transmit(Instant::now()),
        Some(Transmit::Data { block: 1, .. })
    ));
}

#[test]
fn windowsize_capped_by_bytes_in_flight() {
    let limits = TransferLimits {
        max_bytes_in_flight: 4 * 1024,
        ..TransferLimits::default()
    };
    let t = Transfer::start(
        Instant::now(),
        data(1),
        &rrq(&[("blksize", "1024"), ("windowsize", "64")]),
        &limits,
    )
    .unwrap();
    assert_eq!(t.negotiated().windowsize, Some(4));
}

#[test]
fn duplicate_ack_never_retransmits() {
    let now = Instant::now();
    let mut t = Transfer::start(now, data(5000), &rrq(&[]), &TransferLimits::default()).unwrap();
    assert!(matches!(
        t.poll_transmit(now),
        Some(Transmit::Data { block: 1, .. })
    ));
    t.handle_packet(now, &Packet::Ack(1));
    assert!(matches!(
        t.poll_transmit(now),
        Some(Transmit::Data { block: 2, .. })
    ));
    t.handle_packet(now, &Packet::Ack(1));
    t.handle_packet(now, &Packet::Ack(1));
    assert!(
        t.poll_transmit(now).is_none(),
        "duplicate ACK must not resend block 2"
    );
}

#[test]
fn timeout_retransmits_with_backoff_then_gives_up() {
    let t0 = Instant::now();
    let limits = TransferLimits {
        max_retries: 3,
        ..TransferLimits::default()
    };
    let mut t = Transfer::start(t0, data(2000), &rrq(&[]), &limits).unwrap();
    assert!(t.poll_transmit(t0).is_some());
    let mut now = t0;
    let mut gaps = Vec::new();
    for _ in 0..10 {
        let Some(d) = t.poll_timeout() else { break };
        gaps.push(d - now);
        now = d;
        t.handle_timeout(now);
        if let Some(Transmit::Data { block, .. }) = t.poll_transmit(now) {
            assert_eq!(block, 1);
        }
    }
    assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
    assert_eq!(
        gaps,
        vec![
            Duration::from_secs(1),
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(8)
        ]
    );
}

#[test]
fn window_restarts_after_mid_window_ack() {
    let now = Instant::now();
    let mut t = Transfer::start(
        now,
        data(512 * 10),
        &rrq(&[("windowsize", "4")]),
        &TransferLimits::default(),
    )
    .unwrap();
    assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
    t.handle_packet(now, &Packet::Ack(0));
    let blocks: Vec<u16> = std::iter::from_fn(|| t.poll_transmit(now))
        .map(|tx| match tx {
            Transmit::Data { block, .. } => block,
            _ => 0,
        })
        .collect();
    assert_eq!(blocks, [1, 2, 3, 4]);
    // Block 3 lost: the client ACKs 2.
    t.handle_packet(now, &Packet::Ack(2));
    let blocks: Vec<u16> = std::iter::from_fn(|| t.poll_transmit(now))
        .map(|tx| match tx {
            Transmit::Data { block, .. } => block,
            _ => 0,
        })
        .collect();
    assert_eq!(blocks, [3, 4, 5, 6]);
    // A stale ACK from before is ignored.
    t.handle_packet(now, &Packet::Ack(1));
    assert!(t.poll_transmit(now).is_none());
}

#[test]
fn client_error_ends_transfer_cleanly() {
    // OVMF asks tsize, reads the OACK, then aborts with error 8.
    let now = Instant::now();
    let mut t = Transfer::start(
        now,
        data(9999),
        &rrq(&[("tsize", "0")]),
        &TransferLimits::default(),
    )
    .unwrap();
    assert!(t.poll_transmit(now).is_some());
    t.handle_packet(
        now,
        &Packet::Error {
            code: 8,
            message: "size probe",
        },
    );
    assert!(matches!(
        t.outcome(),
        Some(Outcome::ClientError { code: 8, .. })
    ));
    assert!(t.poll_transmit(now).is_none());
    assert!(t.poll_timeout().is_none());
}

#[test]
fn lost_oack_is_resent() {
    let now = Instant::now();
    let mut t = Transfer::start(
        now,
        data(10),
        &rrq(&[("tsize", "0")]),
        &TransferLimits::default(),
    )
    .unwrap();
    assert!(t.poll_transmit(now).is_some());
    let d = t.poll_timeout().unwrap();
    t.handle_timeout(d);
    assert!(matches!(t.poll_transmit(d), Some(Transmit::Control(_))));
}

#[test]
fn netascii_converts_line_ends_and_mail_refused() {
    let now = Instant::now();
    let req = Request {
        filename: "f",
        mode: "NetASCII",
        options: vec![],
    };
    let mut t = Transfer::start(
        now,
        Bytes::from_static(b"a\nb\r"),
        &req,
        &TransferLimits::default(),
    )
    .unwrap();
    let (got, _) = run_clean(&mut t, 1, false);
    assert_eq!(got, b"a\r\nb\r\0");
    let req = Request {
        filename: "f",
        mode: "mail",
        options: vec![],
    };
    assert!(Transfer::start(now, Bytes::new(), &req, &TransferLimits::default()).is_err());
}

#[test]
fn lossy_window_simulation_delivers_every_byte_in_order() {
    // A seeded lossy link: the client keeps only in-order blocks and ACKs the
    // last in-order block at window end or on its own timer.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let d = data(512 * 300 + 17);
    let mut now = Instant::now();
    let mut t = Transfer::start(
        now,
        d.clone(),
        &rrq(&[("windowsize", "8")]),
        &TransferLimits {
            max_retries: 50,
            ..TransferLimits::default()
        },
    )
    .unwrap();
    let mut got: Vec<u8> = Vec::new();
    let mut have: u64 = 0;
    let mut in_window = 0;
    for _ in 0..200_000 {
        if t.outcome().is_some() {
            break;
        }
        let mut any = false;
        while let Some(tx) = t.poll_transmit(now) {
            any = true;
            if rand() % 10 == 0 {
                continue; // lost
            }
            match tx {
                Transmit::Control(_) => t.handle_packet(now, &Packet::Ack(0)),
                Transmit::Data { block, payload } => {
                    in_window += 1;
                    let in_order = block == (have + 1) as u16;
                    if in_order {
                        have += 1;
                        got.extend_from_slice(&payload);
                    }
                    if (in_order && payload.len() < 512) || in_window >= 8 {
                        in_window = 0;
                        t.handle_packet(now, &Packet::Ack(have as u16));
                    }
                }
            }
        }
        if !any {
            if let Some(d) = t.poll_timeout() {
                now = d;
                t.handle_timeout(now);
                in_window = 0;
            }
        }
    }
    assert_eq!(
        t.outcome(),
        Some(&Outcome::Complete),
        "have {have} acked {}",
        t.acked
    );
    assert!(got == d.to_vec());
}

#[test]
fn blksize_clamped_to_path_mtu_v4_and_v6() {
    assert_eq!(blksize_for_mtu(1500, false), 1468);
    assert_eq!(blksize_for_mtu(1200, false), 1168);
    assert_eq!(blksize_for_mtu(1500, true), 1448);
    assert_eq!(
        blksize_for_mtu(65536, false),
        65464,
        "loopback: RFC 2348 maximum"
    );
    assert_eq!(
        blksize_for_mtu(0, false),
        8,
        "never below the RFC 2348 minimum"
    );
    let limits = TransferLimits::default().clamped_to_mtu(1200, false);
    let t = Transfer::start(
        Instant::now(),
        data(10_000),
        &rrq(&[("blksize", "1468")]),
        &limits,
    )
    .unwrap();
    assert_eq!(t.negotiated().blksize, Some(1168));
    let roomy = TransferLimits::default().clamped_to_mtu(9000, false);
    assert_eq!(roomy.max_blksize, 1468, "the configured cap still holds");
}

#[test]
fn global_cap_lowers_later_windows_and_is_released_when_transfers_end() {
    let limits = TransferLimits::default();
    // Room for 64 + 36 blocks of 1024 bytes.
    let budget = FlightBudget::new(100 * 1024);
    let req = rrq(&[("blksize", "1024"), ("windowsize", "64")]);
    let start = |d: Bytes| Transfer::start_within(Instant::now(), d, &req, &limits, &budget);
    let mut a = start(data(200_000)).unwrap();
    let b = start(data(200_000)).unwrap();
    let c = start(data(200_000)).unwrap();
    assert_eq!(a.negotiated().windowsize, Some(64));
    assert!(!a.window_lowered_by_global_cap());
    assert_eq!(b.negotiated().windowsize, Some(36));
    assert!(b.window_lowered_by_global_cap());
    assert_eq!(c.negotiated().windowsize, Some(1), "never below one block");
    assert_eq!(budget.in_use(), 101 * 1024);
    // The window the client was granted is the one the server keeps to.
    let Some(Transmit::Control(oack)) = a.poll_transmit(Instant::now()) else {
        panic!("expected OACK")
    };
    let Packet::Oack(opts) = Packet::parse(&oack).unwrap() else {
        panic!()
    };
    assert!(opts.contains(&("windowsize", "64")));
    // A finished transfer gives its share back before it is even dropped.
    a.handle_packet(
        Instant::now(),
        &Packet::Error {
            code: 0,
            message: "bye",
        },
    );
    assert_eq!(a.reserved_bytes(), 0);
    assert_eq!(budget.in_use(), 37 * 1024);
    drop(b);
    assert_eq!(budget.in_use(), 1024);
    let d = start(data(200_000)).unwrap();
    assert_eq!(d.negotiated().windowsize, Some(64));
    drop((a, c, d));
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn global_cap_counts_transfers_without_windowsize_as_one_block() {
    let budget = FlightBudget::new(3 * 512);
    let limits = TransferLimits::default();
    let plain =
        Transfer::start_within(Instant::now(), data(5000), &rrq(&[]), &limits, &budget).unwrap();
    assert_eq!(plain.reserved_bytes(), 512);
    assert_eq!(plain.negotiated(), Negotiated::default(), "no OACK for it");
    let w = Transfer::start_within(
        Instant::now(),
        data(5000),
        &rrq(&[("windowsize", "8")]),
        &limits,
        &budget,
    )
    .unwrap();
    assert_eq!(w.negotiated().windowsize, Some(2));
    let mut w = w;
    let (got, _) = run_clean(&mut w, 2, true);
    assert_eq!(got, data(5000).to_vec());
    assert_eq!(
        budget.in_use(),
        512,
        "completion released the windowed share"
    );
}

#[test]
fn netascii_streams_with_retransmits_and_answers_no_tsize() {
    let src: Vec<u8> = (0..40_000u32)
        .map(|i| match i % 37 {
            0 => b'\n',
            19 => b'\r',
            n => b'a' + n as u8,
        })
        .collect();
    let whole = super::super::netascii::to_netascii(&src);
    let req = Request {
        filename: "f",
        mode: "netascii",
        options: vec![("blksize", "512"), ("windowsize", "4"), ("tsize", "0")],
    };
    let mut now = Instant::now();
    let mut t = Transfer::start(
        now,
        Bytes::from(src.clone()),
        &req,
        &TransferLimits::default(),
    )
    .unwrap();
    assert_eq!(
        t.negotiated().tsize,
        None,
        "netascii size is not known up front"
    );
    assert_eq!(t.total_blocks(), None);
    assert!(matches!(t.poll_transmit(now), Some(Transmit::Control(_))));
    t.handle_packet(now, &Packet::Ack(0));
    // Every window is sent, lost once (the timer fires and it is sent again,
    // byte for byte the same), then acknowledged.
    let mut got = Vec::new();
    let mut acked: u16 = 0;
    for _ in 0..10_000 {
        if t.outcome().is_some() {
            break;
        }
        let first: Vec<Transmit> = std::iter::from_fn(|| t.poll_transmit(now)).collect();
        assert!(!first.is_empty() && first.len() <= 4);
        now = t.poll_timeout().unwrap();
        t.handle_timeout(now);
        let again: Vec<Transmit> = std::iter::from_fn(|| t.poll_transmit(now)).collect();
        assert_eq!(first, again, "a retransmitted window differs");
        for tx in &first {
            let Transmit::Data { block, payload } = tx else {
                panic!("control after the OACK")
            };
            assert_eq!(*block, acked.wrapping_add(1));
            acked = *block;
            got.extend_from_slice(payload);
        }
        t.handle_packet(now, &Packet::Ack(acked));
    }
    assert_eq!(t.outcome(), Some(&Outcome::Complete));
    assert!(got == whole, "{} bytes, want {}", got.len(), whole.len());
    assert_eq!(t.total_blocks(), Some(whole.len() as u64 / 512 + 1));
    assert_eq!(t.len(), src.len());
}

#[test]
fn client_timeout_above_the_back_off_ceiling_is_not_honoured() {
    let t0 = Instant::now();
    let limits = TransferLimits::default();
    let mut t = Transfer::start(t0, data(100), &rrq(&[("timeout", "255")]), &limits).unwrap();
    assert_eq!(t.negotiated().timeout, None);
    // No OACK (nothing else was asked): block 1, retransmitted on our timer.
    assert!(matches!(t.poll_transmit(t0), Some(Transmit::Data { .. })));
    assert_eq!(t.poll_timeout(), Some(t0 + limits.initial_timeout));
    let t = Transfer::start(t0, data(100), &rrq(&[("timeout", "8")]), &limits).unwrap();
    assert_eq!(
        t.negotiated().timeout,
        Some(8),
        "up to max_timeout is honoured"
    );
}
