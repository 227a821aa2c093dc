//! The `rackcast-agent` binary as an environment runs it: it identifies
//! itself, teaches its flags, and refuses a bad start with a clear error and
//! the documented exit status.

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_rackcast-agent");

#[test]
fn version_names_the_agent() {
    let o = Command::new(AGENT).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("rackcast-agent {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_lists_the_flags_of_rackcast_agent() {
    let o = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "--server",
        "--token",
        "--mac",
        "--disk",
        "--on-reboot",
        "--give-up",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn no_server_is_a_clear_error() {
    let o = Command::new(AGENT)
        .env_remove("RACKCAST_SERVER")
        .env_remove("RACKCAST_AGENT_TOKEN")
        .args(["--mac", "02:00:00:00:00:01"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("server"), "{err}");
}

#[test]
fn a_bad_mac_is_refused_before_anything_is_sent() {
    let o = Command::new(AGENT)
        .args([
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
            "--mac",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope"), "{err}");
}
