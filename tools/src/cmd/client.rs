//! The operator API client shared by `rackcast target`, `rackcast job` and
//! `rackcast image list|upload`: where the server is, which token to send,
//! and typed calls that turn HTTP and connection failures into messages an
//! operator can act on.

pub mod show;
pub mod sse;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use rackcast_client::path_segment;
use rackcast_client::{Body, CallError, Http, Timeouts};
use rackcast_engine::sched::api::JobId;

/// Where the operator token is kept by a server started with the default `--data`.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/rackcast/admin.token";
/// The CA a default server makes for itself.
pub const DEFAULT_CA_FILE: &str = "/var/lib/rackcast/tls/ca.pem";

/// How long a plain API call may wait for the server to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upload may wait for its answer: the server verifies the root first.
const UPLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// An event stream silent this long is taken as dropped (the server sends
/// keep-alive comments well within it).
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// `--server`, `--token`, `--token-file`: flattened into every client command.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The rackcast server's URL.
    #[arg(
        long,
        env = "RACKCAST_SERVER",
        default_value = "https://127.0.0.1:7300",
        value_name = "URL"
    )]
    pub server: String,
    /// Operator token [env: RACKCAST_TOKEN]; else --token-file; else
    /// /var/lib/rackcast/admin.token.
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Read the operator token from this file (the server writes admin.token
    /// in its --data directory on first start).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Trust this CA certificate (PEM) for the server's HTTPS: the server's
    /// DATA/tls/ca.pem unless it serves a certificate of your own.
    /// Default: /var/lib/rackcast/tls/ca.pem if it exists, else the public roots.
    #[arg(long, env = "RACKCAST_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum ClientError {
    /// No connection, or it broke before a full answer arrived.
    Unreachable {
        /// The server URL.
        server: String,
        /// What the transport said.
        detail: String,
    },
    /// The server refused the token (401).
    Refused {
        /// HTTP status.
        status: u16,
    },
    /// The server answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// The server's `ApiError.error`, or the start of its body.
        error: String,
    },
    /// The answer was not what this version of rackcast expects.
    BadAnswer {
        /// Method and path.
        call: String,
        /// What did not parse (shown in this error's text).
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when the server could not be reached (as opposed to answering no).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { server, detail } => {
                write!(f, "cannot reach the rackcast server at {server}: {detail}")
            }
            ClientError::Refused { status } => write!(
                f,
                "the server refused the token (HTTP {status}): check --token or RACKCAST_TOKEN"
            ),
            ClientError::Api { status, error } => write!(f, "{error} (HTTP {status})"),
            ClientError::BadAnswer { call, source } => {
                write!(f, "unexpected answer to {call}: {source}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to the operator API.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    token: String,
}

impl Client {
    /// Resolves the server URL and the token from the command line, the
    /// environment and the default token file.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let base = normalize_server(&args.server)?;
        let env_token = std::env::var("RACKCAST_TOKEN").ok();
        let token = resolve_token(
            args.token.as_deref(),
            args.token_file.as_deref(),
            env_token.as_deref(),
            Path::new(DEFAULT_TOKEN_FILE),
        )?;
        let ca = resolve_ca(args.ca.as_deref(), Path::new(DEFAULT_CA_FILE));
        Client::with_token(base, token, ca.as_deref())
    }

    fn with_token(base: String, token: String, ca: Option<&Path>) -> anyhow::Result<Client> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(10),
            io: CALL_TIMEOUT,
        };
        let http = match ca {
            Some(ca) => Http::with_ca(&base, timeouts, ca)?,
            None => Http::new(&base, timeouts),
        };
        Ok(Client { http, token })
    }

    /// `GET path` -> `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, Body::<()>::Empty)
    }

    /// `POST path` with a JSON body -> `T`.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("POST", path, Body::Json(body))
    }

    /// `PUT path` with a JSON body -> `T`.
    pub fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("PUT", path, Body::Json(body))
    }

    /// `PATCH path` with a JSON body -> `T`.
    pub fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("PATCH", path, Body::Json(body))
    }

    /// `DELETE path` -> `T`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, Body::<()>::Empty)
    }

    /// `POST path` without a body -> `T`.
    pub fn post_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("POST", path, Body::<()>::Empty)
    }

    /// `PUT path` streaming `len` bytes from `body` -> `T`.
    pub fn put_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl Read,
        len: u64,
    ) -> Result<T, ClientError> {
        self.http
            .put_stream(path, &self.token, body, len, UPLOAD_ANSWER_TIMEOUT)
            .map_err(|e| self.error(&format!("PUT {path}"), e))
    }

    /// `GET path` answering text, as a stream (a job's whole log).
    pub fn text(&self, path: &str) -> Result<Box<dyn Read + Send>, ClientError> {
        let (_, body) = self
            .http
            .stream(path, &self.token, STREAM_IDLE_TIMEOUT)
            .map_err(|e| self.error(&format!("GET {path}"), e))?;
        Ok(body)
    }

    /// `GET /api/v1/events?job=ID&since=SEQ`: the open stream's body.
    pub fn events(&self, job: JobId, since: u64) -> Result<Box<dyn Read + Send>, ClientError> {
        let path = format!("/api/v1/events?job={job}&since={since}");
        let call = format!("GET {path}");
        let (ct, body) = self
            .http
            .stream(&path, &self.token, STREAM_IDLE_TIMEOUT)
            .map_err(|e| self.error(&call, e))?;
        if ct != "text/event-stream" {
            return Err(ClientError::BadAnswer {
                call,
                source: std::io::Error::other(format!(
                    "content type {ct:?}, not text/event-stream"
                )),
            });
        }
        Ok(body)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Body<'_, B>,
    ) -> Result<T, ClientError> {
        self.http
            .call(method, path, &self.token, body, None)
            .map_err(|e| self.error(&format!("{method} {path}"), e))
    }

    /// What a failed call means to an operator.
    fn error(&self, call: &str, e: CallError) -> ClientError {
        match e {
            CallError::Status { status: 401, .. } => ClientError::Refused { status: 401 },
            CallError::Status {
                status, message, ..
            } => ClientError::Api {
                status,
                error: message,
            },
            CallError::Unreachable { detail, .. } => ClientError::Unreachable {
                server: self.http.base().to_string(),
                detail,
            },
            CallError::BadAnswer { source, .. } => ClientError::BadAnswer {
                call: call.to_string(),
                source,
            },
        }
    }
}

/// `host:port` or `https://host:port/` -> `https://host:port` (`http://`
/// is kept, for a server with `tls = false`).
pub fn normalize_server(s: &str) -> anyhow::Result<String> {
    let s = s.trim().trim_end_matches('/');
    if s.is_empty() {
        anyhow::bail!("--server is empty (e.g. --server https://10.0.0.5:7300)");
    }
    if s.starts_with("https://") || s.starts_with("http://") {
        Ok(s.to_string())
    } else if s.contains("://") {
        anyhow::bail!("--server {s}: expected an https:// URL");
    } else {
        Ok(format!("https://{s}"))
    }
}

/// The CA file to trust: `--ca` / `RACKCAST_CA`, else the default server's
/// own (`/var/lib/rackcast/tls/ca.pem`) when it exists; `None`: the public
/// roots.
pub fn resolve_ca(flag: Option<&Path>, default_file: &Path) -> Option<PathBuf> {
    match flag {
        Some(p) => Some(p.to_path_buf()),
        None => default_file.is_file().then(|| default_file.to_path_buf()),
    }
}

/// The token, in order: `--token`, `--token-file`, `RACKCAST_TOKEN`, then
/// `default_file` if it can be read.
pub fn resolve_token(
    flag: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
    default_file: &Path,
) -> anyhow::Result<String> {
    if let Some(t) = flag {
        return non_empty(t, "--token");
    }
    if let Some(p) = file {
        let t = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", p.display()))?;
        return non_empty(&t, &format!("token file {}", p.display()));
    }
    if let Some(t) = env {
        return non_empty(t, "RACKCAST_TOKEN");
    }
    match std::fs::read_to_string(default_file) {
        Ok(t) => non_empty(&t, &format!("token file {}", default_file.display())),
        Err(e) => anyhow::bail!(
            "no operator token: pass --token T, set RACKCAST_TOKEN, or pass --token-file PATH \
             (the server writes admin.token in its --data directory on first start; \
             {} is not readable: {e})",
            default_file.display()
        ),
    }
}

fn non_empty(t: &str, what: &str) -> anyhow::Result<String> {
    let t = t.trim();
    if t.is_empty() {
        anyhow::bail!("{what} is empty");
    }
    if t.chars().any(|c| c.is_control() || c == ' ') {
        anyhow::bail!("{what} holds spaces or control characters: not a token");
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            normalize_server("http://10.0.0.5:7300/").unwrap(),
            "http://10.0.0.5:7300"
        );
        assert_eq!(
            normalize_server("10.0.0.5:7300").unwrap(),
            "https://10.0.0.5:7300"
        );
        assert_eq!(normalize_server("https://x/").unwrap(), "https://x");
        assert!(normalize_server("ftp://x").is_err());
        assert!(normalize_server(" ").is_err());
    }

    #[test]
    fn token_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "from-file\n").unwrap();
        let dflt = dir.path().join("admin.token");
        std::fs::write(&dflt, "from-default\n").unwrap();
        let missing = dir.path().join("missing");

        let t = |flag, f, env, d| resolve_token(flag, f, env, d).map_err(|e| e.to_string());
        assert_eq!(
            t(Some("a"), Some(&file), Some("e"), &dflt).unwrap(),
            "a".to_string()
        );
        assert_eq!(t(None, Some(&file), Some("e"), &dflt).unwrap(), "from-file");
        assert_eq!(t(None, None, Some("e"), &dflt).unwrap(), "e");
        assert_eq!(t(None, None, None, &dflt).unwrap(), "from-default");
        let err = t(None, None, None, &missing).unwrap_err();
        assert!(err.contains("no operator token"), "{err}");
        assert!(t(None, Some(&missing), None, &dflt)
            .unwrap_err()
            .contains("reading the token file"));
        assert!(t(Some("  "), None, None, &dflt).is_err());
    }

    #[test]
    fn error_texts() {
        let e = ClientError::Api {
            status: 404,
            error: "no image named debian".into(),
        };
        assert_eq!(e.to_string(), "no image named debian (HTTP 404)");
        assert_eq!(
            ClientError::Refused { status: 401 }.to_string(),
            "the server refused the token (HTTP 401): check --token or RACKCAST_TOKEN"
        );
    }

    #[test]
    fn unreachable_server_is_a_clear_error() {
        // Port 9 (discard) on loopback: nothing listens there in CI.
        let c = Client::with_token("http://127.0.0.1:9".into(), "t".into(), None).unwrap();
        let e = c.get::<serde_json::Value>("/api/v1/targets").unwrap_err();
        assert!(e.is_unreachable(), "{e}");
        assert!(
            e.to_string()
                .starts_with("cannot reach the rackcast server at http://127.0.0.1:9: "),
            "{e}"
        );
    }

    #[test]
    fn segments() {
        assert_eq!(path_segment("debian-12.img"), "debian-12.img");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
