//! One Redfish exchange: a blocking ureq request with basic auth, bounded
//! by the deadline of the trait call it serves, and BMC failures turned
//! into [`BmcError`]s that say what the BMC said (its `error.message` and
//! `@Message.ExtendedInfo`, or its text when the body is not JSON, as
//! sushy-tools' plain-text 400s are despite their JSON content type).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::tls;
use crate::{BmcError, Credentials};

/// The HTTP side of one Redfish BMC. `Debug` shows no credentials.
pub(crate) struct Http {
    agent: ureq::Agent,
    base: String,
    user: Option<String>,
    /// `Basic base64(user:password)`.
    auth: Option<String>,
    /// Only to hide it, should a BMC ever echo it.
    password: String,
    timeout: Duration,
}

/// A 2xx answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The `ETag` header.
    pub(crate) etag: Option<String>,
    pub(crate) body: String,
}

/// A failed exchange: the error, and the HTTP status when the BMC answered
/// (412 asks for a retry with a fresh ETag).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: Option<u16>,
    pub(crate) err: BmcError,
}

impl From<Failure> for BmcError {
    fn from(f: Failure) -> BmcError {
        f.err
    }
}

impl From<BmcError> for Failure {
    fn from(err: BmcError) -> Failure {
        Failure { status: None, err }
    }
}

/// Longest piece of a BMC's error body kept in a message.
const MAX_DETAIL: usize = 300;

impl Http {
    /// `base` is `https://HOST:PORT`.
    pub(crate) fn new(
        base: String,
        login: Option<&Credentials>,
        insecure: bool,
        timeout: Duration,
    ) -> Http {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .redirects(0)
            .user_agent(concat!("rackcast-bmc/", env!("CARGO_PKG_VERSION")));
        if insecure {
            b = b.tls_config(tls::accept_any());
        }
        Http {
            agent: b.build(),
            base,
            user: login.map(|l| l.user.clone()),
            auth: login.map(|l| {
                format!(
                    "Basic {}",
                    base64(format!("{}:{}", l.user, l.password).as_bytes())
                )
            }),
            password: login.map(|l| l.password.clone()).unwrap_or_default(),
            timeout,
        }
    }

    /// `METHOD path` (a path on the BMC, `/redfish/v1/...`) with a JSON
    /// `body` and `If-Match: if_match`, answered before `deadline`.
    pub(crate) fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<Answer, Failure> {
        let what = format!("{method} {path}");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BmcError::Unreachable(format!(
                "{what}: no time left of the {:?} this call may take",
                self.timeout
            ))
            .into());
        }
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .request(method, &url)
            .timeout(left)
            .set("Accept", "application/json")
            .set("OData-Version", "4.0");
        if let Some(a) = &self.auth {
            req = req.set("Authorization", a);
        }
        if let Some(tag) = if_match {
            req = req.set("If-Match", tag);
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            // Redirects are not followed (ureq would turn a PATCH or POST
            // into a GET, and drop the login): a 3xx did nothing.
            Ok(resp) if !(200..300).contains(&resp.status()) => {
                let detail = format!(
                    "{} {} to {}",
                    resp.status(),
                    resp.status_text(),
                    resp.header("Location").unwrap_or("nowhere")
                );
                Err(Failure {
                    status: Some(resp.status()),
                    err: BmcError::Refused { what, detail },
                })
            }
            Ok(resp) => {
                let etag = resp.header("ETag").map(str::to_string);
                let body = resp.into_string().map_err(|e| {
                    BmcError::Unreachable(format!("{what}: the answer broke off: {e}"))
                })?;
                Ok(Answer { etag, body })
            }
            Err(ureq::Error::Status(code, resp)) => {
                let status = format!("{code} {}", resp.status_text());
                let text = resp.into_string().unwrap_or_default();
                let detail = format!(
                    "{status}: {}",
                    crate::hide(&bmc_message(&text), &self.password)
                );
                let err = match code {
                    401 | 403 => BmcError::Auth(format!("{what}: {detail}")),
                    _ => BmcError::Refused { what, detail },
                };
                Err(Failure {
                    status: Some(code),
                    err,
                })
            }
            Err(ureq::Error::Transport(t)) => {
                let err = if tls::is_certificate_error(&t) {
                    BmcError::Certificate(format!(
                        "{t} (--bmc-insecure accepts a self-signed certificate)"
                    ))
                } else {
                    BmcError::Unreachable(format!("{what}: {t}"))
                };
                Err(err.into())
            }
        }
    }

    /// `GET path` as JSON, with its ETag (the header, else `@odata.etag`).
    pub(crate) fn get(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Result<(Value, Option<String>), BmcError> {
        let a = self.send("GET", path, None, None, deadline)?;
        let v: Value = serde_json::from_str(&a.body).map_err(|e| {
            BmcError::Protocol(format!("GET {path}: not JSON ({e}): {}", short(&a.body)))
        })?;
        let etag = a.etag.or_else(|| {
            v.get("@odata.etag")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        Ok((v, etag))
    }
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What a Redfish error body says: `error.message` and the `Message`s of
/// `@Message.ExtendedInfo`, else the body's text, shortened.
pub(crate) fn bmc_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let err = v.get("error").unwrap_or(&v);
        let mut parts: Vec<&str> = Vec::new();
        if let Some(m) = err.get("message").and_then(Value::as_str) {
            parts.push(m);
        }
        let infos = err.get("@Message.ExtendedInfo").and_then(Value::as_array);
        for m in infos
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("Message")?.as_str())
        {
            if !parts.contains(&m) {
                parts.push(m);
            }
        }
        if !parts.is_empty() {
            return short(&parts.join("; "));
        }
    }
    match short(body) {
        s if s.is_empty() => "(no message)".into(),
        s => s,
    }
}

/// `s` on one line, at most [`MAX_DETAIL`] characters.
fn short(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(MAX_DETAIL) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// Standard base64 with padding (RFC 4648), for the basic auth header.
fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("admin:s3cret?>", "YWRtaW46czNjcmV0Pz4="),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn error_bodies_give_their_message_or_their_text() {
        let sushy = r#"{"error":{"code":"Base.1.0.GeneralError","message":"Incorrect username or password","@Message.ExtendedInfo":[{"MessageId":"Base.1.0.GeneralError"}]}}"#;
        assert_eq!(bmc_message(sushy), "Incorrect username or password");
        let idrac = r#"{"error":{"@Message.ExtendedInfo":[{"Message":"Unable to complete the operation because the value Floppy is not allowed."},{"Message":"Retry."}],"code":"Base.1.8.GeneralError","message":"A general error has occurred. See ExtendedInfo for more information"}}"#;
        assert_eq!(
            bmc_message(idrac),
            "A general error has occurred. See ExtendedInfo for more information; Unable to complete the operation because the value Floppy is not allowed.; Retry."
        );
        // sushy-tools: plain text under a JSON content type.
        assert_eq!(
            bmc_message("PATCH only works for Boot and IndicatorLED elements\n"),
            "PATCH only works for Boot and IndicatorLED elements"
        );
        let html = format!("<html>\n<body>{}</body></html>", "x".repeat(1000));
        let m = bmc_message(&html);
        assert!(
            m.starts_with("<html> <body>xxx") && m.ends_with("...") && m.len() < 310,
            "{m}"
        );
        assert_eq!(bmc_message(""), "(no message)");
        assert_eq!(bmc_message("{}"), "{}");
    }

    #[test]
    fn debug_shows_no_credentials() {
        let h = Http::new(
            "https://h:443".into(),
            Some(&Credentials {
                user: "root".into(),
                password: "calvin-pw".into(),
            }),
            false,
            Duration::from_secs(1),
        );
        let d = format!("{h:?}");
        assert!(d.contains("root") && !d.contains("calvin-pw"), "{d}");
        assert!(!d.contains(&base64(b"root:calvin-pw")), "{d}");
    }
}
