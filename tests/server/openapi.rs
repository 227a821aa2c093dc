//! `GET /api/v1/openapi.json` from a running server: an OpenAPI 3
//! document, fetched without a token, whose operations are exactly the
//! routes the API's route table (the module doc of
//! `engine/src/sched/api.rs`) documents; and every one of them is really
//! served: asked with the admin token, none is the router's own 404 or 405.

use std::collections::BTreeSet;
use std::time::Duration;

use super::rig::Server;

/// A MAC no target has.
const MAC: &str = "02:00:00:00:0e:01";

/// Every `METHOD /path` of the route tables, query strings stripped.
fn documented_routes() -> BTreeSet<(String, String)> {
    documented_requests()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect()
}

/// Every route of the route tables: its method, its path and its query
/// string (`[...]` marks the optional parts).
pub(super) fn documented_requests() -> Vec<(String, String, String)> {
    let doc = include_str!("../../engine/src/sched/api.rs");
    let mut out = Vec::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("//! | `") else {
            continue;
        };
        let Some((route, _)) = rest.split_once('`') else {
            continue;
        };
        let mut words = route.split_whitespace();
        let (Some(method), Some(path)) = (words.next(), words.next()) else {
            continue;
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        out.push((method.to_string(), path.to_string(), query.to_string()));
    }
    out
}

/// The `METHOD /path` of every operation in an OpenAPI document.
fn document_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

/// What a request to `path` was answered: the status, the content type and,
/// unless it succeeded (an event stream never ends), the body.
fn ask(s: &Server, method: &str, path: &str) -> (u16, String, String) {
    let r = s
        .http()
        .request(method, &format!("{}{path}", s.url))
        .set("Authorization", &format!("Bearer {}", s.token))
        .timeout(Duration::from_secs(20));
    let r = if matches!(method, "POST" | "PUT" | "PATCH") {
        r.send_json(serde_json::json!({}))
    } else {
        r.call()
    };
    match r {
        Ok(resp) => (
            resp.status(),
            resp.content_type().to_string(),
            String::new(),
        ),
        Err(ureq::Error::Status(code, resp)) => {
            let ct = resp.content_type().to_string();
            (code, ct, resp.into_string().unwrap_or_default())
        }
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Whether an answer came from a handler: the router answers a path it
/// does not serve 404 and a method it does not serve there 405, both with
/// no body, where every handler's 404 is a JSON `ApiError`.
fn served(status: u16, body: &str) -> bool {
    match status {
        405 => false,
        404 => serde_json::from_str::<serde_json::Value>(body)
            .is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty())),
        _ => true,
    }
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_the_server_serves() {
    let s = Server::start("100M");
    // No token: the document holds no secret.
    let resp = s
        .http()
        .get(&format!("{}/api/v1/openapi.json", s.url))
        .call()
        .expect("the document, without a token");
    assert_eq!(resp.content_type(), "application/json");
    let doc: serde_json::Value = resp.into_json().unwrap();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "not OpenAPI 3: {version:?}");

    let table = documented_routes();
    let described = document_routes(&doc);
    assert!(table.len() > 25, "the route table was not read: {table:?}");
    let undocumented: Vec<_> = described.difference(&table).collect();
    assert!(
        undocumented.is_empty(),
        "in the OpenAPI document, not in api.rs's route table: {undocumented:?}"
    );
    let missing: Vec<_> = table.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "in api.rs's route table, not in the OpenAPI document: {missing:?}"
    );

    // The check below tells a route the router does not serve.
    let (status, _, body) = ask(&s, "GET", "/api/v1/no-such-route");
    assert!(!served(status, &body), "{status} {body:?}");
    let (status, _, body) = ask(&s, "DELETE", "/api/v1/jobs");
    assert!(!served(status, &body), "{status} {body:?}");

    for (method, path, query) in documented_requests() {
        let filled = path
            .replace("{mac}", MAC)
            .replace("{name}", "x")
            .replace("{id}", "1");
        // The query with every parameter given, so the handler answers,
        // not the query's parser.
        let query: Vec<String> = query
            .replace(['[', ']'], "")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let v = match v {
                    "M" => MAC,
                    "SEQ" | "MS" | "T" => "0",
                    _ => "1",
                };
                format!("{k}={v}")
            })
            .collect();
        let filled = if query.is_empty() {
            filled
        } else {
            format!("{filled}?{}", query.join("&"))
        };
        let (status, content_type, body) = ask(&s, &method, &filled);
        assert!(
            served(status, &body),
            "{method} {filled}: {status} {body:?}: the router does not serve it"
        );
        let op = &doc["paths"][path.as_str()][method.to_lowercase()];
        let answers = &op["responses"][status.to_string()];
        assert!(
            answers.is_object(),
            "{method} {filled} answered {status}, which its operation does not list: {body}"
        );
        // What the document says the answer is, it is.
        if let Some(kinds) = answers["content"].as_object() {
            let media = content_type.split(';').next().unwrap_or_default().trim();
            assert!(
                kinds
                    .keys()
                    .any(|k| k.split(';').next().unwrap_or_default().trim() == media),
                "{method} {filled} answered {status} as {content_type:?}, documented as {:?}",
                kinds.keys().collect::<Vec<_>>()
            );
        }
    }
}
