//! Run Script: the script runs as `interpreter FILE` in its own process
//! group, with stdout and stderr on one pipe (so their lines keep the order
//! they were written in), streamed out in batches; at its timeout, or when
//! the caller says stop, the whole group is killed (a `sleep` the script
//! started dies with it). The group is marked on disk while it runs, so that
//! an agent killed outright ends it when it starts again. A mark is an order
//! to kill a process group, so marks live in a directory only the agent's
//! user can enter (0700, each mark 0600, see [`marks_dir`]).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::error::{AgentError, Result};

/// A batch of output is sent after this long...
pub const BATCH_INTERVAL: Duration = Duration::from_millis(500);
/// ...or once it holds this many bytes.
pub const BATCH_BYTES: usize = 16 * 1024;
/// After SIGTERM, the group gets this long before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_millis(300);
/// After the script exits, descendants still holding its output get this
/// long to finish before the group is killed.
pub const LINGER: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct ScriptSpec {
    /// The script text.
    pub script: String,
    /// The interpreter, with arguments (`/bin/sh`, `/bin/bash -e`, `python3`).
    pub interpreter: String,
    /// Kill it after this long (`None`: never).
    pub timeout: Option<Duration>,
    /// Working directory; the script file is written here too.
    pub dir: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptEnd {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it (not one of ours).
    Signalled(i32),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// The caller said stop; it was killed.
    Stopped,
}

impl ScriptEnd {
    /// A short line for the task's summary.
    pub fn summary(&self) -> String {
        match self {
            ScriptEnd::Exited(n) => format!("exit {n}"),
            ScriptEnd::Signalled(s) => format!("killed by signal {s}"),
            ScriptEnd::TimedOut(t) => format!("killed at its timeout of {} s", t.as_secs()),
            ScriptEnd::Stopped => "stopped".into(),
        }
    }
}

/// Whether to keep going, from the caller's output callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep running.
    Continue,
    /// Kill the script.
    Stop,
}

/// Runs the script; `output` gets its output in order, in batches of whole
/// lines where possible (every [`BATCH_INTERVAL`] or [`BATCH_BYTES`]), and
/// is asked every [`BATCH_INTERVAL`] with an empty batch when there is none.
pub fn run_script(spec: &ScriptSpec, output: &mut dyn FnMut(&str) -> Flow) -> Result<ScriptEnd> {
    std::fs::create_dir_all(&spec.dir).map_err(|e| AgentError::io("creating", &spec.dir, e))?;
    // Never beside a script an earlier, killed agent left running.
    reap_orphans(&spec.dir);
    let file = ScriptFile::create(&spec.dir, &spec.script)?;
    let mut words = spec.interpreter.split_whitespace();
    let program = words.next().unwrap_or("/bin/sh");
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| AgentError::io("creating a pipe for", file.path(), e.into()))?;
    let write_2 = write_end
        .try_clone()
        .map_err(|e| AgentError::io("duplicating a pipe for", file.path(), e))?;
    let mut cmd = Command::new(program);
    cmd.args(words)
        .arg(file.path())
        .current_dir(&spec.dir)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_2))
        .process_group(0);
    let child = cmd.spawn().map_err(|source| AgentError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let mark = GroupMark::create(&spec.dir, child.id() as i32);
    // The command holds our copies of the pipe's write end: close them, or
    // the pipe never reports end of file.
    drop(cmd);
    let chunks = spawn_reader(std::fs::File::from(read_end));
    let mut run = Running {
        child,
        chunks,
        pending: Vec::new(),
        eof: false,
    };
    let end = run.supervise(spec.timeout, output);
    // `supervise` killed the group on every way out.
    drop(mark);
    drop(file);
    end
}

/// The script on disk, removed when dropped.
struct ScriptFile(PathBuf);

impl ScriptFile {
    fn create(dir: &Path, text: &str) -> Result<ScriptFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("script-{}-{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let file = ScriptFile(path);
                    f.write_all(text.as_bytes())
                        .map_err(|e| AgentError::io("writing", &file.0, e))?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(AgentError::io("creating", path, e)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScriptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Running {
    child: Child,
    chunks: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    eof: bool,
}

impl Running {
    fn supervise(
        &mut self,
        timeout: Option<Duration>,
        output: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<ScriptEnd> {
        let start = Instant::now();
        let pgid = Pid::from_raw(self.child.id() as i32);
        let mut last_flush = start;
        let mut status: Option<ExitStatus> = None;
        let mut exited_at: Option<Instant> = None;
        let mut verdict: Option<ScriptEnd> = None;
        let mut term_sent: Option<Instant> = None;
        loop {
            self.gather(Duration::from_millis(50));
            let now = Instant::now();
            if status.is_none() {
                status = self
                    .child
                    .try_wait()
                    .map_err(|e| AgentError::io("waiting for", "the script", e))?;
                if status.is_some() {
                    exited_at = Some(now);
                }
            }
            // Past the timeout: TERM the group, then KILL it.
            if verdict.is_none() {
                if let Some(t) = timeout.filter(|t| now >= start + *t && status.is_none()) {
                    verdict = Some(ScriptEnd::TimedOut(t));
                }
            }
            if verdict.is_some() {
                match term_sent {
                    None => {
                        let _ = killpg(pgid, Signal::SIGTERM);
                        term_sent = Some(now);
                    }
                    Some(t) if now >= t + KILL_GRACE => {
                        let _ = killpg(pgid, Signal::SIGKILL);
                    }
                    Some(_) => {}
                }
            }
            // The script is gone, but something it started still holds the
            // pipe: give it a moment, then end the group.
            if let Some(t) = exited_at {
                if !self.eof && now >= t + LINGER {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
            }
            let done = status.is_some() && self.eof;
            let lost_pipe = exited_at.is_some_and(|t| now >= t + LINGER * 3);
            let last = done || lost_pipe;
            if self.pending.len() >= BATCH_BYTES || now >= last_flush + BATCH_INTERVAL || last {
                last_flush = now;
                loop {
                    let text = self.take_batch(last);
                    if output(&text) == Flow::Stop && verdict.is_none() && status.is_none() {
                        verdict = Some(ScriptEnd::Stopped);
                    }
                    let more = if last {
                        !self.pending.is_empty()
                    } else {
                        self.pending.len() >= BATCH_BYTES
                    };
                    if !more || text.is_empty() {
                        break;
                    }
                }
            }
            if done || lost_pipe {
                // The group is reaped already, but nothing of it may outlive
                // the task.
                let _ = killpg(pgid, Signal::SIGKILL);
                break;
            }
        }
        if let Some(v) = verdict {
            return Ok(v);
        }
        let status = status.ok_or_else(|| AgentError::Config("script status lost".into()))?;
        Ok(
            match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => ScriptEnd::Exited(code),
                (None, Some(sig)) => ScriptEnd::Signalled(sig),
                (None, None) => ScriptEnd::Signalled(0),
            },
        )
    }

    /// Waits up to `wait` for output, then takes what is there (up to a
    /// batch).
    fn gather(&mut self, wait: Duration) {
        if self.eof {
            std::thread::sleep(wait.min(Duration::from_millis(20)));
            return;
        }
        match self.chunks.recv_timeout(wait) {
            Ok(c) => self.pending.extend_from_slice(&c),
            Err(RecvTimeoutError::Timeout) => return,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                return;
            }
        }
        while self.pending.len() < BATCH_BYTES {
            match self.chunks.try_recv() {
                Ok(c) => self.pending.extend_from_slice(&c),
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    /// The text to send now: up to the last newline when a line is still
    /// being written (unless `all` or the batch is full), never splitting a
    /// UTF-8 character.
    fn take_batch(&mut self, all: bool) -> String {
        let cut = batch_cut(&self.pending, all);
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

/// Where the process groups of running scripts are marked, under the
/// scripts' directory: an agent killed without cleaning up (kill -9, the
/// OOM killer) leaves its script's group running, and ends it when it starts
/// again ([`reap_orphans`]) instead of letting it run beside the task's
/// next attempt.
const GROUP_MARKS: &str = ".script-groups";

/// The marks directory under `dir`, created 0700 if missing and checked
/// with [`check_private`].
fn marks_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let marks = dir.join(GROUP_MARKS);
    match std::fs::DirBuilder::new().mode(0o700).create(&marks) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    check_private(&marks)?;
    Ok(marks)
}

/// Makes sure `marks` is a private directory: a real directory (not a
/// symlink), owned by this process's user, mode 0700. Whoever can write a
/// mark can name a group for the agent (root) to kill when it next starts,
/// and the boot and start-time checks in it are no secret (`/proc` shows
/// them). A directory of ours that others could enter is narrowed to 0700
/// (the marks already in it are then judged one by one by their owner);
/// one owned by anyone else is refused, and no mark is read or written.
fn check_private(marks: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(marks)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory (a symlink or a file)",
            marks.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this agent's uid {me}",
                marks.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(marks, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The mark of one running script's process group, removed when dropped
/// (the script ended and its group was killed).
struct GroupMark(Option<PathBuf>);

impl GroupMark {
    /// Marks group `pgid` (led by the process of that id) in a file of mode
    /// 0600 in the private marks directory. Best effort: a script runs even
    /// where the mark cannot be written.
    fn create(dir: &Path, pgid: i32) -> GroupMark {
        let (Some(boot), Some(start)) = (boot_id(), proc_stat(pgid).map(|s| s.start)) else {
            return GroupMark(None);
        };
        let dir = match marks_dir(dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("script group not marked: {e}");
                return GroupMark(None);
            }
        };
        let path = dir.join(pgid.to_string());
        // A mark of an earlier group with the same id may be left over;
        // create_new then never follows whatever stands at the name.
        let _ = std::fs::remove_file(&path);
        let ok = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{boot} {start}\n").as_bytes()))
            .is_ok();
        GroupMark(ok.then_some(path))
    }
}

impl Drop for GroupMark {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            // The group is ours and normally dead already; make sure before
            // the mark that would have ended it goes.
            if let Some(pgid) = p.file_name().and_then(|n| n.to_str()?.parse::<i32>().ok()) {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Ends the process groups of scripts an earlier agent run left behind in
/// `dir` (marked, and still alive in this boot); returns how many processes
/// were killed. A mark whose group is gone, whose leader's id now belongs
/// to another process, or that comes from another boot is just removed, and
/// so is one that is not a regular file of this user's. Nothing is read
/// from a marks directory that is not private ([`check_private`]).
pub fn reap_orphans(dir: &Path) -> usize {
    let marks = dir.join(GROUP_MARKS);
    match check_private(&marks) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!("script marks not read: {e}");
            return 0;
        }
    }
    let Ok(entries) = std::fs::read_dir(&marks) else {
        return 0;
    };
    let me = nix::unistd::geteuid().as_raw();
    let boot = boot_id();
    let mut killed = 0;
    for e in entries.flatten() {
        let path = e.path();
        let pgid = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.uid() == me);
        let text = if ours {
            std::fs::read_to_string(&path).unwrap_or_default()
        } else {
            String::new()
        };
        let mut words = text.split_whitespace();
        let (mark_boot, mark_start) = (
            words.next(),
            words.next().and_then(|w| w.parse::<u64>().ok()),
        );
        if let (Some(pgid), Some(b), Some(start)) = (pgid, mark_boot, mark_start) {
            if pgid > 1 && boot.as_deref() == Some(b) {
                killed += end_group(pgid, start);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// Kills group `pgid` if it is still the one whose leader started at
/// `start` (clock ticks since boot); waits (bounded) for its members to go.
fn end_group(pgid: i32, start: u64) -> usize {
    // While any member lives the kernel keeps the group's id from being
    // reused, so members of `pgid` are the script's, unless the leader's id
    // itself was reused by a process that started later (after the whole
    // group had gone).
    if proc_stat(pgid).is_some_and(|s| s.start != start && !s.zombie) {
        return 0;
    }
    let members = group_members(pgid);
    if members.is_empty() {
        return 0;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    members.len()
}

/// What `/proc/PID/stat` says that matters here.
struct ProcStat {
    pgrp: i32,
    /// Start time, clock ticks after boot.
    start: u64,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: fields
    // start after the last ')', with the state (field 3) first.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: *f.first()? == "Z",
        pgrp: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Live (not zombie) processes in group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.pgrp == pgid && !s.zombie))
        .collect()
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Where to cut `buf` for a batch of at most [`BATCH_BYTES`]: after the
/// last whole line that fits, else (one long line) at a UTF-8 boundary;
/// with `all`, a short buffer is taken whole.
pub(crate) fn batch_cut(buf: &[u8], all: bool) -> usize {
    if all && buf.len() <= BATCH_BYTES {
        return buf.len();
    }
    let window = &buf[..buf.len().min(BATCH_BYTES)];
    if let Some(nl) = window.iter().rposition(|b| *b == b'\n') {
        return nl + 1;
    }
    match std::str::from_utf8(window) {
        Ok(_) => window.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => window.len(),
    }
}

fn spawn_reader(mut pipe: std::fs::File) -> Receiver<Vec<u8>> {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

/// The default interpreter when a script names none.
pub fn default_interpreter() -> &'static str {
    "/bin/sh"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, timeout: Option<Duration>) -> (ScriptSpec, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (
            ScriptSpec {
                script: script.into(),
                interpreter: "/bin/sh".into(),
                timeout,
                dir: dir.path().to_path_buf(),
                env: vec![("RACKCAST_TEST".into(), "yes".into())],
            },
            dir,
        )
    }

    fn run(s: &ScriptSpec) -> (ScriptEnd, Vec<(Duration, String)>) {
        let start = Instant::now();
        let mut batches = Vec::new();
        let end = run_script(s, &mut |t| {
            if !t.is_empty() {
                batches.push((start.elapsed(), t.to_string()));
            }
            Flow::Continue
        })
        .unwrap();
        (end, batches)
    }

    fn text(b: &[(Duration, String)]) -> String {
        b.iter().map(|(_, t)| t.as_str()).collect()
    }

    #[test]
    fn output_of_stdout_and_stderr_in_order_and_exit_code() {
        let (s, _d) = spec(
            "echo one; echo two >&2; printf 'three\\n'; echo \"$RACKCAST_TEST\" >&2; exit 3",
            None,
        );
        let (end, batches) = run(&s);
        assert_eq!(end, ScriptEnd::Exited(3));
        assert_eq!(end.summary(), "exit 3");
        assert_eq!(text(&batches), "one\ntwo\nthree\nyes\n");
    }

    #[test]
    fn output_is_streamed_while_the_script_runs() {
        let (s, _d) = spec("echo first; sleep 1.5; echo second", None);
        let (end, batches) = run(&s);
        assert_eq!(end, ScriptEnd::Exited(0));
        assert_eq!(text(&batches), "first\nsecond\n");
        assert_eq!(batches[0].1, "first\n");
        assert!(
            batches[0].0 < Duration::from_millis(1200),
            "first line came at {:?}, not while the script ran",
            batches[0].0
        );
    }

    #[test]
    fn large_output_comes_in_bounded_batches() {
        let (s, _d) = spec(
            "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the output\"; i=$((i+1)); done",
            None,
        );
        let (end, batches) = run(&s);
        assert_eq!(end, ScriptEnd::Exited(0));
        let all = text(&batches);
        assert_eq!(all.lines().count(), 3000);
        assert!(all.ends_with("line 2999 of the output\n"));
        assert!(batches
            .iter()
            .all(|(_, t)| t.len() <= 2 * BATCH_BYTES + 8192));
    }

    #[test]
    fn killed_at_timeout_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let (mut s, _d) = spec("", Some(Duration::from_millis(500)));
        s.script = format!(
            "sleep 30 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let start = Instant::now();
        let (end, batches) = run(&s);
        let took = start.elapsed();
        assert_eq!(end, ScriptEnd::TimedOut(Duration::from_millis(500)));
        assert!(took < Duration::from_millis(2000), "took {took:?}");
        assert_eq!(text(&batches), "started\n");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_child_gone(pid);
    }

    #[test]
    fn a_script_that_traps_term_is_still_killed() {
        let (s, _d) = spec(
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
            Some(Duration::from_millis(300)),
        );
        let start = Instant::now();
        let (end, _) = run(&s);
        assert!(matches!(end, ScriptEnd::TimedOut(_)));
        assert!(start.elapsed() < Duration::from_millis(2000));
    }

    #[test]
    fn stop_from_the_caller_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let (mut s, _d) = spec("", None);
        s.script = format!(
            "sleep 30 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let start = Instant::now();
        let end = run_script(&s, &mut |t| {
            if t.contains("started") {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
        .unwrap();
        assert_eq!(end, ScriptEnd::Stopped);
        assert!(start.elapsed() < Duration::from_secs(3));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_child_gone(pid);
    }

    #[test]
    fn a_background_daemon_does_not_hold_the_task() {
        let (s, _d) = spec("(sleep 30; echo never) & echo bye", None);
        let start = Instant::now();
        let (end, batches) = run(&s);
        assert_eq!(end, ScriptEnd::Exited(0));
        assert_eq!(text(&batches), "bye\n");
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn a_missing_interpreter_is_a_spawn_error() {
        let (mut s, _d) = spec("true", None);
        s.interpreter = "/nonexistent/interpreter".into();
        match run_script(&s, &mut |_| Flow::Continue) {
            Err(AgentError::Spawn { program, .. }) => {
                assert_eq!(program, "/nonexistent/interpreter")
            }
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }

    #[test]
    fn batches_cut_at_line_ends_and_utf8_boundaries() {
        assert_eq!(batch_cut(b"a\nb", false), 2);
        assert_eq!(batch_cut(b"a\nb", true), 3);
        assert_eq!(batch_cut(b"abc", false), 3);
        let e = "é".as_bytes();
        let partial = [b'x', e[0]];
        assert_eq!(batch_cut(&partial, false), 1);
        let long = vec![b'y'; BATCH_BYTES * 2];
        assert_eq!(batch_cut(&long, true), BATCH_BYTES);
        let mut lines = b"ab\n".repeat(BATCH_BYTES);
        lines.truncate(BATCH_BYTES * 2);
        let cut = batch_cut(&lines, false);
        assert!(cut <= BATCH_BYTES && lines[cut - 1] == b'\n');
    }

    /// The child was killed: it is gone, or a zombie waiting for init.
    fn assert_child_gone(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 3 is the state; Z is a zombie.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.chars().next())
                .unwrap_or('Z');
            if state == 'Z' || state == 'X' {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child {pid} of the script is still running (state {state})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A process group as a killed agent leaves it: `sh` with a background
    /// `sleep`, both in a group of their own. Returns the leader and the
    /// group's id once both members run.
    fn orphan_group() -> (std::process::Child, i32) {
        let child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30; exit 0"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let t0 = Instant::now();
        while group_members(pgid).len() < 3 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(group_members(pgid).len(), 3, "sh and two sleeps");
        (child, pgid)
    }

    #[test]
    fn a_group_left_by_a_killed_agent_is_ended_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, pgid) = orphan_group();
        // The agent died holding the mark.
        std::mem::forget(GroupMark::create(dir.path(), pgid));
        assert!(dir.path().join(GROUP_MARKS).join(pgid.to_string()).exists());
        assert_eq!(reap_orphans(dir.path()), 3);
        assert!(group_members(pgid).is_empty(), "the group lives on");
        let _ = child.wait();
        assert!(!dir.path().join(GROUP_MARKS).join(pgid.to_string()).exists());
        assert_eq!(reap_orphans(dir.path()), 0, "once only");
    }

    #[test]
    fn a_mark_whose_leader_id_was_reused_or_from_another_boot_kills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, pgid) = orphan_group();
        let marks = dir.path().join(GROUP_MARKS);
        std::fs::create_dir_all(&marks).unwrap();
        let start = proc_stat(pgid).unwrap().start;
        let boot = boot_id().unwrap();
        for text in [
            format!("{boot} {}\n", start + 1),
            format!("another-boot {start}\n"),
            "garbage\n".to_string(),
        ] {
            std::fs::write(marks.join(pgid.to_string()), text).unwrap();
            assert_eq!(reap_orphans(dir.path()), 0);
            assert_eq!(group_members(pgid).len(), 3, "an innocent group was hit");
            assert!(!marks.join(pgid.to_string()).exists(), "mark kept");
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait();
    }

    #[test]
    fn a_script_that_ends_leaves_no_mark() {
        let (s, _d) = spec("sleep 0.2 & echo done", None);
        let (end, _) = run(&s);
        assert_eq!(end, ScriptEnd::Exited(0));
        let marks = s.dir.join(GROUP_MARKS);
        let left = std::fs::read_dir(&marks).map_or(0, |d| d.count());
        assert_eq!(left, 0, "marks left in {}", marks.display());
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn marks_live_in_a_0700_directory_in_files_of_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, pgid) = orphan_group();
        let mark = GroupMark::create(dir.path(), pgid);
        let marks = dir.path().join(GROUP_MARKS);
        assert_eq!(mode(&marks), 0o700, "marks directory");
        assert_eq!(mode(&marks.join(pgid.to_string())), 0o600, "mark");
        drop(mark);
        let _ = child.wait();
    }

    #[test]
    fn a_marks_directory_open_to_others_is_narrowed_and_their_marks_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let marks = dir.path().join(GROUP_MARKS);
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let (mut child, pgid) = orphan_group();
        let start = proc_stat(pgid).unwrap().start;
        let planted = marks.join(pgid.to_string());
        std::fs::write(&planted, format!("{} {start}\n", boot_id().unwrap())).unwrap();
        // Planted by another user, as a world-writable directory allows.
        let other = nix::unistd::Uid::from_raw(65534);
        let chowned = nix::unistd::chown(&planted, Some(other), None).is_ok();
        if !chowned {
            eprintln!("not root: checking only that the directory is narrowed");
            std::fs::remove_file(&planted).unwrap();
        }
        assert_eq!(reap_orphans(dir.path()), 0);
        assert_eq!(mode(&marks), 0o700, "left open to others");
        assert_eq!(
            group_members(pgid).len(),
            3,
            "a planted mark killed a group"
        );
        assert!(!planted.exists(), "the planted mark is kept");
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait();
    }

    #[test]
    fn a_marks_directory_of_another_user_or_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, pgid) = orphan_group();
        let text = format!(
            "{} {}\n",
            boot_id().unwrap(),
            proc_stat(pgid).unwrap().start
        );
        // A symlink to a directory holding a good-looking mark.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join(pgid.to_string()), &text).unwrap();
        let marks = dir.path().join(GROUP_MARKS);
        std::os::unix::fs::symlink(&elsewhere, &marks).unwrap();
        assert_eq!(reap_orphans(dir.path()), 0, "marks read through a symlink");
        assert!(marks_dir(dir.path()).is_err());
        assert_eq!(group_members(pgid).len(), 3);
        std::fs::remove_file(&marks).unwrap();
        // A real directory, but another user's.
        std::fs::create_dir(&marks).unwrap();
        std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(marks.join(pgid.to_string()), &text).unwrap();
        let other = nix::unistd::Uid::from_raw(65534);
        if nix::unistd::chown(&marks, Some(other), None).is_ok() {
            assert_eq!(reap_orphans(dir.path()), 0, "another user's marks read");
            let err = marks_dir(dir.path()).expect_err("another user's directory used");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            assert!(GroupMark::create(dir.path(), pgid).0.is_none());
            assert_eq!(group_members(pgid).len(), 3);
        } else {
            eprintln!("not root: cannot give the directory to another user");
        }
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        let _ = child.wait();
    }
}
