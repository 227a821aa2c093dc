//! The operator's web dashboard at `/ui/`: plain HTML, CSS and JavaScript
//! embedded in the binary (no Node build, nothing to install, no CDN), a
//! client of the same operator API and event stream the CLI uses.
//!
//! Login trades an operator token for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, and `Secure` over HTTPS); the token is never stored
//! in the browser.
//! A request carried by the cookie must also send the session's CSRF token
//! in `X-Rackcast-CSRF` when it changes state ([`crate::operators::guard`]
//! checks it), and the pages allow scripts from this origin only (CSP), so
//! neither another site nor injected markup can act as the operator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Json;
use rackcast_engine::sched::api::{Role, SessionView};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::random_token;
use super::openapi::OperatorErrors;
use super::operators::Caller;
use super::{now_ms, ApiErr, Shared};

/// The cookie's name.
pub(crate) const COOKIE: &str = "rackcast_session";
/// The header a cookie-borne request that changes state must carry.
pub(crate) const CSRF_HEADER: &str = "x-rackcast-csrf";
/// How long a login lasts.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Most sessions held; the oldest go first.
const MAX_SESSIONS: usize = 4096;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// A logged-in browser.
#[derive(Debug, Clone)]
pub(crate) struct UiSession {
    pub(crate) caller: Caller,
    pub(crate) csrf: String,
    expires: u64,
}

/// Logged-in browsers by session id (in memory: a restart logs them out).
#[derive(Debug, Default)]
pub(crate) struct UiSessions {
    by_id: Mutex<HashMap<String, UiSession>>,
}

impl UiSessions {
    /// The live session of a request's cookie.
    pub(crate) fn of(&self, h: &HeaderMap) -> Option<UiSession> {
        let id = cookie(h, COOKIE)?;
        let by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        by_id.get(id).filter(|s| s.expires > now_ms()).cloned()
    }

    fn open(&self, caller: Caller) -> std::io::Result<(String, UiSession)> {
        let id = random_token()?;
        let s = UiSession {
            caller,
            csrf: random_token()?,
            expires: now_ms() + SESSION_MS,
        };
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms();
        by_id.retain(|_, s| s.expires > now);
        if by_id.len() >= MAX_SESSIONS {
            if let Some(oldest) = by_id
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                by_id.remove(&oldest);
            }
        }
        by_id.insert(id.clone(), s.clone());
        Ok((id, s))
    }

    fn close(&self, h: &HeaderMap) {
        if let Some(id) = cookie(h, COOKIE) {
            let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
            by_id.remove(id);
        }
    }

    /// Ends every session of the token named `name` (it was revoked).
    pub(crate) fn close_all_of(&self, name: &str) {
        let mut by_id = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        by_id.retain(|_, s| s.caller.name != name);
    }
}

/// The value of cookie `name` in a request.
fn cookie<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The dashboard's routes (pages for browsers, outside the API document)
/// and `GET /api/v1/sessions`.
pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .routes(routes!(sessions))
}

fn page(body: &'static str, ctype: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[derive(Debug, Deserialize)]
struct Login {
    token: String,
}

/// Who is logged in, and the CSRF token the page sends back.
#[derive(Debug, Serialize)]
struct WhoAmI {
    name: String,
    role: Role,
    csrf: String,
    /// The last stored event: the page's event stream starts after it.
    last_event: u64,
}

async fn login(State(sh): State<Arc<Shared>>, Json(l): Json<Login>) -> Result<Response, ApiErr> {
    let Some(caller) = sh.tokens.caller(l.token.trim()) else {
        return Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            "wrong operator token".into(),
        ));
    };
    let (id, s) = sh
        .ui
        .open(caller)
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, format!("random: {e}")))?;
    let last_event = sh.read(|i| i.sched.last_seq()).await;
    // Secure only over HTTPS: a browser drops a Secure cookie set over plain
    // HTTP (`tls = false`), which would make logging in impossible.
    let secure = if sh.cfg.tls { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={id}; Path=/; HttpOnly{secure}; SameSite=Strict; Max-Age={}",
        SESSION_MS / 1000
    );
    let mut r = Json(WhoAmI {
        name: s.caller.name,
        role: s.caller.role,
        csrf: s.csrf,
        last_event,
    })
    .into_response();
    let v = HeaderValue::from_str(&set)
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(r)
}

async fn logout(State(sh): State<Arc<Shared>>, h: HeaderMap) -> Response {
    sh.ui.close(&h);
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "rackcast_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn session(State(sh): State<Arc<Shared>>, h: HeaderMap) -> Result<Json<WhoAmI>, ApiErr> {
    let s = sh
        .ui
        .of(&h)
        .ok_or_else(|| ApiErr(StatusCode::UNAUTHORIZED, "not logged in".into()))?;
    let last_event = sh.read(|i| i.sched.last_seq()).await;
    Ok(Json(WhoAmI {
        name: s.caller.name,
        role: s.caller.role,
        csrf: s.csrf,
        last_event,
    }))
}

/// `GET /api/v1/sessions`: every cast session, with its sender's figures.
#[utoipa::path(
    get,
    path = "/api/v1/sessions",
    tag = "jobs",
    responses(
        (status = 200, description = "Every cast session (never its key), with its sender's figures while it runs or as it ended", body = [SessionView]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn sessions(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
) -> Result<Json<Vec<SessionView>>, ApiErr> {
    super::operator::operator(&sh, &h)?;
    let mut out: Vec<SessionView> = sh
        .read(|i| {
            i.sched
                .sessions()
                .map(|s| SessionView {
                    id: s.id.0,
                    job: s.job,
                    image: s.image.clone(),
                    group: s.group.clone(),
                    phase: match s.phase {
                        rackcast_engine::sched::SessionPhase::Forming { .. } => "forming",
                        rackcast_engine::sched::SessionPhase::Running { .. } => "running",
                        rackcast_engine::sched::SessionPhase::Ended => "ended",
                    }
                    .into(),
                    members: s.members.iter().copied().collect(),
                    done: s.done.iter().copied().collect(),
                    live: None,
                })
                .collect()
        })
        .await;
    for s in &mut out {
        s.live = sh.metrics.live(s.id);
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; rackcast_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        let mut other = HeaderMap::new();
        other.append(
            header::COOKIE,
            HeaderValue::from_static("rackcast_sessionx=abc"),
        );
        assert_eq!(cookie(&other, COOKIE), None);
    }
}
