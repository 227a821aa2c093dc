//! The preboot console over real HTTP on loopback: the prompt a machine
//! with no work gets, its menu, and what the choices do, with the PIN, an
//! operator's token, a wrong PIN and a lockout. (The same, typed at real
//! firmware under QEMU, is in `tests/e2e/console.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::rig::{sample_image, Server};

const PIN: &str = "2468";
const A: &str = "52:54:00:c0:00:0a";
const B: &str = "52:54:00:c0:00:0b";

/// A server with netboot on loopback; `menu` is extra config.
fn start(menu: &str) -> (Server, String, tempfile::TempDir) {
    let pins = tempfile::tempdir().unwrap();
    let pin = pins.path().join("console.pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Ports the kernel says are free now (a fixed range once met another
    // test's socket).
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = tcp.local_addr().unwrap().to_string();
    drop(tcp);
    let udp = rackcast_tests::emu::free_udp_port;
    let config = format!(
        r#"menu_pin_file = "{pin}"
{menu}
[netboot]
iface = "lo"
mode = "proxy"
server_ip = "127.0.0.1"
http = "{http}"
tftp = "127.0.0.1:{tftp}"
dhcp_ports = [{dhcp}]
"#,
        pin = pin.display(),
        tftp = udp(),
        dhcp = udp(),
    );
    let s = Server::start_with("100M", "127.0.0.1:0", Some(&config));
    (s, format!("http://{http}"), pins)
}

/// GET `url` with optional Basic credentials: (status, body, WWW-Authenticate).
fn get(url: &str, login: Option<(&str, &str)>) -> (u16, String, String) {
    let mut r = ureq::get(url).timeout(Duration::from_secs(40));
    if let Some((u, p)) = login {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        r = r.set("Authorization", &format!("Basic {b}"));
    }
    match r.call() {
        Ok(resp) => (resp.status(), resp.into_string().unwrap(), String::new()),
        Err(ureq::Error::Status(code, resp)) => {
            let auth = resp.header("www-authenticate").unwrap_or("").to_string();
            (code, resp.into_string().unwrap_or_default(), auth)
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn audit(s: &Server) -> Vec<serde_json::Value> {
    s.call("GET", "/api/v1/audit", None)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_technician_enrols_captures_deploys_and_opens_a_shell_from_the_console() {
    let (s, http, _pins) = start("");
    let (_, img) = sample_image(s.dir.path(), "4M");
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

    // 1. A stranger with no work gets the prompt, then its disk.
    let (code, prompt, _) = get(&format!("{http}/ipxe/{A}?arch=0"), None);
    assert_eq!(code, 200, "{prompt}");
    assert!(
        prompt.starts_with("#!ipxe\nprompt --key m --timeout 3000 "),
        "{prompt}"
    );
    assert!(
        prompt.contains(&format!(
            "chain {http}/console/{A}/menu?arch=0 || goto local"
        )),
        "{prompt}"
    );
    assert!(
        prompt.contains("sanboot --no-describe --drive 0x80"),
        "{prompt}"
    );

    // 2. Its menu: not enrolled, the library's image offered.
    let (code, menu, _) = get(&format!("{http}/console/{A}/menu?arch=0"), None);
    assert_eq!(code, 200, "{menu}");
    assert!(menu.contains("item --gap State: not enrolled"), "{menu}");
    assert!(menu.contains("item i:golden golden"), "{menu}");
    let login_url = format!(
        "http://${{username:uristring}}:${{password:uristring}}@{}",
        &http[7..]
    );
    assert!(
        menu.contains(&format!(
            "chain {login_url}/console/{A}/register?arch=0&name="
        )),
        "{menu}"
    );

    // Hardware information needs no credentials: the firmware's SMBIOS,
    // and what the server knows (nothing yet), then back to the menu.
    let (code, info, _) = get(&format!("{http}/console/{A}/info?arch=0"), None);
    assert_eq!(code, 200, "{info}");
    assert!(
        info.contains("${manufacturer}") && info.contains("no inventory yet"),
        "{info}"
    );
    assert!(
        info.ends_with(&format!("chain {http}/console/{A}/menu?arch=0\n")),
        "{info}"
    );

    // 3. Register without credentials: a Basic challenge, nothing done.
    let register = format!("{http}/console/{A}/register?arch=0&name=node-7");
    let (code, _, challenge) = get(&register, None);
    assert_eq!(code, 401);
    assert!(challenge.starts_with("Basic "), "{challenge}");

    // 4. A wrong PIN changes nothing and is audited.
    let (code, said, _) = get(&register, Some(("tech", "1111")));
    assert_eq!(code, 200);
    assert!(said.contains("wrong PIN"), "{said}");
    let (_, targets) = (0, s.call("GET", "/api/v1/targets", None).unwrap());
    assert_eq!(targets.as_array().unwrap().len(), 0, "{targets}");
    let a = audit(&s);
    let refused = a.last().unwrap();
    assert_eq!(refused["origin"], format!("console {A}"), "{a:?}");
    assert_eq!(refused["action"], "console register");
    assert_eq!(refused["status"], 403);
    assert_eq!(refused["token"], "tech (refused)");

    // 5. The PIN: enrolled under its name, an ordinary job from this
    // console, and the machine is sent on to the environment.
    let (code, said, _) = get(&register, Some(("", PIN)));
    assert_eq!(code, 200);
    assert!(
        said.contains(&format!("chain {http}/ipxe/{A}?arch=0")),
        "{said}"
    );
    let t = s
        .call("GET", &format!("/api/v1/targets/{A}"), None)
        .unwrap();
    assert_eq!(t["name"], "node-7", "{t}");
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    let job = &jobs.as_array().unwrap()[0];
    assert_eq!(job["name"], "register node-7", "{job}");
    assert_eq!(
        job["spec"]["origin"],
        format!("console {A} by pin"),
        "{job}"
    );
    let (_, boot, _) = get(&format!("{http}/ipxe/{A}?arch=0"), None);
    assert!(
        boot.contains("kernel ") && boot.contains("rackcast.token=rcb1-"),
        "{boot}"
    );

    // 6. Deploy and capture with an operator's own token (B, a stranger).
    let alice = s
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "alice", "role": "admin"})),
        )
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let deploy = format!("{http}/console/{B}/deploy?arch=7&image=i%3Agolden");
    let (_, said, _) = get(&deploy, Some(("alice", &alice)));
    assert!(
        said.contains(&format!("chain {http}/ipxe/{B}?arch=7")),
        "{said}"
    );
    // Another operator's name with alice's token is not alice.
    let (_, said, _) = get(&deploy, Some(("bob", &alice)));
    assert!(said.contains("wrong PIN"), "{said}");
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    let deployed: Vec<_> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["name"] == "deploy golden")
        .collect();
    assert_eq!(deployed.len(), 1, "{jobs}");
    assert_eq!(
        deployed[0]["spec"]["origin"],
        format!("console {B} by alice")
    );
    assert_eq!(deployed[0]["spec"]["targets"][0], B);
    assert_eq!(deployed[0]["spec"]["task"][0]["kind"], "distribute");

    // Capture A's disk into a new image, with the PIN.
    let (_, said, _) = get(
        &format!("{http}/console/{A}/capture?arch=0&image=a-disk"),
        Some(("", PIN)),
    );
    assert!(said.contains("(capture a-disk) started"), "{said}");
    let jobs = s.call("GET", "/api/v1/jobs", None).unwrap();
    let capture = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == "capture a-disk")
        .unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(capture["spec"]["task"][0]["kind"], "create", "{capture}");
    assert_eq!(capture["spec"]["origin"], format!("console {A} by pin"));
    // A name the library would refuse is refused, and nothing is queued.
    let (_, said, _) = get(
        &format!("{http}/console/{A}/capture?arch=0&image=..%2Fetc"),
        Some(("", PIN)),
    );
    assert!(said.contains("refused"), "{said}");

    // 7. The shell: the environment's kernel with rackcast.shell=1, and no
    // boot token (no agent runs there).
    let (_, shell, _) = get(&format!("{http}/console/{A}/shell?arch=0"), Some(("", PIN)));
    assert!(shell.contains("rackcast.shell=1"), "{shell}");
    assert!(!shell.contains("rcb1-"), "{shell}");

    // 8. Five wrong PINs lock a console: then even the right one is
    // refused (429 in the audit log).
    let capture = format!("{http}/console/{B}/capture?arch=7&image=b-disk");
    for _ in 0..5 {
        let (_, said, _) = get(&capture, Some(("", "0000")));
        assert!(said.contains("wrong PIN"), "{said}");
    }
    let (_, said, _) = get(&capture, Some(("", PIN)));
    assert!(said.contains("locked"), "{said}");
    let a = audit(&s);
    assert_eq!(a.last().unwrap()["status"], 429, "{a:?}");
    assert!(
        !s.call("GET", "/api/v1/jobs", None)
            .unwrap()
            .to_string()
            .contains("b-disk"),
        "a locked console started a capture"
    );

    // Neither the PIN nor a token is in the audit log or the server's log.
    let a = serde_json::Value::Array(audit(&s)).to_string();
    let log = s.log_text();
    for secret in [PIN, &alice] {
        assert!(!a.contains(secret), "secret in the audit log: {a}");
        assert!(!log.contains(secret), "secret in the server log");
    }
}

#[test]
fn with_the_menu_off_the_boot_is_todays_and_there_is_no_console() {
    let (s, http, _pins) = start("menu_timeout = 0");
    s.call(
        "POST",
        "/api/v1/targets",
        Some(json!({"mac": A, "name": "a"})),
    )
    .unwrap();
    let (code, bios, _) = get(&format!("{http}/ipxe/{A}?arch=0"), None);
    assert_eq!(code, 200);
    assert_eq!(bios, "#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n");
    let (_, efi, _) = get(&format!("{http}/ipxe/{A}?arch=7"), None);
    assert_eq!(
        efi,
        format!("#!ipxe\nchain {http}/files/rackcast-local-x64.efi || exit\n")
    );
    let (code, _, _) = get(&format!("{http}/console/{A}/menu?arch=0"), None);
    assert_eq!(code, 404);
    let (code, _, _) = get(
        &format!("{http}/console/{A}/register?arch=0"),
        Some(("", PIN)),
    );
    assert_eq!(code, 404);
    let a = audit(&s);
    assert!(a.iter().all(|e| e["origin"] == "api"), "{a:?}");
}

#[test]
fn menu_for_unknown_false_keeps_strangers_on_todays_boot() {
    let (s, http, _pins) = start("menu_for_unknown = false");
    s.call(
        "POST",
        "/api/v1/targets",
        Some(json!({"mac": A, "name": "a"})),
    )
    .unwrap();
    let (_, known, _) = get(&format!("{http}/ipxe/{A}?arch=0"), None);
    assert!(known.starts_with("#!ipxe\nprompt --key m "), "{known}");
    let (_, stranger, _) = get(&format!("{http}/ipxe/{B}?arch=0"), None);
    assert_eq!(
        stranger,
        "#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n"
    );
}
