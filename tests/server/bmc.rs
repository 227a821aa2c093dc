//! Targets with BMCs, through the server and the CLI, against real
//! emulators (sushy-tools' Redfish over libvirt's test driver, OpenIPMI's
//! ipmi_sim): settings with a password that never shows, power and
//! one-time boot by hand, a job that powers a silent target into the
//! network boot and sets its disk afterwards, a target that never comes
//! back booted again then held, a refused login held at once, and a power
//! change behind the server's back seen by the poller.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rackcast_tests::emu::{free_tcp_port, IpmiSim, Sushy, PASSWORD, USER};
use serde_json::{json, Value};

use super::rig::Server;
use super::{mac, submit};

/// Runs the CLI: (success, stdout + stderr).
fn run(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn password_file(dir: &Path, pw: &str) -> String {
    let f = dir.join(format!("bmc-{}.pw", pw.len()));
    std::fs::write(&f, format!("{pw}\n")).unwrap();
    f.display().to_string()
}

/// Polls `f` every 200 ms until it holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn system(s: &Sushy) -> Value {
    s.get(&s.system())
}

fn target(s: &Server, m: &str) -> Value {
    s.call("GET", &format!("/api/v1/targets/{m}"), None)
        .unwrap()
}

/// Waits until job `id` holds `m` as failed: its error.
fn held(s: &Server, id: u64, m: &str, limit: Duration) -> String {
    let j = s.wait_job_until(id, limit, |j| {
        j.targets
            .iter()
            .any(|t| t.mac.to_string() == m && t.status == "failed")
    });
    let r = j.targets.iter().find(|t| t.mac.to_string() == m).unwrap();
    r.error.clone().unwrap_or_default()
}

/// The network boots the server asked of `m`'s BMC in job `id` (the
/// attempts, not the failures each may record).
fn netboots(s: &Server, id: u64, m: &str) -> usize {
    s.events(id)
        .into_iter()
        .filter(|e| {
            e.kind == "target.power-action"
                && e.detail["action"] == "netboot"
                && e.detail["error"].is_null()
                && e.target.is_some_and(|t| t.to_string() == m)
        })
        .count()
}

/// The password is in nothing the server shows or says.
fn assert_hidden(s: &Server, outputs: &[&str]) {
    let listed = s.call("GET", "/api/v1/targets", None).unwrap().to_string();
    let events: String = s
        .events_where("")
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    for (what, text) in [
        ("target list", listed.as_str()),
        ("events", events.as_str()),
        ("server log", s.log_text().as_str()),
    ]
    .into_iter()
    .chain(outputs.iter().map(|o| ("CLI output", *o)))
    {
        assert!(
            !text.contains(PASSWORD),
            "the BMC password is in the {what}"
        );
    }
    let db = std::fs::read(s.data().join("rackcast.db")).unwrap();
    assert!(
        !db.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()),
        "the BMC password is in the database in clear"
    );
}

#[test]
fn power_and_boot_once_by_hand_through_redfish_and_the_password_never_shows() {
    let Some(bmc) = Sushy::start(true) else {
        return;
    };
    let s = Server::start_with("100M", "127.0.0.1:0", Some("bmc_poll = 1\n"));
    let m = mac(1);
    let pw = password_file(s.dir.path(), PASSWORD);
    let mut outputs = Vec::new();

    // The emulator's certificate is self-signed: refused until the
    // target's settings accept it.
    let (ok, out) = run(s.cli().args([
        "target",
        "add",
        &m,
        "--name",
        "r1-u01",
        "--bmc",
        &bmc.addr(),
        "--bmc-user",
        USER,
        "--bmc-password-file",
        &pw,
    ]));
    assert!(ok, "{out}");
    assert!(out.contains(&format!("BMC {}", bmc.addr())), "{out}");
    let (ok, out) = run(s.cli().args(["target", "power", &m, "status"]));
    assert!(!ok, "a self-signed BMC was trusted: {out}");
    assert!(out.contains("--bmc-insecure"), "{out}");
    outputs.push(out);
    // Without --bmc-password-file the stored password is kept.
    let (ok, out) = run(s.cli().args([
        "target",
        "set-bmc",
        &m,
        "--bmc",
        &bmc.addr(),
        "--bmc-user",
        USER,
        "--bmc-insecure",
    ]));
    assert!(ok, "{out}");

    let (ok, out) = run(s.cli().args(["target", "power", &m, "status"]));
    assert!(ok, "{out}");
    assert!(out.contains("power on"), "{out}");
    let (ok, out) = run(s.cli().args(["target", "power", &m, "off"]));
    assert!(ok && out.contains("power off"), "{out}");
    assert_eq!(system(&bmc)["PowerState"], "Off");
    let (ok, out) = run(s.cli().args(["target", "boot-once", &m, "pxe"]));
    assert!(ok && out.contains("next boot pxe"), "{out}");
    assert_eq!(system(&bmc)["Boot"]["BootSourceOverrideTarget"], "Pxe");
    let (ok, out) = run(s.cli().args(["target", "power", &m, "on"]));
    assert!(ok && out.contains("power on"), "{out}");
    assert_eq!(system(&bmc)["PowerState"], "On");

    // Powered off at the BMC itself: the poller sees it within its interval.
    let reset = system(&bmc)["Actions"]["#ComputerSystem.Reset"]["target"]
        .as_str()
        .unwrap()
        .to_string();
    bmc.post(&reset, json!({"ResetType": "ForceOff"}));
    eventually(Duration::from_secs(10), "target list shows off", || {
        target(&s, &m)["power"] == "off"
    });
    let (ok, out) = run(s.cli().args(["target", "list"]));
    assert!(ok, "{out}");
    let row = out.lines().find(|l| l.starts_with(&m)).unwrap_or_default();
    assert!(row.contains(" off "), "{out}");
    let behind = s.events_where("").into_iter().any(|e| {
        e.kind == "target.power" && e.detail["power"] == "off" && e.detail["expected"] == false
    });
    assert!(behind, "no unexpected target.power event");
    let (ok, out) = run(s.cli().args(["target", "show", &m]));
    assert!(ok && out.contains("any certificate"), "{out}");
    outputs.push(out);

    // A wrong password is the BMC's clear refusal.
    let wrong = password_file(s.dir.path(), "not-the-password");
    let (ok, out) = run(s.cli().args([
        "target",
        "set-bmc",
        &m,
        "--bmc",
        &bmc.addr(),
        "--bmc-user",
        USER,
        "--bmc-password-file",
        &wrong,
        "--bmc-insecure",
    ]));
    assert!(ok, "{out}");
    let (ok, out) = run(s.cli().args(["target", "power", &m, "status"]));
    assert!(!ok, "{out}");
    assert!(out.contains("refused the login"), "{out}");
    let out_refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_hidden(&s, &out_refs);
}

#[test]
fn a_job_powers_a_silent_target_into_the_network_boot_and_sets_its_disk_when_done() {
    let Some(bmc) = Sushy::start(true) else {
        return;
    };
    let mut s = Server::start_with("100M", "127.0.0.1:0", Some("bmc_poll = 1\n"));
    let m = mac(2);
    let pw = password_file(s.dir.path(), PASSWORD);
    let (ok, out) = run(s.cli().args([
        "target",
        "add",
        &m,
        "--bmc",
        &bmc.addr(),
        "--bmc-user",
        USER,
        "--bmc-password-file",
        &pw,
        "--bmc-insecure",
    ]));
    assert!(ok, "{out}");
    let (ok, out) = run(s.cli().args(["target", "power", &m, "off"]));
    assert!(ok, "{out}");

    let t0 = Instant::now();
    let id = submit(
        &s,
        json!({"targets": [m], "task": [{"kind": "script", "script": "echo imaged"}]}),
    );
    // The scheduler boots it: a one-time network boot, then power on.
    eventually(
        Duration::from_secs(15),
        "the BMC powers it on into PXE",
        || {
            let sys = system(&bmc);
            sys["PowerState"] == "On" && sys["Boot"]["BootSourceOverrideTarget"] == "Pxe"
        },
    );
    let t = target(&s, &m);
    assert_eq!(t["state"], "rebooting-to", "{t}");
    let netboot = s
        .events(id)
        .into_iter()
        .any(|e| e.kind == "target.power-action" && e.detail["action"] == "netboot");
    assert!(netboot, "no netboot power action in the job's events");
    eprintln!("job submitted to powered on into PXE: {:?}", t0.elapsed());

    // It "boots": its agent registers, runs the task, and with no work
    // left the server sets its next boot to the disk.
    let disk = s.dir.path().join("t2.disk");
    s.agent(&m, &disk, "linux-x64");
    let j = s.wait_job(id, Duration::from_secs(60));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    eventually(
        Duration::from_secs(15),
        "the BMC's next boot is the disk",
        || system(&bmc)["Boot"]["BootSourceOverrideTarget"] == "Hdd",
    );
    // A job's power task: the server powers it off through the BMC.
    let id = submit(
        &s,
        json!({"targets": [m], "task": [{"kind": "power", "op": "off"}]}),
    );
    let j = s.wait_job(id, Duration::from_secs(30));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    assert_eq!(system(&bmc)["PowerState"], "Off");
    assert_hidden(&s, &[]);
}

#[test]
fn a_silent_target_or_an_unreachable_bmc_is_tried_again_then_held_and_a_refused_login_at_once() {
    let Some(bmc) = Sushy::start(true) else {
        return;
    };
    let Some(sim) = IpmiSim::start() else {
        return;
    };
    let s = Server::start_with(
        "100M",
        "127.0.0.1:0",
        Some("bmc_poll = 1\nboot_timeout = 3\npower_tries = 2\nbmc_timeout = 1\n"),
    );
    let (silent, refused, ipmi, dark) = (mac(3), mac(4), mac(5), mac(6));
    let nobody = format!("redfish://127.0.0.1:{}", free_tcp_port());
    let pw = password_file(s.dir.path(), PASSWORD);
    let wrong = password_file(s.dir.path(), "wrong-password");
    for (m, addr, file) in [
        (&silent, bmc.addr(), &pw),
        (&refused, bmc.addr(), &wrong),
        (&ipmi, sim.addr(), &pw),
        (&dark, nobody, &pw),
    ] {
        let (ok, out) = run(s.cli().args([
            "target",
            "add",
            m,
            "--bmc",
            &addr,
            "--bmc-user",
            USER,
            "--bmc-password-file",
            file,
            "--bmc-insecure",
        ]));
        assert!(ok, "{out}");
    }
    let id = submit(
        &s,
        json!({"targets": [silent, refused, ipmi, dark], "task": [{"kind": "script", "script": "true"}]}),
    );

    // IPMI: the chassis got the one-time PXE boot, then power.
    eventually(
        Duration::from_secs(15),
        "ipmi_sim powered on into PXE",
        || sim.file("power") == "1" && sim.file("boot") == "pxe",
    );

    // The refused login holds its target at once, with the BMC's words.
    let err = held(&s, id, &refused, Duration::from_secs(30));
    assert!(err.contains("refused the network boot"), "{err}");
    assert!(err.contains("login"), "{err}");

    // The silent one is booted twice (power_tries), then held.
    let err = held(&s, id, &silent, Duration::from_secs(40));
    assert!(
        err.contains("after 2 network boots through its BMC"),
        "{err}"
    );
    let boots = netboots(&s, id, &silent);
    assert_eq!(boots, 2, "network boots of the silent target");
    let t = target(&s, &silent);
    assert_eq!(t["state"], "failed", "{t}");

    // An unreachable BMC is tried again, then the target held with its error.
    let err = held(&s, id, &dark, Duration::from_secs(40));
    assert!(
        err.contains("after 2 network boots through its BMC"),
        "{err}"
    );
    assert!(err.contains("did not answer"), "{err}");
    let tries = netboots(&s, id, &dark);
    assert_eq!(tries, 2, "network boots asked of the unreachable BMC");
    assert_hidden(&s, &[]);
}
