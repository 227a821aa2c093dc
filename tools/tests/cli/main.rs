//! The `rackcast` binary as users run it: commands, exit codes, output.

mod filesystems;
mod image;
mod readme;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `rackcast ARGS...`.
pub fn rackcast(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rackcast"));
    for a in args {
        c.arg(a);
    }
    c.output().expect("run rackcast")
}

/// Asserts success and returns stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "rackcast failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts failure and returns stderr.
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "rackcast succeeded but should have failed\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A line of `text` starting with `key`, with the key removed and trimmed.
pub fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{text}"))
        .trim()
}

pub fn b3(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}
