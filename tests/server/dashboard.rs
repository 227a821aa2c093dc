//! The dashboard in a real browser: Debian's headless Chromium through
//! chromedriver (WebDriver, fantoccini). Log in, see four targets, watch a
//! distribute job started from the CLI reach 100% live, retry a failed
//! script job with a click, find that retry on the audit page; a request
//! the page's cookie carries without its CSRF token is refused. The job
//! page's screenshot is kept in target/dashboard-job.png.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use rackcast_tests::emu::free_tcp_port;
use rackcast_tests::have;
use serde_json::json;

use super::rig::{sample_image, Server};
use super::{mac, submit};

/// chromedriver on a free loopback port, killed by PID on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_tcp_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` (an async browser query) until it returns true.
async fn until<F, Fut>(c: &Client, what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > limit {
            panic!(
                "{what}: not within {limit:?}; the page says:\n{}",
                text(c, "body").await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Finds `css` and clicks it, finding it again if the page re-rendered
/// in between (an event arriving redraws the page, and a click on the
/// element found before that is chromedriver's StaleElementReference).
async fn click(c: &Client, css: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let err = match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(err) => err,
            },
            Err(err) => err,
        };
        if start.elapsed() > limit {
            panic!(
                "a click on {css}: not within {limit:?} ({err}); the page says:\n{}",
                text(c, "body").await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Each progress bar's `data-pct`; empty if the page re-rendered while
/// they were read.
async fn bar_percents(c: &Client) -> Vec<Option<String>> {
    let Ok(bars) = c.find_all(Locator::Css(".bar")).await else {
        return Vec::new();
    };
    let mut pcts = Vec::new();
    for b in bars {
        match b.attr("data-pct").await {
            Ok(p) => pcts.push(p),
            Err(_) => return Vec::new(),
        }
    }
    pcts
}

#[test]
fn an_operator_logs_in_watches_a_job_live_retries_with_a_click_and_finds_it_audited() {
    for tool in ["chromium", "chromedriver"] {
        if !have(tool) {
            eprintln!(
                "skipped: no {tool} (scripts/deps.sh test installs chromium and chromium-driver)"
            );
            return;
        }
    }
    let mut s = Server::start("400M");
    let (_disk, img) = sample_image(s.dir.path(), "32M");
    s.upload("golden", &img);
    let macs: Vec<String> = (0x41..=0x44).map(mac).collect();
    for m in &macs {
        let disk = s.dir.path().join(format!("{}.disk", m.replace(':', "-")));
        s.agent(m, &disk, "linux-x64");
    }
    s.wait_registered(&macs, Duration::from_secs(30));

    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"],
        },
    });
    let c = rt.block_on(async {
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a chromium session")
    });
    let url = s.url.clone();
    let limit = Duration::from_secs(60);

    // Log in; the four targets show.
    rt.block_on(async {
        c.goto(&format!("{url}/ui/")).await.unwrap();
        let token = c.wait().for_element(Locator::Id("token")).await.unwrap();
        token.send_keys(&s.token).await.unwrap();
        click(&c, "#login-button", limit).await;
        until(&c, "four targets", limit, || async {
            count(&c, "tr[data-mac]").await == 4
        })
        .await;
        assert!(
            text(&c, "#who").await.starts_with("admin"),
            "{}",
            text(&c, "#who").await
        );
    });

    // A distribute job from the CLI appears on the open jobs page without
    // a reload (the event stream), and reaches 100% on its own page.
    rt.block_on(async {
        c.goto(&format!("{url}/ui/#jobs")).await.unwrap();
        until(&c, "the jobs page", limit, || async {
            text(&c, "#page h1").await == "Jobs"
        })
        .await;
    });
    let out = s
        .cli()
        .args([
            "job",
            "distribute",
            "--image",
            "golden",
            "--targets",
            &macs.join(","),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    rt.block_on(async {
        let row = format!("tr[data-job='{id}'] a");
        until(&c, "the new job on the open page", limit, || async {
            count(&c, &row).await == 1
        })
        .await;
        click(&c, &row, limit).await;
        until(
            &c,
            "the job done on its page",
            Duration::from_secs(180),
            || async { text(&c, "#job-status").await == "done" },
        )
        .await;
        // Who submitted it: the CLI's token, through the API.
        let origin = text(&c, "#job-origin").await;
        assert!(origin.ends_with(", from api admin"), "{origin}");
        // The page re-renders on every event, and an element read across a
        // re-render is stale: read the bars afresh until they settle.
        until(
            &c,
            "four progress bars at 100%",
            Duration::from_secs(30),
            || async { bar_percents(&c).await == vec![Some("100".to_string()); 4] },
        )
        .await;
        let png = c.screenshot().await.unwrap();
        let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-job.png");
        std::fs::write(&shot, png).unwrap();
        eprintln!("dashboard screenshot: {}", shot.display());
    });

    // A failing script job, retried with a click.
    s.agent_mut(0).wait_exit(Duration::from_secs(60));
    s.agent_mut(0).restart();
    let failing = submit(
        &s,
        json!({"targets": [macs[0]], "task": [{"kind": "script", "script": "echo no; exit 3"}]}),
    );
    let j = s.wait_job(failing, Duration::from_secs(60));
    assert_eq!(j.status, "failed");
    rt.block_on(async {
        c.goto(&format!("{url}/ui/#job/{failing}")).await.unwrap();
        until(&c, "the failed job's page", limit, || async {
            text(&c, "#job-status").await == "failed"
        })
        .await;
        // Without its CSRF header, the browser's cookie alone changes nothing.
        let forged = c
            .execute(
                "return fetch(arguments[0], {method: 'POST', credentials: 'same-origin'}).then(r => r.status)",
                vec![json!(format!("/api/v1/jobs/{failing}/cancel"))],
            )
            .await
            .unwrap();
        assert_eq!(forged, json!(403));
        click(&c, "#retry", limit).await;
    });
    // The retry ran the task again (and it failed again).
    let start = Instant::now();
    let started = |s: &Server| {
        s.events(failing)
            .iter()
            .filter(|e| e.kind == "task.started")
            .count()
    };
    while started(&s) < 2 {
        assert!(start.elapsed() < limit, "{:#?}", s.events(failing));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s.events(failing).iter().any(|e| e.kind == "job.retried"));

    // The retry is on the audit page, under the token that clicked.
    rt.block_on(async {
        c.goto(&format!("{url}/ui/#audit")).await.unwrap();
        let want = format!("/api/v1/jobs/{failing}/retry");
        until(&c, "the retry in the audit log", limit, || async {
            text(&c, "#page").await.lines().any(|l| {
                l.contains("admin")
                    && l.contains("POST /api/v1/jobs/{id}/retry")
                    && l.contains(&want)
            })
        })
        .await;
    });

    // A thousand targets: the targets page shows them all (the time it
    // took is printed, not asserted: speed is measured, not timed in tests).
    for i in 0..996u32 {
        let m = format!("02:10:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        s.call(
            "POST",
            "/api/v1/targets",
            Some(json!({"mac": m, "name": format!("t{i}")})),
        )
        .unwrap();
    }
    rt.block_on(async {
        let start = Instant::now();
        c.goto(&format!("{url}/ui/#targets")).await.unwrap();
        until(&c, "a thousand targets", limit, || async {
            count(&c, "tr[data-mac]").await == 1000
        })
        .await;
        eprintln!(
            "dashboard: 1,000 targets shown {:.2} s after navigating",
            start.elapsed().as_secs_f64()
        );
        c.close().await.unwrap();
    });
    drop(driver);
}
