//! Unicast fallback: of two agents in one session, one joins multicast on
//! a veth interface of the test's own (its peer goes nowhere), which the
//! sender's packets (on loopback) never reach. It hears nothing, fetches the image from the
//! server by HTTP range requests after `unicast_after` seconds, and both
//! disks come out byte-exact, each report naming how its chunks came.

use std::process::Command;
use std::time::Duration;

use super::rig::{hash_file, sample_image, Server};
use super::{mac, submit};

/// A veth pair, one end with an address, removed (both ends) when dropped.
struct Deaf(&'static str);

impl Deaf {
    fn new(name: &'static str, peer: &str, addr: &str) -> Deaf {
        let _ = Command::new("ip").args(["link", "del", name]).output();
        for args in [
            vec!["link", "add", name, "type", "veth", "peer", "name", peer],
            vec!["addr", "add", addr, "dev", name],
            vec!["link", "set", peer, "up"],
            vec!["link", "set", name, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        Deaf(name)
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

#[test]
fn a_receiver_that_hears_no_multicast_completes_by_unicast_beside_one_that_does() {
    if rackcast_tests::euid() != 0 {
        eprintln!("SKIP: needs root for its veth interface");
        return;
    }
    let _deaf = Deaf::new("rcdeaf0", "rcdeaf1", "169.254.77.1/32");
    let mut s = Server::start_with(
        "200M",
        "127.0.0.1:0",
        Some("unicast_after = 3\nunicast_rate = 100000000\n"),
    );
    let (disk, img) = sample_image(s.dir.path(), "48M");
    s.upload("golden", &img);
    let macs: Vec<String> = (1..=2).map(|i| mac(0x60 + i)).collect();
    let disks: Vec<_> = (1..=2)
        .map(|i| s.dir.path().join(format!("u{i}.disk")))
        .collect();
    s.agent(&macs[0], &disks[0], "linux-x64");
    s.agent_with(
        &macs[1],
        &disks[1],
        "linux-x64",
        &["--iface", "169.254.77.1"],
    );
    s.wait_registered(&macs, Duration::from_secs(30));
    let id = submit(
        &s,
        serde_json::json!({
            "name": "unicast",
            "targets": macs,
            "cast": {"max_wait": 5},
            "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 300}],
        }),
    );
    let j = s.wait_job(id, Duration::from_secs(180));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    let want = hash_file(&disk);
    for d in &disks {
        assert_eq!(hash_file(d), want, "{}", d.display());
    }
    // Each report names its transport.
    let finished: Vec<String> = s
        .events(id)
        .iter()
        .filter(|e| e.kind == "task.finished")
        .map(|e| {
            format!(
                "{} {}",
                e.target.map(|m| m.to_string()).unwrap_or_default(),
                e.detail
            )
        })
        .collect();
    let by = |m: &str, t: &str| finished.iter().any(|f| f.starts_with(m) && f.contains(t));
    assert!(by(&macs[0], "by multicast"), "{finished:#?}");
    assert!(
        by(&macs[1], "by unicast"),
        "{finished:#?}\n{}",
        s.agents_log()
    );
    assert!(
        s.agents_log()
            .contains("fetching the rest from the server by unicast"),
        "{}",
        s.agents_log()
    );

    // A job that asks for unicast: no session at all, and every chunk
    // fetched again onto a disk that lost them.
    // The local agent exits when it is sent to its disk; it boots again.
    s.agent_mut(0).wait_exit(Duration::from_secs(30));
    let len = std::fs::metadata(&disks[0]).unwrap().len();
    std::fs::write(&disks[0], vec![0u8; len as usize]).unwrap();
    s.agent_mut(0).restart();
    let id = submit(
        &s,
        serde_json::json!({
            "name": "unicast only",
            "targets": [macs[0]],
            "cast": {"transport": "unicast"},
            "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 300}],
        }),
    );
    let j = s.wait_job(id, Duration::from_secs(180));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    assert_eq!(hash_file(&disks[0]), want);
    let ev = s.events(id);
    assert!(!ev.iter().any(|e| e.kind.starts_with("cast.")), "{ev:#?}");
    assert!(
        ev.iter()
            .any(|e| e.kind == "task.finished" && e.detail.to_string().contains("by unicast")),
        "{ev:#?}"
    );
}
