//! Shared fixtures: an in-process netboot on its own runtime thread, tool
//! discovery, and network namespaces cleaned up in `Drop`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rackcast_netboot::files::FileTree;
use rackcast_netboot::tftp::{TftpServer, TftpStats, TransferLimits};
use rackcast_netboot::{BootAction, Events, StaticPolicy};

/// True when `bin` is on PATH; otherwise prints why the test is skipped.
pub fn have(bin: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {bin} not installed");
    }
    ok
}

/// True when running as root; otherwise prints why the test is skipped.
pub fn root() -> bool {
    let ok = nix::unistd::geteuid().is_root();
    if !ok {
        eprintln!("SKIP: needs root for network namespaces");
    }
    ok
}

/// Runs a command with a hard time limit; returns (success, stdout+stderr).
pub fn run_limited(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&out.stderr));
            return (status.success(), s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (false, format!("timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A TFTP server on 127.0.0.1 on its own runtime, stopped on drop.
pub struct TftpFixture {
    pub addr: SocketAddr,
    pub stats: Arc<TftpStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TftpFixture {
    pub fn start(root: &Path, limits: TransferLimits) -> Self {
        let policy = Arc::new(StaticPolicy::with_default(BootAction::Ignore));
        let files = FileTree::new(root, policy).unwrap();
        let events = Events::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let srv = TftpServer::bind("127.0.0.1:0".parse().unwrap(), files, limits, events)
                    .await
                    .unwrap();
                tx.send((srv.local_addr().unwrap(), srv.stats())).unwrap();
                tokio::select! {
                    _ = srv.run() => {}
                    _ = stop_rx => {}
                }
            });
        });
        let (addr, stats) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TftpFixture {
            addr,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until no transfer is running.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if self.stats.active.load(Ordering::Relaxed) == 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for TftpFixture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are <= 15 chars).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}{}",
        std::process::id() % 100_000,
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `ip` with arguments, panicking with its output on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted (with its interfaces) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// A `Command` that runs inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside (by PID), then delete the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Enters `ns` on the current thread (for a thread that then binds sockets).
pub fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}
