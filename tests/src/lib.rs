//! rackcast's cross-crate suites (`server/`, `env/`, `e2e/` beside this
//! file) and what they share: the binaries they drive, the kernel cache,
//! facility checks, `rackcast env build`, OVMF, and a QEMU process killed by
//! PID on drop.

pub mod emu;
pub mod pg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The `rackcast` binary of this build.
pub fn rc() -> &'static str {
    &bins().0
}

/// The `rackcast-agent` binary of this build.
pub fn rc_agent() -> &'static str {
    &bins().1
}

/// The binaries live in other packages, so cargo hands this package no
/// `CARGO_BIN_EXE_*` for them. `cargo test --workspace` (the README's
/// `./test.sh`) builds both beside this test binary, since their packages
/// have integration tests of their own; to run one suite alone, name those
/// packages too: `cargo test -p rackcast-tests -p rackcast-tools -p
/// rackcast-agent --test server`. (Building them from here is no option: a
/// running `cargo test` holds the build directory's lock.)
fn bins() -> &'static (String, String) {
    static BINS: OnceLock<(String, String)> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/<test>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary sits in target/<profile>/deps");
        let path = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.is_file(),
                "{} is missing: run the suites with `cargo test --workspace`, or name \
                 -p rackcast-tools -p rackcast-agent beside -p rackcast-tests",
                p.display()
            );
            p.to_string_lossy().into_owned()
        };
        (path("rackcast"), path("rackcast-agent"))
    })
}

/// The kernel cache: $RACKCAST_KERNEL_CACHE or /var/cache/rackcast/kernel.
pub fn cache() -> PathBuf {
    std::env::var_os("RACKCAST_KERNEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rackcast/kernel"))
}

/// The kernel cache, or `None` with the reason printed.
pub fn kernel_cache() -> Option<PathBuf> {
    let c = cache();
    for f in ["vmlinuz", "modules", "busybox", "VERSION"] {
        if !c.join(f).exists() {
            eprintln!(
                "SKIP: {} has no {f}: run scripts/fetch-kernel.sh {}",
                c.display(),
                c.display()
            );
            return None;
        }
    }
    Some(c)
}

pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn kernel_version(cache: &Path) -> String {
    std::fs::read_to_string(cache.join("VERSION"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// `rackcast env build` from the kernel cache into `dir` (with virtio_rng);
/// returns what it printed.
pub fn env_build(cache: &Path, dir: &Path) -> String {
    env_build_named(cache, dir, None, None)
}

/// `env_build`, with `--name` when `name` is given (the default otherwise)
/// and `--server-ca` when `server_ca` is.
pub fn env_build_named(
    cache: &Path,
    dir: &Path,
    name: Option<&str>,
    server_ca: Option<&Path>,
) -> String {
    let t = Instant::now();
    // --modules is found beside the kernel (the dpkg -x layout) and the
    // agent is the rackcast-agent beside this rackcast (the default).
    let o = Command::new(rc())
        .args(["env", "build", "--kernel"])
        .arg(cache.join("vmlinuz"))
        .arg("--busybox")
        .arg(cache.join("busybox"))
        .args(["--extra-module", "virtio_rng"])
        .args(name.map(|n| ["--name", n]).into_iter().flatten())
        .args(
            server_ca
                .map(|c| [Path::new("--server-ca"), c])
                .into_iter()
                .flatten(),
        )
        .arg("-o")
        .arg(dir)
        .output()
        .unwrap();
    let summary = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "env build failed:\n{summary}");
    eprintln!("env build took {:?}:\n{summary}", t.elapsed());
    summary
}

/// The effective uid, from /proc.
pub fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok())
        })
        .unwrap_or(u32::MAX)
}

/// Kills QEMU by its PID when the run ends, even on panic.
#[derive(Debug)]
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file's text, lossily, `\r` removed; empty if it cannot be read.
pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// OVMF's code and a variable-store template.
pub fn ovmf() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new("/usr/share/OVMF");
    for (code, vars) in [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ] {
        if dir.join(code).exists() && dir.join(vars).exists() {
            return Some((dir.join(code), dir.join(vars)));
        }
    }
    None
}
