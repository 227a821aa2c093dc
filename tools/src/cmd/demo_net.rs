//! `rackcast demo --loss PCT`: the targets in network namespaces of their
//! own, on veths into a bridge the demo creates (and removes), each dropping
//! PCT% of incoming multicast with `iptables -m statistic` (this kernel has
//! no netem). Everything stays on this machine.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The namespaces, veths and bridge of one demo run.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    targets: usize,
}

const NET: [u8; 3] = [10, 213, 0];

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lab {
    /// Builds the segment: bridge `PREFIXbr` with 10.213.0.1 for the server,
    /// target `i` in namespace `PREFIXtI` at 10.213.0.(10+i).
    pub fn new(targets: usize, loss_pct: f64) -> anyhow::Result<Lab> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .context("running id -u")?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            bail!("--loss runs the targets in network namespaces with iptables: run it as root");
        }
        for tool in ["ip", "iptables"] {
            if Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
            {
                bail!("--loss needs `{tool}` (Debian package iproute2 / iptables)");
            }
        }
        let lab = Lab {
            prefix: format!("rcd{}", std::process::id() % 100_000),
            targets,
        };
        let br = lab.bridge();
        sh(&[
            "ip",
            "link",
            "add",
            &br,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.server_addr()),
            "dev",
            &br,
        ])?;
        sh(&["ip", "link", "set", &br, "up"])?;
        let p = format!("{:.4}", loss_pct / 100.0);
        for i in 0..targets {
            let ns = lab.ns(i);
            let (host, peer) = (format!("{}v{i}", lab.prefix), format!("{}p{i}", lab.prefix));
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ])?;
            sh(&["ip", "link", "set", &host, "master", &br, "up"])?;
            sh(&["ip", "link", "set", &peer, "netns", &ns])?;
            sh(&["ip", "-n", &ns, "link", "set", &peer, "name", "eth0"])?;
            let addr = Ipv4Addr::new(NET[0], NET[1], NET[2], 10 + i as u8);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "route",
                "add",
                "224.0.0.0/4",
                "dev",
                "eth0",
            ])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "iptables",
                "-A",
                "INPUT",
                "-d",
                "224.0.0.0/4",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}t{i}", self.prefix)
    }

    /// The server's address on the bridge.
    pub fn server_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], NET[2], 1)
    }

    /// Where the server listens.
    pub fn server_listen(&self) -> String {
        format!("{}:0", self.server_addr())
    }

    /// `exe` run inside target `i`'s namespace.
    pub fn command_in(&self, i: usize, exe: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(exe);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.targets {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge()]);
    }
}
