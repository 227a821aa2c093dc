//! The README's remaining commands as a user types them: signing, and
//! `rackcast netboot` serving its root over TFTP and HTTP.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{fails, ok, rackcast};

#[test]
fn readme_signing_commands_sign_and_refuse_the_wrong_key() {
    let d = tempfile::tempdir().unwrap();
    let (src, img, key, other) = (
        d.path().join("disk.raw"),
        d.path().join("golden.rcimg"),
        d.path().join("site.key"),
        d.path().join("other.key"),
    );
    ok(&rackcast(&[&"image", &"sample", &src, &"--size", &"4M"]));
    ok(&rackcast(&[&"image", &"keygen", &key]));
    ok(&rackcast(&[&"image", &"keygen", &other]));
    ok(&rackcast(&[
        &"image", &"create", &src, &img, &"--sign", &key,
    ]));
    let pub_key = d.path().join("site.key.pub");
    ok(&rackcast(&[&"image", &"verify", &img, &"--key", &pub_key]));
    let err = fails(&rackcast(&[
        &"image",
        &"verify",
        &img,
        &"--key",
        &d.path().join("other.key.pub"),
    ]));
    assert!(err.to_lowercase().contains("sign"), "{err}");
}

/// Kills the child on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readme_netboot_command_serves_its_root_over_tftp_and_http() {
    for tool in ["curl", "tftp"] {
        let have = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            eprintln!("skipping: {tool} is not installed (scripts/deps.sh test installs it)");
            return;
        }
    }
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("boot");
    std::fs::create_dir_all(&root).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("vmlinuz"), &body).unwrap();
    let base = 30000 + (std::process::id() % 1000) as u16 * 4;
    let (dhcp, tftp, http) = (base, base + 1, base + 2);
    let child = Command::new(env!("CARGO_BIN_EXE_rackcast"))
        .args(["netboot", "--iface", "lo", "--root"])
        .arg(&root)
        .args(["--dhcp-port", &dhcp.to_string()])
        .args(["--tftp", &format!("127.0.0.1:{tftp}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Kill(child);
    let url = format!("http://127.0.0.1:{http}/files/vmlinuz");
    let got = d.path().join("http.out");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = Command::new("curl")
            .args(["-sf", "-o"])
            .arg(&got)
            .arg(&url)
            .status()
            .unwrap();
        if st.success() {
            break;
        }
        assert!(Instant::now() < deadline, "netboot never served {url}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&got).unwrap(), body, "HTTP body differs");
    // tftp-hpa's client, with blksize negotiated.
    let out = Command::new("tftp")
        .current_dir(d.path())
        .args([
            "127.0.0.1",
            &tftp.to_string(),
            "-m",
            "binary",
            "-c",
            "get",
            "vmlinuz",
            "tftp.out",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(d.path().join("tftp.out")).unwrap(),
        body,
        "TFTP body differs"
    );
    // Path escapes are refused.
    let st = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--path-as-is"])
        .arg(format!("http://127.0.0.1:{http}/files/../../etc/passwd"))
        .status()
        .unwrap();
    assert!(!st.success(), "netboot served a path outside its root");
}
