//! A throwaway network: a bridge in its own namespace and one namespace per
//! host, each with an `eth0` veth into the bridge. Everything is removed on
//! drop, processes first (by PID).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Rig {
    prefix: String,
    hosts: Vec<String>,
    children: Vec<Option<(String, Child, std::path::PathBuf)>>,
    logs: tempfile::TempDir,
}

pub struct Exit {
    pub success: bool,
    pub text: String,
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Rig {
    /// A rig with a sender and `receivers` receivers, or None (with the
    /// reason printed) where this machine cannot build one.
    pub fn new(tag: &str, receivers: usize) -> Option<Rig> {
        if !nix_is_root() {
            eprintln!("skipping: network namespaces need root");
            return None;
        }
        for tool in ["ip", "iptables"] {
            if !sh(&["sh", "-c", &format!("command -v {tool}")]) {
                eprintln!("skipping: {tool} is not installed");
                return None;
            }
        }
        let prefix = format!("rct{}{tag}", std::process::id());
        let mut rig = Rig {
            hosts: Vec::new(),
            children: Vec::new(),
            logs: tempfile::tempdir().unwrap(),
            prefix,
        };
        let sw = format!("{}sw", rig.prefix);
        must(&["ip", "netns", "add", &sw]);
        rig.hosts.push(sw.clone());
        must(&[
            "ip",
            "-n",
            &sw,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        must(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for i in 0..=receivers {
            let host = format!("{}h{i}", rig.prefix);
            must(&["ip", "netns", "add", &host]);
            rig.hosts.push(host.clone());
            let port = format!("p{i}");
            must(&[
                "ip", "link", "add", "eth0", "netns", &host, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ]);
            must(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            must(&["ip", "-n", &host, "link", "set", "lo", "up"]);
            must(&["ip", "-n", &host, "link", "set", "eth0", "up"]);
            must(&[
                "ip",
                "-n",
                &host,
                "addr",
                "add",
                &format!("10.77.{}.{}/16", i / 200, i % 200 + 2),
                "dev",
                "eth0",
            ]);
            must(&[
                "ip",
                "-n",
                &host,
                "route",
                "add",
                "224.0.0.0/4",
                "dev",
                "eth0",
            ]);
        }
        Some(rig)
    }

    /// The sender's namespace.
    pub fn sender(&self) -> String {
        format!("{}h0", self.prefix)
    }

    /// Receiver `r`'s namespace.
    pub fn receiver(&self, r: usize) -> String {
        format!("{}h{}", self.prefix, r + 1)
    }

    /// Drops a random fraction of UDP arriving at `host`.
    pub fn loss(&self, host: &str, p: f64) {
        must(&[
            "ip",
            "netns",
            "exec",
            host,
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "udp",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p.to_string(),
            "-j",
            "DROP",
        ]);
    }

    /// Limits what the switch sends receiver `r` to `rate` (tc syntax, e.g.
    /// "40mbit") with a token bucket and a short queue: a slow port.
    pub fn slow(&self, r: usize, rate: &str) {
        let sw = format!("{}sw", self.prefix);
        let port = format!("p{}", r + 1);
        must(&[
            "ip", "netns", "exec", &sw, "tc", "qdisc", "add", "dev", &port, "root", "tbf", "rate",
            rate, "burst", "64kb", "latency", "50ms",
        ]);
    }

    /// Drops (or stops dropping) all UDP arriving at `host`: a loss burst.
    pub fn block(&self, host: &str, on: bool) {
        must(&[
            "ip",
            "netns",
            "exec",
            host,
            "iptables",
            if on { "-I" } else { "-D" },
            "INPUT",
            "-p",
            "udp",
            "-j",
            "DROP",
        ]);
    }

    /// Starts `rackcast` in `host`; returns a handle for `wait` / `kill`.
    pub fn spawn(&mut self, host: &str, name: &str, args: impl FnOnce(&mut Command)) -> usize {
        let log = self
            .logs
            .path()
            .join(format!("{name}-{}.log", self.children.len()));
        let f = std::fs::File::create(&log).unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", host, env!("CARGO_BIN_EXE_rackcast")]);
        args(&mut c);
        c.stdout(f.try_clone().unwrap())
            .stderr(f)
            .stdin(Stdio::null());
        let child = c.spawn().expect("start rackcast");
        self.children.push(Some((name.to_string(), child, log)));
        self.children.len() - 1
    }

    /// Waits (bounded) for a process; kills it at the limit.
    pub fn wait(&mut self, h: usize, limit: Duration) -> Exit {
        let (name, mut child, log) = self.children[h].take().expect("process not yet waited for");
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        if status.is_none() {
            text.push_str(&format!("\n[{name} killed after {limit:?}]"));
        }
        Exit {
            success: status.is_some_and(|s| s.success()),
            text,
        }
    }

    /// Kills a process now (SIGKILL).
    pub fn kill(&mut self, h: usize) {
        if let Some((_, mut child, _)) = self.children[h].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let (_, mut child, _) = c;
            let _ = child.kill();
            let _ = child.wait();
        }
        // Deleting a namespace deletes its veths and iptables rules with it.
        for h in self.hosts.iter().rev() {
            sh(&["ip", "netns", "delete", h]);
        }
    }
}

fn nix_is_root() -> bool {
    // SAFETY-free: read our effective uid from procfs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
