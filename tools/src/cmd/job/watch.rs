//! `rackcast job watch`: the job's event stream drives a refresh of the job
//! (and a refresh every second regardless, for progress), drawn as one bar
//! per target on a terminal, or one line per event otherwise.
//!
//! The decisions (when to reconnect, refresh, give up) are `follow::Follow`'s,
//! what a line says are plain functions here; `watch` is the shell that owns
//! the stream thread, the clock and the screen.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rackcast_engine::sched::api::{EventRecord, JobId, JobView, Progress, TargetRun};
use rackcast_engine::sched::MacAddr;

use super::follow::{Backoff, EventFate, Follow, Outcome, Retry, Step, REFRESH_TRIES};
use super::{log_tail, targets_cell, task_label};
use crate::cmd::client::show::{format_duration, progress_cell, rate_cell, utc_clock};
use crate::cmd::client::sse::SseParser;
use crate::cmd::client::{Client, ClientError};

/// Where the watch writes: `job watch` uses stdout; `--watch` after a
/// submit uses stderr, so stdout keeps only the job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Watches job `id` to its end; see `rackcast job watch --help` for the
/// exit status.
pub fn watch(
    client: &Client,
    id: JobId,
    timeout: Option<Duration>,
    sink: Sink,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let job_path = format!("/api/v1/jobs/{id}");

    // The first answer decides whether the job exists at all.
    let mut first = Backoff::new(REFRESH_TRIES);
    let mut view: JobView = loop {
        match client.get(&job_path) {
            Ok(v) => break v,
            Err(e) if e.is_unreachable() => match first.fail() {
                Some(d) => std::thread::sleep(d),
                None => return lost(&e),
            },
            Err(e) => return Err(e.into()),
        }
    };
    let mut follow = Follow::new(Instant::now(), id, timeout);
    let mut screen = Screen::new(sink, &view);
    screen.update(&view);
    let mut stream: Option<Stream> = None;

    loop {
        match follow.poll(Instant::now(), &view.status) {
            Step::Stop(Outcome::TimedOut) => {
                screen.note(&format!(
                    "gave up watching job {id} after {} (status {}; `rackcast job watch {id}` \
                     to follow it again)",
                    format_duration(started.elapsed()),
                    view.status
                ));
                screen.abandon();
                return Ok(Outcome::TimedOut.exit_code());
            }
            Step::Stop(outcome) => {
                screen.finish(&view, started.elapsed());
                return Ok(outcome.exit_code());
            }
            Step::OpenStream { since } => stream = Some(Stream::open(client, id, since)),
            Step::Refresh => match client.get::<JobView>(&job_path) {
                Ok(v) => {
                    follow.on_refreshed(Instant::now());
                    view = v;
                    screen.update(&view);
                }
                Err(e) if e.is_unreachable() => match follow.on_refresh_unreachable(Instant::now())
                {
                    Retry::Again { first } => {
                        if first {
                            screen.note(&format!("{e}; retrying"));
                        }
                    }
                    Retry::GiveUp => {
                        screen.abandon();
                        return lost(&e);
                    }
                },
                Err(e) => {
                    screen.abandon();
                    return Err(e.into());
                }
            },
            Step::Wait(until) => {
                let wait = until.saturating_duration_since(Instant::now());
                let msg = match &stream {
                    Some(s) => match s.rx.recv_timeout(wait) {
                        Ok(m) => Some(m),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            Some(StreamMsg::Broken("the event stream ended".into()))
                        }
                    },
                    None => {
                        std::thread::sleep(wait);
                        None
                    }
                };
                match msg {
                    Some(StreamMsg::Event(ev)) => match follow.on_event(ev.seq, ev.job) {
                        EventFate::Show => screen.event(&ev, &view),
                        EventFate::Transient => screen.transient(&ev, &mut view),
                        EventFate::Skip => {}
                    },
                    Some(StreamMsg::Broken(why)) => {
                        stream = None;
                        if let Some(note) = follow.on_stream_broken(Instant::now(), &why) {
                            screen.note(&note);
                        }
                    }
                    Some(StreamMsg::Unavailable(e)) => {
                        stream = None;
                        screen.note(&follow.on_stream_unavailable(&e.to_string()));
                    }
                    None => {}
                }
            }
        }
    }
}

/// Errors go to stderr whatever the sink: stdout keeps the watch's own lines.
fn lost(e: &ClientError) -> anyhow::Result<ExitCode> {
    eprintln!("error: {e} (gave up after {REFRESH_TRIES} tries)");
    Ok(Outcome::Lost.exit_code())
}

// ---------------------------------------------------------------- the stream

#[derive(Debug)]
enum StreamMsg {
    Event(EventRecord),
    /// The connection failed or dropped: reconnect from the last seq.
    Broken(String),
    /// The server answered, but not with an event stream: poll instead.
    Unavailable(ClientError),
}

/// One connection to the event stream, read by its own thread. Dropping
/// it drops the receiver; the thread ends at its next event or read timeout.
#[derive(Debug)]
struct Stream {
    rx: Receiver<StreamMsg>,
}

impl Stream {
    fn open(client: &Client, job: JobId, since: u64) -> Stream {
        let (tx, rx) = mpsc::channel();
        let client = client.clone();
        std::thread::spawn(move || read_stream(&client, job, since, &tx));
        Stream { rx }
    }
}

fn read_stream(client: &Client, job: JobId, since: u64, tx: &Sender<StreamMsg>) {
    let mut body = match client.events(job, since) {
        Ok(b) => b,
        Err(e) if e.is_unreachable() => {
            let _ = tx.send(StreamMsg::Broken(e.to_string()));
            return;
        }
        Err(e) => {
            let _ = tx.send(StreamMsg::Unavailable(e));
            return;
        }
    };
    let mut parser = SseParser::new();
    let mut buf = vec![0u8; 16 << 10];
    let mut events = Vec::new();
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(StreamMsg::Broken(
                    "the server closed the event stream".into(),
                ));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(StreamMsg::Broken(format!("the event stream broke: {e}")));
                return;
            }
        };
        if let Err(e) = parser.feed(&buf[..n], &mut events) {
            let _ = tx.send(StreamMsg::Broken(e.to_string()));
            return;
        }
        for ev in events.drain(..) {
            // Other data (a hello, a future kind of record) is not ours to show.
            let Ok(rec) = serde_json::from_str::<EventRecord>(&ev.data) else {
                continue;
            };
            if tx.send(StreamMsg::Event(rec)).is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- the screen

/// Bars on a terminal, lines elsewhere.
#[derive(Debug)]
enum Screen {
    Bars(Bars),
    Lines(Lines),
}

impl Screen {
    fn new(sink: Sink, view: &JobView) -> Screen {
        let tty = match sink {
            Sink::Stdout => std::io::stdout().is_terminal(),
            Sink::Stderr => std::io::stderr().is_terminal(),
        };
        if tty {
            Screen::Bars(Bars::new(sink, view))
        } else {
            Screen::Lines(Lines {
                sink,
                last: HashMap::new(),
            })
        }
    }

    fn event(&mut self, ev: &EventRecord, view: &JobView) {
        self.println(&event_line(ev, view.spec.tasks.len()));
    }

    /// A live-only event: progress goes into the view at once (the bars
    /// move between refreshes), log lines are shown as they come.
    fn transient(&mut self, ev: &EventRecord, view: &mut JobView) {
        match ev.kind.as_str() {
            "task.progress" => {
                let Ok(p) = serde_json::from_value::<Progress>(ev.detail.clone()) else {
                    return;
                };
                let run = view
                    .targets
                    .iter_mut()
                    .find(|r| Some(&r.mac) == ev.target.as_ref());
                if let Some(run) = run {
                    run.progress = Some(p);
                    self.update(view);
                }
            }
            "task.log" => {
                let text = ev.detail.get("text").and_then(|t| t.as_str()).unwrap_or("");
                let mac = ev.target.map_or_else(|| "-".to_string(), |m| m.to_string());
                for line in text.lines() {
                    self.println(&format!("{mac} | {line}"));
                }
            }
            _ => self.event(ev, view),
        }
    }

    fn println(&self, line: &str) {
        match self {
            Screen::Bars(b) => {
                let _ = b.multi.println(line);
            }
            Screen::Lines(l) => l.print(line),
        }
    }

    fn update(&mut self, view: &JobView) {
        match self {
            Screen::Bars(b) => b.update(view),
            Screen::Lines(l) => {
                for r in &view.targets {
                    let key = LineKey::of(r);
                    if l.last.get(&r.mac) != Some(&key) {
                        let line = format!("{}  {}", r.mac, target_message(view, r));
                        l.last.insert(r.mac, key);
                        l.print(&line);
                    }
                }
            }
        }
    }

    fn note(&mut self, msg: &str) {
        match self {
            Screen::Bars(b) => {
                let _ = b.multi.println(format!("note: {msg}"));
            }
            Screen::Lines(_) => eprintln!("note: {msg}"),
        }
    }

    fn abandon(&mut self) {
        if let Screen::Bars(b) = self {
            for pb in b.bars.values() {
                pb.abandon();
            }
        }
    }

    fn finish(&mut self, view: &JobView, watched: Duration) {
        let (sink, bars) = match self {
            Screen::Bars(b) => {
                // Cleared, so that the lines below start on a line of their own.
                for pb in b.bars.values() {
                    pb.finish_and_clear();
                }
                let _ = b.multi.clear();
                (b.sink, true)
            }
            Screen::Lines(l) => (l.sink, false),
        };
        let out = Lines {
            sink,
            last: HashMap::new(),
        };
        if bars {
            for r in &view.targets {
                out.print(&format!("{}  {}", r.mac, target_message(view, r)));
            }
        }
        for line in summary(view, watched) {
            out.print(&line);
        }
    }
}

#[derive(Debug)]
struct Bars {
    sink: Sink,
    multi: MultiProgress,
    bars: HashMap<MacAddr, ProgressBar>,
    /// Whether each bar shows bytes now (a task with a known size).
    bytes: HashMap<MacAddr, bool>,
}

impl Bars {
    fn new(sink: Sink, view: &JobView) -> Bars {
        let target = match sink {
            Sink::Stdout => ProgressDrawTarget::stdout(),
            Sink::Stderr => ProgressDrawTarget::stderr(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let mut bars = HashMap::new();
        for r in &view.targets {
            let pb = multi.add(ProgressBar::new(0));
            pb.set_style(plain_style());
            pb.set_prefix(r.mac.to_string());
            bars.insert(r.mac, pb);
        }
        Bars {
            sink,
            multi,
            bars,
            bytes: HashMap::new(),
        }
    }

    fn update(&mut self, view: &JobView) {
        for r in &view.targets {
            let pb = self.bars.entry(r.mac).or_insert_with(|| {
                let pb = self.multi.add(ProgressBar::new(0));
                pb.set_style(plain_style());
                pb.set_prefix(r.mac.to_string());
                pb
            });
            let sized = r.progress.as_ref().filter(|p| p.total > 0);
            let was = self.bytes.get(&r.mac).copied().unwrap_or(false);
            if sized.is_some() != was {
                pb.set_style(if sized.is_some() {
                    bytes_style()
                } else {
                    plain_style()
                });
                self.bytes.insert(r.mac, sized.is_some());
            }
            if let Some(p) = sized {
                pb.set_length(p.total);
                pb.set_position(p.done.min(p.total));
            }
            pb.set_message(bar_message(view, r));
        }
    }
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}  [{bar:28}] {bytes:>10}/{total_bytes:<10} {msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

fn plain_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix}  {msg}").expect("valid template")
}

#[derive(Debug)]
struct Lines {
    sink: Sink,
    last: HashMap<MacAddr, LineKey>,
}

impl Lines {
    fn print(&self, line: &str) {
        // A closed pipe (`| head`) is not worth a panic.
        let _ = match self.sink {
            Sink::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Sink::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
    }
}

/// What makes a target worth a new line in line mode: its status, task,
/// attempt, error, and each tenth of its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineKey {
    status: String,
    task: u32,
    attempt: u32,
    error: Option<String>,
    tenth: Option<u64>,
}

impl LineKey {
    /// The key of a run now.
    pub fn of(r: &TargetRun) -> LineKey {
        LineKey {
            status: r.status.clone(),
            task: r.task,
            attempt: r.attempt,
            error: r.error.clone(),
            tenth: r
                .progress
                .as_ref()
                .filter(|p| p.total > 0)
                .map(|p| p.done.min(p.total) * 10 / p.total),
        }
    }
}

/// `22:13:20Z #42 task.started aa:bb:cc:dd:ee:01 task 1/2 {"attempt":1}`.
pub fn event_line(ev: &EventRecord, tasks: usize) -> String {
    let mut s = format!("{} #{} {}", utc_clock(ev.at), ev.seq, ev.kind);
    if let Some(t) = &ev.target {
        s.push(' ');
        s.push_str(&t.to_string());
    }
    if let Some(t) = ev.task {
        s.push_str(&format!(" task {}/{tasks}", t + 1));
    }
    let detail = detail_text(&ev.kind, &ev.detail);
    if !detail.is_empty() {
        let short: String = detail.chars().take(240).collect();
        s.push(' ');
        s.push_str(&short);
        if short.len() < detail.len() {
            s.push_str("...");
        }
    }
    s
}

/// The detail of an event for people: a few kinds read as words, the rest
/// as compact JSON.
fn detail_text(kind: &str, d: &serde_json::Value) -> String {
    let text = |k: &str| d.get(k).and_then(|v| v.as_str());
    match kind {
        "target.state" if text("state").is_some() => {
            let mut s = match text("from") {
                Some(from) => format!("{from} -> {}", text("state").unwrap_or("")),
                None => text("state").unwrap_or("").to_string(),
            };
            if let Some(env) = text("env") {
                s.push_str(&format!(" {env}"));
            }
            if let Some(e) = text("error") {
                s.push_str(&format!(": {e}"));
            }
            s
        }
        "task.finished" if d.get("ok").is_some() => {
            if d.get("ok").and_then(|v| v.as_bool()) == Some(true) {
                format!("ok {}", text("summary").unwrap_or(""))
                    .trim_end()
                    .to_string()
            } else {
                format!("failed: {}", text("error").unwrap_or("no error given"))
            }
        }
        _ => match d {
            serde_json::Value::Null => String::new(),
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            serde_json::Value::String(text) => text.clone(),
            v => v.to_string(),
        },
    }
}

/// A target's line: `running  task 1/2 distribute  45% 1.2 GiB/2.6 GiB 110.3 MB/s`.
pub fn target_message(view: &JobView, r: &TargetRun) -> String {
    if r.status == "done" {
        return "done".to_string();
    }
    let mut s = format!("{:<9} task {}", r.status, task_label(&view.spec, r.task));
    if r.attempt > 1 {
        s.push_str(&format!(" (attempt {})", r.attempt));
    }
    match (&r.error, &r.progress) {
        (Some(e), _) if r.status != "done" => s.push_str(&format!("  {e}")),
        (_, Some(p)) if r.status == "running" => s.push_str(&format!("  {}", progress_cell(p))),
        _ => {}
    }
    s
}

/// The bar's message: the bar itself shows the bytes, so only the rate,
/// the task and the status (or the error) are left.
fn bar_message(view: &JobView, r: &TargetRun) -> String {
    let mut s = String::new();
    match r.status.as_str() {
        "running" => {
            if let Some(Progress { rate, message, .. }) = &r.progress {
                if *rate > 0.0 {
                    s.push_str(&rate_cell(*rate));
                    s.push_str("  ");
                }
                if !message.is_empty() {
                    s.push_str(message);
                    s.push_str("  ");
                }
            }
            s.push_str(&format!("task {}", task_label(&view.spec, r.task)));
        }
        "done" | "queued" => s.push_str(&r.status),
        other => s.push_str(&format!(
            "{other} at task {}",
            task_label(&view.spec, r.task)
        )),
    }
    if r.attempt > 1 && r.status != "done" {
        s.push_str(&format!(" (attempt {})", r.attempt));
    }
    if let Some(e) = r.error.as_ref().filter(|_| r.status != "done") {
        s.push_str(": ");
        s.push_str(e);
    }
    s
}

/// The closing lines: the job's status and, for each target that did not
/// finish, why (with the end of its log).
pub fn summary(view: &JobView, watched: Duration) -> Vec<String> {
    let mut out = vec![format!(
        "job {} ({}) {}: {} targets (watched {})",
        view.id,
        view.name,
        view.status,
        targets_cell(&view.targets),
        format_duration(watched)
    )];
    for r in view.targets.iter().filter(|r| r.status != "done") {
        let mut line = format!(
            "  {} {} at task {} (attempt {})",
            r.mac,
            r.status,
            task_label(&view.spec, r.task),
            r.attempt
        );
        match (&r.error, r.status.as_str()) {
            (Some(e), _) => line.push_str(&format!(": {e}")),
            (None, "failed") => line.push_str(": no error reported"),
            _ => {}
        }
        out.push(line);
        for l in log_tail(&r.log, 5) {
            out.push(format!("      {l}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::job::spec::{parse_job, JobFormat};

    fn view(status: &str, runs: Vec<TargetRun>) -> JobView {
        let spec = parse_job(
            "targets = [\"aa:bb:cc:dd:ee:01\"]\n[[task]]\nkind = \"distribute\"\nimage = \"deb\"\n\
             [[task]]\nkind = \"reboot\"\nto = \"local\"\n",
            JobFormat::Toml,
            "t",
        )
        .unwrap();
        JobView {
            id: JobId(3),
            name: "rack".into(),
            status: status.into(),
            spec,
            targets: runs,
            created: 0,
        }
    }

    fn run(status: &str, task: u32, progress: Option<Progress>) -> TargetRun {
        TargetRun {
            mac: "aa:bb:cc:dd:ee:01".parse().unwrap(),
            status: status.into(),
            task,
            attempt: 1,
            error: None,
            progress,
            log: String::new(),
        }
    }

    #[test]
    fn event_lines() {
        let ev = EventRecord {
            seq: 42,
            at: 1_700_000_000_000,
            actor: "agent".into(),
            kind: "task.started".into(),
            target: Some("aa:bb:cc:dd:ee:01".parse().unwrap()),
            job: Some(JobId(3)),
            task: Some(0),
            detail: serde_json::json!({"attempt": 1}),
        };
        assert_eq!(
            event_line(&ev, 2),
            r#"22:13:20Z #42 task.started aa:bb:cc:dd:ee:01 task 1/2 {"attempt":1}"#
        );
        let bare = EventRecord {
            target: None,
            task: None,
            detail: serde_json::Value::Null,
            kind: "job.submitted".into(),
            ..ev
        };
        assert_eq!(event_line(&bare, 2), "22:13:20Z #42 job.submitted");
        let state = EventRecord {
            kind: "target.state".into(),
            detail: serde_json::json!({"from": "waiting", "state": "rebooting-to", "env": "linux-x64", "deadline": 5}),
            ..bare.clone()
        };
        assert_eq!(
            event_line(&state, 2),
            "22:13:20Z #42 target.state waiting -> rebooting-to linux-x64"
        );
        let failed = EventRecord {
            kind: "task.finished".into(),
            detail: serde_json::json!({"ok": false, "error": "exit 1, expected 0", "attempt": 1}),
            ..bare.clone()
        };
        assert_eq!(
            event_line(&failed, 2),
            "22:13:20Z #42 task.finished failed: exit 1, expected 0"
        );
        let ok = EventRecord {
            kind: "task.finished".into(),
            detail: serde_json::json!({"ok": true, "summary": "exit 0"}),
            ..bare
        };
        assert_eq!(event_line(&ok, 2), "22:13:20Z #42 task.finished ok exit 0");
    }

    #[test]
    fn line_mode_prints_on_change_and_each_tenth() {
        let p = |done| Progress {
            done,
            total: 1000,
            rate: 1e8,
            message: String::new(),
        };
        let a = LineKey::of(&run("running", 0, Some(p(100))));
        assert_eq!(a, LineKey::of(&run("running", 0, Some(p(150)))));
        assert_ne!(a, LineKey::of(&run("running", 0, Some(p(200)))));
        assert_ne!(a, LineKey::of(&run("running", 1, Some(p(100)))));
        let v = view("running", vec![run("running", 0, Some(p(450)))]);
        assert_eq!(
            target_message(&v, &v.targets[0]),
            "running   task 1/2 distribute  45% 450 B/1000 B 100.0 MB/s"
        );
        assert_eq!(
            bar_message(&v, &v.targets[0]),
            "100.0 MB/s  task 1/2 distribute"
        );
        let mut failed = run("failed", 1, None);
        failed.attempt = 2;
        failed.error = Some("timed out".into());
        assert_eq!(
            bar_message(&v, &failed),
            "failed at task 2/2 reboot (attempt 2): timed out"
        );
        assert_eq!(bar_message(&v, &run("done", 2, None)), "done");
    }

    #[test]
    fn summary_names_each_failed_target() {
        let mut bad = run("failed", 0, None);
        bad.mac = "aa:bb:cc:dd:ee:02".parse().unwrap();
        bad.attempt = 2;
        bad.error = Some("image root mismatch".into());
        bad.log = "wrote 12 chunks\nverify failed at chunk 3\n".into();
        let v = view("failed", vec![run("done", 2, None), bad]);
        let s = summary(&v, Duration::from_secs(75));
        assert_eq!(
            s,
            [
                "job 3 (rack) failed: 1 done, 1 failed of 2 targets (watched 1m15s)",
                "  aa:bb:cc:dd:ee:02 failed at task 1/2 distribute (attempt 2): image root mismatch",
                "      wrote 12 chunks",
                "      verify failed at chunk 3",
            ]
        );
    }
}
