//! Real processes on loopback: a `rackcast server` with its data in a
//! temporary directory, and local agents (`--mac`, `--disk`) beside it.
//! Every process is killed by PID on drop; every wait is bounded.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rackcast_engine::sched::api::{EventRecord, JobView};

/// Distinct cast ports per test, so tests running at once never share a group port.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct Server {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub token: String,
    pub enroll: String,
    /// The CA the server made for its HTTPS (`DATA/tls/ca.pem`).
    pub ca: PathBuf,
    /// An HTTP client trusting it.
    http: ureq::Agent,
    child: Option<Child>,
    log: PathBuf,
    cast_port: u16,
    rate: String,
    /// A server config file (TOML) passed with `--config`.
    config: Option<PathBuf>,
    agents: Vec<Agent>,
}

pub struct Agent {
    pub mac: String,
    pub log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Server {
    /// Starts a server; `rate` caps each cast session (e.g. "200M").
    pub fn start(rate: &str) -> Server {
        Server::start_with(rate, "127.0.0.1:0", None)
    }

    /// Starts a server listening on `listen`, with `config` (TOML, without
    /// `data`, which is added) when given.
    pub fn start_with(rate: &str, listen: &str, config: Option<&str>) -> Server {
        let base = 20000
            + (std::process::id() % 200) as u16 * 100
            + NEXT_PORT.fetch_add(7, Ordering::Relaxed) % 100;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server {
            log: dir.path().join("server.log"),
            dir,
            url: String::new(),
            token: String::new(),
            enroll: String::new(),
            ca: PathBuf::new(),
            http: ureq::Agent::new(),
            child: None,
            cast_port: base,
            rate: rate.to_string(),
            config: None,
            agents: Vec::new(),
        };
        if let Some(text) = config {
            let path = s.dir.path().join("server.toml");
            let data = s.dir.path().join("data");
            std::fs::write(
                &path,
                format!("data = {:?}\n{text}", data.display().to_string()),
            )
            .unwrap();
            s.config = Some(path);
        }
        s.spawn(listen);
        s
    }

    fn spawn(&mut self, listen: &str) {
        let data = self.dir.path().join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(rackcast_tests::rc());
        cmd.arg("server");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .arg("--data")
            .arg(&data)
            .args([
                "--listen",
                listen,
                "--cast-port",
                &self.cast_port.to_string(),
            ])
            .args(["--cast-rate", &self.rate])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start rackcast server");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("server did not start: {}", self.log_text()));
        self.url = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.token = std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        self.enroll = std::fs::read_to_string(data.join("agent.token"))
            .unwrap()
            .trim()
            .to_string();
        self.ca = data.join("tls").join("ca.pem");
        self.http = trusting(&self.ca);
        self.child = Some(child);
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9 the server process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data directory and address.
    pub fn restart(&mut self) {
        let addr = self.url.trim_start_matches("https://").to_string();
        // The port may linger for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpListener::bind(&addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(&addr);
    }

    /// Starts a local agent for `mac` writing to `disk`, in environment `env`.
    pub fn agent(&mut self, mac: &str, disk: &Path, env: &str) -> usize {
        self.agent_with(mac, disk, env, &[])
    }

    /// [`Server::agent`] with more agent flags.
    pub fn agent_with(&mut self, mac: &str, disk: &Path, env: &str, extra: &[&str]) -> usize {
        let log = self
            .dir
            .path()
            .join(format!("agent-{}.log", mac.replace(':', "")));
        let args = vec![
            "agent".to_string(),
            "--server".into(),
            self.url.clone(),
            "--token-file".into(),
            self.data().join("agent.token").display().to_string(),
            "--ca".into(),
            self.ca.display().to_string(),
            "--mac".into(),
            mac.into(),
            "--disk".into(),
            disk.display().to_string(),
            "--env".into(),
            env.into(),
            "--on-reboot".into(),
            "restart".into(),
            "--work-dir".into(),
            self.dir
                .path()
                .join(format!("work-{}", mac.replace(':', "")))
                .display()
                .to_string(),
        ];
        let args = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let mut a = Agent {
            mac: mac.to_string(),
            log,
            child: None,
            args,
        };
        a.spawn();
        self.agents.push(a);
        self.agents.len() - 1
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Agent {
        &mut self.agents[i]
    }

    pub fn agents_log(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("--- agent {} ---\n{}", a.mac, a.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The `rackcast` CLI with this server, its operator token and its CA
    /// in the environment.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(rackcast_tests::rc());
        c.env("RACKCAST_SERVER", &self.url)
            .env("RACKCAST_TOKEN", &self.token)
            .env("RACKCAST_CA", &self.ca);
        c
    }

    /// An HTTP client trusting this server's CA.
    pub fn http(&self) -> &ureq::Agent {
        &self.http
    }

    fn req(&self, method: &str, path: &str) -> ureq::Request {
        self.http
            .request(method, &format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(60))
    }

    /// An operator API call with a JSON body; Ok(json) or Err((status, json)).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, (u16, serde_json::Value)> {
        let r = match body {
            Some(b) => self.req(method, path).send_json(b),
            None => self.req(method, path).call(),
        };
        match r {
            Ok(resp) => Ok(resp.into_json().unwrap_or(serde_json::Value::Null)),
            Err(ureq::Error::Status(code, resp)) => {
                Err((code, resp.into_json().unwrap_or(serde_json::Value::Null)))
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    /// Uploads an image file to the library.
    pub fn upload(&self, name: &str, file: &Path) -> serde_json::Value {
        let f = std::fs::File::open(file).unwrap();
        self.req("PUT", &format!("/api/v1/images/{name}"))
            .send(f)
            .unwrap_or_else(|e| panic!("upload {name}: {e}"))
            .into_json()
            .unwrap()
    }

    /// Waits until every listed target has registered.
    pub fn wait_registered(&self, macs: &[String], limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.call("GET", "/api/v1/targets", None).unwrap();
            let up = macs
                .iter()
                .filter(|m| {
                    t.as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["mac"] == m.as_str() && x["state"] != "unknown")
                })
                .count();
            if up == macs.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {up} of {} agents registered\n{}\n{}",
                macs.len(),
                self.log_text(),
                self.agents_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls the job until it is no longer running, or panics at `limit`.
    pub fn wait_job(&self, id: u64, limit: Duration) -> JobView {
        self.wait_job_until(id, limit, |j| j.status != "running")
    }

    /// Polls the job until `done(job)`, or panics at `limit`.
    pub fn wait_job_until(
        &self,
        id: u64,
        limit: Duration,
        done: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(v) = self.call("GET", &format!("/api/v1/jobs/{id}"), None) {
                let j: JobView = serde_json::from_value(v).unwrap();
                if done(&j) {
                    return j;
                }
                assert!(
                    Instant::now() < deadline,
                    "job {id} still {} after {limit:?}: {:#?}\n{}\n{}",
                    j.status,
                    j.targets,
                    self.log_text(),
                    self.agents_log()
                );
            } else {
                assert!(
                    Instant::now() < deadline,
                    "server gone: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every stored event of a job, read over SSE (the replay part).
    pub fn events(&self, job: u64) -> Vec<EventRecord> {
        self.events_where(&format!("job={job}"))
    }

    /// Every stored event the query (`job=N`, or empty for all) selects.
    pub fn events_where(&self, query: &str) -> Vec<EventRecord> {
        let resp = self
            .req("GET", &format!("/api/v1/events?{query}"))
            .timeout(Duration::from_secs(3))
            .call()
            .unwrap();
        let mut text = String::new();
        // The stream stays open: read what the replay sent until the timeout.
        let _ = resp.into_reader().take(16 << 20).read_to_string(&mut text);
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for a in &mut self.agents {
            a.kill9();
        }
        self.kill9();
    }
}

impl Agent {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(rackcast_tests::rc())
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start rackcast agent");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits for the agent to exit by itself; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return Some(st);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A ureq client trusting the CA certificate in `ca`.
pub fn trusting(ca: &Path) -> ureq::Agent {
    let tls = rackcast_client::tls_trusting(ca).unwrap_or_else(|e| panic!("{e}"));
    ureq::AgentBuilder::new().tls_config(tls).build()
}

/// BLAKE3 of a file.
pub fn hash_file(p: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_mmap(p).unwrap();
    h.finalize()
}

/// Writes a sample disk and its image with the real CLI; returns (disk, image).
pub fn sample_image(dir: &Path, size: &str) -> (PathBuf, PathBuf) {
    let disk = dir.join("golden.raw");
    let img = dir.join("golden.rcimg");
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(Command::new(rackcast_tests::rc())
        .args(["image", "sample"])
        .arg(&disk)
        .args(["--size", size, "--shape", "mixed"]));
    ok(Command::new(rackcast_tests::rc())
        .args(["image", "create"])
        .arg(&disk)
        .arg(&img));
    (disk, img)
}
