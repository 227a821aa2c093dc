//! Named operator tokens and the audit log through the real CLI and API: a
//! viewer token reads but is refused every state-changing route the API
//! documents (and those refusals are audited), an admin token's actions
//! are audited under its name, a revoked token stops working at once.

use std::time::Duration;

use super::rig::Server;

/// Every state-changing route of the operator API's route table, with its
/// placeholders filled.
fn changing_routes() -> Vec<(String, String)> {
    super::openapi::documented_requests()
        .into_iter()
        .filter(|(method, path, _)| {
            path.starts_with("/api/v1/") && !matches!(method.as_str(), "GET" | "HEAD")
        })
        .map(|(method, path, _)| {
            let path = path
                .replace("{mac}", "02:00:00:00:0e:01")
                .replace("{name}", "x")
                .replace("{id}", "1");
            (method, path)
        })
        .collect()
}

#[test]
fn a_viewer_reads_but_changes_nothing_and_every_action_is_audited_under_its_token() {
    let s = Server::start("100M");
    let create = |name: &str, role: &str| -> String {
        let out = s
            .cli()
            .args(["token", "create", name, "--role", role])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        // The token alone on the last line.
        let token = text.lines().last().unwrap_or_default().trim().to_string();
        assert_eq!(token.len(), 64, "{text:?}");
        token
    };
    let viewer = create("grafana", "viewer");
    let ops = create("ops", "admin");
    let as_token = |token: &str, method: &str, path: &str| -> u16 {
        let r = s
            .http()
            .request(method, &format!("{}{path}", s.url))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(Duration::from_secs(20));
        let r = if matches!(method, "POST" | "PUT") {
            r.send_json(serde_json::json!({}))
        } else {
            r.call()
        };
        match r {
            Ok(resp) => resp.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    };
    // A viewer reads.
    for path in [
        "/api/v1/targets",
        "/api/v1/jobs",
        "/api/v1/images",
        "/api/v1/audit",
    ] {
        assert_eq!(as_token(&viewer, "GET", path), 200, "GET {path}");
    }
    // And is refused every state-changing route.
    let routes = changing_routes();
    assert!(
        routes.len() >= 14,
        "the route table did not parse: {routes:?}"
    );
    for (method, path) in &routes {
        assert_eq!(as_token(&viewer, method, path), 403, "{method} {path}");
    }
    assert_eq!(as_token(&viewer, "GET", "/api/v1/tokens"), 403);
    // Nothing changed.
    let targets = s.call("GET", "/api/v1/targets", None).unwrap();
    assert_eq!(targets.as_array().map(Vec::len), Some(0), "{targets}");
    // An admin token acts under its name.
    let enrolled = s
        .http()
        .post(&format!("{}/api/v1/targets", s.url))
        .set("Authorization", &format!("Bearer {ops}"))
        .send_json(serde_json::json!({"mac": "02:00:00:00:0e:02", "name": "n1"}))
        .unwrap();
    assert_eq!(enrolled.status(), 200);
    let audit = s.call("GET", "/api/v1/audit", None).unwrap();
    let entries = audit.as_array().unwrap();
    let refused = entries
        .iter()
        .filter(|e| e["token"] == "grafana" && e["status"] == 403)
        .count();
    assert_eq!(refused, routes.len(), "{audit:#}");
    let mine: Vec<_> = entries.iter().filter(|e| e["token"] == "ops").collect();
    assert_eq!(mine.len(), 1, "{audit:#}");
    assert_eq!(mine[0]["action"], "POST /api/v1/targets");
    assert_eq!(mine[0]["status"], 200);
    // The built-in token's own actions (creating the tokens) are there too.
    let created = entries
        .iter()
        .filter(|e| e["token"] == "admin" && e["action"] == "POST /api/v1/tokens")
        .count();
    assert_eq!(created, 2, "{audit:#}");
    // No token ever appears in the log or the token list.
    let list = s.call("GET", "/api/v1/tokens", None).unwrap().to_string();
    for secret in [&viewer, &ops] {
        assert!(!audit.to_string().contains(secret.as_str()));
        assert!(!list.contains(secret.as_str()), "{list}");
    }
    // The CLI shows it.
    let out = s.cli().args(["audit", "--since", "1h"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.lines()
            .any(|l| l.contains("ops") && l.contains("POST /api/v1/targets")),
        "{text}"
    );
    // Revoked: refused at once.
    let out = s
        .cli()
        .args(["token", "revoke", "grafana"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(as_token(&viewer, "GET", "/api/v1/targets"), 401);
    let out = s.cli().args(["token", "list"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("grafana") && l.contains("viewer") && !l.ends_with('-')),
        "{text}"
    );
}
