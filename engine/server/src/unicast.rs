//! Unicast fallback, the server's side: a target that cannot hear its cast
//! session (multicast filtered, a routed link) fetches the image it is
//! distributing by HTTP range requests, `GET
//! /agent/v1/images/by-root/{root}`, and checks every frame against the
//! index itself. Only the image its running Distribute task pinned is
//! served to it, and all of unicast shares one rate (`unicast_rate`), so it
//! does not starve the cast sessions on the same link.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AgentErrors, ImageFile};
use super::{agent_api, library, ApiErr, Shared};
use rackcast_engine::sched::api::ApiError;

/// Bytes read and sent at a time: what the rate limiter meters.
const PIECE: usize = 256 * 1024;

pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default().routes(routes!(image_bytes))
}

/// Query of `GET /agent/v1/images/by-root/{root}`.
#[derive(Debug, Deserialize, IntoParams)]
struct FetchQuery {
    /// The target's MAC, checked against its session token (default: the
    /// token's).
    #[serde(default)]
    mac: Option<String>,
}

/// Bytes of the image the target's running Distribute task pinned: the
/// whole file, or one range (`Range: bytes=FIRST-LAST`, `FIRST-` or
/// `-SUFFIX`). Streamed at the server's unicast rate.
#[utoipa::path(
    get,
    path = "/agent/v1/images/by-root/{root}",
    tag = "agent",
    params(("root" = String, Path, description = "The image root (hex) the task pinned"), FetchQuery),
    responses(
        (status = 200, description = "The whole image file", content_type = "application/octet-stream", body = inline(ImageFile)),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = inline(ImageFile)),
        (status = 403, description = "The target is not distributing this image", body = ApiError),
        (status = 404, description = "The library no longer holds it", body = ApiError),
        (status = 416, description = "A range that is not one range inside the file", body = ApiError),
        AgentErrors,
    ),
    security(("agent_token" = []))
)]
async fn image_bytes(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
    Path(root): Path<String>,
    Query(q): Query<FetchQuery>,
) -> Result<Response, ApiErr> {
    let mac = agent_api::agent_of(&sh, &h, q.mac.as_deref()).await?;
    let pinned = sh.read(|i| i.sched.distributing(mac)).await;
    if pinned.as_deref() != Some(root.as_str()) {
        return Err(ApiErr(
            StatusCode::FORBIDDEN,
            format!("{mac} is not running a Distribute task of image root {root}"),
        ));
    }
    let path = library::blob_path(&sh.cfg.data, &root);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiErr(StatusCode::NOT_FOUND, format!("image root {root}: {e}")))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .len();
    let range = match h.get(header::RANGE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| parse_range(v, len))
                .ok_or_else(|| {
                    ApiErr(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        format!("Range {v:?}: give one range, bytes=FIRST-LAST, inside the {len}-byte file"),
                    )
                })?,
        ),
    };
    let (first, last) = range.unwrap_or((0, len.saturating_sub(1)));
    let count = if len == 0 { 0 } else { last + 1 - first };
    file.seek(SeekFrom::Start(first))
        .await
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let limiter = sh.unicast.clone();
    let body = stream::unfold((file, count), move |(mut file, left)| {
        let limiter = limiter.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = (left as usize).min(PIECE);
            let mut buf = vec![0u8; n];
            if let Err(e) = file.read_exact(&mut buf).await {
                return Some((Err(e), (file, 0)));
            }
            limiter.wait(n).await;
            Some((Ok(bytes::Bytes::from(buf)), (file, left - n as u64)))
        }
    });
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes");
    resp = match range {
        Some(_) => resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}")),
        None => resp.status(StatusCode::OK),
    };
    resp.body(Body::from_stream(body))
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        .map(IntoResponse::into_response)
}

/// One range of a `len`-byte file, inclusive: `bytes=A-B`, `bytes=A-` or
/// `bytes=-N`; anything else (several ranges, past the end) is `None`.
fn parse_range(v: &str, len: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (first, last) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.checked_sub(n.min(len))?, len - 1)
        }
        (a, "") => (a.parse().ok()?, len - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len - 1)),
    };
    (first <= last && last < len).then_some((first, last))
}

/// The one rate every unicast response shares (see [`Bucket`]).
#[derive(Debug)]
pub(crate) struct Limiter(tokio::sync::Mutex<Bucket>);

impl Limiter {
    /// At `rate` bytes/s.
    pub(crate) fn new(rate: u64) -> Arc<Limiter> {
        Arc::new(Limiter(tokio::sync::Mutex::new(Bucket::new(
            rate,
            Instant::now(),
        ))))
    }

    /// Pays for `bytes`, waiting as long as the rate says.
    pub(crate) async fn wait(&self, bytes: usize) {
        let pause = self.0.lock().await.take(Instant::now(), bytes as u64);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// A token bucket in bytes, time an input: a piece goes when its bytes
/// are paid for; it may run the bucket into debt, which the next pieces
/// wait out. At most one second of the rate saved up.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate.max(1) as f64,
            tokens: 0.0,
            last: now,
        }
    }

    /// Takes `bytes` at `now`: how long the taker waits before sending.
    fn take(&mut self, now: Instant, bytes: u64) -> Duration {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + dt * self.rate).min(self.rate) - bytes as f64;
        if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / self.rate)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_inside_the_file_or_none() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-168", 1000), Some((832, 999)));
        assert_eq!(parse_range("bytes=-5000", 1000), Some((0, 999)));
        assert_eq!(parse_range("bytes=990-2000", 1000), Some((990, 999)));
        for bad in [
            "bytes=1000-",
            "bytes=5-4",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
            "bytes=-",
        ] {
            assert_eq!(parse_range(bad, 1000), None, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }

    #[test]
    fn the_bucket_holds_the_rate_and_saves_at_most_a_second() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1_000_000, t0);
        // Nothing saved yet: 250 kB waits a quarter second.
        assert_eq!(b.take(t0, 250_000), Duration::from_millis(250));
        // Sent back to back at their due times: the rate, exactly.
        let mut at = t0 + Duration::from_millis(250);
        for _ in 0..8 {
            let wait = b.take(at, 250_000);
            assert_eq!(wait, Duration::from_millis(250));
            at += wait;
        }
        // Ten idle seconds save one second of the rate, no more.
        let later = at + Duration::from_secs(10);
        assert_eq!(b.take(later, 1_000_000), Duration::ZERO);
        assert_eq!(b.take(later, 500_000), Duration::from_millis(500));
    }
}
