//! The deployment server with real agents on loopback: Distribute Disk
//! Image to several targets over multicast, Run Script, Create Disk Image,
//! a kill -9 of the server mid-job, an agent killed mid-distribution or
//! mid-script, an environment switch, and bad input refused with nothing
//! changed.

mod bmc;
mod bounds;
mod console;
mod dashboard;
mod metrics;
mod openapi;
mod operators;
mod package;
mod rig;
mod seed;
mod trust;
mod unicast;

use std::process::Command;
use std::time::Duration;

use rig::{hash_file, sample_image, Server};
use serde_json::json;

fn mac(i: usize) -> String {
    format!("52:54:00:00:10:{i:02x}")
}

fn distribute(macs: &[String]) -> serde_json::Value {
    json!({
        "name": "image the rack",
        "targets": macs,
        "cast": {"max_wait": 30},
        "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 300}],
    })
}

fn submit(s: &Server, spec: serde_json::Value) -> u64 {
    let j = s
        .call("POST", "/api/v1/jobs", Some(spec))
        .unwrap_or_else(|e| panic!("submit: {e:?}"));
    j["id"].as_u64().unwrap()
}

fn started_count(s: &Server, job: u64, mac: &str) -> usize {
    s.events(job)
        .iter()
        .filter(|e| e.kind == "task.started" && e.target.is_some_and(|t| t.to_string() == mac))
        .count()
}

#[test]
fn distribute_job_images_four_agents_in_one_session_and_every_target_verifies() {
    let mut s = Server::start("400M");
    let (disk, img) = sample_image(s.dir.path(), "48M");
    let up = s.upload("golden", &img);
    assert_eq!(up["name"], "golden");
    let macs: Vec<String> = (1..=4).map(mac).collect();
    let disks: Vec<_> = (1..=4)
        .map(|i| s.dir.path().join(format!("target-{i}.disk")))
        .collect();
    for (m, d) in macs.iter().zip(&disks) {
        s.agent(m, d, "linux-x64");
    }
    s.wait_registered(&macs, Duration::from_secs(30));
    let id = submit(&s, distribute(&macs));
    let j = s.wait_job(id, Duration::from_secs(180));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    let want = hash_file(&disk);
    for d in &disks {
        assert_eq!(
            hash_file(d),
            want,
            "{} differs from the source",
            d.display()
        );
    }
    let ev = s.events(id);
    let sessions: Vec<_> = ev.iter().filter(|e| e.kind == "cast.started").collect();
    assert_eq!(
        sessions.len(),
        1,
        "one multicast session for all: {sessions:?}"
    );
    assert_eq!(sessions[0].detail["receivers"], 4);
    let ended = ev
        .iter()
        .find(|e| e.kind == "cast.ended")
        .expect("cast.ended");
    assert_eq!(ended.detail["done"], 4, "{ended:?}");
    assert!(ended.detail["wire_bytes"].as_u64().unwrap() > 0);
    // No work left: every agent is told to boot its disk and exits.
    for i in 0..4 {
        let st = s.agent_mut(i).wait_exit(Duration::from_secs(60));
        assert!(
            st.is_some_and(|st| st.success()),
            "agent {i} did not boot local: {}",
            s.agents_log()
        );
    }
    let t = s
        .call("GET", &format!("/api/v1/targets/{}", macs[0]), None)
        .unwrap();
    assert_eq!(t["state"], "local");
}

#[test]
fn run_script_job_streams_output_and_a_failing_script_fails_with_its_exit_code() {
    let mut s = Server::start("100M");
    let macs: Vec<String> = (1..=2).map(mac).collect();
    for m in &macs {
        let d = s.dir.path().join(format!("{m}.disk").replace(':', ""));
        s.agent(m, &d, "linux-x64");
    }
    s.wait_registered(&macs, Duration::from_secs(30));
    let id = submit(
        &s,
        json!({
            "targets": macs,
            "task": [{"kind": "script", "script": "echo hello from $(hostname)\necho second line\nexit 0"}],
        }),
    );
    let j = s.wait_job(id, Duration::from_secs(60));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    for t in &j.targets {
        assert!(
            t.log.contains("hello from"),
            "log of {}: {:?}",
            t.mac,
            t.log
        );
        assert!(
            t.log.contains("second line"),
            "log of {}: {:?}",
            t.mac,
            t.log
        );
    }
    let id = submit(
        &s,
        json!({
            "targets": [macs[0]],
            "task": [{"kind": "script", "script": "echo failing; exit 3", "retries": 1}],
        }),
    );
    // With no work left the agents booted their disks (exited); power the
    // first one on again, as an operator would, to run the new job.
    s.agent_mut(0).wait_exit(Duration::from_secs(30));
    s.agent_mut(0).restart();
    let j = s.wait_job(id, Duration::from_secs(60));
    assert_eq!(j.status, "failed");
    let t = &j.targets[0];
    assert_eq!(t.attempt, 2, "retried once");
    assert!(t.error.as_deref().unwrap_or("").contains('3'), "{t:?}");
    let v = s
        .call("GET", &format!("/api/v1/targets/{}", macs[0]), None)
        .unwrap();
    assert_eq!(v["state"], "failed", "held for the operator: {v}");
    // Released, the target takes no more work and boots its disk.
    s.call(
        "POST",
        &format!("/api/v1/targets/{}/release", macs[0]),
        None,
    )
    .unwrap();
}

#[test]
fn create_disk_image_job_uploads_an_image_that_verifies_and_distributes() {
    let mut s = Server::start("400M");
    let src = s.dir.path().join("source.disk");
    let o = std::process::Command::new(rackcast_tests::rc())
        .args(["image", "sample"])
        .arg(&src)
        .args(["--size", "24M", "--shape", "mixed"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let capture = mac(1);
    let target = mac(2);
    let dest = s.dir.path().join("dest.disk");
    s.agent(&capture, &src, "linux-x64");
    s.agent(&target, &dest, "linux-x64");
    s.wait_registered(&[capture.clone(), target.clone()], Duration::from_secs(30));
    let id = submit(
        &s,
        json!({"targets": [capture], "task": [{"kind": "create", "image": "captured"}]}),
    );
    let j = s.wait_job(id, Duration::from_secs(120));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    let img = s.call("GET", "/api/v1/images/captured", None).unwrap();
    assert_eq!(img["source_size"], 24 << 20);
    // The library is content-addressed: the bytes live under their root.
    let stored = s.data().join(format!(
        "images/by-root/{}.rcimg",
        img["root"].as_str().unwrap()
    ));
    let o = std::process::Command::new(rackcast_tests::rc())
        .args(["image", "verify"])
        .arg(&stored)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submit(
        &s,
        json!({"targets": [target], "task": [{"kind": "distribute", "image": "captured"}]}),
    );
    let j = s.wait_job(id, Duration::from_secs(120));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    assert_eq!(hash_file(&dest), hash_file(&src));
}

#[test]
fn server_killed_mid_distribution_restarts_and_the_job_completes_with_no_task_run_twice() {
    killed_mid_distribution(None);
}

/// The same on PostgreSQL (`database = "postgres://..."`, a cluster of the
/// test's own): its state is all there after the kill, and the data
/// directory holds no SQLite file.
#[test]
fn on_postgresql_a_server_killed_mid_distribution_completes_the_job_too() {
    let Some(pg) = rackcast_tests::pg::Postgres::start() else {
        return;
    };
    let url = pg.create_db("rackcast");
    // --migrate-only against it first, as an upgrade runs it.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!("data = {:?}\ndatabase = {url:?}\n", dir.path().join("data")),
    )
    .unwrap();
    let out = Command::new(rackcast_tests::rc())
        .args(["server", "--migrate-only", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", pg.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
    let s = killed_mid_distribution(Some(&format!("database = {url:?}")));
    assert!(!s.data().join("rackcast.db").exists());
}

/// PostgreSQL restarted under a running job: the server keeps what the
/// database refused meanwhile and writes it once it is back; the job
/// completes, no task runs twice, and a server restart after reads it all
/// back from the database.
#[test]
fn on_postgresql_a_database_restart_mid_job_loses_nothing() {
    let Some(mut pg) = rackcast_tests::pg::Postgres::start() else {
        return;
    };
    let url = pg.create_db("rackcast");
    let mut s = Server::start_with("12M", "127.0.0.1:0", Some(&format!("database = {url:?}")));
    let run = TwoTargets::mid_distribution(&mut s);
    // Down longer than the rest of the transfer takes (96 MiB at 12 MB/s):
    // the targets finish, report and are sent to their disks meanwhile.
    pg.restart(Duration::from_secs(12));
    run.completes(&s, &pg.log());
    // What the server held while the database was down is in it now.
    s.kill9();
    s.restart();
    let j = s.wait_job(run.id, Duration::from_secs(30));
    assert_eq!(j.status, "done", "{:#?}", j.targets);
    // Every stored event of the server, none lost in the outage: gap-free.
    let all: Vec<_> = s
        .events_where("since=0")
        .into_iter()
        .filter(|e| e.seq > 0)
        .collect();
    assert!(
        all.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "{:?}",
        all.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    run.each_task_ran_once(&s);
}

fn killed_mid_distribution(config: Option<&str>) -> Server {
    // Slow enough that the kill lands mid-transfer.
    let mut s = Server::start_with("12M", "127.0.0.1:0", config);
    let run = TwoTargets::mid_distribution(&mut s);
    s.kill9();
    std::thread::sleep(Duration::from_millis(500));
    s.restart();
    run.completes(&s, "");
    let ev = s.events(run.id);
    assert!(
        ev.iter()
            .any(|e| e.kind == "cast.ended" && e.detail["why"] == "the server restarted"),
        "the dead session was ended on restart"
    );
    run.each_task_ran_once(&s);
    // Event sequence numbers stayed gap-free across the restart.
    assert!(ev.windows(2).all(|w| w[0].seq < w[1].seq));
    s
}

/// Two agents distributing a 96 MiB image, caught part way.
struct TwoTargets {
    id: u64,
    macs: Vec<String>,
    disks: Vec<std::path::PathBuf>,
    source: std::path::PathBuf,
}

impl TwoTargets {
    /// Starts the job on `s` and returns once both targets have 4 MiB.
    fn mid_distribution(s: &mut Server) -> TwoTargets {
        let (source, img) = sample_image(s.dir.path(), "96M");
        s.upload("golden", &img);
        let macs: Vec<String> = (1..=2).map(mac).collect();
        let disks: Vec<_> = (1..=2)
            .map(|i| s.dir.path().join(format!("t{i}.disk")))
            .collect();
        for (m, d) in macs.iter().zip(&disks) {
            s.agent(m, d, "linux-x64");
        }
        s.wait_registered(&macs, Duration::from_secs(30));
        let id = submit(s, distribute(&macs));
        s.wait_job_until(id, Duration::from_secs(60), |j| {
            j.targets
                .iter()
                .all(|t| t.progress.as_ref().is_some_and(|p| p.done > 4 << 20))
        });
        TwoTargets {
            id,
            macs,
            disks,
            source,
        }
    }

    /// The job ends done and both disks equal the source.
    fn completes(&self, s: &Server, context: &str) {
        let j = s.wait_job(self.id, Duration::from_secs(240));
        assert_eq!(
            j.status,
            "done",
            "{:#?}\n{}\n{context}",
            j.targets,
            s.agents_log()
        );
        let want = hash_file(&self.source);
        for d in &self.disks {
            assert_eq!(hash_file(d), want);
        }
    }

    /// Each target started and finished its task once.
    fn each_task_ran_once(&self, s: &Server) {
        let ev = s.events(self.id);
        for m in &self.macs {
            assert_eq!(
                started_count(s, self.id, m),
                1,
                "{m} started its task more than once"
            );
            let fin = ev
                .iter()
                .filter(|e| {
                    e.kind == "task.finished" && e.target.is_some_and(|t| t.to_string() == *m)
                })
                .count();
            assert_eq!(fin, 1, "{m} finished {fin} times");
        }
    }
}

#[test]
fn agent_killed_mid_distribution_restarts_and_resumes_from_its_disk() {
    let mut s = Server::start("12M");
    let (disk, img) = sample_image(s.dir.path(), "96M");
    s.upload("golden", &img);
    let m = mac(1);
    let d = s.dir.path().join("t.disk");
    let a = s.agent(&m, &d, "linux-x64");
    s.wait_registered(std::slice::from_ref(&m), Duration::from_secs(30));
    let id = submit(&s, distribute(std::slice::from_ref(&m)));
    s.wait_job_until(id, Duration::from_secs(60), |j| {
        j.targets[0]
            .progress
            .as_ref()
            .is_some_and(|p| p.done > 8 << 20)
    });
    s.agent_mut(a).restart();
    let j = s.wait_job(id, Duration::from_secs(240));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    assert_eq!(hash_file(&d), hash_file(&disk));
    assert_eq!(started_count(&s, id, &m), 1, "resumed, not started again");
    let log = &j.targets[0].log;
    let resumed: u64 = log
        .split("chunks resumed")
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(resumed > 0, "nothing resumed from the disk: {log:?}");
}

/// A process is alive (a zombie is not: nobody may reap it here).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            t.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn agent_killed_mid_script_ends_what_the_script_left_running_when_it_restarts() {
    let mut s = Server::start("100M");
    let m = mac(1);
    let d = s.dir.path().join("t.disk");
    let a = s.agent(&m, &d, "linux-x64");
    s.wait_registered(std::slice::from_ref(&m), Duration::from_secs(30));
    let marks = s.dir.path().join("script-marks");
    std::fs::create_dir_all(&marks).unwrap();
    // The first run starts a long background job and waits on it; a second
    // run (after the agent came back) just finishes.
    let script = format!(
        "D={}\nif [ -f $D/ran ]; then echo second run; exit 0; fi\ntouch $D/ran\n\
         sleep 300 &\necho $! > $D/bg.tmp && mv $D/bg.tmp $D/bg.pid\nwait\n",
        marks.display()
    );
    // The server fails a script whose agent restarted under it (a script
    // need not be safe to run twice); one retry runs it again.
    let id = submit(
        &s,
        json!({"targets": [m], "task": [{"kind": "script", "script": script, "retries": 1}]}),
    );
    let pid_file = marks.join("bg.pid");
    let t0 = std::time::Instant::now();
    while !pid_file.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let bg: i32 = std::fs::read_to_string(&pid_file)
        .expect("the script started its background job")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(bg));
    s.agent_mut(a).kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(bg),
        "kill -9 of the agent leaves the script's group running"
    );
    s.agent_mut(a).restart();
    let t0 = std::time::Instant::now();
    while alive(bg) && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(bg), "the restarted agent left the orphan running");
    let j = s.wait_job(id, Duration::from_secs(90));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    assert!(
        j.targets[0].log.contains("second run"),
        "{:?}",
        j.targets[0].log
    );
    assert!(
        s.agents_log().contains("an earlier agent run left running"),
        "{}",
        s.agents_log()
    );
}

#[test]
fn a_task_that_needs_another_environment_reboots_the_target_into_it() {
    let mut s = Server::start("100M");
    s.call(
        "PUT",
        "/api/v1/environments/maintenance",
        Some(json!({"name": "maintenance", "kernel": "m/vmlinuz", "initrd": "m/initrd.img", "cmdline": "rackcast.env={env}"})),
    )
    .unwrap();
    let m = mac(1);
    let d = s.dir.path().join("t.disk");
    s.agent(&m, &d, "linux-x64");
    s.wait_registered(std::slice::from_ref(&m), Duration::from_secs(30));
    let id = submit(
        &s,
        json!({"targets": [m], "task": [
            {"kind": "script", "script": "echo in-default"},
            {"kind": "script", "script": "echo in-maintenance", "env": "maintenance"},
        ]}),
    );
    let j = s.wait_job(id, Duration::from_secs(90));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    let ev = s.events(id);
    assert!(
        ev.iter().any(|e| e.kind == "target.state"
            && e.detail["state"] == "rebooting-to"
            && e.detail["env"] == "maintenance"),
        "no reboot into maintenance: {ev:#?}"
    );
    let t = s
        .call("GET", &format!("/api/v1/targets/{m}"), None)
        .unwrap();
    assert_eq!(t["environment"], "maintenance", "{t}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let mut s = Server::start("100M");
    let m = mac(1);
    let d = s.dir.path().join("t.disk");
    s.agent(&m, &d, "linux-x64");
    s.wait_registered(std::slice::from_ref(&m), Duration::from_secs(30));
    let cases = [
        (
            json!({"targets": [m], "task": [{"kind": "distribute", "image": "nope"}]}),
            404,
            "unknown image",
        ),
        (
            json!({"targets": ["52:54:00:99:99:99"], "task": [{"kind": "script", "script": "true"}]}),
            404,
            "unknown target",
        ),
        (
            json!({"targets": [m], "task": [{"kind": "teleport"}]}),
            422,
            "teleport",
        ),
        (
            json!({"targets": [m], "tasks": [], "bogus": 1}),
            422,
            "bogus",
        ),
        (json!({"targets": [m], "task": []}), 422, "no tasks"),
    ];
    for (spec, code, want) in cases {
        let (c, body) = s.call("POST", "/api/v1/jobs", Some(spec)).unwrap_err();
        assert_eq!(c, code, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(want),
            "{body} (wanted {want:?})"
        );
    }
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    assert_eq!(
        jobs.as_array().unwrap().len(),
        0,
        "a refused job was stored"
    );
    // Wrong or missing tokens.
    let r = s
        .http()
        .get(&format!("{}/api/v1/targets", s.url))
        .set("Authorization", "Bearer wrong")
        .call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    let r = s.http().get(&format!("{}/api/v1/jobs", s.url)).call();
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    let r = s
        .http()
        .post(&format!("{}/agent/v1/register", s.url))
        .set("Authorization", &format!("Bearer {}", s.token))
        .send_json(json!({"mac": "52:54:00:00:00:42", "env": "x", "inventory": {}}));
    assert!(
        matches!(r, Err(ureq::Error::Status(401, _))),
        "operator token must not enroll agents"
    );
    let r = s
        .http()
        .post(&format!("{}/agent/v1/poll", s.url))
        .set("Authorization", "Bearer forged")
        .send_json(json!({"mac": m}));
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
    // A corrupt image upload is refused with the offset, and not stored.
    let (_, img) = sample_image(s.dir.path(), "8M");
    let mut bytes = std::fs::read(&img).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0xff;
    let bad = s.dir.path().join("bad.rcimg");
    std::fs::write(&bad, &bytes).unwrap();
    let r = s
        .http()
        .put(&format!("{}/api/v1/images/bad", s.url))
        .set("Authorization", &format!("Bearer {}", s.token))
        .send(std::fs::File::open(&bad).unwrap());
    match r {
        Err(ureq::Error::Status(422, resp)) => {
            let v: serde_json::Value = resp.into_json().unwrap();
            assert!(v["error"].as_str().unwrap().contains("offset"), "{v}");
        }
        other => panic!("corrupt upload not refused: {other:?}"),
    }
    let imgs = s.call("GET", "/api/v1/images", None).unwrap();
    assert_eq!(imgs.as_array().unwrap().len(), 0);
    assert!(!s.data().join("images/bad.rcimg").exists());
}

/// The README's main job, as a user runs it (smaller).
#[test]
fn demo_images_local_targets_through_the_server_and_prints_the_summary() {
    let out = std::process::Command::new(rackcast_tests::rc())
        .args(["demo", "--size", "32M", "--targets", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["on the wire", "repair", "cast session", "wall time"] {
        assert!(text.contains(want), "summary lacks {want:?}:\n{text}");
    }
    let verified = text
        .lines()
        .filter(|l| l.trim_start().starts_with("target ") && l.ends_with("verified"))
        .count();
    assert_eq!(verified, 3, "{text}");
    assert!(
        text.contains("all 3 targets match the source byte for byte"),
        "{text}"
    );
}

/// `rackcast demo --loss`: targets in namespaces dropping multicast.
#[test]
fn demo_with_packet_loss_in_namespaces_still_verifies_every_target() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipping: --loss needs root for network namespaces");
        return;
    }
    let out = std::process::Command::new(rackcast_tests::rc())
        .args(["demo", "--size", "32M", "--targets", "3", "--loss", "3"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3.0% of multicast packets dropped"), "{text}");
    assert!(
        text.contains("all 3 targets match the source byte for byte"),
        "{text}"
    );
    let repair: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("repair"))
        .and_then(|l| l.trim().split('%').next())
        .and_then(|n| n.trim().parse().ok())
        .expect("repair line");
    assert!(repair > 0.5, "3% loss needed repairs: {text}");
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains("rcd"),
        "the demo left namespaces behind"
    );
}

/// The README's rack walkthrough with the real CLI: upload, enroll, submit,
/// watch (exit 0 only on success), list, show; a job file; a failing job's
/// watch exits 1; bad job files are refused before anything is sent.
#[test]
fn cli_uploads_enrolls_distributes_and_watches_as_the_readme_says() {
    let mut s = Server::start("400M");
    let (disk, img) = sample_image(s.dir.path(), "16M");
    let (url, token, ca) = (s.url.clone(), s.token.clone(), s.ca.clone());
    let cli = |args: &[&str]| {
        std::process::Command::new(rackcast_tests::rc())
            .args(args)
            .env("RACKCAST_SERVER", &url)
            .env("RACKCAST_TOKEN", &token)
            .env("RACKCAST_CA", &ca)
            .output()
            .unwrap()
    };
    let ok = |o: &std::process::Output| {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&cli(&["image", "upload", img.to_str().unwrap()]));
    assert!(ok(&cli(&["image", "list"])).contains("golden"));
    let macs: Vec<String> = (1..=2).map(mac).collect();
    ok(&cli(&[
        "target",
        "add",
        &macs[0],
        "--name",
        "rack12-u01",
        "--var",
        "rack=r12",
    ]));
    ok(&cli(&["target", "add", &macs[1], "--name", "rack12-u02"]));
    // Variables: set (a value may hold '='), removed, shown; a built-in
    // name is refused by the CLI before it asks the server.
    let vars = ok(&cli(&[
        "target", "vars", &macs[0], "--set", "role=db", "--set", "note=a=b", "--unset", "rack",
    ]));
    assert_eq!(vars, "note=a=b\nrole=db\n");
    assert!(ok(&cli(&["target", "show", &macs[0]])).contains("vars       note=a=b role=db\n"));
    let bad = cli(&["target", "vars", &macs[0], "--set", "mac=x"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("built in"),
        "{bad:?}"
    );
    let list = ok(&cli(&["target", "list"]));
    assert!(
        list.contains("rack12-u01") && list.contains("unknown"),
        "{list}"
    );
    let disks: Vec<_> = (1..=2)
        .map(|i| s.dir.path().join(format!("c{i}.disk")))
        .collect();
    for (m, d) in macs.iter().zip(&disks) {
        s.agent(m, d, "linux-x64");
    }
    let targets = macs.join(",");
    let id = ok(&cli(&[
        "job",
        "distribute",
        "--image",
        "golden",
        "--targets",
        &targets,
        "--min-targets",
        "2",
    ]));
    let id = id.trim();
    assert!(
        id.parse::<u64>().is_ok(),
        "job distribute printed {id:?}, not an id"
    );
    ok(&cli(&["job", "watch", id, "--timeout", "120"]));
    for d in &disks {
        assert_eq!(hash_file(d), hash_file(&disk));
    }
    assert!(ok(&cli(&["job", "show", id])).contains("done"));

    // A job file; its script fails, so watch exits 1.
    for i in 0..2 {
        s.agent_mut(i).wait_exit(Duration::from_secs(30));
        s.agent_mut(i).restart();
    }
    let file = s.dir.path().join("job.toml");
    std::fs::write(
        &file,
        format!("name = \"fails\"\ntargets = [\"{}\"]\n[[task]]\nkind = \"script\"\nscript = \"exit 7\"\n", macs[0]),
    )
    .unwrap();
    let id = ok(&cli(&["job", "submit", file.to_str().unwrap()]));
    let w = cli(&["job", "watch", id.trim(), "--timeout", "60"]);
    assert_eq!(
        w.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );
    // A malformed job file names its line and changes nothing.
    std::fs::write(&file, "targets = [\n").unwrap();
    let bad = cli(&["job", "submit", file.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("job.toml:"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    // A wrong token is refused with a message that says what to check.
    let o = std::process::Command::new(rackcast_tests::rc())
        .args([
            "target", "list", "--server", &s.url, "--token", "nope", "--ca",
        ])
        .arg(&s.ca)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the token"));
}
