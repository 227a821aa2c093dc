//! The provisioning network as an attacker sees it: a stranger on the
//! segment (its own namespace and MAC) tries to get target A's boot token
//! and to register as A or as another machine; the real A (a namespace with
//! A's MAC) then registers with its token and is imaged over multicast.
//! Needs root for the namespaces; skips with the reason otherwise.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::rig::{hash_file, sample_image, Server};

const A: &str = "02:5a:00:00:00:0a";
const B: &str = "02:5a:00:00:00:0b";
const STRANGER: &str = "02:5a:00:00:00:99";

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A bridge in this namespace with two machines on it, each in a namespace
/// of its own: removed on drop.
struct Segment {
    br: String,
    nets: Vec<String>,
    subnet: String,
}

impl Segment {
    fn new() -> Segment {
        let id = std::process::id() % 200 + 20;
        let p = format!("rt{}", std::process::id() % 10_000);
        let seg = Segment {
            br: format!("{p}b"),
            nets: vec![format!("{p}s"), format!("{p}a")],
            subnet: format!("10.238.{id}"),
        };
        seg.remove();
        sh(&["ip", "link", "add", &seg.br, "type", "bridge"]);
        sh(&[
            "ip",
            "link",
            "set",
            &seg.br,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        let ip = format!("{}.1/24", seg.subnet);
        sh(&["ip", "addr", "add", &ip, "dev", &seg.br]);
        sh(&["ip", "link", "set", &seg.br, "up"]);
        for (i, (ns, mac)) in seg.nets.iter().zip([STRANGER, A]).enumerate() {
            let (host, inner) = (format!("{ns}h"), format!("{ns}i"));
            sh(&["ip", "netns", "add", ns]);
            sh(&[
                "ip", "link", "add", &host, "type", "veth", "peer", "name", &inner,
            ]);
            sh(&["ip", "link", "set", &inner, "netns", ns]);
            sh(&["ip", "link", "set", &host, "master", &seg.br]);
            sh(&["ip", "link", "set", &host, "up"]);
            let x = |a: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", ns];
                v.extend_from_slice(a);
                sh(&v)
            };
            x(&["ip", "link", "set", &inner, "address", mac]);
            let addr = format!("{}.{}/24", seg.subnet, i + 2);
            x(&["ip", "addr", "add", &addr, "dev", &inner]);
            x(&["ip", "link", "set", &inner, "up"]);
            x(&["ip", "link", "set", "lo", "up"]);
        }
        seg
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet)
    }

    /// A command run inside machine `i`'s namespace.
    fn command(&self, i: usize, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nets[i]]).args(argv);
        c
    }

    /// `GET url` from machine `i`: (status, body).
    fn get(&self, i: usize, url: &str) -> (u16, String) {
        let o = self
            .command(i, &["curl", "-s", "-m", "10", "-w", "\n%{http_code}", url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn remove(&self) {
        for ns in &self.nets {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{ns}h")])
                .output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.br]).output();
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A process killed by PID on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn facilities() -> bool {
    if !nix_root() {
        eprintln!("SKIP boot-token impersonation test: needs root for network namespaces");
        return false;
    }
    for tool in ["ip", "curl"] {
        if Command::new(tool).arg("-V").output().is_err()
            && Command::new(tool).arg("--version").output().is_err()
        {
            eprintln!("SKIP boot-token impersonation test: {tool} is not installed");
            return false;
        }
    }
    true
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// `POST /agent/v1/register` as `mac` with `token`: (status, error text).
fn register(s: &Server, mac: &str, token: &str) -> (u16, String) {
    let url = &s.url;
    let r = s
        .http()
        .post(&format!("{url}/agent/v1/register"))
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(10))
        .send_json(json!({"mac": mac, "env": "linux-x64", "inventory": {}}));
    match r {
        Ok(resp) => (resp.status(), String::new()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("register: {e}"),
    }
}

#[test]
fn a_stranger_cannot_get_or_use_a_targets_boot_token_and_the_real_target_is_imaged() {
    if !facilities() {
        return;
    }
    let seg = Segment::new();
    let port = 41_000 + (std::process::id() % 1000) as u16;
    let http = format!("{}:{port}", seg.ip(1));
    let config = format!(
        r#"cast_addr = "{ip}"
poll_wait = 2
[netboot]
iface = "{br}"
mode = "proxy"
server_ip = "{ip}"
http = "{http}"
tftp = "{ip}:{tftp}"
dhcp_ports = [{dhcp}]
"#,
        ip = seg.ip(1),
        br = seg.br,
        tftp = port + 1000,
        dhcp = port + 2000,
    );
    let s = Server::start_with("100M", &format!("{}:0", seg.ip(1)), Some(&config));
    let (golden, img) = sample_image(s.dir.path(), "8M");
    s.upload("golden", &img);
    s.call(
        "PUT",
        "/api/v1/environments/linux-x64",
        Some(
            json!({"name": "linux-x64", "kernel": "k/vmlinuz", "initrd": "k/initrd",
            "cmdline": "rackcast.server={server} rackcast.token={token} rackcast.env={env}"}),
        ),
    )
    .unwrap();
    s.call(
        "POST",
        "/api/v1/targets",
        Some(json!({"mac": A, "name": "a"})),
    )
    .unwrap();
    let job = s
        .call(
            "POST",
            "/api/v1/jobs",
            Some(json!({"name": "image a", "targets": [A], "cast": {"max_wait": 1},
                "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 120}]})),
        )
        .unwrap()["id"]
        .as_u64()
        .unwrap();

    // 1. The stranger asks for A's script, and for its own: A's is refused,
    // and nothing it can fetch carries the enrollment token.
    let script_url = format!("http://{http}/ipxe/{A}");
    let (code, body) = seg.get(0, &script_url);
    assert_eq!(code, 403, "a stranger got A's script: {body}");
    let (_, own) = seg.get(0, &format!("http://{http}/ipxe/{STRANGER}"));
    assert!(!own.contains(&s.enroll), "enrollment token served: {own}");

    // 2. A asks for its own script: it carries a boot token, not the
    // enrollment token.
    let (code, script) = seg.get(1, &script_url);
    assert_eq!(
        code,
        200,
        "A did not get its script: {script}\n{}",
        s.log_text()
    );
    assert!(
        !script.contains(&s.enroll),
        "enrollment token in the script: {script}"
    );
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rackcast.token="))
        .unwrap_or_else(|| panic!("no token in {script}"))
        .to_string();
    assert!(token.starts_with("rcb1-"), "{token}");

    // 3. A's token does not register B.
    let (code, why) = register(&s, B, &token);
    assert_eq!(code, 401, "B registered with A's token: {why}");
    assert!(why.contains("issued to"), "{why}");
    // Hammering it, or forging tokens, is refused without flooding the
    // event history: one event per MAC per 10 s, none for a forgery.
    for _ in 0..20 {
        assert_eq!(register(&s, B, &token).0, 401);
    }
    let forged = format!("{}0", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}1", &token[..token.len() - 1])
    } else {
        forged
    };
    for _ in 0..20 {
        let (code, why) = register(&s, STRANGER, &forged);
        assert_eq!(code, 401, "{why}");
        assert!(why.contains("not one this server issued"), "{why}");
    }

    // 4. The real A registers with it (from a file, as /init passes it) and
    // is imaged over multicast.
    let work = s.dir.path().join("a");
    std::fs::create_dir_all(&work).unwrap();
    let token_file = work.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let disk = work.join("disk");
    let agent_log = work.join("agent.log");
    let log = std::fs::File::create(&agent_log).unwrap();
    let iface = seg.ip(3);
    let argv = [
        rackcast_tests::rc_agent(),
        "--server",
        &s.url,
        "--ca",
        s.ca.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--mac",
        A,
        "--disk",
        disk.to_str().unwrap(),
        "--iface",
        &iface,
        "--on-reboot",
        "exit",
        "--work-dir",
        work.to_str().unwrap(),
    ];
    let _agent = Proc(
        seg.command(1, &argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    s.wait_registered(&[A.to_string()], Duration::from_secs(30));

    // 5. The same token cannot claim twice, and while A's session is live
    // the enrollment token cannot take it over.
    let (code, why) = register(&s, A, &token);
    assert_eq!(code, 401, "A's boot token claimed twice: {why}");
    assert!(why.contains("claimed already"), "{why}");
    let (code, why) = register(&s, A, &s.enroll);
    assert_eq!(
        code, 409,
        "the enrollment token took over A's live session: {why}"
    );

    let j = s.wait_job(job, Duration::from_secs(120));
    let log_of = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert_eq!(
        j.status,
        "done",
        "{:#?}\n{}\n{}",
        j.targets,
        log_of(&agent_log),
        s.log_text()
    );
    assert_eq!(
        hash_file(&disk),
        hash_file(&golden),
        "A's disk is not the image"
    );

    // Every refusal is on record, and the token is in no log.
    let refused: Vec<String> = s
        .events_where("")
        .into_iter()
        .filter(|e| e.kind == "agent.refused")
        .filter_map(|e| e.target.map(|m| m.to_string()))
        .collect();
    let of = |m: &str| refused.iter().filter(|r| r.as_str() == m).count();
    assert_eq!(of(B), 1, "B's 21 refusals: {refused:?}");
    assert!(of(A) >= 1, "A's double claim and takeover: {refused:?}");
    assert_eq!(of(STRANGER), 0, "forged tokens made events: {refused:?}");
    assert!(
        !s.log_text().contains(&token),
        "the boot token is in the server log"
    );
    assert!(
        !log_of(&agent_log).contains(&token),
        "the boot token is in the agent log"
    );

    // After `rackcast target reset`, the operator's enrollment token may
    // register A again.
    let o = Command::new(rackcast_tests::rc())
        .args(["target", "reset", A, "--server", &s.url])
        .env("RACKCAST_TOKEN", &s.token)
        .env("RACKCAST_CA", &s.ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, why) = register(&s, A, &s.enroll);
    assert_eq!(code, 200, "after a reset: {why}");
}

/// Runs the `rackcast` CLI; (success, stdout + stderr).
fn rc(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let o = Command::new(rackcast_tests::rc())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn under_trusted_keys_only_signed_images_are_stored_and_a_job_keeps_the_root_it_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    let other = dir.path().join("other.key");
    for k in [&key, &other] {
        let (ok, out) = rc(&["image", "keygen", k.to_str().unwrap()], &[]);
        assert!(ok, "{out}");
    }
    let pubkey = format!("{}.pub", key.display());
    let mut s = Server::start_with(
        "200M",
        "127.0.0.1:0",
        Some(&format!("trusted_keys = [{pubkey:?}]\n")),
    );
    let (url, token) = (s.url.clone(), s.token.clone());
    let ca = s.ca.to_string_lossy().into_owned();
    let env = [
        ("RACKCAST_SERVER", url.as_str()),
        ("RACKCAST_TOKEN", token.as_str()),
        ("RACKCAST_CA", ca.as_str()),
    ];
    let (golden, img) = sample_image(s.dir.path(), "8M");
    let img_s = img.to_str().unwrap();

    // Unsigned: refused and not stored.
    let (ok, out) = rc(&["image", "upload", img_s, "--name", "golden"], &env);
    assert!(!ok, "an unsigned upload was accepted: {out}");
    assert!(out.contains("not signed"), "{out}");
    // Signed by a key the server does not trust: refused too.
    let (ok, out) = rc(
        &["image", "sign", img_s, "--key", other.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = rc(&["image", "upload", img_s, "--name", "golden"], &env);
    assert!(
        !ok,
        "an upload signed by an untrusted key was accepted: {out}"
    );
    assert!(out.contains("not trusted"), "{out}");
    let listed = s.call("GET", "/api/v1/images", None).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let stored = std::fs::read_dir(s.data().join("images"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .count();
    assert_eq!(stored, 0, "a refused upload left a file behind");
    // Re-signed with the trusted key: stored.
    let (ok, out) = rc(
        &["image", "sign", img_s, "--key", key.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = rc(&["image", "upload", img_s, "--name", "golden"], &env);
    assert!(ok, "{out}");

    // A job pins that root; another image uploaded under the same name
    // while the job runs changes nothing it sends. The next job gets it.
    let m = "52:54:00:00:20:01";
    let disk = s.dir.path().join("target.disk");
    let agent = s.agent(m, &disk, "linux-x64");
    s.wait_registered(&[m.to_string()], Duration::from_secs(30));
    let submit = |s: &Server| {
        s.call(
            "POST",
            "/api/v1/jobs",
            Some(json!({"name": "pinned", "targets": [m], "cast": {"max_wait": 3},
                "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 120}]})),
        )
        .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let id = submit(&s);
    let v2 = s.dir.path().join("v2");
    std::fs::create_dir_all(&v2).unwrap();
    // Other bytes than any sample: the sample generator is reproducible.
    let golden2 = v2.join("golden2.raw");
    let mut bytes = vec![0u8; 4 << 20];
    blake3::Hasher::new()
        .update(b"v2")
        .finalize_xof()
        .fill(&mut bytes);
    std::fs::write(&golden2, &bytes).unwrap();
    let img2 = v2.join("golden2.rcimg");
    let img2_s = img2.to_str().unwrap();
    let (ok, out) = rc(&["image", "create", golden2.to_str().unwrap(), img2_s], &[]);
    assert!(ok, "{out}");
    let (ok, out) = rc(
        &["image", "sign", img2_s, "--key", key.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = rc(&["image", "upload", img2_s, "--name", "golden"], &env);
    assert!(ok, "{out}");
    let j = s.wait_job(id, Duration::from_secs(120));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    assert_eq!(
        hash_file(&disk),
        hash_file(&golden),
        "the job sent the re-uploaded image"
    );
    // The local agent exited to "boot its disk"; started again, it renews
    // its session with the token it saved (the enrollment token may not
    // take over a session this fresh).
    s.agent_mut(agent).restart();
    let j = s.wait_job(submit(&s), Duration::from_secs(120));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    let want = std::fs::read(&golden2).unwrap();
    let got = std::fs::read(&disk).unwrap();
    assert_eq!(
        &got[..want.len()],
        &want[..],
        "the next job did not send the new image"
    );
}

#[test]
fn the_cli_and_the_agent_trust_the_servers_own_ca_and_refuse_another() {
    let mut s = Server::start("100M");
    let other = Server::start("100M");
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let out = |c: &mut Command| {
        let o = c.output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, text) = out(s.cli().args(["target", "list"]));
    assert!(ok, "{text}");
    // Another server's CA, and the public roots, do not vouch for it.
    let (ok, text) = out(s
        .cli()
        .args(["target", "list"])
        .env("RACKCAST_CA", &other.ca));
    assert!(!ok, "trusted with another CA: {text}");
    assert!(text.contains("not trusted"), "{text}");
    let (ok, text) = out(s.cli().args(["target", "list"]).env_remove("RACKCAST_CA"));
    assert!(!ok, "trusted without its CA: {text}");
    // Plain HTTP to the HTTPS port gets nowhere.
    let plain = s.url.replacen("https://", "http://", 1);
    let (ok, text) = out(s.cli().args(["target", "list", "--server", &plain]));
    assert!(!ok, "plain HTTP answered: {text}");

    // The agent: with the wrong CA it never registers (and gives up);
    // with the right one it does.
    let m = "52:54:00:00:30:01";
    let disk = s.dir.path().join("t.disk");
    let (ok, text) = out(Command::new(rackcast_tests::rc_agent())
        .args(["--server", &s.url, "--mac", m, "--give-up", "2", "--ca"])
        .arg(&other.ca)
        .arg("--token-file")
        .arg(s.data().join("agent.token"))
        .arg("--disk")
        .arg(&disk)
        .arg("--work-dir")
        .arg(s.dir.path().join("w-wrong")));
    assert!(!ok, "the agent registered through another CA: {text}");
    assert!(text.contains("not trusted"), "{text}");
    let listed = s.call("GET", "/api/v1/targets", None).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    s.agent(m, &disk, "linux-x64");
    s.wait_registered(&[m.to_string()], Duration::from_secs(30));
}
