//! The agent API under `/agent/v1`: register with the enrollment token, then
//! long-poll for directives and report with the per-boot token.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;

use super::{auth, library, now_ms, ApiErr, Shared};
use rackcast_engine::sched::api::{
    Directive, ImageView, JobId, PollRequest, RegisterRequest, Registered, ReportAck,
    ReportRequest, TargetState, TaskKind, TaskRef,
};
use rackcast_engine::sched::MacAddr;

type S = State<Arc<Shared>>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/agent/v1/register", post(register))
        .route("/agent/v1/poll", post(poll))
        .route("/agent/v1/report", post(report))
        .route("/agent/v1/images/{name}", put(upload))
}

/// The MAC a boot token belongs to, checked against the one claimed.
async fn agent(sh: &Shared, h: &HeaderMap, claimed: &str) -> Result<MacAddr, ApiErr> {
    let token = auth::bearer(h)?;
    let mac = MacAddr::parse(claimed).map_err(rackcast_engine::sched::SchedError::from)?;
    let hash = auth::token_hash(token);
    let ok = sh.read(|i| i.agent_tokens.get(&mac) == Some(&hash)).await;
    if ok {
        Ok(mac)
    } else {
        Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            format!("no valid boot token for {mac}: register again"),
        ))
    }
}

async fn register(
    State(sh): S,
    h: HeaderMap,
    Json(r): Json<RegisterRequest>,
) -> Result<Json<Registered>, ApiErr> {
    auth::require(&h, &sh.enroll_token, "enrollment")?;
    let mac = MacAddr::parse(&r.mac).map_err(rackcast_engine::sched::SchedError::from)?;
    let token = auth::random_token()
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let hash = auth::token_hash(&token);
    sh.store.set_agent_token(mac, &hash, now_ms()).await?;
    sh.inner.lock().await.agent_tokens.insert(mac, hash);
    sh.mutate(|s, now| s.register(now, mac, &r.env, r.inventory, r.running))
        .await??;
    Ok(Json(Registered {
        token,
        poll_wait: sh.cfg.poll_wait,
    }))
}

/// Holds the poll until there is something to do or the wait is over.
async fn poll(
    State(sh): S,
    h: HeaderMap,
    Json(p): Json<PollRequest>,
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

async fn report(
    State(sh): S,
    h: HeaderMap,
    Json(r): Json<ReportRequest>,
) -> Result<Json<ReportAck>, ApiErr> {
    let mac = agent(&sh, &h, &r.mac).await?;
    let keep_going = sh
        .mutate(|s, now| s.report(now, mac, r.task, r.report))
        .await??;
    Ok(Json(ReportAck { keep_going }))
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    #[serde(default)]
    mac: Option<String>,
    job: JobId,
    task: u32,
    attempt: u32,
}

/// A Create Disk Image result: accepted only from the target running that
/// task, and only once it verifies.
async fn upload(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Json<ImageView>, ApiErr> {
    let mac = match &q.mac {
        Some(m) => agent(&sh, &h, m).await?,
        None => {
            let hash = auth::token_hash(auth::bearer(&h)?);
            sh.read(|i| {
                i.agent_tokens
                    .iter()
                    .find(|(_, t)| **t == hash)
                    .map(|(m, _)| *m)
            })
            .await
            .ok_or_else(|| {
                ApiErr(
                    StatusCode::UNAUTHORIZED,
                    "unknown boot token: register again".into(),
                )
            })?
        }
    };
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
    let v = library::receive(&sh.cfg.data, &name, body).await?;
    sh.install_image(v.clone(), "agent").await?;
    Ok(Json(v))
}
