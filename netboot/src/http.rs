//! HTTP for what TFTP should not carry: kernels and initrds (with Range) under
//! `/files/...`, per-MAC iPXE scripts from the policy under `/ipxe/<mac>`,
//! and the policy's preboot console under `/console/<mac>/<action>` (its
//! credentials as Basic authorization, never logged).
//!
//! A deliberately small HTTP/1.1 server (GET/HEAD, keep-alive, one byte
//! range): firmware HTTP clients need nothing more.
//!
//! Anyone on the provisioning network can connect, so what a connection may
//! hold is bounded ([`HttpLimits`]): the number of connections (the next is
//! accepted when one closes), the time a request head may take to arrive
//! (whole, not per byte, so a client trickling a byte at a time is closed
//! too), and the time one write may wait on a client that stopped reading.
//! Accept errors (out of file descriptors) pause accepting briefly instead
//! of spinning.
//!
//! File bodies go by `sendfile(2)`, with no copy through userspace (see
//! [`body`]: a boot storm is the same few files to a thousand targets).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::arch::{ClientArch, ClientKind, MacAddr};
use crate::error::{Error, Result};
use crate::events::{BootEvent, Events, Step};
use crate::files::FileTree;
use crate::metrics::NetbootMetrics;
use crate::neighbor::{PeerCheck, ScriptPeer};
use crate::policy::{ipxe_script, BootAction, BootQuery, BootStage, ConsoleReply, ConsoleRequest};
use prometheus_client::registry::Registry;

mod body;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS): the error would
/// come back at once, and retrying at once spins a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What the boot HTTP server lets connections hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once; the next waits in the listen backlog.
    pub max_connections: usize,
    /// Time a request head may take to arrive, counted from when the server
    /// starts waiting for it (so it bounds a keep-alive connection's idle
    /// time as well).
    pub head_timeout: Duration,
    /// Time one write may wait for the client to take data.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 256,
            head_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// The boot HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    shared: Arc<Shared>,
    limits: HttpLimits,
    connections: Arc<Semaphore>,
}

#[derive(Debug, Clone)]
struct Shared {
    files: FileTree,
    events: Events,
    /// Counts requests and bytes.
    metrics: NetbootMetrics,
    /// What `/metrics` serves; `None` answers it 404.
    registry: Option<Arc<Registry>>,
    /// Our address as iPXE scripts should name it (`{server}`).
    server: String,
    /// Our base URL (`{http}`).
    base: String,
    /// Who may fetch a MAC's script.
    script_peer: ScriptPeer,
}

impl HttpServer {
    /// Binds `addr`; `server` and `base` fill script placeholders.
    pub async fn bind(
        addr: SocketAddr,
        files: FileTree,
        events: Events,
        server: String,
        base: String,
        limits: HttpLimits,
    ) -> Result<Self> {
        let listener = TcpListener::bind(addr).await.map_err(|e| Error::Socket {
            what: format!("bind HTTP {addr}"),
            source: e,
        })?;
        Ok(HttpServer {
            listener,
            shared: Arc::new(Shared {
                files,
                events,
                metrics: NetbootMetrics::default(),
                registry: None,
                server,
                base,
                script_peer: ScriptPeer::default(),
            }),
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        })
    }

    /// Sets the base URL once the bound port is known.
    pub fn rebase(self, base: String) -> Self {
        let mut s = (*self.shared).clone();
        s.base = base;
        HttpServer {
            shared: Arc::new(s),
            ..self
        }
    }

    /// Sets who may fetch a MAC's iPXE script.
    pub fn script_peer(self, script_peer: ScriptPeer) -> Self {
        let mut s = (*self.shared).clone();
        s.script_peer = script_peer;
        HttpServer {
            shared: Arc::new(s),
            ..self
        }
    }

    /// Counts into `metrics` and serves `registry` at `/metrics`.
    pub fn metrics(self, metrics: NetbootMetrics, registry: Arc<Registry>) -> Self {
        let mut s = (*self.shared).clone();
        s.metrics = metrics;
        s.registry = Some(registry);
        HttpServer {
            shared: Arc::new(s),
            ..self
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|e| Error::Socket {
            what: "local_addr".into(),
            source: e,
        })
    }

    /// Serves until dropped.
    pub async fn run(self) -> Result<()> {
        loop {
            // A connection is accepted only once it has a place.
            let Ok(place) = self.connections.clone().acquire_owned().await else {
                return Ok(()); // the semaphore is never closed
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("HTTP accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let (shared, limits) = (self.shared.clone(), self.limits);
            tokio::spawn(async move {
                let _ = connection(stream, peer, &shared, &limits).await;
                drop(place);
            });
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::TimedOut)
}

/// A connection whose every write gives up after `write_timeout`.
struct Timed {
    inner: TcpStream,
    write_timeout: Duration,
}

impl Timed {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        timeout(self.write_timeout, self.inner.write_all(b))
            .await
            .map_err(|_| timed_out())?
    }
}

/// Reads until `buf` holds a whole request head; its length, or `None` when
/// the client closed first. A head longer than [`MAX_HEAD`] comes back as a
/// length over it.
async fn read_head(stream: &mut Timed, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(p) = find_head_end(buf) {
            return Ok(Some(p));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Some(buf.len()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.inner.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    limits: &HttpLimits,
) -> std::io::Result<()> {
    let mut stream = Timed {
        inner: stream,
        write_timeout: limits.write_timeout,
    };
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_len = match timeout(limits.head_timeout, read_head(&mut stream, &mut buf)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(timed_out()),
        };
        if head_len > MAX_HEAD {
            return respond(
                &mut stream,
                431,
                "text/plain",
                b"head too large",
                false,
                true,
            )
            .await;
        }

        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&buf[..head_len]);
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            return respond(&mut stream, 400, "text/plain", b"bad request", false, true).await;
        }
        let method = req.method.unwrap_or("").to_string();
        let path = req.path.unwrap_or("/").to_string();
        let close = req.version == Some(0)
            || req.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
            });
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(str::to_string)
        };
        let range = header("range");
        let login = header("authorization").and_then(|a| basic_login(&a));
        buf.drain(..head_len);
        let head = method == "HEAD";
        if method != "GET" && !head {
            respond(
                &mut stream,
                405,
                "text/plain",
                b"method not allowed",
                head,
                close,
            )
            .await?;
        } else {
            let req = Request {
                path: &path,
                range: range.as_deref(),
                login,
                head,
                close,
            };
            serve(&mut stream, peer, shared, req).await?;
        }
        if close {
            return Ok(());
        }
    }
}

/// What a boot event says of a served script: the commands that fetch
/// something and their URLs, without the arguments after them (a kernel's
/// command line carries the target's boot token).
fn script_summary(script: &str) -> String {
    let fetches: Vec<String> = script
        .lines()
        .map(str::trim)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let cmd = words.next()?;
            if !["kernel", "initrd", "chain", "imgfetch", "module"].contains(&cmd) {
                return None;
            }
            // What it fetches: the first word naming a path (options such
            // as `--name initrd` come before it).
            let url = words.find(|w| w.contains('/'))?;
            Some(format!("{cmd} {url}"))
        })
        .collect();
    if fetches.is_empty() {
        "script".to_string()
    } else {
        format!("script: {}", fetches.join("; "))
    }
}

/// What [`serve`] needs of a parsed request.
struct Request<'a> {
    path: &'a str,
    range: Option<&'a str>,
    /// HTTP Basic credentials, decoded.
    login: Option<(String, String)>,
    head: bool,
    close: bool,
}

/// The user and password of an `Authorization: Basic` value.
fn basic_login(value: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

async fn serve(
    stream: &mut Timed,
    peer: SocketAddr,
    shared: &Shared,
    req: Request<'_>,
) -> std::io::Result<()> {
    let Request {
        path,
        range,
        login,
        head,
        close,
    } = req;
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path == "/metrics" {
        let Some(reg) = &shared.registry else {
            return respond(stream, 404, "text/plain", b"not found", head, close).await;
        };
        let mut text = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut text, reg).is_err() {
            return respond(stream, 500, "text/plain", b"encoding failed", head, close).await;
        }
        let ctype = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
        return respond(stream, 200, ctype, text.as_bytes(), head, close).await;
    }
    if let Some(rest) = path.strip_prefix("/console/") {
        let call = ConsoleCall {
            rest,
            query,
            login,
            head,
            close,
        };
        return console(stream, peer, shared, call).await;
    }
    if let Some(rest) = path.strip_prefix("/ipxe/") {
        let mac_s = percent_decode(rest.trim_end_matches(".ipxe"));
        let Ok(mac) = MacAddr::parse(&mac_s) else {
            return respond(stream, 404, "text/plain", b"not found", head, close).await;
        };
        let arch = arch_of(query);
        if !owner(stream, peer, shared, mac, head, close).await? {
            return Ok(());
        }
        let q = BootQuery {
            mac,
            uuid: None,
            arch,
            kind: ClientKind::Ipxe,
            stage: BootStage::Script,
        };
        let action = shared.files.policy().decide(&q);
        let script = ipxe_script(&action, arch, &shared.server, &shared.base, mac);
        shared.events.emit(BootEvent {
            mac: Some(mac),
            peer,
            step: Step::HttpScript,
            // Never the script itself: it carries a boot token.
            detail: match &action {
                BootAction::IpxeScript(text) => script_summary(text),
                other => format!("{other:?}"),
            },
        });
        return match script {
            Some(s) => {
                shared.metrics.http_request(true);
                shared.metrics.http_bytes(s.len() as u64);
                respond(stream, 200, "text/plain", s.as_bytes(), head, close).await
            }
            None => {
                respond(
                    stream,
                    404,
                    "text/plain",
                    b"no boot for this machine",
                    head,
                    close,
                )
                .await
            }
        };
    }
    let Some(name) = path.strip_prefix("/files/") else {
        return respond(stream, 404, "text/plain", b"not found", head, close).await;
    };
    let name = percent_decode(name);
    if let Some(b) = shared.files.policy().virtual_file(&name) {
        shared.metrics.http_request(false);
        shared.metrics.http_bytes(b.len() as u64);
        return respond(stream, 200, "application/octet-stream", &b, head, close).await;
    }
    let real = match shared.files.resolve(&name) {
        Ok(p) => p,
        Err(Error::PathRefused(_)) => {
            return respond(stream, 403, "text/plain", b"forbidden", head, close).await
        }
        Err(_) => return respond(stream, 404, "text/plain", b"not found", head, close).await,
    };
    let file = tokio::fs::File::open(&real).await?;
    let meta = file.metadata().await?;
    let len = meta.len();
    let (status, start, end) = match range.map(|r| parse_range(r, len)) {
        None => (200, 0, len),
        Some(Some((s, e))) => (206, s, e),
        Some(None) => {
            let h = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            );
            return stream.write_all(h.as_bytes()).await;
        }
    };
    shared.events.emit(BootEvent {
        mac: None,
        peer,
        step: Step::HttpFile,
        detail: format!("{name} bytes {start}-{end} of {len}"),
    });
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n",
        status,
        if status == 206 { "Partial Content" } else { "OK" },
        end - start
    );
    if status == 206 {
        h.push_str(&format!(
            "Content-Range: bytes {}-{}/{len}\r\n",
            start,
            end.saturating_sub(1)
        ));
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    stream.write_all(h.as_bytes()).await?;
    shared.metrics.http_request(false);
    if !head && end > start {
        body::send(stream, file, meta.is_file(), start, end, &shared.metrics).await?;
    }
    Ok(())
}

/// The raw option 93 the DHCP core put in a script URL (`arch=N`).
fn arch_of(query: &str) -> ClientArch {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("arch="))
        .and_then(|v| v.parse().ok())
        .map_or(ClientArch::X64Uefi, ClientArch::from_raw)
}

/// Whether `peer` is the machine with `mac` (see [`ScriptPeer`]): scripts
/// and console answers are for their owner only. When not, answers 403,
/// records why, and returns false.
async fn owner(
    stream: &mut Timed,
    peer: SocketAddr,
    shared: &Shared,
    mac: MacAddr,
    head: bool,
    close: bool,
) -> std::io::Result<bool> {
    let refused = match shared.script_peer.check_host(peer.ip(), mac) {
        PeerCheck::Allowed => return Ok(true),
        PeerCheck::OtherMac(m) => format!("refused: the peer is {m}"),
        PeerCheck::Unknown => "refused: the peer is not on this segment".to_string(),
    };
    shared.events.emit(BootEvent {
        mac: Some(mac),
        peer,
        step: Step::HttpScript,
        detail: refused,
    });
    respond(
        stream,
        403,
        "text/plain",
        b"this script is only for the machine with that MAC",
        head,
        close,
    )
    .await?;
    Ok(false)
}

/// Most parameters a console request may carry.
const MAX_CONSOLE_PARAMS: usize = 16;

/// `GET /console/<mac>/<action>?arch=N&...`: a preboot menu choice, answered
/// by the policy with a script. The query may carry a PIN: it goes to the
/// policy and nowhere else (not into events or logs).
/// A console request as it arrived.
struct ConsoleCall<'a> {
    /// The path after `/console/`.
    rest: &'a str,
    query: &'a str,
    login: Option<(String, String)>,
    head: bool,
    close: bool,
}

async fn console(
    stream: &mut Timed,
    peer: SocketAddr,
    shared: &Shared,
    call: ConsoleCall<'_>,
) -> std::io::Result<()> {
    let ConsoleCall {
        rest,
        query,
        login,
        head,
        close,
    } = call;
    let parsed = rest
        .split_once('/')
        .and_then(|(m, a)| Some((MacAddr::parse(&percent_decode(m)).ok()?, a)));
    let Some((mac, action)) = parsed.filter(|(_, a)| {
        !a.is_empty() && a.len() <= 32 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) else {
        return respond(stream, 404, "text/plain", b"not found", head, close).await;
    };
    if !owner(stream, peer, shared, mac, head, close).await? {
        return Ok(());
    }
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(MAX_CONSOLE_PARAMS)
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let req_arch = arch_of(query);
    let req = ConsoleRequest {
        mac,
        arch: req_arch,
        action: action.to_string(),
        params,
        login,
    };
    let Some(answer) = shared.files.policy().console(req) else {
        return respond(stream, 404, "text/plain", b"no console here", head, close).await;
    };
    shared.events.emit(BootEvent {
        mac: Some(mac),
        peer,
        step: Step::HttpScript,
        detail: format!("console {action}"),
    });
    let script = match answer.await {
        ConsoleReply::Script(s) => s,
        ConsoleReply::Login => {
            let h = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"rackcast console\"\r\n\
                 Content-Length: 0\r\n{}\r\n",
                if close { "Connection: close\r\n" } else { "" }
            );
            return stream.write_all(h.as_bytes()).await;
        }
    };
    // `{http-login}` is our base URL with the credentials `login` asked
    // for: iPXE sends them as Basic authorization and, unlike a query
    // string, never prints them. The rest is filled as in any policy script.
    let login_base =
        shared
            .base
            .replacen("://", "://${username:uristring}:${password:uristring}@", 1);
    let script = script.replace("{http-login}", &login_base);
    let script = ipxe_script(
        &BootAction::IpxeScript(script),
        req_arch,
        &shared.server,
        &shared.base,
        mac,
    )
    .unwrap_or_default();
    shared.metrics.http_request(true);
    shared.metrics.http_bytes(script.len() as u64);
    respond(stream, 200, "text/plain", script.as_bytes(), head, close).await
}

async fn respond(
    stream: &mut Timed,
    status: u16,
    ctype: &str,
    body: &[u8],
    head: bool,
    close: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    let h = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    stream.write_all(h.as_bytes()).await?;
    if !head {
        stream.write_all(body).await?;
    }
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// One `bytes=` range as a half-open `[start, end)`; `None` when unsatisfiable.
pub fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let spec = spec.split(',').next()?.trim();
    let (a, b) = spec.split_once('-')?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return None;
        }
        (len.saturating_sub(n), len)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (s, e)
    };
    (start < end && start < len).then_some((start, end))
}

/// A request path's percent escapes decoded (invalid UTF-8 replaced, a
/// broken escape kept as it is).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("items=1-2", 100), None);
    }

    #[test]
    fn a_script_is_summarised_without_its_command_lines() {
        let script = "#!ipxe\nkernel http://s/files/linux-x64/vmlinuz console=ttyS0 \
                      rackcast.token=rcb1-secret\ninitrd --name initrd http://s/files/linux-x64/initrd.img\nboot\n";
        let s = script_summary(script);
        assert_eq!(
            s,
            "script: kernel http://s/files/linux-x64/vmlinuz; initrd http://s/files/linux-x64/initrd.img"
        );
        assert!(!s.contains("secret"));
        assert_eq!(script_summary("#!ipxe\nsanboot\n"), "script");
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%2e%2e/x"), "../x");
    }
}
