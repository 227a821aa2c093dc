//! The agent API under `/agent/v1`: register with a boot token (from the
//! iPXE script) or the enrollment token, then long-poll for directives and
//! report with the session token registration returned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::body::{ApiJson, JSON_LIMIT, REPORT_LIMIT};
use super::boot_token::{BootToken, Refusal};
use super::openapi::{AgentErrors, ImageFile};
use super::store::AgentSession;
use super::{auth, library, now_ms, ApiErr, Shared};
use rackcast_engine::sched::api::{
    ApiError, Directive, ImageView, JobId, PollRequest, RegisterRequest, Registered, ReportAck,
    ReportRequest, TargetState, TaskKind, TaskRef,
};
use rackcast_engine::sched::MacAddr;

type S = State<Arc<Shared>>;

pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default()
        .routes(routes!(register))
        .routes(routes!(poll))
        .routes(routes!(report).layer(DefaultBodyLimit::max(REPORT_LIMIT)))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        // Streamed to a file, bounded by max_image_bytes (see library).
        .routes(routes!(upload).layer(DefaultBodyLimit::disable()))
}

/// The MAC whose session token the request carries: checked against the
/// one claimed, or looked up by the token.
pub(crate) async fn agent_of(
    sh: &Shared,
    h: &HeaderMap,
    claimed: Option<&str>,
) -> Result<MacAddr, ApiErr> {
    if let Some(m) = claimed {
        return agent(sh, h, m).await;
    }
    let hash = auth::token_hash(auth::bearer(h)?);
    sh.read(|i| {
        i.agent_tokens
            .iter()
            .find(|(_, t)| !t.hash.is_empty() && t.hash == hash)
            .map(|(m, _)| *m)
    })
    .await
    .ok_or_else(|| {
        ApiErr(
            StatusCode::UNAUTHORIZED,
            "unknown boot token: register again".into(),
        )
    })
}

/// The MAC a boot token belongs to, checked against the one claimed.
async fn agent(sh: &Shared, h: &HeaderMap, claimed: &str) -> Result<MacAddr, ApiErr> {
    let token = auth::bearer(h)?;
    let mac = MacAddr::parse(claimed).map_err(rackcast_engine::sched::SchedError::from)?;
    let hash = auth::token_hash(token);
    let ok = sh
        .read(|i| {
            i.agent_tokens
                .get(&mac)
                .is_some_and(|s| !s.hash.is_empty() && s.hash == hash)
        })
        .await;
    if ok {
        Ok(mac)
    } else {
        Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            format!("no valid boot token for {mac}: register again"),
        ))
    }
}

/// A registration. With a boot token: it must be this MAC's, unexpired,
/// unclaimed and for the target's pending task. With the MAC's own session
/// token (a restarted agent): a renewal. With the enrollment token (when
/// allowed): the MAC must have no live session. Refusals are
/// recorded as `agent.refused` events. The check and the claim happen
/// under one lock, so one token never claims twice.
#[utoipa::path(
    post,
    path = "/agent/v1/register",
    tag = "agent",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "The session token for this boot's further calls", body = Registered),
        (status = 409, description = "The enrollment token cannot take over a live agent session", body = ApiError),
        (status = 413, description = "The body is over 1 MiB", body = ApiError),
        AgentErrors,
    ),
    security(("agent_token" = []))
)]
async fn register(
    State(sh): S,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    ApiJson(r): ApiJson<RegisterRequest>,
) -> Result<Json<Registered>, ApiErr> {
    let mac = MacAddr::parse(&r.mac).map_err(rackcast_engine::sched::SchedError::from)?;
    let presented = auth::bearer(&h)?;
    let boot = BootToken::looks_like(presented);
    // An agent that restarted presents the session token it saved: it
    // renews its own session, whatever token it first registered with.
    let hash = auth::token_hash(presented);
    let renewal = sh
        .read(|i| {
            i.agent_tokens
                .get(&mac)
                .is_some_and(|s| !s.hash.is_empty() && s.hash == hash)
        })
        .await;
    if !boot && !renewal {
        if !sh.cfg.enroll_token {
            return Err(ApiErr(
                StatusCode::UNAUTHORIZED,
                "the enrollment token is switched off on this server (enroll_token = false): \
                 boot the target through netboot, whose script carries a token for it"
                    .into(),
            ));
        }
        auth::require(&h, &sh.enroll_token, "enrollment")?;
    }
    let token = auth::random_token()
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let refused = {
        let mut inner = sh.inner.lock().await;
        let now = now_ms();
        let old = inner.agent_tokens.get(&mac).cloned().unwrap_or_default();
        let verdict = if renewal {
            if old.hash == hash {
                Ok(old.claimed)
            } else {
                Err(Refused::noted(
                    StatusCode::UNAUTHORIZED,
                    "the session was renewed meanwhile".to_string(),
                ))
            }
        } else if boot {
            let pending = inner.sched.pending_task(mac);
            BootToken::verify(presented, &sh.boot_key)
                .and_then(|t| {
                    t.check(mac, now, old.claimed, pending, sh.cfg.boot_token_ttl * 1000)?;
                    Ok(t.issued)
                })
                .map_err(|e| Refused {
                    status: StatusCode::UNAUTHORIZED,
                    // A token this server never issued says nothing about
                    // the target: a debug line only, or strangers could
                    // fill its event history.
                    noted: e != Refusal::Forged,
                    reason: e.to_string(),
                })
        } else {
            let seen = inner.sched.target(mac).map_or(0, |t| t.last_seen);
            let live_ms = (2 * sh.cfg.poll_wait + 60) * 1000;
            if !old.hash.is_empty() && now.saturating_sub(seen) < live_ms {
                Err(Refused::noted(
                    StatusCode::CONFLICT,
                    format!(
                        "{mac} has a live agent session (last heard {} s ago): the enrollment \
                         token cannot take it over; `rackcast target reset {mac}` drops it",
                        now.saturating_sub(seen) / 1000
                    ),
                ))
            } else {
                Ok(old.claimed)
            }
        };
        match verdict {
            Ok(claimed) => {
                let session = AgentSession {
                    hash: auth::token_hash(&token),
                    claimed,
                };
                sh.store.set_agent_token(mac, &session, now).await?;
                inner.agent_tokens.insert(mac, session);
                None
            }
            Err(e) => Some(e),
        }
    };
    if let Some(Refused {
        status,
        reason,
        noted,
    }) = refused
    {
        if noted && sh.note_refusal(mac, now_ms()).await {
            tracing::warn!("registration of {mac} from {peer} refused: {reason}");
            let peer = peer.to_string();
            sh.mutate(|s, now| s.registration_refused(now, mac, &reason, &peer))
                .await?;
        } else {
            tracing::debug!("registration of {mac} from {peer} refused: {reason}");
        }
        return Err(ApiErr(status, format!("registration refused: {reason}")));
    }
    sh.mutate(|s, now| s.register(now, mac, &r.env, r.inventory, r.running))
        .await??;
    Ok(Json(Registered {
        token,
        poll_wait: sh.cfg.poll_wait,
    }))
}

/// A registration turned away.
struct Refused {
    status: StatusCode,
    reason: String,
    /// Worth an `agent.refused` event (rate-limited per MAC).
    noted: bool,
}

impl Refused {
    fn noted(status: StatusCode, reason: String) -> Refused {
        Refused {
            status,
            reason,
            noted: true,
        }
    }
}

/// Holds the poll until there is something to do or the wait is over.
#[utoipa::path(
    post,
    path = "/agent/v1/poll",
    tag = "agent",
    request_body = PollRequest,
    responses(
        (status = 200, description = "What to do next (`wait` when the poll timed out)", body = Directive),
        (status = 413, description = "The body is over 1 MiB", body = ApiError),
        AgentErrors,
    ),
    security(("agent_token" = []))
)]
async fn poll(
    State(sh): S,
    h: HeaderMap,
    ApiJson(p): ApiJson<PollRequest>,
) -> Result<Json<Directive>, ApiErr> {
    let mac = agent(&sh, &h, &p.mac).await?;
    let wait = Duration::from_secs(p.wait.unwrap_or(sh.cfg.poll_wait).min(sh.cfg.poll_wait));
    let until = tokio::time::Instant::now() + wait;
    loop {
        let changed = sh.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let d = sh.mutate(|s, now| s.poll(now, mac, p.running)).await?;
        let now = tokio::time::Instant::now();
        if d != Directive::Wait || now >= until {
            return Ok(Json(d));
        }
        let _ = tokio::time::timeout(until - now, changed).await;
    }
}

#[utoipa::path(
    post,
    path = "/agent/v1/report",
    tag = "agent",
    request_body(content = ReportRequest, description = "A report; at most 8 MiB"),
    responses(
        (status = 200, description = "Whether the server still wants this run", body = ReportAck),
        (status = 404, description = "An unknown target or job", body = ApiError),
        (status = 413, description = "The body is over 8 MiB", body = ApiError),
        AgentErrors,
    ),
    security(("agent_token" = []))
)]
async fn report(
    State(sh): S,
    h: HeaderMap,
    ApiJson(r): ApiJson<ReportRequest>,
) -> Result<Json<ReportAck>, ApiErr> {
    let mac = agent(&sh, &h, &r.mac).await?;
    let keep_going = sh
        .mutate(|s, now| s.report(now, mac, r.task, r.report))
        .await??;
    Ok(Json(ReportAck { keep_going }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// The uploading target (default: the one the token belongs to).
    #[serde(default)]
    mac: Option<String>,
    /// The job of the Create Disk Image task.
    #[param(value_type = u64)]
    job: JobId,
    /// The task's index in the job.
    task: u32,
    /// The attempt, from 1.
    attempt: u32,
}

/// A Create Disk Image result: accepted only from the target running that
/// task, and only once it verifies.
#[utoipa::path(
    put,
    path = "/agent/v1/images/{name}",
    tag = "agent",
    params(("name" = String, Path, description = "The image name the Create Disk Image task names"), UploadQuery),
    request_body(content = inline(ImageFile), content_type = "application/octet-stream", description = "The captured image file, streamed; at most the server's `max_image_bytes`"),
    responses(
        (status = 200, description = "The stored image, verified", body = ImageView),
        (status = 409, description = "The target is not running that Create Disk Image task", body = ApiError),
        (status = 413, description = "Over the server's `max_image_bytes`", body = ApiError),
        AgentErrors,
    ),
    security(("agent_token" = []))
)]
async fn upload(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Json<ImageView>, ApiErr> {
    let mac = agent_of(&sh, &h, q.mac.as_deref()).await?;
    let r = TaskRef {
        job: q.job,
        task: q.task,
        attempt: q.attempt,
    };
    let expected = sh
        .read(|i| {
            let t = i.sched.target(mac)?;
            let TargetState::Running {
                job, task, attempt, ..
            } = t.state
            else {
                return None;
            };
            if (TaskRef { job, task, attempt }) != r {
                return None;
            }
            match &i.sched.job(job)?.spec.tasks.get(task as usize)?.kind {
                TaskKind::Create { image, .. } => Some(image.clone()),
                _ => None,
            }
        })
        .await;
    if expected.as_deref() != Some(name.as_str()) {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            format!("{mac} is not running a Create Disk Image task for {name:?} as job {} task {} attempt {}", r.job, r.task + 1, r.attempt),
        ));
    }
    let v = library::receive(
        &sh.cfg.data,
        &name,
        body,
        &sh.trusted,
        sh.cfg.max_image_bytes,
    )
    .await?;
    sh.install_image(v.clone(), "agent").await?;
    Ok(Json(v))
}
