use super::*;

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
