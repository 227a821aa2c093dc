//! The operator API: REST/JSON under `/api/v1` and server-sent events.
//! Every call needs the operator token.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::body::{bytes_refused, ApiJson, JOB_SPEC_LIMIT, JSON_LIMIT};
use super::openapi::{ChangeErrors, ImageFile, OperatorErrors};
use super::{library, ApiErr, Shared};
use rackcast_engine::sched::api::{
    ApiError, Environment, EventRecord, ImageView, JobId, JobSpec, JobView, TargetView, VarsUpdate,
};
use rackcast_engine::sched::{MacAddr, SchedError};

type S = State<Arc<Shared>>;

/// The routes; each handler's `#[utoipa::path]` names its method and path,
/// so `routes!` puts handlers of one path together.
pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default()
        .routes(routes!(list_targets, add_target))
        .routes(routes!(show_target))
        .routes(routes!(release_target))
        .routes(routes!(reset_target))
        .routes(routes!(set_target_vars))
        .routes(routes!(list_images))
        .routes(routes!(list_envs))
        .routes(routes!(show_env, put_env))
        .routes(routes!(list_jobs, submit_job).layer(DefaultBodyLimit::max(JOB_SPEC_LIMIT)))
        .routes(routes!(show_job))
        .routes(routes!(job_log))
        .routes(routes!(retry_job))
        .routes(routes!(cancel_job))
        .routes(routes!(events))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        // Streamed to a file, bounded by max_image_bytes (see library).
        .routes(routes!(show_image, put_image).layer(DefaultBodyLimit::disable()))
}

/// Any live operator token; what its role may do is [`crate::operators::guard`]'s.
pub(crate) fn operator(sh: &Shared, h: &HeaderMap) -> Result<(), ApiErr> {
    crate::operators::caller(sh, h).map(drop)
}

fn not_found(what: String) -> ApiErr {
    ApiErr(StatusCode::NOT_FOUND, what)
}

#[utoipa::path(
    get,
    path = "/api/v1/targets",
    tag = "targets",
    responses(
        (status = 200, description = "Every target", body = [TargetView]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn list_targets(State(sh): S, h: HeaderMap) -> Result<Json<Vec<TargetView>>, ApiErr> {
    operator(&sh, &h)?;
    Ok(Json(
        sh.read(|i| i.sched.targets().map(|t| t.view()).collect())
            .await,
    ))
}

/// `POST /api/v1/targets {mac, name}`: enroll a target before it first boots.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewTarget {
    /// Its MAC (`aa:bb:cc:dd:ee:ff`, `AA-BB-...` or `aabb.ccdd.eeff`).
    mac: String,
    /// A name for people (default: the host name its agent reports).
    #[serde(default)]
    name: String,
    /// Variables for job templates (see `PATCH /api/v1/targets/{mac}/vars`).
    #[serde(default)]
    vars: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/targets",
    tag = "targets",
    description = "Enrolls a target before it first boots.",
    request_body = NewTarget,
    responses(
        (status = 200, description = "The enrolled target", body = TargetView),
        (status = 422, description = "Not a MAC address, or a bad body", body = ApiError),
        (status = 413, description = "The body is over the route's limit", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn add_target(
    State(sh): S,
    h: HeaderMap,
    ApiJson(t): ApiJson<NewTarget>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let v = sh
        .mutate(|s, now| {
            let mac = MacAddr::parse(&t.mac)?;
            let vars = VarsUpdate {
                set: t.vars,
                unset: Vec::new(),
            };
            // Checked before enrolling: a bad variable enrolls nothing.
            let mut checked = std::collections::BTreeMap::new();
            rackcast_engine::sched::template::update(&mut checked, &vars.set, &[])
                .map_err(SchedError::Invalid)?;
            s.add_target(now, mac, &t.name)?;
            if !vars.set.is_empty() {
                s.set_vars(now, mac, &vars)?;
            }
            s.target(mac)
                .map(|t| t.view())
                .ok_or(SchedError::UnknownTarget(mac))
        })
        .await??;
    Ok(Json(v))
}

#[utoipa::path(
    get,
    path = "/api/v1/targets/{mac}",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    responses(
        (status = 200, description = "The target", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn show_target(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let m = MacAddr::parse(&mac).map_err(SchedError::from)?;
    sh.read(|i| i.sched.target(m).map(|t| t.view()))
        .await
        .map(Json)
        .ok_or_else(|| SchedError::UnknownTarget(m).into())
}

#[utoipa::path(
    post,
    path = "/api/v1/targets/{mac}/release",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    responses(
        (status = 200, description = "The target, its failure hold cleared", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn release_target(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let v = sh
        .mutate(|s, now| {
            let m = MacAddr::parse(&mac)?;
            s.release(now, m)?;
            Ok::<_, SchedError>(s.target(m).map(|t| t.view()))
        })
        .await??;
    v.map(Json)
        .ok_or_else(|| not_found(format!("unknown target {mac}")))
}

/// `PATCH /api/v1/targets/{mac}/vars {set, unset}`: sets a target's
/// template variables (`{name}` in a job's cloud-init), then removes names.
#[utoipa::path(
    patch,
    path = "/api/v1/targets/{mac}/vars",
    tag = "targets",
    description = "Sets and removes a target's variables for job templates: all of the update or none of it.",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    request_body = VarsUpdate,
    responses(
        (status = 200, description = "The target with its variables", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address, or a bad name, value or count", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn set_target_vars(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
    ApiJson(update): ApiJson<VarsUpdate>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let v = sh
        .mutate(|s, now| {
            let m = MacAddr::parse(&mac)?;
            s.set_vars(now, m, &update).map(|t| t.view())
        })
        .await??;
    Ok(Json(v))
}

/// `POST /api/v1/targets/{mac}/reset`: drops the target's agent session,
/// so its running agent must register again and the enrollment token may
/// register it (a live session refuses that).
#[utoipa::path(
    post,
    path = "/api/v1/targets/{mac}/reset",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    responses(
        (status = 200, description = "The target, its agent session dropped", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn reset_target(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let m = MacAddr::parse(&mac).map_err(SchedError::from)?;
    {
        let mut inner = sh.inner.lock().await;
        if inner.sched.target(m).is_none() {
            return Err(not_found(format!("unknown target {m}")));
        }
        // Keep when the last boot token was claimed: that claim stays spent.
        let mut session = inner.agent_tokens.get(&m).cloned().unwrap_or_default();
        session.hash.clear();
        sh.store
            .set_agent_token(m, &session, super::now_ms())
            .await?;
        inner.agent_tokens.insert(m, session);
    }
    let v = sh
        .mutate(|s, now| {
            s.agent_reset(now, m)?;
            Ok::<_, SchedError>(s.target(m).map(|t| t.view()))
        })
        .await??;
    v.map(Json)
        .ok_or_else(|| not_found(format!("unknown target {mac}")))
}

#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    responses(
        (status = 200, description = "Every image in the library", body = [ImageView]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn list_images(State(sh): S, h: HeaderMap) -> Result<Json<Vec<ImageView>>, ApiErr> {
    operator(&sh, &h)?;
    Ok(Json(
        sh.read(|i| i.images.values().cloned().collect()).await,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/images/{name}",
    tag = "images",
    params(("name" = String, Path, description = "The image's name in the library")),
    responses(
        (status = 200, description = "The image", body = ImageView),
        (status = 404, description = "No such image", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn show_image(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<ImageView>, ApiErr> {
    operator(&sh, &h)?;
    sh.read(|i| i.images.get(&name).cloned())
        .await
        .map(Json)
        .ok_or_else(|| SchedError::UnknownImage(name).into())
}

#[utoipa::path(
    put,
    path = "/api/v1/images/{name}",
    tag = "images",
    params(("name" = String, Path, description = "The image's name in the library")),
    request_body(content = inline(ImageFile), content_type = "application/octet-stream", description = "An image file (`rackcast image create`), streamed; at most the server's `max_image_bytes`"),
    responses(
        (status = 200, description = "The stored image, verified", body = ImageView),
        (status = 413, description = "Over the server's `max_image_bytes`", body = ApiError),
        (status = 422, description = "The image does not verify, or is not signed by a trusted key", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn put_image(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<ImageView>, ApiErr> {
    operator(&sh, &h)?;
    let v = library::receive(
        &sh.cfg.data,
        &name,
        body,
        &sh.trusted,
        sh.cfg.max_image_bytes,
    )
    .await?;
    sh.install_image(v.clone(), "operator").await?;
    Ok(Json(v))
}

#[utoipa::path(
    get,
    path = "/api/v1/environments",
    tag = "environments",
    responses(
        (status = 200, description = "Every environment", body = [Environment]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn list_envs(State(sh): S, h: HeaderMap) -> Result<Json<Vec<Environment>>, ApiErr> {
    operator(&sh, &h)?;
    Ok(Json(
        sh.read(|i| i.sched.environments().cloned().collect()).await,
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/environments/{name}",
    tag = "environments",
    params(("name" = String, Path, description = "The environment's name")),
    responses(
        (status = 200, description = "The environment", body = Environment),
        (status = 404, description = "No such environment", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn show_env(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Environment>, ApiErr> {
    operator(&sh, &h)?;
    sh.read(|i| i.sched.environment(&name).cloned())
        .await
        .map(Json)
        .ok_or_else(|| not_found(format!("unknown environment {name:?}")))
}

#[utoipa::path(
    put,
    path = "/api/v1/environments/{name}",
    tag = "environments",
    params(("name" = String, Path, description = "The environment's name")),
    request_body = Environment,
    responses(
        (status = 200, description = "The environment as stored (named by the path)", body = Environment),
        (status = 422, description = "Not a valid environment", body = ApiError),
        (status = 413, description = "The body is over the route's limit", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn put_env(
    State(sh): S,
    h: HeaderMap,
    Path(name): Path<String>,
    ApiJson(mut env): ApiJson<Environment>,
) -> Result<Json<Environment>, ApiErr> {
    operator(&sh, &h)?;
    env.name = name;
    let e = env.clone();
    sh.mutate(|s, now| s.put_environment(now, e)).await??;
    Ok(Json(env))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    responses(
        (status = 200, description = "Every job", body = [JobView]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn list_jobs(State(sh): S, h: HeaderMap) -> Result<Json<Vec<JobView>>, ApiErr> {
    operator(&sh, &h)?;
    Ok(Json(
        sh.read(|i| i.sched.jobs().map(|j| j.view()).collect())
            .await,
    ))
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body(content = JobSpec, description = "The job; at most 4 MiB"),
    responses(
        (status = 201, description = "The job, queued", body = JobView),
        (status = 404, description = "An unknown target or image", body = ApiError),
        (status = 413, description = "Over 4 MiB", body = ApiError),
        (status = 422, description = "Not a valid job spec", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn submit_job(
    State(sh): S,
    h: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<JobView>), ApiErr> {
    let who = crate::operators::caller(&sh, &h)?;
    let body = body.map_err(bytes_refused)?;
    let mut spec: JobSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiErr(StatusCode::UNPROCESSABLE_ENTITY, format!("job spec: {e}")))?;
    spec.origin = Some(format!("api {}", who.name));
    let v = sh
        .mutate(|s, now| {
            let id = s.submit(now, spec)?;
            Ok::<_, SchedError>(s.job(id).map(|j| j.view()))
        })
        .await??;
    v.map(|v| (StatusCode::CREATED, Json(v)))
        .ok_or_else(|| not_found("the job vanished".into()))
}

#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 404, description = "No such job", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn show_job(
    State(sh): S,
    h: HeaderMap,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiErr> {
    operator(&sh, &h)?;
    sh.read(|i| i.sched.job(id).map(|j| j.view()))
        .await
        .map(Json)
        .ok_or_else(|| SchedError::UnknownJob(id).into())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogQuery {
    /// The target whose output to read.
    mac: String,
    /// Only the lines after this log sequence number.
    #[serde(default)]
    after: u64,
}

/// `GET /api/v1/jobs/{id}/log?mac=M`: the whole of `mac`'s output in the
/// job (the view carries only its tail), as text, read from the job log a
/// few lines at a time.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/log",
    tag = "jobs",
    params(("id" = u64, Path, description = "The job's id"), LogQuery),
    responses(
        (status = 200, description = "All of the target's output in the job (the job view has its tail)", content_type = "text/plain; charset=utf-8", body = String),
        (status = 404, description = "No such job, or it does not run on that target", body = ApiError),
        (status = 422, description = "Not a MAC address", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn job_log(
    State(sh): S,
    h: HeaderMap,
    Path(id): Path<JobId>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiErr> {
    operator(&sh, &h)?;
    let mac = MacAddr::parse(&q.mac).map_err(SchedError::from)?;
    let known = sh
        .read(|i| i.sched.job(id).map(|j| j.run(mac).is_some()))
        .await;
    match known {
        None => return Err(SchedError::UnknownJob(id).into()),
        Some(false) => return Err(not_found(format!("job {id} does not run on {mac}"))),
        Some(true) => {}
    }
    // Each line is at most a report's worth: a page of 16 bounds what is held.
    let pages = stream::try_unfold(Some(q.after), move |after| {
        let sh = sh.clone();
        async move {
            let Some(after) = after else { return Ok(None) };
            let page = sh.store.job_log(id, mac, after, 16).await?;
            let next = (page.len() == 16).then(|| page.last().map_or(after, |l| l.0));
            let text: String = page.into_iter().map(|(_, t)| t).collect();
            Ok::<_, crate::store::StoreError>(Some((axum::body::Bytes::from(text), next)))
        }
    });
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        Body::from_stream(pages),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/retry",
    tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, its failed targets queued again", body = JobView),
        (status = 404, description = "No such job", body = ApiError),
        (status = 422, description = "Nothing to retry", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn retry_job(
    State(sh): S,
    h: HeaderMap,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiErr> {
    job_action(&sh, &h, id, |s, now| s.retry(now, id).map(drop)).await
}

#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = u64, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, cancelled", body = JobView),
        (status = 404, description = "No such job", body = ApiError),
        (status = 422, description = "The job cannot be cancelled", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn cancel_job(
    State(sh): S,
    h: HeaderMap,
    Path(id): Path<JobId>,
) -> Result<Json<JobView>, ApiErr> {
    job_action(&sh, &h, id, |s, now| s.cancel(now, id)).await
}

/// Runs an operator action on job `id` and answers the job as it is after it.
async fn job_action(
    sh: &Arc<Shared>,
    h: &HeaderMap,
    id: JobId,
    f: impl FnOnce(&mut rackcast_engine::sched::Scheduler, u64) -> Result<(), SchedError>,
) -> Result<Json<JobView>, ApiErr> {
    operator(sh, h)?;
    let v = sh
        .mutate(|s, now| {
            f(s, now)?;
            Ok::<_, SchedError>(s.job(id).map(|j| j.view()))
        })
        .await??;
    v.map(Json)
        .ok_or_else(|| not_found(format!("unknown job {id}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventQuery {
    /// Only this job's events (default: all).
    #[param(value_type = Option<u64>)]
    job: Option<JobId>,
    /// Only the events after this sequence number.
    #[serde(default)]
    since: u64,
}

/// Replays the stored events after `since` (of one job, or all), then
/// streams new ones live; progress events are live only. `since` is the
/// `since=` query or the `Last-Event-ID` header an EventSource reconnects
/// with, whichever is later. A subscriber too slow for the live feed gets a
/// `lagged` event and the end of the stream: reconnecting from the last id it
/// saw replays what it missed from the store.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventQuery, ("Last-Event-ID" = Option<u64>, Header, description = "The last id an EventSource received: replay starts after the later of it and `since`")),
    responses(
        (status = 200, description = "Server-sent events: the stored events after `since`, then live ones. Each event is named by its kind, its id is its sequence number and its data an `EventRecord` in JSON; a `lagged` event ends the stream of a subscriber that fell behind (reconnect from the last id).", content_type = "text/event-stream", body = String),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn events(
    State(sh): S,
    h: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiErr> {
    operator(&sh, &h)?;
    // Subscribe first, so nothing falls between the replay and the live feed.
    let rx = sh.events.subscribe();
    let mut replay = Vec::new();
    let mut since = q.since.max(last_event_id(&h).unwrap_or(0));
    loop {
        let batch = sh.store.events(q.job, since, 1000).await?;
        let n = batch.len();
        if let Some(last) = batch.last() {
            since = last.seq;
        }
        replay.extend(batch);
        if n < 1000 {
            break;
        }
    }
    let stream = stream::iter(replay.into_iter().map(Live::Event))
        .chain(live_events(rx, since, q.job))
        .map(|item| {
            Ok(match item {
                Live::Event(e) => {
                    let mut ev = Event::default().event(e.kind.clone());
                    if e.seq > 0 {
                        ev = ev.id(e.seq.to_string());
                    }
                    ev.data(serde_json::to_string(&e).unwrap_or_default())
                }
                Live::Lagged(missed) => Event::default().event("lagged").data(format!(
                    "{{\"missed\":{missed},\"hint\":\"reconnect with since= (or Last-Event-ID) \
                     set to the last id received\"}}"
                )),
            })
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One item of the event stream.
#[derive(Debug)]
enum Live {
    Event(EventRecord),
    /// The subscriber fell this many events behind; the stream ends here.
    Lagged(u64),
}

/// `Last-Event-ID`, when it is a sequence number.
fn last_event_id(h: &HeaderMap) -> Option<u64> {
    h.get("last-event-id")?.to_str().ok()?.trim().parse().ok()
}

/// The live feed after `since` (of one job, or all): progress events (seq
/// 0) always, stored ones only past what the replay sent. Ends after a
/// [`Live::Lagged`] when the subscriber fell behind the broadcast buffer.
fn live_events(
    rx: tokio::sync::broadcast::Receiver<EventRecord>,
    since: u64,
    job: Option<JobId>,
) -> impl Stream<Item = Live> {
    use tokio::sync::broadcast::error::RecvError;
    let wanted =
        move |e: &EventRecord| (e.seq == 0 || e.seq > since) && (job.is_none() || e.job == job);
    stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(e) if wanted(&e) => return Some((Live::Event(e), Some(rx))),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => return Some((Live::Lagged(n), None)),
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, job: Option<JobId>) -> EventRecord {
        EventRecord {
            seq,
            at: 0,
            actor: "scheduler".into(),
            kind: "task.progress".into(),
            target: None,
            job,
            task: None,
            detail: serde_json::Value::Null,
        }
    }

    #[tokio::test]
    async fn live_feed_skips_replayed_and_other_jobs_events() {
        let (tx, rx) = tokio::sync::broadcast::channel(16);
        let job = Some(JobId(7));
        let feed = live_events(rx, 5, job);
        for (seq, j) in [(4, job), (6, Some(JobId(8))), (0, job), (7, job)] {
            tx.send(record(seq, j)).unwrap();
        }
        drop(tx);
        let got: Vec<u64> = feed
            .map(|i| match i {
                Live::Event(e) => e.seq,
                Live::Lagged(_) => panic!("not lagging"),
            })
            .collect()
            .await;
        assert_eq!(got, [0, 7], "progress (seq 0) and seq 7 of job 7 only");
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_and_its_stream_ends() {
        let (tx, rx) = tokio::sync::broadcast::channel(8);
        let feed = live_events(rx, 0, None);
        // Twenty events while nobody reads: the oldest twelve are gone.
        for seq in 1..=20 {
            tx.send(record(seq, None)).unwrap();
        }
        let items: Vec<Live> = feed.take(3).collect().await;
        assert!(
            matches!(items.as_slice(), [Live::Lagged(12)]),
            "the lag, then the end, not events past a gap: {items:?}"
        );
        assert!(
            tx.send(record(21, None)).is_err(),
            "the receiver was dropped"
        );
    }

    #[test]
    fn last_event_id_header_is_read_as_a_sequence_number() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h), None);
        h.insert("last-event-id", " 42 ".parse().unwrap());
        assert_eq!(last_event_id(&h), Some(42));
        h.insert("last-event-id", "abc".parse().unwrap());
        assert_eq!(last_event_id(&h), None);
    }
}
