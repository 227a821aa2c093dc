//! A BMC that answers 412 to a PATCH without the right If-Match. sushy
//! sends no ETag, so a small HTTPS shim sits in front of a plain-HTTP
//! sushy: it adds `ETag: "N"` to GETs of the system, answers 412 to a
//! PATCH of it whose If-Match is not the current tag, and moves the tag on
//! after each PATCH it lets through (the resource changed). It can also
//! move the tag right after a GET, as if someone changed the system
//! between the driver's GET and its PATCH.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rackcast_bmc::{connect, BmcAddr, BootDevice};

use crate::emu::{config, self_signed, PASSWORD};
use rackcast_tests::emu::Sushy;

#[test]
fn boot_once_sends_if_match_and_retries_a_412_once() {
    let Some(s) = Sushy::start(false) else { return };
    let sys = s.system();
    let shim = Shim::start(s.port, sys.clone());
    let bmc = connect(&config(
        shim.addr(),
        PASSWORD,
        true,
        Duration::from_secs(10),
    ))
    .unwrap();

    bmc.boot_once(BootDevice::Pxe).unwrap();
    let patches = shim.patches();
    assert_eq!(
        patches,
        [(Some("\"1\"".to_string()), 204)],
        "one PATCH carrying the GET's ETag: {:?}",
        shim.seen()
    );
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Pxe");

    // The system changes between the driver's GET and its PATCH: 412, a
    // fresh GET, and the PATCH again with the new tag.
    shim.rotate_after_next_get.store(true, Ordering::SeqCst);
    bmc.boot_once(BootDevice::Disk).unwrap();
    assert_eq!(
        shim.patches()[1..],
        [
            (Some("\"2\"".to_string()), 412),
            (Some("\"3\"".to_string()), 204)
        ],
        "{:?}",
        shim.seen()
    );
    assert_eq!(s.get(&sys)["Boot"]["BootSourceOverrideTarget"], "Hdd");
}

/// What the shim saw: method, path, If-Match, the status it answered.
type Seen = (String, String, Option<String>, u16);

struct Shim {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    rotate_after_next_get: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bounds on the shim's life and on each request.
const MAX_CONNECTIONS: usize = 100;
const MAX_LIFE: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

impl Shim {
    /// In front of sushy on `upstream` (plain HTTP), guarding `system`.
    fn start(upstream: u16, system: String) -> Shim {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = server_config();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rotate = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Guard {
            upstream,
            system,
            etag: AtomicU32::new(1),
            seen: seen.clone(),
            rotate: rotate.clone(),
        };
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let start = Instant::now();
            let mut served = 0;
            while !stop2.load(Ordering::SeqCst)
                && served < MAX_CONNECTIONS
                && start.elapsed() < MAX_LIFE
            {
                match listener.accept() {
                    Ok((c, _)) => {
                        served += 1;
                        if let Err(e) = state.serve(c, tls.clone()) {
                            eprintln!("etag shim: {e}");
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Shim {
            port,
            seen,
            rotate_after_next_get: rotate,
            stop,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> BmcAddr {
        format!("redfish://127.0.0.1:{}", self.port)
            .parse()
            .unwrap()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The PATCHes: their If-Match and the status they got.
    fn patches(&self) -> Vec<(Option<String>, u16)> {
        self.seen()
            .into_iter()
            .filter(|s| s.0 == "PATCH")
            .map(|s| (s.2, s.3))
            .collect()
    }
}

#[allow(deprecated)]
fn server_config() -> Arc<rustls::ServerConfig> {
    let (ck, _, _) = self_signed();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    Arc::new(cfg)
}

struct Guard {
    upstream: u16,
    system: String,
    etag: AtomicU32,
    seen: Arc<Mutex<Vec<Seen>>>,
    rotate: Arc<AtomicBool>,
}

struct Request {
    method: String,
    path: String,
    /// Header lines, as sent.
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Guard {
    fn serve(&self, c: TcpStream, tls: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        let conn = rustls::ServerConnection::new(tls).map_err(std::io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, c);
        let req = read_request(&mut s)?;
        let tag = || format!("\"{}\"", self.etag.load(Ordering::SeqCst));
        let if_match = req.header("If-Match");
        let on_system = req.path == self.system;
        let answer = if req.method == "PATCH" && on_system && if_match != Some(tag()) {
            let body = r#"{"error":{"code":"Base.1.0.PreconditionFailed","message":"The ETag supplied did not match the ETag required to change this resource."}}"#;
            format!(
                "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        } else {
            let mut a = forward(self.upstream, &req)?;
            if req.method == "GET" && on_system {
                let at = a.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
                a.splice(at..at, format!("ETag: {}\r\n", tag()).into_bytes());
                if self.rotate.swap(false, Ordering::SeqCst) {
                    self.etag.fetch_add(1, Ordering::SeqCst);
                }
            }
            if req.method == "PATCH" && status(&a) < 300 {
                self.etag.fetch_add(1, Ordering::SeqCst);
            }
            a
        };
        self.seen
            .lock()
            .unwrap()
            .push((req.method, req.path, if_match, status(&answer)));
        s.write_all(&answer)?;
        s.conn.send_close_notify();
        s.flush()
    }
}

fn status(answer: &[u8]) -> u16 {
    String::from_utf8_lossy(&answer[..answer.len().min(12)])
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One request: the head (at most 64 KiB) and a Content-Length body.
fn read_request(s: &mut impl Read) -> std::io::Result<Request> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 << 10 || s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("no request head"));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (
        first.next().unwrap_or_default(),
        first.next().unwrap_or_default(),
    );
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        headers: lines.map(str::to_string).collect(),
        body: Vec::new(),
    };
    let len: usize = req
        .header("Content-Length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    req.body = vec![0; len.min(1 << 20)];
    s.read_exact(&mut req.body)?;
    Ok(req)
}

/// The request to sushy over plain HTTP; its whole answer (sushy closes
/// every connection).
fn forward(port: u16, req: &Request) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", port))?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
        req.method, req.path
    );
    for h in &req.headers {
        let name = h.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("host") && !name.eq_ignore_ascii_case("connection") {
            out += h;
            out += "\r\n";
        }
    }
    out += "\r\n";
    up.write_all(out.as_bytes())?;
    up.write_all(&req.body)?;
    let mut answer = Vec::new();
    up.take(4 << 20).read_to_end(&mut answer)?;
    Ok(answer)
}
