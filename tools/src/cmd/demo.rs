//! `rackcast demo`: the README's main job, on embedded defaults.
//!
//! Everything a rack deployment runs, on this machine: a deployment server
//! with SQLite in a temporary directory, a sample disk captured into its
//! image library, N local agents whose disks are files, one Distribute Disk
//! Image job multicast to all of them in one session, live progress per
//! target, every target's bytes checked against the source, and a summary.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rackcast_engine::image::{create_image, hex, CreateOptions};
use rackcast_engine::sched::api::{EventRecord, ImageView, JobId, JobView, TargetView};
use serde_json::json;

use super::client::sse::SseParser;
use super::client::{Client, ClientArgs};
use super::util::{human_bytes, parse_size, progress_bar, rate};

/// Options of `rackcast demo`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  rackcast demo --targets 8 --size 512M")]
pub struct DemoArgs {
    /// Size of the generated sample disk (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Number of local targets (agents writing to files).
    #[arg(long, default_value_t = 8)]
    pub targets: usize,
    /// Use this file as the sample disk instead of generating one.
    #[arg(long, conflicts_with = "image")]
    pub source: Option<PathBuf>,
    /// Distribute this image instead of capturing a sample disk.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Drop this percentage of multicast packets at every target (iptables
    /// in network namespaces; needs root).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Rate ceiling of the cast session, bytes/s (suffixes K, M, G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub rate: u64,
    /// Work directory [default: a new temporary directory, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        (1..=64).contains(&a.targets),
        "--targets must be between 1 and 64"
    );
    ensure!(
        (0.0..50.0).contains(&a.loss),
        "--loss is a percentage below 50"
    );
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let lab = if a.loss > 0.0 {
        Some(super::demo_net::Lab::new(a.targets, a.loss)?)
    } else {
        None
    };
    let start = Instant::now();
    let (img, source) = prepare_image(&a, &dir)?;
    let exe = std::env::current_exe().context("finding the rackcast executable")?;

    println!(
        "[3/6] starting the deployment server (SQLite in {})",
        dir.join("server").display()
    );
    let mut procs = Procs::default();
    let listen = lab
        .as_ref()
        .map_or("127.0.0.1:0".to_string(), |l| l.server_listen());
    let mut server = Command::new(&exe);
    server
        .args(["server", "--data"])
        .arg(dir.join("server"))
        .args(["--listen", &listen, "--cast-rate", &a.rate.to_string()])
        .args([
            "--cast-port",
            &(17400 + (std::process::id() % 500) as u16 * 2).to_string(),
        ]);
    if let Some(l) = &lab {
        server.args(["--cast-addr", &l.server_addr().to_string()]);
    }
    let server = procs.spawn_server(server, &dir.join("server.log"))?;
    let token = std::fs::read_to_string(dir.join("server/admin.token"))?
        .trim()
        .to_string();
    let enroll = dir.join("server/agent.token");
    let ca = dir.join("server/tls/ca.pem");
    let client = Client::new(&ClientArgs {
        server: server.clone(),
        token: Some(token),
        token_file: None,
        ca: Some(ca.clone()),
    })?;
    println!("      {server}");

    let len = std::fs::metadata(&img)?.len();
    let view: ImageView = client
        .put_stream("/api/v1/images/demo", std::fs::File::open(&img)?, len)
        .context("uploading the image")?;
    println!(
        "      image library: demo, {} stored, root {}…",
        human_bytes(view.stored_size),
        &view.root[..16]
    );

    println!("[4/6] starting {} local agents", a.targets);
    let macs: Vec<String> = (1..=a.targets)
        .map(|i| format!("02:72:63:00:00:{i:02x}"))
        .collect();
    let disks: Vec<PathBuf> = (1..=a.targets)
        .map(|i| dir.join(format!("target-{i}.disk")))
        .collect();
    for (i, (m, d)) in macs.iter().zip(&disks).enumerate() {
        let mut c = match &lab {
            Some(l) => l.command_in(i, &exe),
            None => Command::new(&exe),
        };
        c.args(["agent", "--server", &server, "--mac", m])
            .arg("--token-file")
            .arg(&enroll)
            .arg("--ca")
            .arg(&ca)
            .arg("--disk")
            .arg(d)
            .args(["--env", "linux-x64", "--on-reboot", "exit", "--work-dir"])
            .arg(dir.join(format!("work-{}", i + 1)));
        procs.spawn(c, &dir.join(format!("agent-{}.log", i + 1)))?;
    }
    wait_registered(&client, &macs, Duration::from_secs(60))?;
    println!("      {} targets registered", macs.len());

    println!(
        "[5/6] Distribute Disk Image to {} targets in one multicast session",
        a.targets
    );
    let job: JobView = client.post(
        "/api/v1/jobs",
        &json!({
            "name": "demo",
            "targets": macs,
            "cast": {"min_targets": a.targets, "max_wait": 60},
            "task": [{"kind": "distribute", "image": "demo", "verify": "sample", "timeout": 3600}],
        }),
    )?;
    let events = collect_events(&client, job.id);
    let t0 = Instant::now();
    let done = watch(&client, job.id, source.size, Duration::from_secs(3600))?;
    let cast_secs = t0.elapsed();
    if done.status != "done" {
        for t in &done.targets {
            if let Some(e) = &t.error {
                eprintln!("  {} failed: {e}", t.mac);
            }
        }
        bail!(
            "the job ended {}; logs are in {}",
            done.status,
            dir.display()
        );
    }

    println!("[6/6] checking every target against the source");
    let want = source.hash;
    let mut rows = Vec::new();
    for (t, d) in done.targets.iter().zip(&disks) {
        let got = blake3_file(d)?;
        ensure!(
            got == want,
            "target {} ({}) differs from the source",
            t.mac,
            d.display()
        );
        let root = t
            .log
            .split("root ")
            .nth(1)
            .and_then(|s| s.split([',', ' ', '\n']).next())
            .unwrap_or("?")
            .to_string();
        rows.push((t.mac, d.clone(), root));
    }
    // Let the event feed catch up with the end of the session.
    let ended = wait_for_event(&events, "cast.ended", Duration::from_secs(10));
    procs.stop();

    println!();
    println!("summary");
    println!(
        "  image         {} disk, {} stored, root {}",
        human_bytes(source.size),
        human_bytes(view.stored_size),
        view.root
    );
    if let Some(e) = &ended {
        let d = &e.detail;
        let wire = d["wire_bytes"].as_u64().unwrap_or(0);
        let secs = d["seconds"].as_f64().unwrap_or(0.0);
        println!(
            "  on the wire   {} in {} packets (one stream for all {} targets)",
            human_bytes(wire),
            d["packets"].as_u64().unwrap_or(0),
            a.targets
        );
        println!(
            "  repair        {:.1}% overhead ({} repair symbols for {} source symbols)",
            d["repair_overhead"].as_f64().unwrap_or(0.0) * 100.0,
            d["repair_symbols"].as_u64().unwrap_or(0),
            d["source_symbols"].as_u64().unwrap_or(0)
        );
        if secs > 0.0 {
            println!(
                "  cast session  {secs:.2} s: {:.1} MB/s of disk per target, {:.1} MB/s written across all targets",
                source.size as f64 / secs / 1e6,
                source.size as f64 * a.targets as f64 / secs / 1e6
            );
        }
    }
    println!(
        "  job           {:.2} s from submission to every target verified ({})",
        cast_secs.as_secs_f64(),
        rate(source.size, cast_secs)
    );
    if a.loss > 0.0 {
        println!(
            "  loss          {:.1}% of multicast packets dropped at every target",
            a.loss
        );
    }
    for (mac, d, root) in &rows {
        println!(
            "  target        {mac}  {}  root {}…  blake3 {}…  verified",
            d.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            root.get(..16).unwrap_or(root),
            &hex(&want)[..16]
        );
    }
    println!("  wall time     {:.2} s", start.elapsed().as_secs_f64());
    println!(
        "  result        all {} targets match the source byte for byte",
        a.targets
    );
    drop(lab);
    Ok(ExitCode::SUCCESS)
}

/// The source disk the targets must end up equal to.
struct Source {
    size: u64,
    hash: [u8; 32],
}

fn prepare_image(a: &DemoArgs, dir: &Path) -> anyhow::Result<(PathBuf, Source)> {
    if let Some(img) = &a.image {
        println!("[1/6] using {}", img.display());
        let r = rackcast_engine::image::ImageReader::open(img)?;
        println!("[2/6] restoring it once locally to know the bytes every target must hold");
        let reference = dir.join("reference.disk");
        rackcast_engine::image::restore_image(
            &r,
            &reference,
            &rackcast_engine::image::RestoreOptions::default(),
            &mut |_| {},
        )?;
        let size = r.index().meta.source_size;
        return Ok((
            img.clone(),
            Source {
                size,
                hash: blake3_file(&reference)?,
            },
        ));
    }
    let src = match &a.source {
        Some(s) => {
            println!("[1/6] using {} as the sample disk", s.display());
            s.clone()
        }
        None => {
            let p = dir.join("sample-disk.raw");
            println!(
                "[1/6] generating a {} sample disk (25% random, 25% text-like, 50% zero runs)",
                human_bytes(a.size)
            );
            super::sample::write_sample(&p, a.size, super::sample::Shape::Mixed, 0)?;
            p
        }
    };
    let img = dir.join("sample.rcimg");
    let total = std::fs::metadata(&src)?.len();
    println!("[2/6] capturing it into {}", img.display());
    let pb = progress_bar(total, "capturing");
    let c = create_image(&src, &img, &CreateOptions::default(), &mut |n| pb.inc(n))?;
    pb.finish_and_clear();
    println!(
        "      {} -> {} ({:.2}x) in {:.2} s, {}",
        human_bytes(total),
        human_bytes(c.image_bytes),
        total as f64 / c.image_bytes.max(1) as f64,
        c.elapsed.as_secs_f64(),
        rate(total, c.elapsed)
    );
    Ok((
        img,
        Source {
            size: total,
            hash: blake3_file(&src)?,
        },
    ))
}

fn wait_registered(client: &Client, macs: &[String], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let ts: Vec<TargetView> = client.get("/api/v1/targets")?;
        let up = macs
            .iter()
            .filter(|m| {
                ts.iter()
                    .any(|t| t.mac.to_string() == **m && t.state.word() != "unknown")
            })
            .count();
        if up == macs.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {up} of {} agents registered within {limit:?}",
                macs.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shows one bar per target until the job ends.
fn watch(client: &Client, id: JobId, size: u64, limit: Duration) -> anyhow::Result<JobView> {
    let tty = std::io::stderr().is_terminal();
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template("  {prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bars: Vec<ProgressBar> = Vec::new();
    let deadline = Instant::now() + limit;
    let mut last_line = Instant::now();
    loop {
        let j: JobView = client.get(&format!("/api/v1/jobs/{id}"))?;
        if bars.is_empty() {
            for t in &j.targets {
                let b = multi.add(ProgressBar::new(size));
                b.set_style(style.clone());
                b.set_prefix(t.mac.to_string());
                bars.push(b);
            }
        }
        for (b, t) in bars.iter().zip(&j.targets) {
            match (&t.progress, t.status.as_str()) {
                (_, "done") => {
                    b.set_position(size);
                    b.set_message("verified");
                }
                (Some(p), _) => {
                    b.set_position(p.done.min(size));
                    b.set_message(format!("{:.1} MB/s", p.rate / 1e6));
                }
                (None, s) => b.set_message(s.to_string()),
            }
        }
        if !tty && last_line.elapsed() >= Duration::from_secs(2) {
            last_line = Instant::now();
            let done = j.targets.iter().filter(|t| t.status == "done").count();
            let bytes: u64 = j
                .targets
                .iter()
                .filter_map(|t| t.progress.as_ref())
                .map(|p| p.done)
                .sum();
            println!(
                "      {done}/{} targets done, {} written so far",
                j.targets.len(),
                human_bytes(bytes)
            );
        }
        if j.status != "running" {
            for b in &bars {
                b.finish();
            }
            return Ok(j);
        }
        if Instant::now() > deadline {
            bail!("job {id} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

type EventLog = std::sync::Arc<std::sync::Mutex<Vec<EventRecord>>>;

/// Follows the job's event stream in the background. When the server ends
/// the stream (it does so for a subscriber that fell behind), it reconnects
/// from the last stored event it has, a bounded number of times.
fn collect_events(client: &Client, id: JobId) -> EventLog {
    const RECONNECTS: usize = 20;
    let log = EventLog::default();
    let (c, l) = (client.clone(), log.clone());
    std::thread::spawn(move || {
        let mut since = 0;
        for _ in 0..=RECONNECTS {
            let Ok(mut body) = c.events(id, since) else {
                return;
            };
            let mut p = SseParser::new();
            let mut buf = [0u8; 16 << 10];
            let mut out = Vec::new();
            while let Ok(n @ 1..) = body.read(&mut buf) {
                if p.feed(&buf[..n], &mut out).is_err() {
                    return;
                }
                for e in out.drain(..) {
                    if let Ok(r) = serde_json::from_str::<EventRecord>(&e.data) {
                        since = since.max(r.seq);
                        l.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    log
}

fn wait_for_event(log: &EventLog, kind: &str, limit: Duration) -> Option<EventRecord> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(e) = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| e.kind == kind)
        {
            return Some(e.clone());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The demo's child processes, killed on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, mut c: Command, log: &Path) -> anyhow::Result<()> {
        let f = std::fs::File::create(log)?;
        let child = c
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {c:?}"))?;
        self.0.push(child);
        Ok(())
    }

    /// Starts the server and returns its URL (its first stdout line).
    fn spawn_server(&mut self, mut c: Command, log: &Path) -> anyhow::Result<String> {
        let f = std::fs::File::create(log)?;
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .context("starting rackcast server")?;
        let out = child.stdout.take().context("server stdout")?;
        self.0.push(child);
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
            .map_err(|_| anyhow::anyhow!("the server did not start; see {}", log.display()))?;
        line.strip_prefix("listening ")
            .map(str::to_string)
            .with_context(|| format!("unexpected server output {line:?}"))
    }

    fn stop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn blake3_file(p: &Path) -> anyhow::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(p)
        .with_context(|| format!("hashing {}", p.display()))?;
    Ok(*h.finalize().as_bytes())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("rackcast-demo-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
