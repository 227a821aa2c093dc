//! A real PostgreSQL for tests: Debian's server binaries run a cluster of
//! the test's own in a temporary directory, on a free loopback port, as
//! the `postgres` user when the test runs as root (PostgreSQL refuses
//! root), stopped by its PID when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to accept connections.
const READY: Duration = Duration::from_secs(30);
/// The superuser the cluster is made with (trust authentication, loopback only).
pub const USER: &str = "rackcast";

/// A running cluster.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    port: u16,
    child: Child,
    as_user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a cluster, or `None` (the reason printed) where PostgreSQL is
    /// not installed (`scripts/deps.sh test` installs it).
    pub fn start() -> Option<Postgres> {
        let Some(bin) = server_bin() else {
            eprintln!(
                "SKIP (PostgreSQL backend): no /usr/lib/postgresql/*/bin/initdb \
                 (scripts/deps.sh test installs postgresql)"
            );
            return None;
        };
        let as_user = if crate::euid() == 0 {
            match passwd_ids("postgres") {
                Some(ids) => Some(ids),
                None => {
                    eprintln!("SKIP (PostgreSQL backend): running as root, and no postgres user");
                    return None;
                }
            }
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("rackcast-pg.")
            .tempdir()
            .expect("a temporary directory");
        if let Some((uid, gid)) = as_user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null());
        let out = as_ids(&mut initdb, as_user).output().expect("initdb");
        assert!(out.status.success(), "initdb: {out:?}");
        std::fs::File::create(&log).expect("the log");
        let port = free_port();
        let child = spawn(&bin, dir.path(), port, as_user);
        let pg = Postgres {
            bin,
            port,
            child,
            as_user,
            dir,
        };
        pg.wait_ready();
        Some(pg)
    }

    /// Stops the server (a fast shutdown) and starts it again on the same
    /// data and port: what a database restart under a running rackcast is.
    /// `down` is how long it stays stopped.
    pub fn restart(&mut self, down: Duration) {
        self.stop();
        std::thread::sleep(down);
        self.child = spawn(&self.bin, self.dir.path(), self.port, self.as_user);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while !self.ready() {
            assert!(
                start.elapsed() < READY,
                "postgres did not start in {READY:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT (a fast shutdown, so its backends go with it), then SIGKILL
    /// after a bounded wait.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new, empty database `name`, and its URL.
    pub fn create_db(&self, name: &str) -> String {
        let mut c = Command::new(self.bin.join("createdb"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            USER,
            name,
        ]);
        let out = as_ids(&mut c, self.as_user).output().expect("createdb");
        assert!(out.status.success(), "createdb {name}: {out:?}");
        self.url(name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        crate::read_lossy(&self.dir.path().join("postgres.log"))
    }

    fn ready(&self) -> bool {
        let mut c = Command::new(self.bin.join("pg_isready"));
        c.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
        as_ids(&mut c, self.as_user)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server on `dir/data`, listening on loopback `port`, its log
/// appended to `dir/postgres.log`.
fn spawn(bin: &Path, dir: &Path, port: u16, as_user: Option<(u32, u32)>) -> Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("postgres.log"))
        .expect("the log");
    let mut postgres = Command::new(bin.join("postgres"));
    postgres
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        // A test's data need not survive a power cut.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    as_ids(&mut postgres, as_user).spawn().expect("postgres")
}

/// The newest `/usr/lib/postgresql/VERSION/bin` holding initdb.
fn server_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// `name`'s uid and gid from /etc/passwd.
fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || f[0] != name {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

fn as_ids(c: &mut Command, ids: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = ids {
        // std drops root's supplementary groups when it sets the uid.
        c.uid(uid).gid(gid);
    }
    c
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
