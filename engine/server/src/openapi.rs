//! The OpenAPI 3 document of both APIs, served at
//! `GET /api/v1/openapi.json`. It is not written by hand: every handler
//! carries a `#[utoipa::path]` and is routed with `utoipa_axum::routes!`,
//! so the router the server serves and the document are built by the same
//! calls (see [`crate::Server::run`]); the wire types' schemas come from
//! `rackcast-engine`'s `openapi` feature.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rackcast_engine::sched::api::{ApiError, EventRecord};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::Shared;

/// The security scheme of the operator API.
pub(crate) const OPERATOR: &str = "operator_token";
/// The security scheme of the agent API.
pub(crate) const AGENT: &str = "agent_token";

/// What the routers do not say: the title, what the APIs are, the token
/// schemes, and the schemas only named in prose (errors, SSE data).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rackcast",
        description = "The deployment server's two HTTP APIs, both over HTTPS: the operator \
            API (`/api/v1/...` and `/metrics`, REST/JSON and server-sent events, an operator \
            token) and the agent API (`/agent/v1/...`, JSON, a boot, session or enrollment \
            token). When the server is given an operator address the two listen apart. \
            Every error is a JSON `ApiError` with a 4xx or 5xx status."
    ),
    modifiers(&TokenSchemes),
    components(schemas(ApiError, EventRecord)),
    tags(
        (name = "targets", description = "Machines to deploy, their state and BMCs"),
        (name = "images", description = "The disk image library"),
        (name = "environments", description = "What a target network-boots to run the agent"),
        (name = "jobs", description = "Deployments: tasks run in order on targets"),
        (name = "events", description = "The append-only event log, live"),
        (name = "operators", description = "Named operator tokens and the audit log"),
        (name = "server", description = "Metrics and this document"),
        (name = "agent", description = "The API the agent on a target calls"),
    )
)]
pub(crate) struct ApiDoc;

/// Adds the bearer token schemes the operations name.
#[derive(Debug)]
struct TokenSchemes;

impl Modify for TokenSchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        components.add_security_scheme(
            OPERATOR,
            bearer(
                "An operator token: DATA/admin.token or a named one (`rackcast token create`). \
                 A viewer token may only read: any other method is 403.",
            ),
        );
        components.add_security_scheme(
            AGENT,
            bearer(
                "Registration: a boot token (from the netboot script), the enrollment token \
                 or the target's own session token; every other call: the session token \
                 registration returned.",
            ),
        );
    }
}

// The two response sets below exist for their descriptions only: no
// handler builds them (errors are `ApiErr`, which answers an `ApiError`).

/// What any operator route may answer besides its own answers.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum OperatorErrors {
    /// No operator token, or one that is not live.
    #[response(status = 401)]
    Unauthorized(ApiError),
    /// The store failed.
    #[response(status = 500)]
    Internal(ApiError),
}

/// What any state-changing operator route may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum ChangeErrors {
    /// No operator token, or one that is not live.
    #[response(status = 401)]
    Unauthorized(ApiError),
    /// A viewer token: it may only read.
    #[response(status = 403)]
    Forbidden(ApiError),
    /// The store failed.
    #[response(status = 500)]
    Internal(ApiError),
}

/// What any agent route may answer besides its own.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub(crate) enum AgentErrors {
    /// No token, or not one this target may use.
    #[response(status = 401)]
    Unauthorized(ApiError),
    /// The body is not the route's JSON, or names no valid MAC.
    #[response(status = 422)]
    Unprocessable(ApiError),
    /// The store failed.
    #[response(status = 500)]
    Internal(ApiError),
}

/// A request body of raw bytes: an image file, streamed to disk. OpenAPI
/// 3.1 describes that as a string of the body's media type (an array of
/// integers, what `Vec<u8>` would say, is what JSON would carry).
pub(crate) struct ImageFile;

impl utoipa::PartialSchema for ImageFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_media_type("application/octet-stream")
            .description(Some("An image file (`rackcast image create`)"))
            .into()
    }
}

impl utoipa::ToSchema for ImageFile {}

// The document is built once, in `Server::run`, from the routers it
// serves. It holds no secret (no token, no address), so unlike every other
// operator route it answers without a token: a client generator or an API
// browser can read it before it is given one.
/// This document: both APIs in OpenAPI 3. It needs no token.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "server",
    responses(
        (status = 200, description = "This document (OpenAPI 3)", content_type = "application/json", body = serde_json::Value),
    )
)]
pub(crate) async fn document(State(sh): State<Arc<Shared>>) -> Response {
    match sh.openapi.get() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        // Set before the listeners serve: not reached.
        None => super::ApiErr(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API document is not built yet".into(),
        )
        .into_response(),
    }
}

/// The finished document as JSON bytes.
pub(crate) fn to_json(doc: &utoipa::openapi::OpenApi) -> Result<bytes::Bytes, serde_json::Error> {
    serde_json::to_vec(doc).map(bytes::Bytes::from)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn doc() -> Value {
        let (_, _, doc) = crate::api_routers();
        serde_json::from_slice(&super::to_json(&doc).unwrap()).unwrap()
    }

    /// Every `$ref` string under `v`, with where it was found.
    fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push((at.to_string(), r.clone())),
                        _ => refs(x, &format!("{at}/{k}"), out),
                    }
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    refs(x, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_and_every_operation_names_its_token() {
        let d = doc();
        if let Ok(to) = std::env::var("RACKCAST_OPENAPI_DUMP") {
            std::fs::write(to, serde_json::to_string_pretty(&d).unwrap()).unwrap();
        }
        assert!(d["openapi"].as_str().unwrap().starts_with("3."));
        let mut found = Vec::new();
        refs(&d, "", &mut found);
        assert!(!found.is_empty());
        for (at, r) in &found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{at}: {r} is not a local schema"));
            assert!(
                d["components"]["schemas"][name].is_object(),
                "{at}: {r} names no schema"
            );
        }
        let schemes = &d["components"]["securitySchemes"];
        let paths = d["paths"].as_object().unwrap();
        assert!(paths.len() > 20, "{:?}", paths.keys());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["responses"]["200"].is_object() || op["responses"]["201"].is_object(),
                    "{method} {path} has no success answer"
                );
                if path == "/api/v1/openapi.json" {
                    assert!(op.get("security").is_none(), "the document needs no token");
                    continue;
                }
                assert!(
                    op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
                        == "#/components/schemas/ApiError",
                    "{method} {path}: a refused token is not an ApiError"
                );
                let sec = op["security"].as_array().unwrap_or_else(|| {
                    panic!("{method} {path} names no token");
                });
                let want = if path.starts_with("/agent/") {
                    super::AGENT
                } else {
                    super::OPERATOR
                };
                assert_eq!(sec.len(), 1, "{method} {path}");
                assert!(sec[0].get(want).is_some(), "{method} {path}: {sec:?}");
                assert!(schemes[want]["scheme"] == "bearer", "{schemes}");
            }
        }
    }

    #[test]
    fn a_mac_is_described_as_the_string_the_server_writes() {
        let d = doc();
        let mac = &d["components"]["schemas"]["MacAddr"];
        assert_eq!(mac["type"], "string", "{mac}");
        let example = mac["examples"][0].as_str().unwrap();
        let parsed = rackcast_engine::sched::MacAddr::parse(example).unwrap();
        assert_eq!(
            parsed.to_string(),
            example,
            "the example is the written form"
        );
        assert_eq!(
            d["components"]["schemas"]["TargetView"]["allOf"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(std::iter::once(&d["components"]["schemas"]["TargetView"]))
                .find_map(|s| s["properties"]["mac"]["$ref"].as_str()),
            Some("#/components/schemas/MacAddr"),
        );
    }
}
