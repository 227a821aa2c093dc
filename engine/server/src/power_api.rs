//! The operator API of BMCs: a target's BMC settings (the password
//! write-only, sealed at rest), power actions and one-time boots. Answers
//! carry the power state the BMC reports; a BMC error is a 502 with its
//! message (never the password).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use rackcast_bmc::BmcAddr;
use rackcast_engine::sched::api::{
    ApiError, BmcRequest, BootOnceRequest, PowerAnswer, PowerRequest, TargetView,
};
use rackcast_engine::sched::{MacAddr, SchedError};

use super::bmc::{self, Call};
use super::body::{ApiJson, JSON_LIMIT};
use super::openapi::ChangeErrors;
use super::operator::operator;
use super::{ApiErr, Shared};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type S = State<Arc<Shared>>;

pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default()
        .routes(routes!(set_bmc, remove_bmc))
        .routes(routes!(power))
        .routes(routes!(boot_once))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
}

fn unprocessable(msg: String) -> ApiErr {
    ApiErr(StatusCode::UNPROCESSABLE_ENTITY, msg)
}

/// A known target's MAC.
async fn known(sh: &Shared, mac: &str) -> Result<MacAddr, ApiErr> {
    let m = MacAddr::parse(mac).map_err(SchedError::from)?;
    if sh.read(|i| i.sched.target(m).is_some()).await {
        Ok(m)
    } else {
        Err(SchedError::UnknownTarget(m).into())
    }
}

#[utoipa::path(
    put,
    path = "/api/v1/targets/{mac}/bmc",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    request_body = BmcRequest,
    responses(
        (status = 200, description = "The target with its BMC (never the password)", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "A bad address, a missing user or password, or a bad body", body = ApiError),
        (status = 413, description = "The body is over 1 MiB", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn set_bmc(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
    ApiJson(mut req): ApiJson<BmcRequest>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let mac = known(&sh, &mac).await?;
    let addr: BmcAddr = req
        .settings
        .addr
        .parse()
        .map_err(|e: rackcast_bmc::AddrError| unprocessable(e.to_string()))?;
    // Stored as the driver prints it: one spelling per address.
    req.settings.addr = addr.to_string();
    if addr == BmcAddr::Wol {
        req.settings.user = None;
        req.password = None;
        sh.store.set_bmc_secret(mac, None).await?;
    } else {
        if req.settings.user.as_deref().is_none_or(str::is_empty) {
            return Err(unprocessable(format!(
                "{addr} needs a login user (--bmc-user)"
            )));
        }
        match &req.password {
            Some(p) => {
                let sealed = sh
                    .vault
                    .seal(mac, p)
                    .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                sh.store.set_bmc_secret(mac, Some(&sealed)).await?;
            }
            None if sh.store.bmc_secret(mac).await?.is_none() => {
                return Err(unprocessable(format!(
                    "{addr} needs a password (--bmc-password-file)"
                )));
            }
            None => {}
        }
    }
    let settings = req.settings;
    let v = sh
        .mutate(|s, now| s.set_bmc(now, mac, Some(settings)).map(|t| t.view()))
        .await??;
    Ok(Json(v))
}

#[utoipa::path(
    delete,
    path = "/api/v1/targets/{mac}/bmc",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    responses(
        (status = 200, description = "The target, its BMC and password forgotten", body = TargetView),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn remove_bmc(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Json<TargetView>, ApiErr> {
    operator(&sh, &h)?;
    let mac = known(&sh, &mac).await?;
    sh.store.set_bmc_secret(mac, None).await?;
    let v = sh
        .mutate(|s, now| s.set_bmc(now, mac, None).map(|t| t.view()))
        .await??;
    Ok(Json(v))
}

#[utoipa::path(
    post,
    path = "/api/v1/targets/{mac}/power",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    request_body = PowerRequest,
    responses(
        (status = 200, description = "The power state after the call, as the BMC reports it", body = PowerAnswer),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address, or a bad body", body = ApiError),
        (status = 502, description = "The BMC failed (its message; never the password)", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn power(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
    ApiJson(req): ApiJson<PowerRequest>,
) -> Result<Json<PowerAnswer>, ApiErr> {
    operator(&sh, &h)?;
    let mac = known(&sh, &mac).await?;
    let what = match req.op {
        Some(op) => (Call::Power(op), Some(op.word().to_string())),
        None => (Call::State, None),
    };
    answer(&sh, mac, what.0, what.1).await
}

#[utoipa::path(
    post,
    path = "/api/v1/targets/{mac}/boot-once",
    tag = "targets",
    params(("mac" = String, Path, description = "The target's MAC, e.g. `52:54:00:ab:cd:01`")),
    request_body = BootOnceRequest,
    responses(
        (status = 200, description = "The power state after the call, as the BMC reports it", body = PowerAnswer),
        (status = 404, description = "No such target", body = ApiError),
        (status = 422, description = "Not a MAC address, or a bad body", body = ApiError),
        (status = 502, description = "The BMC failed (its message; never the password)", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn boot_once(
    State(sh): S,
    h: HeaderMap,
    Path(mac): Path<String>,
    ApiJson(req): ApiJson<BootOnceRequest>,
) -> Result<Json<PowerAnswer>, ApiErr> {
    operator(&sh, &h)?;
    let mac = known(&sh, &mac).await?;
    let action = format!("boot-once {}", req.device);
    answer(&sh, mac, Call::BootOnce(req.device), Some(action)).await
}

/// Carries out `call`, records it (an action) or what it read, and answers.
async fn answer(
    sh: &Arc<Shared>,
    mac: MacAddr,
    call: Call,
    action: Option<String>,
) -> Result<Json<PowerAnswer>, ApiErr> {
    let r = bmc::call(sh, mac, call).await.map_err(|e| e.message);
    let outcome = r.clone();
    sh.mutate(move |s, now| match &action {
        Some(a) => s.power_noted(now, mac, a, outcome),
        None => s.power_observed(now, mac, outcome),
    })
    .await?;
    match r {
        Ok(power) => Ok(Json(PowerAnswer { mac, power })),
        Err(e) => Err(ApiErr(StatusCode::BAD_GATEWAY, e)),
    }
}
