//! The boot HTTP server against clients that hold connections: slow-loris
//! clients trickling a request head are closed after the head timeout
//! however steadily they trickle, the connection cap holds them to a few
//! places, and a normal GET is still served; a client that stops reading
//! its response is closed after the write timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackcast_netboot::files::FileTree;
use rackcast_netboot::http::{HttpLimits, HttpServer};
use rackcast_netboot::{BootAction, Events, StaticPolicy};

/// An HTTP server on 127.0.0.1 on its own runtime, stopped on drop.
pub struct HttpFixture {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpFixture {
    pub fn start(root: &Path, limits: HttpLimits) -> Self {
        let policy = Arc::new(StaticPolicy::with_default(BootAction::Ignore));
        let files = FileTree::new(root, policy).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let srv = HttpServer::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    files,
                    Events::new(),
                    "127.0.0.1".into(),
                    String::new(),
                    limits,
                )
                .await
                .unwrap();
                // Counted and served at /metrics, as Netboot::bind does.
                let metrics = rackcast_netboot::NetbootMetrics::default();
                let mut reg = prometheus_client::registry::Registry::default();
                metrics.register(&mut reg, Arc::default());
                let srv = srv.metrics(metrics, Arc::new(reg));
                tx.send(srv.local_addr().unwrap()).unwrap();
                tokio::select! {
                    _ = srv.run() => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        HttpFixture {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A slow-loris client: sends a request line, then one header byte every
/// 100 ms, never ending the head. Returns how long the server kept it.
fn slow_loris(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(100))).ok()?;
    if s.write_all(b"GET /files/small.bin HTTP/1.1\r\nX-Slow: ")
        .is_err()
    {
        return Some(t0.elapsed());
    }
    let mut buf = [0u8; 256];
    while t0.elapsed() < limit {
        if s.write_all(b"a").is_err() {
            return Some(t0.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

/// A plain GET with `Connection: close`; the body.
fn get(addr: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let at = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no head")?;
    if !resp.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&resp[..at]).into_owned());
    }
    Ok(resp[at + 4..].to_vec())
}

#[test]
fn slow_clients_are_closed_after_the_head_timeout_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("small.bin"), &small).unwrap();
    let limits = HttpLimits {
        max_connections: 4,
        head_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(2),
    };
    let srv = HttpFixture::start(dir.path(), limits);
    // Fewer slow clients than places: a GET is served at once.
    let addr = srv.addr;
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || slow_loris(addr, Duration::from_secs(10))))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    assert_eq!(get(srv.addr, "/files/small.bin").unwrap(), small);
    assert!(
        t0.elapsed() < Duration::from_millis(800),
        "{:?}",
        t0.elapsed()
    );
    // Each slow client is closed once its head is a second late, though it
    // sends a byte every 100 ms.
    for h in slow {
        let kept = h.join().unwrap().expect("a slow client was never closed");
        assert!(
            kept >= Duration::from_millis(900) && kept < Duration::from_secs(3),
            "kept {kept:?}"
        );
    }
    // More slow clients than places: the cap holds them to four at a time,
    // and a GET behind them is served when the head timeout frees places.
    let slow: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || slow_loris(addr, Duration::from_secs(10))))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    assert_eq!(get(srv.addr, "/files/small.bin").unwrap(), small);
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    let kept: Vec<Duration> = slow
        .into_iter()
        .map(|h| h.join().unwrap().expect("a slow client was never closed"))
        .collect();
    // The two beyond the cap waited for a place, so were held about twice
    // the timeout (in the backlog, then served their own timeout).
    let long = kept
        .iter()
        .filter(|k| **k >= Duration::from_millis(1800))
        .count();
    assert!(long >= 2, "no slow client waited for a place: {kept:?}");
    assert!(kept.iter().all(|k| *k < Duration::from_secs(5)), "{kept:?}");
}

#[test]
fn a_client_that_stops_reading_is_closed_after_the_write_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let len = 32 << 20;
    let f = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    f.set_len(len).unwrap();
    let limits = HttpLimits {
        max_connections: 1,
        head_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(1),
    };
    let srv = HttpFixture::start(dir.path(), limits);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    write!(s, "GET /files/big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // It holds the only place while it does not read; the server gives up
    // on it after the write timeout and the next client is served.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut next = TcpStream::connect(srv.addr).unwrap();
    next.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(next, "GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    next.read_to_end(&mut resp).unwrap();
    assert!(
        resp.starts_with(b"HTTP/1.1 404"),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // The stalled client's response ends short of its length.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..100_000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(got < len, "the whole {got} bytes came: never closed");
}

#[test]
fn metrics_count_requests_and_body_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.bin"), vec![7u8; 3000]).unwrap();
    let h = HttpFixture::start(dir.path(), HttpLimits::default());
    for _ in 0..2 {
        assert_eq!(get(h.addr, "/files/small.bin").unwrap().len(), 3000);
    }
    let text = String::from_utf8(get(h.addr, "/metrics").unwrap()).unwrap();
    let sample = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(
        sample(r#"rackcast_http_boot_requests_total{what="file"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample("rackcast_http_boot_bytes_total"),
        Some(6000.0),
        "{text}"
    );
    assert_eq!(sample("rackcast_tftp_active"), Some(0.0), "{text}");
}
