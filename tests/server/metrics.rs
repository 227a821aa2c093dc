//! `/metrics` scraped by a real Prometheus (Debian's `prometheus`) over
//! the server's HTTPS with an operator token, during a distribute job: a
//! query over Prometheus's HTTP API returns the cast bytes the session's
//! own summary reports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rackcast_tests::emu::free_tcp_port;
use rackcast_tests::have;

use super::rig::{sample_image, trusting, Server};
use super::{distribute, mac, submit};

/// A Prometheus in a temporary directory, killed by PID on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    /// Scrapes `url`/metrics every second, trusting `ca`, with the token in
    /// `token_file`.
    fn start(dir: &Path, url: &str, ca: &Path, token_file: &Path) -> Prometheus {
        let host = url.trim_start_matches("https://");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: rackcast\n    scheme: https\n\
                 \x20   tls_config:\n      ca_file: {}\n\
                 \x20   authorization:\n      credentials_file: {}\n\
                 \x20   static_configs:\n      - targets: ['{host}']\n",
                ca.display(),
                token_file.display()
            ),
        )
        .unwrap();
        let port = free_tcp_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port }
    }

    /// The value of instant `query`, when it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let r = ureq::get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", query)
            .timeout(Duration::from_secs(5))
            .call()
            .ok()?;
        let v: serde_json::Value = r.into_json().ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// What Prometheus says of its targets (the last scrape's error).
    fn targets(&self) -> String {
        ureq::get(&format!("http://127.0.0.1:{}/api/v1/targets", self.port))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    }

    /// Waits until `query` returns `want`; the last value seen.
    fn wait_for(&self, query: &str, want: f64, limit: Duration) -> Option<f64> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            last = self.value(query);
            if last == Some(want) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        last
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_cast_bytes_a_job_sent() {
    if !have("prometheus") {
        eprintln!("skipped: no prometheus (scripts/deps.sh test installs Debian's)");
        return;
    }
    let mut s = Server::start("400M");
    let (_disk, img) = sample_image(s.dir.path(), "16M");
    s.upload("golden", &img);
    let token_file = s.data().join("admin.token");
    let prom = Prometheus::start(s.dir.path(), &s.url, &s.ca, &token_file);
    let macs: Vec<String> = (1..=2).map(mac).collect();
    for m in &macs {
        let disk = s.dir.path().join(format!("{m}.disk").replace(':', "-"));
        s.agent(m, &disk, "linux-x64");
    }
    s.wait_registered(&macs, Duration::from_secs(30));
    // Prometheus is up and scraping before the job starts.
    let up = prom.wait_for("up{job=\"rackcast\"}", 1.0, Duration::from_secs(30));
    assert_eq!(
        up,
        Some(1.0),
        "prometheus never scraped the server: {}",
        prom.targets()
    );
    let id = submit(&s, distribute(&macs));
    let j = s.wait_job(id, Duration::from_secs(120));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    let ended = s
        .events(id)
        .into_iter()
        .find(|e| e.kind == "cast.ended")
        .expect("cast.ended");
    let wire = ended.detail["wire_bytes"].as_u64().unwrap() as f64;
    assert!(wire > 0.0, "{ended:?}");
    let seen = prom.wait_for("rackcast_cast_bytes_total", wire, Duration::from_secs(20));
    assert_eq!(
        seen,
        Some(wire),
        "Prometheus's cast bytes against the session's"
    );
    let done = prom.wait_for(
        "rackcast_cast_receivers_done_total",
        2.0,
        Duration::from_secs(10),
    );
    assert_eq!(done, Some(2.0));
    let finished = prom.wait_for(
        "sum(rackcast_task_seconds_count{kind=\"distribute\",outcome=\"finished\"})",
        2.0,
        Duration::from_secs(10),
    );
    assert_eq!(finished, Some(2.0), "task durations");
    // Targets by state, read at the scrape: both have no work left.
    let local = prom.wait_for(
        "rackcast_targets{state=\"local\"}",
        2.0,
        Duration::from_secs(10),
    );
    assert_eq!(local, Some(2.0));
    // Route templates, never raw paths, label the API's latency.
    let jobs_route = prom.value(
        "sum(rackcast_api_request_seconds_count{route=\"/api/v1/jobs/{id}\",method=\"GET\"})",
    );
    assert!(jobs_route.is_some_and(|n| n >= 1.0), "{jobs_route:?}");
    // Without a token: refused.
    let plain = trusting(&s.ca).get(&format!("{}/metrics", s.url)).call();
    assert!(
        matches!(plain, Err(ureq::Error::Status(401, _))),
        "{plain:?}"
    );
}
