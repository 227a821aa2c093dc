//! The Debian package: `scripts/deb.sh` builds a `.deb` from this build's
//! binaries; its contents unpack to the expected paths, its example
//! config is one the server starts with (and then serves the dashboard), and `systemd-analyze verify` finds
//! nothing to say about its units.

use std::path::Path;
use std::process::Command;

use rackcast_tests::have;

#[test]
fn the_deb_holds_the_binaries_units_and_config_and_its_units_verify() {
    for tool in ["dpkg-deb", "objcopy", "systemd-analyze"] {
        if !have(tool) {
            eprintln!("skipped: no {tool} (scripts/deps.sh test installs it)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bins = Path::new(rackcast_tests::rc()).parent().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(repo.join("scripts/deb.sh"))
        .arg("--bin-dir")
        .arg(bins)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deb = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");

    let fields = run(Command::new("dpkg-deb").args(["-f", &deb, "Package", "Version"]));
    assert!(fields.contains("Package: rackcast"), "{fields}");
    let conffiles = run(Command::new("dpkg-deb").args(["--info", &deb, "conffiles"]));
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/rackcast.toml", "/etc/default/rackcast-netboot"]
    );

    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").args(["-x", &deb]).arg(&root));
    for (path, mode) in [
        ("usr/bin/rackcast", 0o755),
        ("usr/bin/rackcast-agent", 0o755),
        ("lib/systemd/system/rackcast-server.service", 0o644),
        ("lib/systemd/system/rackcast-netboot.service", 0o644),
        ("etc/rackcast.toml", 0o644),
        ("etc/default/rackcast-netboot", 0o644),
        ("usr/share/doc/rackcast/README.md", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(root.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{path}");
    }
    // The packaged binary runs, and accepts the packaged config.
    let rc = root.join("usr/bin/rackcast");
    let v = run(Command::new(&rc).arg("--version"));
    assert!(v.starts_with("rackcast "), "{v}");
    let data = dir.path().join("data");
    run(Command::new(&rc)
        .args(["server", "--config"])
        .arg(root.join("etc/rackcast.toml"))
        .arg("--data")
        .arg(&data)
        .arg("--make-ca"));

    // An upgrade's first step: migrations applied, then it exits.
    let fresh = dir.path().join("fresh");
    let db = run(Command::new(&rc)
        .args(["server", "--migrate-only", "--data"])
        .arg(&fresh));
    assert_eq!(Path::new(db.trim()), fresh.join("rackcast.db"));
    assert!(fresh.join("rackcast.db").exists());

    // Started as the unit starts it (its config; here on loopback and a
    // temporary data directory), it serves the dashboard.
    let mut server = Command::new(&rc)
        .args(["server", "--config"])
        .arg(root.join("etc/rackcast.toml"))
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = {
        use std::io::BufRead;
        let out = server.stdout.take().unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        line
    };
    let url = first.trim().strip_prefix("listening ").map(str::to_string);
    let page = url.as_ref().map(|u| {
        super::rig::trusting(&data.join("tls/ca.pem"))
            .get(&format!("{u}/ui/"))
            .call()
            .map(|r| (r.status(), r.into_string().unwrap_or_default()))
            .map_err(|e| e.to_string())
    });
    let _ = server.kill();
    let _ = server.wait();
    let (status, html) = match page {
        Some(Ok(p)) => p,
        other => panic!("the packaged server did not serve: {first:?} {other:?}"),
    };
    assert_eq!(status, 200);
    assert!(html.contains("/ui/app.js"), "{html}");

    // Verified as installed: ExecStart pointed into the unpacked tree,
    // since verify checks that the command is there.
    for unit in ["rackcast-server.service", "rackcast-netboot.service"] {
        let text = std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        for must in [
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/rackcast",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW",
        ] {
            assert!(text.contains(must), "{unit} lacks {must}");
        }
        let copy = dir.path().join(unit);
        let here = root.join("usr/bin/rackcast").display().to_string();
        std::fs::write(&copy, text.replace("/usr/bin/rackcast", &here)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
