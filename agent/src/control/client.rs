//! The agent API, one call per route, on the HTTP client the CLI uses too
//! (`rackcast-client`): each answers a typed value or an [`AgentError`]
//! that [`classify`] says whether retrying can help.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rackcast_client::{path_segment, Body, CallError, Http, Timeouts};
use rackcast_engine::sched::api::{
    Directive, ImageView, PollRequest, RegisterRequest, Registered, ReportAck, ReportRequest,
    TaskRef,
};

use crate::error::{AgentError, Result};

/// Extra time allowed beyond the server's long-poll hold before a poll is
/// taken for lost.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// Time allowed for a register or report call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for each read of the server's answer to an upload.
const UPLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

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
        AgentError::Api(CallError::Status { status: 401, .. }) => Failure::Reregister,
        AgentError::Api(CallError::Status { status, .. })
            if (400..500).contains(status) && *status != 408 =>
        {
            Failure::Refused
        }
        AgentError::Api(_) => Failure::Retry,
        _ => Failure::Refused,
    }
}

/// A client of one server's agent API. Clones share the boot token, so a
/// task's upload picks up a token renewed by re-registration.
#[derive(Debug, Clone)]
pub struct Client {
    http: Http,
    token: Arc<RwLock<Option<String>>>,
    /// Where the session token is saved (mode 0600), so an agent restarted
    /// in the same boot renews its session instead of presenting a boot
    /// token that is already spent.
    session_file: Option<PathBuf>,
}

impl Client {
    /// A client for `server` (`https://host:port`, with or without a
    /// path), trusting the CA in `ca` (PEM) when given.
    pub fn new(server: &str, ca: Option<&std::path::Path>) -> Result<Client> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            // Bounds every read and write of a body, an upload's too.
            io: Duration::from_secs(120),
        };
        let http = match ca {
            Some(ca) => Http::with_ca(server, timeouts, ca)?,
            None => Http::new(server, timeouts),
        };
        Ok(Client {
            http,
            token: Arc::default(),
            session_file: None,
        })
    }

    /// Saves session tokens in `path` (and reads one saved there).
    pub fn with_session_file(mut self, path: PathBuf) -> Client {
        self.session_file = Some(path);
        self
    }

    /// The session token an earlier run of this agent saved.
    pub fn saved_session(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.session_file.as_ref()?).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// Writes the session token where [`Client::saved_session`] finds it:
    /// a private file, replaced whole. Failing to save costs only the
    /// renewal after a restart, so it is logged, not fatal.
    fn save_session(&self, token: &str) {
        let Some(path) = &self.session_file else {
            return;
        };
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            if let Some(dir) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot save the session token in {}: {e}", path.display());
        }
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        self.http.base()
    }

    /// Drops the boot token (the server no longer knows it).
    pub fn forget_token(&self) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn token(&self) -> String {
        let t = self.token.read().unwrap_or_else(PoisonError::into_inner);
        t.clone().unwrap_or_default()
    }

    /// `POST /agent/v1/register` with `token` (boot, enrollment or a saved
    /// session token); keeps and saves the session token it answers.
    pub fn register(&self, token: &str, req: &RegisterRequest) -> Result<Registered> {
        let reg: Registered = self.http.call(
            "POST",
            "/agent/v1/register",
            token,
            Body::Json(req),
            Some(CALL_TIMEOUT),
        )?;
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(reg.token.clone());
        self.save_session(&reg.token);
        Ok(reg)
    }

    /// `POST /agent/v1/poll`: waits up to `req.wait` seconds for a directive.
    pub fn poll(&self, req: &PollRequest) -> Result<Directive> {
        let hold = Duration::from_secs(req.wait.unwrap_or(30));
        Ok(self.http.call(
            "POST",
            "/agent/v1/poll",
            &self.token(),
            Body::Json(req),
            Some(hold + POLL_SLACK),
        )?)
    }

    /// `POST /agent/v1/report`.
    pub fn report(&self, req: &ReportRequest) -> Result<ReportAck> {
        Ok(self.http.call(
            "POST",
            "/agent/v1/report",
            &self.token(),
            Body::Json(req),
            Some(CALL_TIMEOUT),
        )?)
    }

    /// `len` bytes from `offset` of the image file `root` (hex), which the
    /// running Distribute task pinned, and the file's length: `GET
    /// /agent/v1/images/by-root/{root}` with a `Range` (unicast fallback).
    pub fn image_range(&self, root: &str, offset: u64, len: u64) -> Result<(Vec<u8>, u64)> {
        let path = format!("/agent/v1/images/by-root/{}", path_segment(root));
        Ok(self.http.get_range(&path, &self.token(), offset, len)?)
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
        let path = format!(
            "/agent/v1/images/{}?job={}&task={}&attempt={}",
            path_segment(name),
            task.job,
            task.task,
            task.attempt
        );
        Ok(self
            .http
            .put_stream(&path, &self.token(), body, len, UPLOAD_ANSWER_TIMEOUT)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> AgentError {
        AgentError::Api(CallError::Status {
            url: "u".into(),
            status: code,
            message: String::new(),
        })
    }

    #[test]
    fn failures_are_classified_by_what_helps() {
        assert_eq!(classify(&status(401)), Failure::Reregister);
        assert_eq!(classify(&status(404)), Failure::Refused);
        assert_eq!(classify(&status(409)), Failure::Refused);
        assert_eq!(classify(&status(408)), Failure::Retry);
        assert_eq!(classify(&status(500)), Failure::Retry);
        assert_eq!(classify(&status(503)), Failure::Retry);
        let lost = AgentError::Api(CallError::Unreachable {
            url: "u".into(),
            detail: "connection refused".into(),
        });
        assert_eq!(classify(&lost), Failure::Retry);
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        // Port 9 on loopback: nothing listens (discard is never enabled).
        let c = Client::new("http://127.0.0.1:9/", None).unwrap();
        let e = c
            .report(&ReportRequest {
                mac: "02:00:00:00:00:01".into(),
                task: TaskRef {
                    job: rackcast_engine::sched::api::JobId(1),
                    task: 0,
                    attempt: 1,
                },
                report: rackcast_engine::sched::api::TaskReport::Started,
            })
            .unwrap_err();
        assert_eq!(classify(&e), Failure::Retry, "{e}");
    }
}
