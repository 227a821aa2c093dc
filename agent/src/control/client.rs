//! The agent API over plain HTTP (ureq): one call per route, each answering
//! a typed value or an [`AgentError`] that says whether retrying can help.

use std::io::Read;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rackcast_engine::sched::api::{
    ApiError, Directive, ImageView, PollRequest, RegisterRequest, Registered, ReportAck,
    ReportRequest, TaskRef,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{AgentError, Result};

/// Extra time allowed beyond the server's long-poll hold before a poll is
/// taken for lost.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// Time allowed for a register or report call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Network trouble or a 5xx: back off and retry.
    Retry,
    /// 401: the boot token is not (or no longer) known: register again.
    Reregister,
    /// Any other 4xx: the server refused this call for good.
    Refused,
}

/// Classifies an error from a server call.
pub fn classify(e: &AgentError) -> Failure {
    match e {
        AgentError::Status { status: 401, .. } => Failure::Reregister,
        AgentError::Status { status, .. } if (400..500).contains(status) && *status != 408 => {
            Failure::Refused
        }
        AgentError::Status { .. } | AgentError::Unreachable { .. } => Failure::Retry,
        AgentError::BadAnswer { .. } => Failure::Retry,
        _ => Failure::Refused,
    }
}

/// A client of one server's agent API. Clones share the boot token, so a
/// task's upload picks up a token renewed by re-registration.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: ureq::Agent,
    token: Arc<RwLock<Option<String>>>,
}

impl Client {
    /// A client for `server` (`http://host:port`, with or without a path).
    pub fn new(server: &str) -> Client {
        let http = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // Bounds every read and write of a body, including an upload.
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .build();
        Client {
            base: server.trim_end_matches('/').to_string(),
            http,
            token: Arc::default(),
        }
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Drops the boot token (the server no longer knows it).
    pub fn forget_token(&self) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn bearer(&self) -> String {
        let t = self.token.read().unwrap_or_else(PoisonError::into_inner);
        format!("Bearer {}", t.as_deref().unwrap_or(""))
    }

    /// `POST /agent/v1/register` with the enrollment token; keeps the boot
    /// token it answers.
    pub fn register(&self, enroll_token: &str, req: &RegisterRequest) -> Result<Registered> {
        let url = format!("{}/agent/v1/register", self.base);
        let r = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .set("Authorization", &format!("Bearer {enroll_token}"));
        let reg: Registered = call_json(&url, r, req)?;
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(reg.token.clone());
        Ok(reg)
    }

    /// `POST /agent/v1/poll`: waits up to `req.wait` seconds for a directive.
    pub fn poll(&self, req: &PollRequest) -> Result<Directive> {
        let url = format!("{}/agent/v1/poll", self.base);
        let hold = Duration::from_secs(req.wait.unwrap_or(30));
        let r = self
            .http
            .post(&url)
            .timeout(hold + POLL_SLACK)
            .set("Authorization", &self.bearer());
        call_json(&url, r, req)
    }

    /// `POST /agent/v1/report`.
    pub fn report(&self, req: &ReportRequest) -> Result<ReportAck> {
        let url = format!("{}/agent/v1/report", self.base);
        let r = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .set("Authorization", &self.bearer());
        call_json(&url, r, req)
    }

    /// `PUT /agent/v1/images/{name}?job=J&task=T&attempt=A`, streaming `body`
    /// of `len` bytes (never held in memory).
    pub fn upload_image(
        &self,
        name: &str,
        task: TaskRef,
        len: u64,
        body: impl Read,
    ) -> Result<ImageView> {
        let url = format!(
            "{}/agent/v1/images/{}?job={}&task={}&attempt={}",
            self.base,
            path_segment(name),
            task.job,
            task.task,
            task.attempt
        );
        let r = self
            .http
            .put(&url)
            .set("Authorization", &self.bearer())
            .set("Content-Type", "application/octet-stream")
            .set("Content-Length", &len.to_string());
        answer(&url, r.send(body))
    }
}

fn call_json<T: DeserializeOwned>(
    url: &str,
    req: ureq::Request,
    body: &impl Serialize,
) -> Result<T> {
    answer(url, req.send_json(body))
}

fn answer<T: DeserializeOwned>(url: &str, res: Result<ureq::Response, ureq::Error>) -> Result<T> {
    match res {
        Ok(resp) => resp.into_json::<T>().map_err(|e| AgentError::BadAnswer {
            url: url.to_string(),
            detail: e.to_string(),
        }),
        Err(ureq::Error::Status(status, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            let message = serde_json::from_str::<ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| body.trim().chars().take(200).collect());
            Err(AgentError::Status {
                url: url.to_string(),
                status,
                message,
            })
        }
        Err(ureq::Error::Transport(t)) => {
            // Not `t.to_string()`: that repeats the URL.
            let mut detail = t.kind().to_string();
            if let Some(m) = t.message() {
                detail = format!("{detail}: {m}");
            }
            if let Some(src) = std::error::Error::source(&t) {
                detail = format!("{detail}: {src}");
            }
            Err(AgentError::Unreachable {
                url: url.to_string(),
                detail,
            })
        }
    }
}

/// Percent-encodes a path segment (image names are plain words in practice).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> AgentError {
        AgentError::Status {
            url: "u".into(),
            status: code,
            message: String::new(),
        }
    }

    #[test]
    fn failures_are_classified_by_what_helps() {
        assert_eq!(classify(&status(401)), Failure::Reregister);
        assert_eq!(classify(&status(404)), Failure::Refused);
        assert_eq!(classify(&status(409)), Failure::Refused);
        assert_eq!(classify(&status(408)), Failure::Retry);
        assert_eq!(classify(&status(500)), Failure::Retry);
        assert_eq!(classify(&status(503)), Failure::Retry);
        let lost = AgentError::Unreachable {
            url: "u".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(classify(&lost), Failure::Retry);
    }

    #[test]
    fn image_names_are_escaped_in_the_path() {
        assert_eq!(path_segment("debian-12.img"), "debian-12.img");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        // Port 9 on loopback: nothing listens (discard is never enabled).
        let c = Client::new("http://127.0.0.1:9/");
        let e = c
            .report(&ReportRequest {
                mac: "02:00:00:00:00:01".into(),
                task: TaskRef {
                    job: 1,
                    task: 0,
                    attempt: 1,
                },
                report: rackcast_engine::sched::api::TaskReport::Started,
            })
            .unwrap_err();
        assert_eq!(classify(&e), Failure::Retry, "{e}");
    }
}
