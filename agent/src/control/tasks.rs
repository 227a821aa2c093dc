//! The work of a `Run` directive, each kind on its own thread: Run Script,
//! Create Disk Image (capture, then upload) and Distribute Disk Image (a
//! resuming multicast receive). A worker hands its reports to the control
//! loop through a bounded channel and ends with exactly one terminal report
//! (`Finished` or `Rejoin`), or none when it was told to stop.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};
use rackcast_cast_net::ReceiveLimits;
use rackcast_engine::cast::CastError;
use rackcast_engine::cast::SessionKey;
use rackcast_engine::image::{create_image, from_hex, hex, CreateOptions, ImageError};
use rackcast_engine::sched::api::{
    CastJoin, NoCloudSeed, Progress, TaskRef, TaskReport, Transport, UnusedBlocks, VerifyMode, Work,
};

use super::backoff::Backoff;
use super::client::{classify, Client, Failure};
use super::inventory::{disk_file, route_to};
use super::script::{run_script, Flow, ScriptEnd, ScriptSpec};
use crate::error::AgentError;
use rackcast_types::ErrorChain;
use rackcast_writer::receive::{read_back_for, receive, CastReceive, CastReceived};
use rackcast_writer::unicast::{receive_unicast, RangeSource};
use rackcast_writer::{write_seed, LayoutOptions, WriterConfig};

/// Progress is reported this often.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Output held back while the control loop cannot send it (server lost);
/// beyond this the oldest is dropped, with a note.
const HELD_LOG_MAX: usize = 1 << 20;
/// A task with no timeout still ends some day.
const NO_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a worker needs from the agent.
#[derive(Debug, Clone)]
pub struct TaskContext {
    /// The server (the upload uses its boot token).
    pub client: Client,
    /// Where scripts run and captures are written.
    pub work_dir: PathBuf,
    /// The disk a task that names none works on.
    pub default_disk: Option<PathBuf>,
    /// Join multicast on this address (`None`: the route to the server).
    pub iface_addr: Option<Ipv4Addr>,
    /// A receive with no packet of its session for this long asks to rejoin.
    pub stall: Duration,
    /// How long an upload keeps retrying a lost server.
    pub give_up: Duration,
    /// Prefix of the lines echoed to stderr.
    pub tag: String,
}

/// A running task.
#[derive(Debug)]
pub struct TaskHandle {
    /// Which run.
    pub task: TaskRef,
    /// What it does.
    pub work: Work,
    stop: Arc<AtomicBool>,
    reports: Receiver<TaskReport>,
    thread: Option<JoinHandle<()>>,
}

impl TaskHandle {
    /// Starts `work` on its own thread.
    pub fn spawn(ctx: TaskContext, task: TaskRef, work: Work, timeout: u64) -> TaskHandle {
        let (tx, rx) = bounded(64);
        let stop = Arc::new(AtomicBool::new(false));
        let mut out = Out {
            tx,
            stop: stop.clone(),
            held: String::new(),
            dropped: 0,
        };
        let limit = (timeout > 0).then(|| Duration::from_secs(timeout));
        let w = work.clone();
        let thread = std::thread::Builder::new()
            .name(format!("task-{}-{}", task.job, task.task))
            .spawn(move || {
                let end = match w {
                    Work::Script {
                        script,
                        interpreter,
                        expect_exit,
                    } => script_task(
                        &ctx,
                        task,
                        script,
                        interpreter,
                        expect_exit,
                        limit,
                        &mut out,
                    ),
                    Work::Create { image, disk } => {
                        create_task(&ctx, task, &image, disk.as_deref(), &mut out)
                    }
                    Work::Distribute {
                        root,
                        disk,
                        verify,
                        unused,
                        grow,
                        seed,
                        cast,
                        ..
                    } => distribute_task(
                        &ctx,
                        &root,
                        DiskWrite {
                            disk: disk.as_deref(),
                            verify,
                            unused,
                            grow,
                            seed: seed.as_deref(),
                        },
                        &cast,
                        limit,
                        &mut out,
                    ),
                };
                if let Some(end) = end {
                    out.end(end);
                }
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // No thread: the task fails at once (the channel still works).
                let (tx, rx2) = bounded(1);
                let _ = tx.send(failed(format!("starting the task thread: {e}")));
                return TaskHandle {
                    task,
                    work,
                    stop,
                    reports: rx2,
                    thread: None,
                };
            }
        };
        TaskHandle {
            task,
            work,
            stop,
            reports: rx,
            thread,
        }
    }

    /// The worker's reports.
    pub fn reports(&self) -> &Receiver<TaskReport> {
        &self.reports
    }

    /// Asks the worker to stop (kill a script, abandon a receive).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether [`TaskHandle::stop`] was called.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stops the worker and waits for it (reports it still sends are
    /// dropped).
    pub fn stop_and_join(mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            // Drain so a worker blocked on a full channel can finish.
            while !t.is_finished() {
                let _ = self.reports.recv_timeout(Duration::from_millis(50));
            }
            let _ = t.join();
        }
    }

    /// Waits for a worker that has sent its terminal report.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn failed(error: String) -> TaskReport {
    TaskReport::Finished {
        ok: false,
        summary: error.clone(),
        error: Some(error),
        root: None,
        transport: None,
    }
}

/// The worker's side of the channel.
struct Out {
    tx: Sender<TaskReport>,
    stop: Arc<AtomicBool>,
    /// Output the channel had no room for yet.
    held: String,
    dropped: usize,
}

impl Out {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn log(&mut self, text: &str) {
        self.held.push_str(text);
        if self.held.len() > HELD_LOG_MAX {
            let mut cut = self.held.len() - HELD_LOG_MAX / 2;
            while !self.held.is_char_boundary(cut) {
                cut += 1;
            }
            self.dropped += cut;
            self.held.drain(..cut);
        }
        if self.held.is_empty() {
            return;
        }
        let text = self.held_text();
        // No room: keep it and try again with the next batch.
        if self.tx.try_send(TaskReport::Log { text }).is_ok() {
            self.held.clear();
            self.dropped = 0;
        }
    }

    fn held_text(&self) -> String {
        if self.dropped > 0 {
            format!(
                "[rackcast: {} bytes of output dropped while the server was away]\n{}",
                self.dropped, self.held
            )
        } else {
            self.held.clone()
        }
    }

    fn progress(&mut self, p: Progress) {
        // Stale progress is worthless: drop it when there is no room.
        let _ = self.tx.try_send(TaskReport::Progress(p));
    }

    fn end(self, report: TaskReport) {
        if !self.held.is_empty() {
            let _ = self.tx.send(TaskReport::Log {
                text: self.held_text(),
            });
        }
        let _ = self.tx.send(report);
    }
}

/// A once-a-second progress reporter.
struct Pacer {
    last: Instant,
    last_done: u64,
}

impl Pacer {
    fn new() -> Pacer {
        Pacer {
            last: Instant::now(),
            last_done: 0,
        }
    }

    fn due(&mut self, done: u64, total: u64, message: &str) -> Option<Progress> {
        let now = Instant::now();
        let dt = now.duration_since(self.last);
        if dt < PROGRESS_EVERY {
            return None;
        }
        let rate = done.saturating_sub(self.last_done) as f64 / dt.as_secs_f64();
        self.last = now;
        self.last_done = done;
        Some(Progress {
            done,
            total,
            rate,
            message: message.to_string(),
        })
    }
}

fn disk_for(ctx: &TaskContext, named: Option<&str>) -> Result<PathBuf, String> {
    named
        .map(PathBuf::from)
        .or_else(|| ctx.default_disk.clone())
        .ok_or_else(|| "the task names no disk and the agent has no --disk".to_string())
}

// ---------------------------------------------------------------- script

fn script_task(
    ctx: &TaskContext,
    task: TaskRef,
    script: String,
    interpreter: String,
    expect_exit: i32,
    timeout: Option<Duration>,
    out: &mut Out,
) -> Option<TaskReport> {
    let mut env = vec![
        ("RACKCAST_JOB".to_string(), task.job.to_string()),
        ("RACKCAST_TASK".to_string(), task.task.to_string()),
        ("RACKCAST_ATTEMPT".to_string(), task.attempt.to_string()),
    ];
    if let Some(d) = &ctx.default_disk {
        env.push(("RACKCAST_DISK".into(), d.display().to_string()));
    }
    let spec = ScriptSpec {
        script,
        interpreter: if interpreter.trim().is_empty() {
            super::script::default_interpreter().to_string()
        } else {
            interpreter
        },
        timeout,
        dir: ctx.work_dir.clone(),
        env,
    };
    let end = run_script(&spec, &mut |text| {
        for line in text.lines() {
            tracing::info!("{} | {line}", ctx.tag);
        }
        if !text.is_empty() {
            out.log(text);
        }
        if out.stopped() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    });
    match end {
        Ok(ScriptEnd::Stopped) => None,
        Ok(ScriptEnd::Exited(code)) => Some(TaskReport::Finished {
            ok: code == expect_exit,
            error: (code != expect_exit).then(|| format!("exit {code}, expected {expect_exit}")),
            summary: format!("exit {code}"),
            root: None,
            transport: None,
        }),
        Ok(end) => Some(failed(end.summary())),
        Err(e) => Some(failed(ErrorChain(&e).to_string())),
    }
}

// ---------------------------------------------------------------- create

fn create_task(
    ctx: &TaskContext,
    task: TaskRef,
    image: &str,
    disk: Option<&str>,
    out: &mut Out,
) -> Option<TaskReport> {
    let disk = match disk_for(ctx, disk) {
        Ok(d) => d,
        Err(e) => return Some(failed(e)),
    };
    if let Err(e) = std::fs::create_dir_all(&ctx.work_dir) {
        return Some(failed(format!("creating {}: {e}", ctx.work_dir.display())));
    }
    let file = ctx.work_dir.join(format!(
        "capture-{}-{}-{}.rcimg",
        task.job,
        task.task,
        file_word(image)
    ));
    let total = disk_file(&disk).map_or(0, |d| d.size);
    let mut pacer = Pacer::new();
    // A stop (cancel, or a newer directive) ends the capture within a chunk.
    let opts = CreateOptions {
        cancel: Some(out.stop.clone()),
        ..CreateOptions::default()
    };
    let mut done = 0u64;
    let summary = create_image(&disk, &file, &opts, &mut |n| {
        done += n;
        if let Some(p) = pacer.due(done, total, "capturing") {
            out.progress(p);
        }
    });
    let summary = match summary {
        Ok(s) => s,
        Err(ImageError::Cancelled { .. }) => return None,
        Err(e) => {
            return Some(failed(format!(
                "capturing {}: {}",
                disk.display(),
                ErrorChain(&e)
            )))
        }
    };
    if out.stopped() {
        let _ = std::fs::remove_file(&file);
        return None;
    }
    let root = hex(&summary.root);
    match upload(ctx, task, image, &file, summary.image_bytes, out) {
        Ok(Some(stored)) if stored == root => {
            let _ = std::fs::remove_file(&file);
            Some(TaskReport::Finished {
                ok: true,
                error: None,
                summary: format!("root {root}"),
                root: Some(root),
                transport: None,
            })
        }
        Ok(Some(stored)) => Some(failed(format!(
            "the server stored root {stored}, the capture has root {root}"
        ))),
        Ok(None) => {
            let _ = std::fs::remove_file(&file);
            None
        }
        Err(e) => Some(failed(format!("uploading {image}: {}", ErrorChain(&e)))),
    }
}

/// Streams the capture to the server, retrying while it is unreachable (or
/// our boot token is being renewed). `Ok(None)`: stopped.
fn upload(
    ctx: &TaskContext,
    task: TaskRef,
    image: &str,
    file: &Path,
    len: u64,
    out: &mut Out,
) -> Result<Option<String>, AgentError> {
    let mut backoff = Backoff::from_entropy();
    let mut lost_since: Option<Instant> = None;
    loop {
        if out.stopped() {
            return Ok(None);
        }
        let f = File::open(file).map_err(|e| AgentError::io("opening", file, e))?;
        let body = Counting {
            inner: f,
            done: 0,
            total: len,
            pacer: Pacer::new(),
            out: &mut *out,
        };
        match ctx.client.upload_image(image, task, len, body) {
            Ok(view) => return Ok(Some(view.root)),
            Err(e) => {
                if out.stopped() {
                    return Ok(None);
                }
                match classify(&e) {
                    Failure::Refused => return Err(e),
                    Failure::Retry | Failure::Reregister => {
                        let since = *lost_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > ctx.give_up {
                            return Err(e);
                        }
                        if backoff.failures() == 0 {
                            tracing::info!(
                                "{}: upload failed ({}); retrying",
                                ctx.tag,
                                ErrorChain(&e)
                            );
                        }
                        std::thread::sleep(backoff.next_delay());
                    }
                }
            }
        }
    }
}

/// The upload body: counts bytes for progress, and ends the upload early
/// when the task is stopped.
struct Counting<'a> {
    inner: File,
    done: u64,
    total: u64,
    pacer: Pacer,
    out: &'a mut Out,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.out.stopped() {
            return Err(std::io::Error::other("the task was stopped"));
        }
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if let Some(p) = self.pacer.due(self.done, self.total, "uploading") {
            self.out.progress(p);
        }
        Ok(n)
    }
}

/// A file-name-safe form of an image name.
fn file_word(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------------- distribute

/// What a Distribute directive asks of the target's disk.
struct DiskWrite<'a> {
    /// The disk (None: the agent's default).
    disk: Option<&'a str>,
    verify: VerifyMode,
    unused: UnusedBlocks,
    /// Grow the last partition and its filesystem to the disk's end (the
    /// environment carries e2fsprogs, xfsprogs and losetup for it).
    grow: bool,
    /// Written after the image (a CIDATA partition in the disk's free space).
    seed: Option<&'a NoCloudSeed>,
}

fn distribute_task(
    ctx: &TaskContext,
    root: &str,
    write: DiskWrite<'_>,
    cast: &CastJoin,
    timeout: Option<Duration>,
    out: &mut Out,
) -> Option<TaskReport> {
    let mut spec = match receive_spec(ctx, root, &write, cast, timeout) {
        Ok(s) => s,
        Err(e) => return Some(failed(ErrorChain(&e).to_string())),
    };
    // Silence this long means the session cannot be heard here: the rest
    // comes by unicast (see `fetch_unicast`), not from a new session.
    if let Some(n) = cast.unicast_after.filter(|&n| n > 0) {
        spec.limits.idle = Some(Duration::from_secs(n.into()));
    }
    tracing::info!(
        "{}: joining {} on {} (session {:016x}, receiver {:016x}), writing {}",
        ctx.tag,
        spec.group,
        spec.iface_addr,
        cast.session,
        cast.receiver,
        spec.dest.display()
    );
    let mut pacer = Pacer::new();
    let multicast = if cast.unicast_only() {
        Err(CastError::Stalled {
            idle_secs: 0,
            done: 0,
            total: 0,
        })
    } else {
        receive(&spec, &mut |rx| {
            if out.stopped() {
                return ControlFlow::Break(());
            }
            let (total, chunks) = rx
                .index()
                .map_or((0, 0), |i| (i.meta.source_size, rx.chunks_needed_total()));
            let done = if chunks == 0 {
                0
            } else {
                (total as u128 * rx.chunks_done() as u128 / chunks as u128) as u64
            };
            let message = format!(
                "receiving: {}/{} chunks, loss {:.1}%",
                rx.chunks_done(),
                chunks,
                rx.loss_ppm() as f64 / 1e4
            );
            if let Some(p) = pacer.due(done, total, &message) {
                out.progress(p);
            }
            ControlFlow::Continue(())
        })
    };
    let (result, transport) = match multicast {
        Err(CastError::Stalled {
            idle_secs, done, ..
        }) if cast.unicast_after.is_some() => {
            let why = if cast.unicast_only() {
                "the job moves the image by unicast: fetching it from the server".to_string()
            } else {
                format!(
                    "no packet of cast session {:016x} for {idle_secs} s: fetching the rest \
                     from the server by unicast",
                    cast.session
                )
            };
            tracing::info!("{}: {why}", ctx.tag);
            out.log(&format!("{why}\n"));
            let r = fetch_unicast(ctx, &spec, root, out, &mut pacer);
            (
                r,
                if done > 0 {
                    Transport::Mixed
                } else {
                    Transport::Unicast
                },
            )
        }
        r => (r, Transport::Multicast),
    };
    match result {
        Ok(r) => {
            let mut summary = format!(
                "root {}, {} bytes written, {} chunks resumed, by {}",
                hex(&r.root),
                r.sink.bytes_written,
                r.sink.resumed_chunks,
                transport.word()
            );
            if let Some(seed) = write.seed {
                match write_seed(&spec.dest, 512, seed) {
                    Ok(p) => summary += &format!(", NoCloud seed in partition {}", p.number),
                    Err(e) => return Some(failed(format!("the image is written; {e}"))),
                }
            }
            Some(TaskReport::Finished {
                ok: true,
                error: None,
                summary,
                root: Some(hex(&r.root)),
                transport: Some(transport),
            })
        }
        Err(CastError::Abandoned) => None,
        Err(e @ (CastError::Stalled { .. } | CastError::EndedEarly { .. })) => {
            Some(TaskReport::Rejoin {
                reason: e.to_string(),
            })
        }
        Err(e) => Some(failed(format!(
            "receiving into {}: {}",
            spec.dest.display(),
            ErrorChain(&e)
        ))),
    }
}

/// The image's chunks the target still needs, from the server by HTTP
/// range requests, through the same writer and resume state.
fn fetch_unicast(
    ctx: &TaskContext,
    spec: &CastReceive,
    root: &str,
    out: &mut Out,
    pacer: &mut Pacer,
) -> Result<CastReceived, CastError> {
    let mut src = ServerImage {
        client: &ctx.client,
        root,
        len: None,
    };
    receive_unicast(spec, &mut src, &mut |p| {
        if out.stopped() {
            return ControlFlow::Break(());
        }
        let done = if p.total == 0 {
            0
        } else {
            (u128::from(p.source_size) * u128::from(p.done) / u128::from(p.total)) as u64
        };
        let message = format!(
            "fetching by unicast: {}/{} chunks, {} bytes",
            p.done, p.total, p.fetched
        );
        if let Some(pr) = pacer.due(done, p.source_size, &message) {
            out.progress(pr);
        }
        ControlFlow::Continue(())
    })
}

/// The image file on the server, read by range requests.
struct ServerImage<'a> {
    client: &'a Client,
    root: &'a str,
    len: Option<u64>,
}

impl RangeSource for ServerImage<'_> {
    fn file_len(&mut self) -> Result<u64, String> {
        if let Some(l) = self.len {
            return Ok(l);
        }
        let (_, len) = self
            .client
            .image_range(self.root, 0, 1)
            .map_err(|e| ErrorChain(&e).to_string())?;
        self.len = Some(len);
        Ok(len)
    }

    fn read_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        self.client
            .image_range(self.root, offset, len)
            .map(|(b, _)| b)
            .map_err(|e| ErrorChain(&e).to_string())
    }
}

fn receive_spec(
    ctx: &TaskContext,
    root: &str,
    write: &DiskWrite<'_>,
    cast: &CastJoin,
    timeout: Option<Duration>,
) -> Result<CastReceive, AgentError> {
    let bad = AgentError::BadDirective;
    let dest = disk_for(ctx, write.disk).map_err(bad)?;
    let root: [u8; 32] = from_hex(root)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad(format!("image root {root:?} is not 64 hex digits")))?;
    // Unicast only: no session, so no group, key or interface to join on.
    let (key, group, iface_addr) = if cast.unicast_only() {
        (
            vec![0; 32],
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            Ipv4Addr::UNSPECIFIED,
        )
    } else {
        let key = from_hex(&cast.key)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad(format!("cast key {:?} is not hex", cast.key)))?;
        let group: SocketAddrV4 = cast.group.parse().map_err(|_| {
            bad(format!(
                "cast group {:?} is not IPv4 address:port",
                cast.group
            ))
        })?;
        let iface_addr = match ctx.iface_addr {
            Some(a) => a,
            None => route_to(ctx.client.server())?.local,
        };
        (key, group, iface_addr)
    };
    Ok(CastReceive {
        dest,
        group,
        iface_addr,
        key: SessionKey::from_secret(&key),
        receiver: cast.receiver,
        session: Some(cast.session),
        expected_root: Some(root),
        resume: true,
        read_back: read_back_for(write.verify),
        limits: ReceiveLimits {
            timeout: timeout.unwrap_or(NO_TIMEOUT),
            idle: Some(ctx.stall),
        },
        writer: WriterConfig {
            // A block device's resume bitmap lives with the agent's state.
            state_dir: ctx.work_dir.join("resume"),
            ..WriterConfig::default()
        },
        layout: LayoutOptions {
            unused: write.unused,
            grow: write.grow,
            // The seed's partition goes after the grown one.
            reserve: if write.seed.is_some() {
                rackcast_writer::seed::SEED_ROOM
            } else {
                0
            },
        },
    })
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
