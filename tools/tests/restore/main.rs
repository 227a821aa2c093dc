//! `rackcast image restore` end to end with the real binary: kill -9 in the
//! middle, then resume; delta restores; both engines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RC: &str = env!("CARGO_BIN_EXE_rackcast");
const MIB: usize = 1 << 20;

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let out = Command::new(RC).args(args).output().expect("run rackcast");
    assert!(
        out.status.success(),
        "rackcast {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `count` from the line starting with `key`: "... in COUNT chunks ...".
fn chunks_on(out: &Output, key: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"));
    let after = line.split(" in ").nth(1).expect("' in N chunks'");
    after
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("chunk count")
}

/// Incompressible bytes (every chunk is stored and must be written).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

struct Setup {
    dir: tempfile::TempDir,
    src: Vec<u8>,
    img: PathBuf,
}

fn setup(len: usize, seed: u64) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = random_bytes(len, seed);
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, &src).expect("write source");
    let img = dir.path().join("src.rcimg");
    run(&[
        "image".as_ref(),
        "create".as_ref(),
        raw.as_ref(),
        img.as_ref(),
        "--chunk-size".as_ref(),
        "1M".as_ref(),
    ]);
    Setup { dir, src, img }
}

fn restore(img: &Path, dest: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "image".as_ref(),
        "restore".as_ref(),
        img.as_ref(),
        dest.as_ref(),
    ];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    run(&args)
}

fn assert_same(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).expect("read target");
    assert_eq!(got.len(), want.len(), "length of {}", path.display());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{} differs from the source at byte offset {at}",
            path.display()
        );
    }
}

#[test]
fn restore_killed_with_sigkill_resumes_and_rewrites_only_the_rest() {
    let s = setup(48 * MIB, 0x5eed);
    let total = 48;
    let dest = s.dir.path().join("dest");
    let state = s.dir.path().join("dest.rackcast-resume");
    // Throttled to 8 MiB/s (6 s in all) with frequent checkpoints, so the
    // kill lands well after the first durable checkpoint and well before the end.
    let mut child = Command::new(RC)
        .args(["image", "restore"])
        .arg(&s.img)
        .arg(&dest)
        .args([
            "--max-rate",
            "8M",
            "--checkpoint-ms",
            "100",
            "--verify",
            "off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(Instant::now() < deadline, "no resume bitmap appeared");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "restore ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(600));
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "restore finished before it was killed");
    assert!(state.exists(), "the bitmap must survive the kill");

    let out = restore(&s.img, &dest, &["--verify", "full"]);
    let resumed = chunks_on(&out, "resumed");
    let written = chunks_on(&out, "written");
    assert!(
        resumed > 0,
        "nothing resumed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        written > 0 && written < total,
        "rewrote {written} of {total} chunks"
    );
    assert_eq!(
        resumed + written,
        total,
        "every chunk exactly once across the resume"
    );
    assert_eq!(chunks_on(&out, "verified"), total, "full read-back");
    assert!(!state.exists(), "bitmap left after the completed restore");
    assert_same(&dest, &s.src);
}

#[test]
fn delta_restore_reports_what_it_skipped() {
    let s = setup(20 * MIB, 0xde17a);
    let dest = s.dir.path().join("dest");
    restore(&s.img, &dest, &[]);
    // Change one 4 KiB block in each of chunks 2, 11 and 19.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dest)
            .expect("open");
        for c in [2u64, 11, 19] {
            f.write_all_at(&[0x42; 4096], c * MIB as u64 + 8192)
                .expect("damage");
        }
    }
    let out = restore(&s.img, &dest, &["--delta"]);
    assert_eq!(chunks_on(&out, "written"), 3);
    assert_eq!(chunks_on(&out, "skipped"), 17);
    assert_same(&dest, &s.src);
}

#[test]
fn sync_and_uring_engines_restore_the_same_bytes() {
    let s = setup(5 * MIB + 777, 0xe1);
    for engine in ["uring", "sync"] {
        let dest = s.dir.path().join(engine);
        let out = restore(&s.img, &dest, &["--engine", engine, "--verify", "full"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let want = if engine == "sync" {
            "engine    sync"
        } else {
            "engine    io_uring"
        };
        assert!(text.contains(want), "{engine}: {text}");
        assert_same(&dest, &s.src);
    }
}

/// With RLIMIT_MEMLOCK too low to pin the chunk buffers (and no
/// CAP_IPC_LOCK), io_uring runs with plain buffers instead of failing.
#[test]
fn low_memlock_falls_back_to_unregistered_buffers() {
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        Command::new("prlimit")
            .arg("--memlock=65536")
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(RC)
            .args(args)
            .output()
    };
    match as_nobody(&["--version".as_ref()]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "skipping: cannot run rackcast as nobody with prlimit/setpriv (not root?): {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            eprintln!("skipping: prlimit/setpriv unavailable: {e}");
            return;
        }
    }
    let s = setup(6 * MIB, 0x10c);
    use std::os::unix::fs::PermissionsExt;
    for p in [s.dir.path(), s.img.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let dest = s.dir.path().join("dest");
    let out = as_nobody(&[
        "image".as_ref(),
        "restore".as_ref(),
        s.img.as_ref(),
        dest.as_ref(),
        "--engine".as_ref(),
        "uring".as_ref(),
    ])
    .expect("run restore");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("engine    io_uring, O_DIRECT"), "{text}");
    assert_same(&dest, &s.src);
}
