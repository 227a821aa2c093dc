//! Restores in a child process: this test binary re-executed with
//! [`CHILD_ENV`] set runs one restore and exits with its outcome, so a test
//! can confine the restore (a seccomp filter) or look at it from outside (a
//! FUSE file system served by the parent) and read a real exit code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rackcast_engine::image::ImageReader;
use rackcast_writer::{restore, EngineChoice, RestoreConfig, VerifyMode};

use crate::common::*;

/// Set (to anything) in a child; the restore's parameters follow.
const CHILD_ENV: &str = "RACKCAST_TEST_RESTORE_CHILD";
/// The test the child runs: the one that checks for [`CHILD_ENV`].
const CHILD_TEST: &str = "child::restore_in_a_child_process_matches_the_source";
/// Prefix of the report lines the child prints.
const MARK: &str = "rackcast-child ";
/// How long a child may take before it is killed and the test fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// One restore to run in a child.
#[derive(Debug, Clone)]
pub struct ChildRestore {
    pub img: PathBuf,
    pub dest: PathBuf,
    /// The resume bitmap (kept off the target's file system).
    pub state: PathBuf,
    pub engine: EngineChoice,
    pub verify: VerifyMode,
    pub retries: u32,
}

impl ChildRestore {
    pub fn new(f: &Fixture, dest: &Path, engine: EngineChoice) -> ChildRestore {
        ChildRestore {
            img: f.img.clone(),
            dest: dest.into(),
            state: f.path("child.rackcast-resume"),
            engine,
            verify: VerifyMode::Full,
            retries: 1,
        }
    }

    /// The child, ready to spawn; `pre_exec` hooks may be added to it.
    pub fn command(&self) -> Command {
        let mut c = Command::new(std::env::current_exe().expect("test binary path"));
        c.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .env("RC_IMG", &self.img)
            .env("RC_DEST", &self.dest)
            .env("RC_STATE", &self.state)
            .env("RC_ENGINE", format!("{:?}", self.engine))
            .env("RC_VERIFY", format!("{:?}", self.verify))
            .env("RC_RETRIES", self.retries.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }
}

/// What a child restore did.
#[derive(Debug)]
pub struct ChildOutcome {
    pub status: ExitStatus,
    /// The report's fields (`engine`, `engine_fallback`, `chunks_written`,
    /// `chunks_resumed`, `chunks_rewritten`, `chunks_verified`) when the
    /// restore succeeded.
    pub report: HashMap<String, String>,
    /// The restore's error when it failed.
    pub error: Option<String>,
    /// Everything the child printed, shown (through Debug) when an
    /// assertion on it fails.
    #[allow(dead_code)]
    pub stdout: String,
    #[allow(dead_code)]
    pub stderr: String,
}

impl ChildOutcome {
    pub fn field(&self, name: &str) -> &str {
        self.report
            .get(name)
            .unwrap_or_else(|| panic!("child reported no {name}: {self:#?}"))
    }
}

/// Waits (bounded) for a spawned child restore and parses what it said.
pub fn wait(child: Child) -> ChildOutcome {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CHILD_TIMEOUT) {
        Ok(out) => out.expect("wait for the child restore"),
        Err(_) => {
            // The child is ours and still running: end it so the test fails
            // instead of hanging.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("child restore (pid {pid}) still running after {CHILD_TIMEOUT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut report = HashMap::new();
    let mut error = None;
    for line in stdout.lines().chain(stderr.lines()) {
        // The harness's "test ... " may stand before the first mark.
        let Some(rest) = line.find(MARK).map(|at| &line[at + MARK.len()..]) else {
            continue;
        };
        let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
        if k == "error" {
            error = Some(v.to_string());
        } else {
            report.insert(k.to_string(), v.to_string());
        }
    }
    ChildOutcome {
        status: out.status,
        report,
        error,
        stdout,
        stderr,
    }
}

/// The entry point of every child, and on its own (no [`CHILD_ENV`]) the
/// control for the confined tests: an unconfined child restore with the
/// automatic engine gets io_uring where the kernel allows it, exits 0 and
/// leaves the source's bytes.
#[test]
fn restore_in_a_child_process_matches_the_source() {
    if std::env::var_os(CHILD_ENV).is_some() {
        run_child();
    }
    let f = Fixture::new(3 << 20, 256 * 1024, 81);
    let dest = f.path("dest");
    let run = ChildRestore::new(&f, &dest, EngineChoice::Auto);
    let out = wait(run.command().spawn().expect("spawn child restore"));
    assert!(out.status.success(), "child restore failed: {out:#?}");
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|s| s.trim() != "0");
    if disabled {
        eprintln!("io_uring is restricted by sysctl here: not checking the engine");
    } else {
        assert!(
            out.field("engine").starts_with("io_uring"),
            "unconfined child: {out:#?}"
        );
        assert_eq!(out.field("engine_fallback"), "none");
    }
    assert_same(
        &std::fs::read(&dest).expect("read"),
        &f.src,
        "child restore",
    );
}

/// The child's side: one restore as the environment describes, the report
/// on stdout, the error on stderr, exit status 0 or 1. Never returns.
fn run_child() -> ! {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("child without {k}"));
    let engine = match var("RC_ENGINE").as_str() {
        "Auto" => EngineChoice::Auto,
        "Uring" => EngineChoice::Uring,
        "Sync" => EngineChoice::Sync,
        e => panic!("engine {e}"),
    };
    let verify = match var("RC_VERIFY").as_str() {
        "Off" => VerifyMode::Off,
        "Sample" => VerifyMode::Sample,
        "Full" => VerifyMode::Full,
        v => panic!("verify {v}"),
    };
    let state = PathBuf::from(var("RC_STATE"));
    let mut cfg = restore_config(engine, state.parent().expect("state dir"));
    cfg.writer.state_path = Some(state);
    cfg = RestoreConfig {
        verify,
        verify_retries: var("RC_RETRIES").parse().expect("retries"),
        ..cfg
    };
    let started = Instant::now();
    let result = ImageReader::open(Path::new(&var("RC_IMG")))
        .map_err(|e| e.to_string())
        .and_then(|img| {
            restore(&img, Path::new(&var("RC_DEST")), &cfg, &mut |_| {}).map_err(|e| e.to_string())
        });
    match result {
        Ok(r) => {
            let w = &r.write;
            println!(
                "{MARK}engine={}",
                w.engine.map_or("none".into(), |e| e.to_string())
            );
            println!(
                "{MARK}engine_fallback={}",
                w.engine_fallback.as_deref().unwrap_or("none")
            );
            println!("{MARK}direct={}", w.direct);
            println!("{MARK}chunks_written={}", w.chunks_written);
            println!("{MARK}chunks_resumed={}", w.chunks_resumed);
            println!("{MARK}chunks_rewritten={}", r.chunks_rewritten);
            println!("{MARK}chunks_verified={}", r.chunks_verified);
            println!("{MARK}elapsed_ms={}", started.elapsed().as_millis());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{MARK}error={e}");
            std::process::exit(1)
        }
    }
}
