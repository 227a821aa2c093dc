//! Who the operators are and what they did: named tokens with a role
//! (`admin` does everything, `viewer` reads), the built-in `admin` token
//! in `DATA/admin.token`, and the append-only audit log of every
//! state-changing request a valid token made, refused ones included.
//!
//! Roles are enforced in one place, [`guard`], a layer on every operator
//! route: a handler never has to remember to check. It also refuses a
//! dashboard request that changes state without its CSRF token. Only the BLAKE3 of a
//! named token is stored; the token is shown once, when it is created.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rackcast_engine::sched::api::{
    ApiError, AuditEntry, Role, TokenCreated, TokenRequest, TokenView,
};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{bearer, random_token, token_hash};
use super::body::ApiJson;
use super::dashboard::CSRF_HEADER;
use super::openapi::{ChangeErrors, OperatorErrors};
use super::{now_ms, ApiErr, Shared};

/// The name DATA/admin.token goes by.
pub(crate) const BUILT_IN: &str = "admin";
/// Most audit entries one request returns.
const AUDIT_PAGE: u32 = 10_000;

/// A valid token's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) name: String,
    pub(crate) role: Role,
}

/// Live tokens by hash: what a request's bearer token is checked against.
#[derive(Debug, Default)]
pub(crate) struct TokenBook {
    by_hash: RwLock<HashMap<String, Caller>>,
}

impl TokenBook {
    /// The book for the built-in token and the live named ones.
    pub(crate) fn new(admin_token: &str, named: &[(String, TokenView)]) -> TokenBook {
        let mut by_hash = HashMap::new();
        for (hash, v) in named.iter().filter(|(_, v)| v.revoked.is_none()) {
            by_hash.insert(
                hash.clone(),
                Caller {
                    name: v.name.clone(),
                    role: v.role,
                },
            );
        }
        by_hash.insert(
            token_hash(admin_token),
            Caller {
                name: BUILT_IN.into(),
                role: Role::Admin,
            },
        );
        TokenBook {
            by_hash: RwLock::new(by_hash),
        }
    }

    /// Who holds `token`, if it is live. Looked up by hash, so nothing
    /// about a stored token leaks through timing.
    pub(crate) fn caller(&self, token: &str) -> Option<Caller> {
        let book = self.by_hash.read().unwrap_or_else(|e| e.into_inner());
        book.get(&token_hash(token)).cloned()
    }

    fn add(&self, hash: String, c: Caller) {
        let mut book = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        book.insert(hash, c);
    }

    fn remove(&self, name: &str) {
        let mut book = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        book.retain(|_, c| c.name != name);
    }
}

/// The caller of a request (its bearer token, or else its dashboard
/// session cookie), or 401.
pub(crate) fn caller(sh: &Shared, h: &HeaderMap) -> Result<Caller, ApiErr> {
    if !h.contains_key(axum::http::header::AUTHORIZATION) {
        if let Some(s) = sh.ui.of(h) {
            return Ok(s.caller);
        }
    }
    let token = bearer(h)?;
    sh.tokens
        .caller(token)
        .ok_or_else(|| ApiErr(StatusCode::UNAUTHORIZED, "wrong operator token".to_string()))
}

/// A cookie-borne request that changes state without the session's CSRF
/// token: another site made the browser send it. `None` when it is fine.
fn forged(sh: &Shared, h: &HeaderMap) -> Option<ApiErr> {
    if h.contains_key(axum::http::header::AUTHORIZATION) {
        return None;
    }
    let s = sh.ui.of(h)?;
    let sent = h.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    (sent != Some(s.csrf.as_str())).then(|| {
        ApiErr(
            StatusCode::FORBIDDEN,
            format!("a dashboard request that changes state must carry {CSRF_HEADER}"),
        )
    })
}

/// Reads pass; anything else needs an admin token and is audited, refused
/// or not. A request without a valid token goes on to its handler, which
/// answers 401, and is not audited: a stranger cannot fill the log.
pub(crate) async fn guard(State(sh): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let Ok(who) = caller(&sh, req.headers()) else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let action = format!("{} {route}", req.method());
    let path = req.uri().path().to_string();
    // Ending one's own dashboard session changes nothing else.
    let own = route == "/ui/logout";
    let resp = match (forged(&sh, req.headers()), who.role) {
        (Some(e), _) => e.into_response(),
        (None, Role::Viewer) if !own => ApiErr(
            StatusCode::FORBIDDEN,
            format!("token {:?} is a viewer token: it may only read", who.name),
        )
        .into_response(),
        (None, _) => next.run(req).await,
    };
    let entry = AuditEntry {
        seq: 0,
        at: now_ms(),
        token: who.name,
        origin: "api".into(),
        action,
        path,
        status: resp.status().as_u16(),
    };
    if let Err(e) = sh.store.append_audit(&entry).await {
        tracing::error!("audit log: {e} (lost: {} {})", entry.token, entry.action);
    }
    resp
}

/// The token and audit routes.
pub(crate) fn routes() -> OpenApiRouter<Arc<Shared>> {
    OpenApiRouter::default()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
        .routes(routes!(audit))
}

fn admin(sh: &Shared, h: &HeaderMap) -> Result<Caller, ApiErr> {
    let who = caller(sh, h)?;
    if who.role != Role::Admin {
        return Err(ApiErr(
            StatusCode::FORBIDDEN,
            "only an admin token may see the tokens".into(),
        ));
    }
    Ok(who)
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "operators",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The token: the only time it is shown", body = TokenCreated),
        (status = 409, description = "A token of that name exists (revoked names stay taken), or it is `admin`", body = ApiError),
        (status = 422, description = "A bad name, or not a token request", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn create_token(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<TokenCreated>, ApiErr> {
    admin(&sh, &h)?;
    if !rackcast_engine::sched::valid_name(&req.name) {
        return Err(ApiErr(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "bad token name {:?}: 1-64 letters, digits, '.', '_' or '-'",
                req.name
            ),
        ));
    }
    if req.name == BUILT_IN {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            "\"admin\" is the built-in token in DATA/admin.token".into(),
        ));
    }
    let token = random_token()
        .map_err(|e| ApiErr(StatusCode::INTERNAL_SERVER_ERROR, format!("random: {e}")))?;
    let hash = token_hash(&token);
    let view = TokenView {
        name: req.name.clone(),
        role: req.role,
        created: now_ms(),
        revoked: None,
    };
    if !sh.store.add_operator_token(&view, &hash).await? {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            format!(
                "a token named {:?} exists (revoked names stay taken)",
                req.name
            ),
        ));
    }
    sh.tokens.add(
        hash,
        Caller {
            name: req.name.clone(),
            role: req.role,
        },
    );
    Ok(Json(TokenCreated {
        name: req.name,
        role: req.role,
        token,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "operators",
    responses(
        (status = 200, description = "Every named token, revoked ones too, without secrets", body = [TokenView]),
        (status = 403, description = "Not an admin token", body = ApiError),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn list_tokens(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
) -> Result<Json<Vec<TokenView>>, ApiErr> {
    admin(&sh, &h)?;
    let named = sh.store.operator_tokens().await?;
    Ok(Json(named.into_iter().map(|(_, v)| v).collect()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{name}",
    tag = "operators",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "The token, revoked: it stops working at once", body = TokenView),
        (status = 404, description = "No live token of that name", body = ApiError),
        (status = 409, description = "The built-in `admin` token (DATA/admin.token)", body = ApiError),
        ChangeErrors,
    ),
    security(("operator_token" = []))
)]
async fn revoke_token(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<TokenView>, ApiErr> {
    admin(&sh, &h)?;
    if name == BUILT_IN {
        return Err(ApiErr(
            StatusCode::CONFLICT,
            "the built-in admin token is DATA/admin.token: replace the file and restart".into(),
        ));
    }
    if !sh.store.revoke_operator_token(&name, now_ms()).await? {
        return Err(ApiErr(
            StatusCode::NOT_FOUND,
            format!("no live token named {name:?}"),
        ));
    }
    sh.tokens.remove(&name);
    sh.ui.close_all_of(&name);
    let named = sh.store.operator_tokens().await?;
    named
        .into_iter()
        .map(|(_, v)| v)
        .find(|v| v.name == name)
        .map(Json)
        .ok_or_else(|| ApiErr(StatusCode::NOT_FOUND, format!("no token named {name:?}")))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Only entries at or after this time (Unix ms).
    #[serde(default)]
    since: u64,
    /// Most entries to return (at most 10000, the default).
    #[serde(default)]
    limit: Option<u32>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "operators",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, oldest first", body = [AuditEntry]),
        OperatorErrors,
    ),
    security(("operator_token" = []))
)]
async fn audit(
    State(sh): State<Arc<Shared>>,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiErr> {
    caller(&sh, &h)?;
    let limit = q.limit.unwrap_or(AUDIT_PAGE).min(AUDIT_PAGE);
    Ok(Json(sh.store.audit(q.since, limit).await?))
}
