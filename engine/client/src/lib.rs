//! The one HTTP client of the rackcast server's APIs: the operator API that
//! `rackcast target|job|image` call and the agent API the agent calls. It
//! knows the wire (JSON bodies, bearer tokens, `ApiError` answers, streamed
//! uploads, event streams); the callers decide what a failure means to them.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rackcast_engine::sched::api::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection, or it broke before a full answer arrived: worth
    /// retrying.
    #[error("{url}: {detail}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What the transport said (kind, message and cause; not ureq's own
        /// text, which repeats the URL).
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {message}")]
    Status {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's `ApiError` text (or the start of the body).
        message: String,
    },
    /// The answer did not parse as what the API promises.
    #[error("{url}: unexpected answer")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// Why it did not parse.
        #[source]
        source: std::io::Error,
    },
}

impl CallError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Timeouts of one client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To connect.
    pub connect: Duration,
    /// For each read and each write of a call (a call may also pass a
    /// limit for the whole of it).
    pub io: Duration,
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    agent: ureq::Agent,
    timeouts: Timeouts,
    /// The roots it trusts, when not the public ones.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// How a body goes out.
#[derive(Debug)]
pub enum Body<'a, B: Serialize> {
    /// None.
    Empty,
    /// JSON.
    Json(&'a B),
}

/// A CA certificate file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("CA certificate {}: {detail}", path.display())]
pub struct CaError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub detail: String,
}

impl Http {
    /// A client of `base` (`https://host:port`, a trailing `/` is dropped)
    /// trusting the usual public roots.
    pub fn new(base: &str, timeouts: Timeouts) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            agent: agent(timeouts.connect, timeouts.io, timeouts.io, None),
            timeouts,
            tls: None,
        }
    }

    /// A client that trusts the CA certificate(s) in `ca` (PEM) instead,
    /// e.g. the server's own `DATA/tls/ca.pem`.
    pub fn with_ca(base: &str, timeouts: Timeouts, ca: &Path) -> Result<Http, CaError> {
        let tls = tls_trusting(ca)?;
        Ok(Http {
            base: base.trim_end_matches('/').to_string(),
            agent: agent(
                timeouts.connect,
                timeouts.io,
                timeouts.io,
                Some(tls.clone()),
            ),
            timeouts,
            tls: Some(tls),
        })
    }

    /// The server URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `METHOD path` with `body` and the bearer `token`, answering JSON; the
    /// whole call may take `timeout` (`None`: only each read and write is
    /// bounded).
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Body<'_, B>,
        timeout: Option<Duration>,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.request(&self.agent, method, &url, token);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let res = match body {
            Body::Empty => req.send_bytes(&[]),
            Body::Json(b) => req.send_json(b),
        };
        json(&url, res)
    }

    /// `PUT path` streaming `len` bytes of `body`, answering JSON; the
    /// answer may take `answer_timeout` (a server verifies what it got
    /// before it answers).
    pub fn put_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: impl Read,
        len: u64,
        answer_timeout: Duration,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let upload = agent(
            self.timeouts.connect,
            answer_timeout,
            self.timeouts.io,
            self.tls.clone(),
        );
        let req = self
            .request(&upload, "PUT", &url, token)
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string());
        json(&url, req.send(body))
    }

    /// `GET path` as a stream (server-sent events): the open body and its
    /// content type. A read that waits longer than `idle` fails.
    pub fn stream(
        &self,
        path: &str,
        token: &str,
        idle: Duration,
    ) -> Result<(String, Box<dyn Read + Send>), CallError> {
        let url = format!("{}{path}", self.base);
        let stream = agent(
            self.timeouts.connect,
            idle,
            self.timeouts.io,
            self.tls.clone(),
        );
        let req = self
            .request(&stream, "GET", &url, token)
            .set("Accept", "text/event-stream");
        match req.call() {
            Ok(resp) => Ok((resp.content_type().to_string(), resp.into_reader())),
            Err(e) => Err(failure(&url, e)),
        }
    }

    /// `GET path` for the `len` bytes (at least 1) of a file from byte
    /// `first` (one `Range`): the answer must be 206 holding exactly those
    /// bytes. Returns them and the file's length (its `Content-Range`).
    pub fn get_range(
        &self,
        path: &str,
        token: &str,
        first: u64,
        len: u64,
    ) -> Result<(Vec<u8>, u64), CallError> {
        let url = format!("{}{path}", self.base);
        let bad = |detail: String| CallError::BadAnswer {
            url: url.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail),
        };
        if len == 0 {
            return Err(bad("a range of no bytes".into()));
        }
        let resp = self
            .request(&self.agent, "GET", &url, token)
            .set("Accept", "application/octet-stream")
            .set("Range", &format!("bytes={first}-{}", first + len - 1))
            .call()
            .map_err(|e| failure(&url, e))?;
        if resp.status() != 206 {
            return Err(bad(format!("HTTP {} to a range request", resp.status())));
        }
        // "bytes FIRST-LAST/TOTAL"
        let total = resp
            .header("Content-Range")
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, t)| t.trim().parse::<u64>().ok())
            .ok_or_else(|| bad("a 206 answer without Content-Range".into()))?;
        let mut buf = Vec::with_capacity(len.min(64 << 20) as usize);
        // One byte more than asked shows an answer that is too long.
        resp.into_reader()
            .take(len + 1)
            .read_to_end(&mut buf)
            .map_err(|e| CallError::Unreachable {
                url: url.clone(),
                detail: format!("the answer broke off: {e}"),
            })?;
        if buf.len() as u64 != len {
            return Err(bad(format!("{} bytes for a {len}-byte range", buf.len())));
        }
        Ok((buf, total))
    }

    fn request(&self, agent: &ureq::Agent, method: &str, url: &str, token: &str) -> ureq::Request {
        agent
            .request(method, url)
            .set("Authorization", &format!("Bearer {token}"))
            .set("Accept", "application/json")
    }
}

fn agent(
    connect: Duration,
    read: Duration,
    write: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> ureq::Agent {
    let mut b = ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read)
        .timeout_write(write)
        .user_agent(concat!("rackcast/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        b = b.tls_config(tls);
    }
    b.build()
}

/// A rustls client configuration whose only roots are the certificates in
/// `ca`. ring is the provider ureq is built with (one crypto library per
/// binary); rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange.
#[allow(deprecated)]
pub fn tls_trusting(ca: &Path) -> Result<Arc<rustls::ClientConfig>, CaError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |detail: String| CaError {
        path: ca.to_path_buf(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

fn json<T: DeserializeOwned>(
    url: &str,
    res: Result<ureq::Response, ureq::Error>,
) -> Result<T, CallError> {
    let resp = res.map_err(|e| failure(url, e))?;
    let body = resp.into_string().map_err(|e| CallError::Unreachable {
        url: url.to_string(),
        detail: format!("the answer broke off: {e}"),
    })?;
    serde_json::from_str(&body).map_err(|e| CallError::BadAnswer {
        url: url.to_string(),
        source: e.into(),
    })
}

fn failure(url: &str, e: ureq::Error) -> CallError {
    match e {
        ureq::Error::Status(status, resp) => {
            let text = resp.status_text().to_string();
            let body = resp.into_string().unwrap_or_default();
            CallError::Status {
                url: url.to_string(),
                status,
                message: api_error_text(&body, &text),
            }
        }
        ureq::Error::Transport(t) => {
            let mut detail = t.kind().to_string();
            if let Some(m) = t.message() {
                detail = format!("{detail}: {m}");
            }
            if let Some(s) = std::error::Error::source(&t) {
                detail = format!("{detail}: {s}");
            }
            if detail.contains("certificate") || detail.contains("UnknownIssuer") {
                detail.push_str(
                    " (the server's certificate is not trusted: give its CA with --ca FILE \
                     or RACKCAST_CA; a server that made its own keeps it in DATA/tls/ca.pem)",
                );
            }
            if detail.contains("Broken pipe") || detail.contains("reset by peer") {
                detail.push_str(
                    " (the server closed the connection while the request was sent, as it \
                     does with a body over its limit: JSON 1 MiB, job specs 4 MiB, images \
                     max_image_bytes)",
                );
            }
            CallError::Unreachable {
                url: url.to_string(),
                detail,
            }
        }
    }
}

/// The text of an error answer: the `ApiError` when the body is one.
fn api_error_text(body: &str, status_text: &str) -> String {
    if let Ok(e) = serde_json::from_str::<ApiError>(body) {
        return e.error;
    }
    let body = body.trim();
    if body.is_empty() {
        return status_text.to_string();
    }
    let short: String = body.chars().take(200).collect();
    format!("{status_text}: {short}")
}

/// RFC 3986 unreserved characters and `:` (a `pchar`, so MACs read as
/// themselves) stay; everything else is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b':')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment, percent-encoded (MACs, image names).
pub fn path_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(path_segment("debian-12.img"), "debian-12.img");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(path_segment("aa:bb:cc:dd:ee:ff"), "aa:bb:cc:dd:ee:ff");
        assert_eq!(path_segment("../x"), "..%2Fx");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn error_answers_show_the_servers_words() {
        assert_eq!(
            api_error_text(r#"{"error":"unknown job 7"}"#, "Not Found"),
            "unknown job 7"
        );
        assert_eq!(api_error_text("", "Bad Gateway"), "Bad Gateway");
        assert_eq!(
            api_error_text("<html>", "Bad Gateway"),
            "Bad Gateway: <html>"
        );
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        // Port 9 on loopback: nothing listens (discard is never enabled).
        let h = Http::new(
            "http://127.0.0.1:9/",
            Timeouts {
                connect: Duration::from_secs(2),
                io: Duration::from_secs(2),
            },
        );
        let e = h
            .call::<(), serde_json::Value>("GET", "/x", "t", Body::Empty, None)
            .unwrap_err();
        assert!(matches!(e, CallError::Unreachable { .. }), "{e}");
        assert!(e.to_string().starts_with("http://127.0.0.1:9/x: "), "{e}");
    }
}
