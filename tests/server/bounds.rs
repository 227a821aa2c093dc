//! What a stranger or a runaway task can send is bounded: request bodies,
//! image uploads, task output; and the data directory is private.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;

use super::rig::{sample_image, trusting, Server};
use super::{mac, submit};

/// A raw request with the operator token, on a connection of its own (the
/// server closes one whose body it refused): (status, body text).
fn send(s: &Server, method: &str, path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let r = trusting(&s.ca)
        .request(method, &format!("{}{path}", s.url))
        .set("Authorization", &format!("Bearer {}", s.token))
        .set("Content-Type", "application/json")
        .timeout(Duration::from_secs(60))
        .send_bytes(body);
    match r {
        Ok(resp) => Ok((resp.status(), resp.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(code, resp)) => Ok((code, resp.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Refused as too large: a 413, or (when the server answered before the
/// client had sent it all, and closed) a broken connection.
fn assert_refused(r: Result<(u16, String), String>) {
    match r {
        Ok((code, body)) => assert_eq!(code, 413, "{}", &body[..body.len().min(300)]),
        Err(e) => assert!(
            e.contains("Broken pipe") || e.contains("reset"),
            "neither a 413 nor a closed connection: {e}"
        ),
    }
}

#[test]
fn an_oversized_json_body_is_refused_413_with_a_json_error_and_the_server_keeps_serving() {
    let s = Server::start("100M");
    let big_name = json!({"mac": mac(1), "name": "n".repeat(1536 * 1024)}).to_string();
    assert_refused(send(&s, "POST", "/api/v1/targets", big_name.as_bytes()));
    // A client that waits for "100 Continue" (curl does, for large bodies)
    // reads the 413 and its JSON before sending a byte of the body; one that
    // does not may find the connection closed mid-send (above).
    let file = s.dir.path().join("big.json");
    std::fs::write(&file, &big_name).unwrap();
    let o = std::process::Command::new("curl")
        .args(["-sS", "-m", "30", "--cacert"])
        .arg(&s.ca)
        .args(["-H", &format!("Authorization: Bearer {}", s.token)])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", "Expect: 100-continue", "--expect100-timeout", "10"])
        .args(["-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/api/v1/targets", s.url))
        .output()
        .expect("curl (scripts/deps.sh test installs it)");
    let out = String::from_utf8_lossy(&o.stdout);
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", &out));
    assert_eq!(
        code,
        "413",
        "{}{}",
        &out[..out.len().min(300)],
        String::from_utf8_lossy(&o.stderr)
    );
    let err: serde_json::Value = serde_json::from_str(body).expect("a JSON ApiError");
    assert!(
        err["error"].as_str().unwrap().contains("too large"),
        "{err}"
    );
    // An oversized agent report is refused before anyone looks at it.
    let report = format!(
        "{{\"mac\":\"{}\",\"pad\":\"{}\"}}",
        mac(1),
        "p".repeat(9 << 20)
    );
    assert_refused(send(&s, "POST", "/agent/v1/report", report.as_bytes()));
    // A job spec may carry a script of a few MiB, not more.
    s.call("POST", "/api/v1/targets", Some(json!({"mac": mac(1)})))
        .unwrap();
    let job = |len: usize| {
        json!({"targets": [mac(1)], "task": [{"kind": "script", "script": format!("#{}", "s".repeat(len))}]})
            .to_string()
    };
    let (code, body) = send(&s, "POST", "/api/v1/jobs", job(3 << 20).as_bytes()).unwrap();
    assert_eq!(code, 201, "{}", &body[..body.len().min(300)]);
    assert_refused(send(&s, "POST", "/api/v1/jobs", job(5 << 20).as_bytes()));
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        1,
        "the refused job was taken"
    );
    let t = s.call("GET", "/api/v1/targets", None).unwrap();
    assert_eq!(
        t.as_array().unwrap().len(),
        1,
        "the refused target was added: {t}"
    );
}

#[test]
fn an_image_over_max_image_bytes_is_refused_and_nothing_of_it_is_kept() {
    let s = Server::start_with("100M", "127.0.0.1:0", Some("max_image_bytes = 1000000\n"));
    let (_, img) = sample_image(s.dir.path(), "16M");
    assert!(std::fs::metadata(&img).unwrap().len() > 1_000_000);
    let bytes = std::fs::read(&img).unwrap();
    assert_refused(send(&s, "PUT", "/api/v1/images/golden", &bytes));
    // Without a declared length the server counts what it streams.
    let r = trusting(&s.ca)
        .put(&format!("{}/api/v1/images/golden", s.url))
        .set("Authorization", &format!("Bearer {}", s.token))
        .timeout(Duration::from_secs(60))
        .send(std::io::Cursor::new(bytes));
    match r {
        Err(ureq::Error::Status(code, resp)) => {
            let body = resp.into_string().unwrap_or_default();
            assert_eq!(code, 413, "{body}");
            assert!(body.contains("max_image_bytes"), "{body}");
        }
        Err(e) => assert!(
            e.to_string().contains("Broken pipe") || e.to_string().contains("reset"),
            "{e}"
        ),
        Ok(resp) => panic!("accepted: {:?}", resp.into_string()),
    }
    let images = s.call("GET", "/api/v1/images", None).unwrap();
    assert_eq!(images, json!([]));
    let left: Vec<_> = std::fs::read_dir(s.data().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "upload leftovers: {left:?}");
}

#[test]
fn a_script_flooding_output_is_held_to_the_log_budget_and_the_server_stays_responsive() {
    let (rate, burst) = (4096u64, 65536u64);
    let mut s = Server::start_with(
        "100M",
        "127.0.0.1:0",
        Some(&format!("log_rate = {rate}\nlog_burst = {burst}\n")),
    );
    let m = mac(1);
    let d = s.dir.path().join("t.disk");
    s.agent(&m, &d, "linux-x64");
    s.wait_registered(std::slice::from_ref(&m), Duration::from_secs(30));
    // 20 MB of output, then a pause, then a last line.
    let script =
        "head -c 20000000 /dev/zero | tr '\\0' x | fold -w 100\nsleep 2\necho end-of-flood\n";
    let t0 = Instant::now();
    let id = submit(
        &s,
        json!({"targets": [m], "task": [{"kind": "script", "script": script}]}),
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..600 {
        let a = Instant::now();
        let j = s.call("GET", &format!("/api/v1/jobs/{id}"), None).unwrap();
        slowest = slowest.max(a.elapsed());
        if j["status"] != "running" || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let j = s.wait_job(id, Duration::from_secs(30));
    let took = t0.elapsed().as_secs() + 1;
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    assert!(
        slowest < Duration::from_secs(2),
        "a view took {slowest:?} during the flood"
    );
    let tail = &j.targets[0].log;
    assert!(
        tail.contains("bytes of output dropped"),
        "{:?}",
        &tail[tail.len().saturating_sub(300)..]
    );
    assert!(
        tail.contains("end-of-flood"),
        "{:?}",
        &tail[tail.len().saturating_sub(300)..]
    );
    // The whole stored log is what the budget allows, not 20 MB.
    // (`rackcast job log` prints it.)
    let o = s
        .cli()
        .args(["job", "log", &id.to_string(), "--mac", &m.to_string()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        full.ends_with(tail.as_str()),
        "the view's tail is the log's end"
    );
    let allowed = burst + rate * took + 64 * 1024;
    assert!(
        (full.len() as u64) < allowed,
        "{} bytes kept in {took} s, budget {allowed}",
        full.len()
    );
    // Kept output survives a kill -9.
    s.kill9();
    s.restart();
    let j = s.wait_job(id, Duration::from_secs(30));
    assert_eq!(&j.targets[0].log, tail);
}

#[test]
fn the_data_directory_is_0700_and_its_secrets_0600_even_when_found_wider() {
    let mut s = Server::start("100M");
    let data = s.data();
    let secrets = [
        "rackcast.db",
        "rackcast.db-wal",
        "rackcast.db-shm",
        "admin.token",
        "agent.token",
        "boot.key",
        "tls/ca.key",
        "bmc.key",
    ];
    let mode = |n: &str| {
        std::fs::metadata(data.join(n))
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let check = |when: &str| {
        assert_eq!(mode(""), 0o700, "data directory {when}");
        for f in secrets {
            assert_eq!(mode(f), 0o600, "{f} {when}");
        }
    };
    check("on a first start");
    s.kill9();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in secrets {
        std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    s.restart();
    check("after a start that found them wider");
    assert!(s.log_text().contains("narrowed to 600"), "{}", s.log_text());
}
