//! `rackcast cast send|recv` over real sockets: a bridge, a sender namespace
//! and N receiver namespaces joined by veth pairs, all created by the test and
//! removed afterwards. Loss is injected with `iptables -m statistic` (this
//! kernel has no netem). Needs root; skips with a reason otherwise.

mod replay;
mod rig;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rig::Rig;

const GROUP: &str = "239.255.77.1:7400";

fn b3(p: &std::path::Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

struct Session {
    rig: Rig,
    dir: tempfile::TempDir,
    src: std::path::PathBuf,
    img: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn ok(c: &mut std::process::Command) {
    assert!(c.stdout(Stdio::null()).status().unwrap().success(), "{c:?}")
}

fn session(tag: &str, receivers: usize, size: &str) -> Option<Session> {
    session_of(tag, receivers, |src| {
        ok(std::process::Command::new(env!("CARGO_BIN_EXE_rackcast"))
            .args(["image", "sample"])
            .arg(src)
            .args(["--size", size]));
    })
}

/// A rig and an image of the source `make` writes.
fn session_of(tag: &str, receivers: usize, make: impl FnOnce(&Path)) -> Option<Session> {
    let rig = Rig::new(tag, receivers)?;
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let src = dir.path().join("src.raw");
    let img = dir.path().join("img.rcimg");
    let key = dir.path().join("session.key");
    std::fs::write(&key, b"0123456789abcdef-rackcast-test-key").unwrap();
    let bin = env!("CARGO_BIN_EXE_rackcast");
    make(&src);
    ok(std::process::Command::new(bin)
        .args(["image", "create"])
        .arg(&src)
        .arg(&img)
        .args(["--chunk-size", "1M"]));
    Some(Session {
        rig,
        dir,
        src,
        img,
        key,
    })
}

impl Session {
    fn out(&self, r: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("out-{r}"))
    }

    fn recv(&mut self, r: usize) -> usize {
        self.recv_with(r, &[])
    }

    /// `recv` with more `cast recv` flags.
    fn recv_with(&mut self, r: usize, extra: &[&str]) -> usize {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let out = self.out(r);
        let key = self.key.clone();
        let host = self.rig.receiver(r);
        self.rig.spawn(&host, &format!("recv-{r}"), |c| {
            c.args(["cast", "recv"])
                .arg(&out)
                .args([
                    "--group",
                    GROUP,
                    "--iface",
                    "eth0",
                    "--timeout",
                    "180",
                    "--verify",
                    "full",
                    "--key-file",
                ])
                .arg(&key)
                .args(&extra);
        })
    }

    fn send(&mut self, n: usize, rate: &str) -> usize {
        let (img, key) = (self.img.clone(), self.key.clone());
        let host = self.rig.sender();
        self.rig.spawn(&host, "send", |c| {
            c.args(["cast", "send"]).arg(&img).args([
                "--group",
                GROUP,
                "--iface",
                "eth0",
                "--rate",
                rate,
                "--max-wait",
                "20",
                "--deadline",
                "150",
            ]);
            c.args(["--min-receivers", &n.to_string(), "--key-file"])
                .arg(&key);
        })
    }

    /// Every receiver's target equals the source.
    fn check_outputs(&self, n: usize) {
        let want = b3(&self.src);
        for r in 0..n {
            assert_eq!(
                b3(&self.out(r)),
                want,
                "receiver {r}'s target differs from the source"
            );
        }
    }
}

fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no {key:?} in:\n{text}"))
}

#[test]
fn four_receivers_lossless_and_a_forger_changes_nothing() {
    let Some(mut s) = session("a", 5, "48M") else {
        return;
    };
    // A second sender on the group with the wrong key and another image.
    let other = s.dir.path().join("other.raw");
    let other_img = s.dir.path().join("other.rcimg");
    let bin = env!("CARGO_BIN_EXE_rackcast");
    std::process::Command::new(bin)
        .args(["image", "sample"])
        .arg(&other)
        .args(["--size", "8M", "--shape", "random"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    std::process::Command::new(bin)
        .args(["image", "create"])
        .arg(&other)
        .arg(&other_img)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let wrong = s.dir.path().join("wrong.key");
    std::fs::write(&wrong, b"this is not the session key at all").unwrap();
    let forger_host = s.rig.receiver(4);
    let forger = s.rig.spawn(&forger_host, "forger", |c| {
        c.args(["cast", "send"])
            .arg(&other_img)
            .args([
                "--group",
                GROUP,
                "--iface",
                "eth0",
                "--max-wait",
                "0",
                "--deadline",
                "60",
                "--key-file",
            ])
            .arg(&wrong);
    });
    let rx: Vec<usize> = (0..4).map(|r| s.recv(r)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let tx = s.send(4, "300M");
    let out = s.rig.wait(tx, Duration::from_secs(150));
    assert!(out.success, "sender failed:\n{}", out.text);
    assert_eq!(field(&out.text, "result"), "4/4 receivers done");
    for r in rx {
        let o = s.rig.wait(r, Duration::from_secs(30));
        assert!(o.success, "receiver failed:\n{}", o.text);
        assert_eq!(
            field(&o.text, "verified"),
            format!("ok ({} chunks read back)", 48)
        );
        let dropped = field(&o.text, "dropped");
        let bad_mac: u64 = dropped.split_whitespace().next().unwrap().parse().unwrap();
        assert!(bad_mac > 0, "the forger's packets never arrived: {dropped}");
    }
    s.rig.kill(forger);
    s.check_outputs(4);
}

#[test]
fn four_receivers_with_loss_a_burst_and_a_restart() {
    let Some(mut s) = session("b", 4, "48M") else {
        return;
    };
    for r in 0..4 {
        s.rig.loss(&s.rig.receiver(r), 0.02);
    }
    let mut rx: Vec<usize> = (0..4).map(|r| s.recv(r)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // Slow enough that the burst and the restart land mid-stream.
    let tx = s.send(4, "12M");
    std::thread::sleep(Duration::from_millis(800));
    let burst_host = s.rig.receiver(1);
    s.rig.block(&burst_host, true);
    s.rig.kill(rx[2]);
    std::thread::sleep(Duration::from_millis(1000));
    s.rig.block(&burst_host, false);
    rx[2] = s.recv(2);
    let out = s.rig.wait(tx, Duration::from_secs(150));
    assert!(out.success, "sender failed:\n{}", out.text);
    for (r, p) in rx.into_iter().enumerate() {
        let o = s.rig.wait(p, Duration::from_secs(30));
        assert!(o.success, "receiver {r} failed:\n{}", o.text);
        if r == 2 {
            let written = field(&o.text, "written");
            assert!(
                !written.contains("(0 chunks already"),
                "the restarted receiver resumed nothing: {written}"
            );
        }
    }
    s.check_outputs(4);
}

/// 2% loss everywhere, and one receiver behind a port a tenth as fast as
/// the sender's rate: a straggler, which must not hold the others and
/// must still finish.
#[test]
fn sixteen_receivers_with_loss_and_a_straggler() {
    let Some(mut s) = session("c", 16, "32M") else {
        return;
    };
    for r in 0..16 {
        s.rig.loss(&s.rig.receiver(r), 0.02);
    }
    s.rig.slow(15, "160mbit");
    let rx: Vec<usize> = (0..16).map(|r| s.recv(r)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let tx = s.send(16, "200M");
    let out = s.rig.wait(tx, Duration::from_secs(170));
    assert!(
        out.success,
        "sender failed after {:?}:\n{}",
        start.elapsed(),
        out.text
    );
    assert_eq!(field(&out.text, "result"), "16/16 receivers done");
    for (r, p) in rx.into_iter().enumerate() {
        let o = s.rig.wait(p, Duration::from_secs(30));
        assert!(o.success, "receiver {r} failed:\n{}", o.text);
    }
    s.check_outputs(16);
}

#[test]
fn a_late_joiner_under_a_replayed_earlier_session_completes_the_live_one() {
    let Some(mut s) = session("d", 3, "16M") else {
        return;
    };
    let group: std::net::SocketAddrV4 = GROUP.parse().unwrap();
    let bin = env!("CARGO_BIN_EXE_rackcast");
    let attacker = s.rig.receiver(0);
    // Session 1 (image A, key K), recorded by the attacker.
    let tape = replay::record(&attacker, group, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(200));
    let early = s.recv(1);
    std::thread::sleep(Duration::from_millis(300));
    let tx = s.send(1, "100M");
    let out = s.rig.wait(tx, Duration::from_secs(120));
    assert!(out.success, "session 1's sender failed:\n{}", out.text);
    assert!(s.rig.wait(early, Duration::from_secs(30)).success);
    let tape = tape.stop();
    assert!(tape.len() > 100, "recorded only {} packets", tape.len());
    // Session 2: the same key file, image B.
    let b_src = s.dir.path().join("b.raw");
    let b_img = s.dir.path().join("b.rcimg");
    for args in [
        vec![
            "image",
            "sample",
            b_src.to_str().unwrap(),
            "--size",
            "12M",
            "--shape",
            "random",
        ],
        vec![
            "image",
            "create",
            b_src.to_str().unwrap(),
            b_img.to_str().unwrap(),
            "--chunk-size",
            "1M",
        ],
    ] {
        let st = std::process::Command::new(bin)
            .args(&args)
            .stdout(Stdio::null())
            .status();
        assert!(st.unwrap().success(), "{args:?}");
    }
    let spray = replay::replay(&attacker, group, tape, 20_000, Duration::from_secs(120));
    let out_b = |r: usize| s.dir.path().join(format!("b-out-{r}"));
    let recv_b = |rig: &mut rig::Rig, r: usize, key: &std::path::Path, dest: std::path::PathBuf| {
        let host = rig.receiver(r);
        let key = key.to_path_buf();
        rig.spawn(&host, &format!("recv-b-{r}"), move |c| {
            c.args(["cast", "recv"]).arg(&dest).args([
                "--group",
                GROUP,
                "--iface",
                "eth0",
                "--timeout",
                "90",
                "--verify",
                "full",
                "--key-file",
            ]);
            c.arg(&key);
        })
    };
    let key = s.key.clone();
    let early = recv_b(&mut s.rig, 1, &key, out_b(1));
    std::thread::sleep(Duration::from_millis(300));
    let host = s.rig.sender();
    let (img, k2) = (b_img, key.clone());
    // Slow enough that the late receiver joins a running session.
    let tx = s.rig.spawn(&host, "send-b", move |c| {
        c.args(["cast", "send"]).arg(&img).args([
            "--group",
            GROUP,
            "--iface",
            "eth0",
            "--rate",
            "3M",
            "--min-receivers",
            "1",
            "--max-wait",
            "20",
            "--deadline",
            "100",
            "--key-file",
        ]);
        c.arg(&k2);
    });
    std::thread::sleep(Duration::from_millis(1500));
    let late = recv_b(&mut s.rig, 2, &key, out_b(2));
    let o = s.rig.wait(late, Duration::from_secs(100));
    let sent = spray.stop();
    assert!(o.success, "the late receiver failed:\n{}", o.text);
    assert_eq!(
        b3(&out_b(2)),
        b3(&b_src),
        "the late receiver's target is not image B"
    );
    let dropped = field(&o.text, "dropped");
    let other: u64 = dropped
        .split(", ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let unechoed: u64 = dropped
        .split(", ")
        .nth(4)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        other > 0 && unechoed > 0,
        "the replay never reached it ({sent} sent): {dropped}"
    );
    let e = s.rig.wait(early, Duration::from_secs(60));
    assert!(e.success, "the early receiver failed:\n{}", e.text);
    assert_eq!(b3(&out_b(1)), b3(&b_src));
    let out = s.rig.wait(tx, Duration::from_secs(60));
    assert!(out.success, "session 2's sender failed:\n{}", out.text);
}

/// A GPT disk with ext4 and swap over noise (`scripts/test-disk.sh`): the
/// image holds their used blocks only (masks and absent chunks), and two
/// receivers under 2% loss end with what a local restore of the image
/// gives, an ext4 that passes `e2fsck -fn` and holds its files; the second
/// writes over a disk of noise with `--unused zero`, and ends the same.
#[test]
fn a_disk_with_filesystems_casts_only_their_used_blocks() {
    for t in [
        "sfdisk",
        "mkfs.ext4",
        "mkswap",
        "mkfs.vfat",
        "mcopy",
        "e2fsck",
        "debugfs",
    ] {
        if !["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
        {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs e2fsprogs, fdisk)");
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-disk.sh");
    let Some(mut s) = session_of("f", 2, |src| {
        ok(std::process::Command::new(&script).arg(src));
    }) else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_rackcast");
    let inspect = std::process::Command::new(bin)
        .args(["image", "inspect"])
        .arg(&s.img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.contains("absent"), "no absent chunks:\n{text}");
    for r in 0..2 {
        s.rig.loss(&s.rig.receiver(r), 0.02);
    }
    let noise: Vec<u8> = (0..64u64 << 20)
        .map(|i| (i.wrapping_mul(0x9E37_79B9) >> 13) as u8)
        .collect();
    std::fs::write(s.out(1), &noise).unwrap();
    let rx = vec![s.recv(0), s.recv_with(1, &["--unused", "zero"])];
    std::thread::sleep(Duration::from_millis(300));
    let tx = s.send(2, "200M");
    let out = s.rig.wait(tx, Duration::from_secs(150));
    assert!(out.success, "sender failed:\n{}", out.text);
    for (r, p) in rx.into_iter().enumerate() {
        let o = s.rig.wait(p, Duration::from_secs(30));
        assert!(o.success, "receiver {r} failed:\n{}", o.text);
    }
    let reference = s.dir.path().join("reference.raw");
    ok(std::process::Command::new(bin)
        .args(["image", "restore"])
        .arg(&s.img)
        .arg(&reference));
    let want = b3(&reference);
    for r in 0..2 {
        assert_eq!(b3(&s.out(r)), want, "receiver {r} differs from a restore");
    }
    // Partition 3 (the ext4) of receiver 0's disk, from 17 MiB to the
    // backup GPT.
    let disk = std::fs::read(s.out(0)).unwrap();
    let ext4 = s.dir.path().join("ext4.raw");
    std::fs::write(&ext4, &disk[17 << 20..63 << 20]).unwrap();
    ok(std::process::Command::new("e2fsck").arg("-fn").arg(&ext4));
    let big = s.dir.path().join("big.bin");
    ok(std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump /big.bin {}", big.display()))
        .arg(&ext4));
    let files = s.dir.path().join("src.raw.files");
    assert_eq!(b3(&big), b3(&files.join("big.bin")));
}
