//! TFTP against real clients on loopback: atftp, busybox tftp, curl and
//! tftp-hpa, across sizes, options, traversal, a vanishing client and 200
//! concurrent clients.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rackcast_netboot::tftp::{Packet, Request, TransferLimits};

use crate::util::{have, run_limited, TftpFixture};

pub(crate) const LIMIT: Duration = Duration::from_secs(120);

pub(crate) fn limits() -> TransferLimits {
    TransferLimits {
        max_blksize: 1468,
        max_timeout: Duration::from_secs(2),
        max_retries: 3,
        // The test clients stand for many machines but all share 127.0.0.1.
        max_transfers: 2000,
        max_transfers_per_client: 2000,
        ..TransferLimits::default()
    }
}

/// Sizes of the matrix: empty, around 512, a multiple of 1468.
const SIZES: [usize; 6] = [0, 1, 511, 512, 513, 1468 * 5];

pub(crate) fn make_root(sizes: &[usize]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for &n in sizes {
        std::fs::write(dir.path().join(format!("f{n}")), content(n)).unwrap();
    }
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/inner"), b"inner").unwrap();
    dir
}

pub(crate) fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

#[derive(Clone, Copy)]
enum Client {
    Atftp(&'static [&'static str]),
    Busybox,
    Curl,
    TftpHpa,
}

impl Client {
    fn bin(&self) -> &'static str {
        match self {
            Client::Atftp(_) => "atftp",
            Client::Busybox => "busybox",
            Client::Curl => "curl",
            Client::TftpHpa => "tftp",
        }
    }

    fn get(&self, srv: &TftpFixture, remote: &str, local: &Path) -> (bool, String) {
        let port = srv.addr.port().to_string();
        let local_s = local.to_str().unwrap();
        let mut cmd = match self {
            Client::Atftp(opts) => {
                let mut c = Command::new("atftp");
                for o in opts.iter() {
                    c.args(["--option", o]);
                }
                c.args(["-g", "-r", remote, "-l", local_s, "127.0.0.1", &port]);
                c
            }
            Client::Busybox => {
                let mut c = Command::new("busybox");
                c.args([
                    "tftp",
                    "-g",
                    "-r",
                    remote,
                    "-l",
                    local_s,
                    "127.0.0.1",
                    &port,
                ]);
                c
            }
            Client::Curl => {
                let mut c = Command::new("curl");
                c.args([
                    "-sS",
                    "--fail",
                    "-o",
                    local_s,
                    &format!("tftp://127.0.0.1:{port}/{remote}"),
                ]);
                c
            }
            Client::TftpHpa => {
                let mut c = Command::new("tftp");
                c.args([
                    "-m",
                    "binary",
                    "127.0.0.1",
                    &port,
                    "-c",
                    "get",
                    remote,
                    local_s,
                ]);
                c
            }
        };
        run_limited(&mut cmd, LIMIT)
    }
}

fn check_matrix(client: Client, sizes: &[usize]) {
    if !have(client.bin()) {
        return;
    }
    let root = make_root(sizes);
    let out = tempfile::tempdir().unwrap();
    let srv = TftpFixture::start(root.path(), limits());
    for &n in sizes {
        let local = out.path().join(format!("got{n}"));
        let (ok, log) = client.get(&srv, &format!("f{n}"), &local);
        assert!(ok, "{} size {n}: {log}", client.bin());
        let got = std::fs::read(&local).unwrap();
        assert!(
            got == content(n),
            "{} size {n}: {} bytes back",
            client.bin(),
            got.len()
        );
    }
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(
        srv.stats.completed.load(Ordering::Relaxed),
        sizes.len() as u64
    );
}

#[test]
fn atftp_no_options() {
    check_matrix(Client::Atftp(&[]), &SIZES);
}

#[test]
fn atftp_blksize_tsize_timeout() {
    check_matrix(
        Client::Atftp(&["blksize 1468", "tsize", "timeout 2"]),
        &SIZES,
    );
}

#[test]
fn atftp_windowsize() {
    check_matrix(
        Client::Atftp(&["blksize 1468", "windowsize 8"]),
        &[0, 1467, 1468, 1469, 1468 * 64, 1468 * 1000 + 3],
    );
}

#[test]
fn atftp_blksize_clamped_to_path_mtu() {
    check_matrix(
        Client::Atftp(&["blksize 65464", "tsize"]),
        &[0, 1468 * 3, 100_000],
    );
}

#[test]
fn busybox_tftp() {
    check_matrix(Client::Busybox, &SIZES);
}

#[test]
fn curl_tftp() {
    check_matrix(Client::Curl, &SIZES);
}

#[test]
fn tftp_hpa_no_options() {
    check_matrix(Client::TftpHpa, &SIZES);
}

#[test]
fn over_65535_blocks_rolls_over() {
    // 512-byte blocks: 65,537 blocks, past the 16-bit block number.
    let n = 512 * 65_536 + 100;
    for client in [Client::TftpHpa, Client::Atftp(&["tsize"])] {
        check_matrix(client, &[n]);
    }
}

#[test]
fn traversal_and_missing_file_refused() {
    let root = make_root(&[1]);
    let srv = TftpFixture::start(root.path(), limits());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let secret = tempfile::NamedTempFile::new().unwrap();
    let abs = secret.path().to_str().unwrap().to_string();
    let cases: Vec<(String, u16)> = vec![
        ("../etc/passwd".into(), 2),
        ("sub/../../x".into(), 2),
        (abs, 2),
        ("sub\\inner".into(), 2),
        ("missing".into(), 1),
    ];
    for (name, code) in cases {
        let req = Packet::Rrq(Request {
            filename: &name,
            mode: "octet",
            options: vec![],
        });
        sock.send_to(&req.to_vec(), srv.addr).unwrap();
        let mut buf = [0u8; 1024];
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        match Packet::parse(&buf[..n]).unwrap() {
            Packet::Error { code: c, .. } => assert_eq!(c, code, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // And through real clients.
    if have("curl") {
        let out = tempfile::tempdir().unwrap();
        let (ok, _) = Client::Curl.get(&srv, "../../etc/passwd", &out.path().join("x"));
        assert!(!ok);
    }
    // A write is refused: the server is read-only.
    let wrq = Packet::Wrq(Request {
        filename: "f1",
        mode: "octet",
        options: vec![],
    });
    sock.send_to(&wrq.to_vec(), srv.addr).unwrap();
    let mut buf = [0u8; 1024];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(matches!(
        Packet::parse(&buf[..n]).unwrap(),
        Packet::Error { code: 2, .. }
    ));
    // Garbage is dropped and counted.
    sock.send_to(b"\x00\x09junk", srv.addr).unwrap();
    let start = Instant::now();
    while srv.stats.malformed.load(Ordering::Relaxed) == 0
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(srv.stats.malformed.load(Ordering::Relaxed), 1);
}

#[test]
fn vanishing_client_is_given_up() {
    let root = make_root(&[100_000]);
    let srv = TftpFixture::start(root.path(), limits());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = Packet::Rrq(Request {
        filename: "f100000",
        mode: "octet",
        options: vec![],
    });
    sock.send_to(&req.to_vec(), srv.addr).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert!(matches!(
        Packet::parse(&buf[..n]).unwrap(),
        Packet::Data { block: 1, .. }
    ));
    sock.send_to(&Packet::Ack(1).to_vec(), from).unwrap();
    drop(sock); // vanish mid-transfer
    assert!(
        srv.wait_idle(Duration::from_secs(30)),
        "transfer never given up"
    );
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 1);
}

#[test]
fn ovmf_style_size_probe_error_8_is_clean() {
    let root = make_root(&[5000]);
    let srv = TftpFixture::start(root.path(), limits());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = Packet::Rrq(Request {
        filename: "f5000",
        mode: "octet",
        options: vec![("tsize", "0"), ("blksize", "1468")],
    });
    sock.send_to(&req.to_vec(), srv.addr).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    let Packet::Oack(opts) = Packet::parse(&buf[..n]).unwrap() else {
        panic!("expected OACK")
    };
    assert!(opts.contains(&("tsize", "5000")));
    let err = Packet::Error {
        code: 8,
        message: "",
    };
    sock.send_to(&err.to_vec(), from).unwrap();
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.aborted.load(Ordering::Relaxed), 1);
}

#[test]
fn two_hundred_concurrent_clients() {
    let client = if have("atftp") {
        Client::Atftp(&["blksize 1468", "windowsize 4"])
    } else if have("busybox") {
        Client::Busybox
    } else {
        return;
    };
    let n = 1_000_000;
    let root = make_root(&[n]);
    let out = tempfile::tempdir().unwrap();
    let srv = TftpFixture::start(root.path(), limits());
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..200 {
        let local: PathBuf = out.path().join(format!("c{i}"));
        let port = srv.addr.port().to_string();
        let mut c = match &client {
            Client::Atftp(opts) => {
                let mut c = Command::new("atftp");
                for o in opts.iter() {
                    c.args(["--option", o]);
                }
                c.args([
                    "-g",
                    "-r",
                    &format!("f{n}"),
                    "-l",
                    local.to_str().unwrap(),
                    "127.0.0.1",
                    &port,
                ]);
                c
            }
            _ => {
                let mut c = Command::new("busybox");
                c.args([
                    "tftp",
                    "-g",
                    "-r",
                    &format!("f{n}"),
                    "-l",
                    local.to_str().unwrap(),
                    "127.0.0.1",
                    &port,
                ]);
                c
            }
        };
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        children.push((c.spawn().unwrap(), local));
    }
    let expect = content(n);
    for (mut child, local) in children {
        let mut ok = false;
        while start.elapsed() < LIMIT {
            if let Some(st) = child.try_wait().unwrap() {
                ok = st.success();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(ok, "client for {local:?} failed");
        assert!(std::fs::read(&local).unwrap() == expect);
    }
    eprintln!("200 clients x {n} bytes in {:?}", start.elapsed());
    assert!(srv.wait_idle(Duration::from_secs(10)));
    assert_eq!(srv.stats.completed.load(Ordering::Relaxed), 200);
}
