//! `rackcast image ...` and `rackcast demo` as the README shows them.

use std::os::unix::fs::FileExt;

use crate::{b3, fails, field, ok, rackcast};

#[test]
fn readme_image_commands_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("disk.raw");
    let img = d.path().join("golden.rcimg");
    let dest = d.path().join("target.disk");
    ok(&rackcast(&[&"image", &"sample", &src, &"--size", &"24M"]));
    let out = ok(&rackcast(&[
        &"image",
        &"create",
        &src,
        &img,
        &"--chunk-size",
        &"1M",
        &"--label",
        &"os=test",
    ]));
    let root = field(&out, "root").to_string();
    assert_eq!(root.len(), 64);
    assert!(field(&out, "size").starts_with("24.00 MiB"));
    assert!(!d.path().join("golden.rcimg.partial").exists());

    let json = ok(&rackcast(&[&"image", &"inspect", &img, &"--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["root"], root.as_str());
    assert_eq!(v["metadata"]["source_size"], 24 << 20);
    assert_eq!(v["metadata"]["labels"]["os"], "test");
    assert_eq!(v["chunk_count"], 24);
    let kinds: u64 = v["chunk_kinds"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(kinds, 24);
    let text = ok(&rackcast(&[&"image", &"inspect", &img]));
    assert_eq!(field(&text, "root"), root);

    let out = ok(&rackcast(&[&"image", &"verify", &img]));
    assert_eq!(field(&out, "verified"), "ok");
    ok(&rackcast(&[&"image", &"restore", &img, &dest]));
    assert_eq!(b3(&src), b3(&dest));
}

/// `rackcast image inspect IMG | head`: the reader closes early, and the
/// command ends by SIGPIPE as a Unix filter does, without a panic.
#[test]
fn inspect_into_a_pipe_closed_early_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let d = tempfile::tempdir().unwrap();
    let (src, img) = (d.path().join("disk.raw"), d.path().join("i.rcimg"));
    ok(&rackcast(&[&"image", &"sample", &src, &"--size", &"4M"]));
    ok(&rackcast(&[
        &"image",
        &"create",
        &src,
        &img,
        &"--chunk-size",
        &"1M",
    ]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rackcast"))
        .args(["image", "inspect", "--chunks"])
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The only read end, closed before the command prints a byte.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(13), "{:?}: {err}", out.status);
}

#[test]
fn verify_names_the_bad_chunk_and_exits_non_zero() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("disk.raw");
    let img = d.path().join("i.rcimg");
    ok(&rackcast(&[
        &"image", &"sample", &src, &"--size", &"8M", &"--shape", &"random",
    ]));
    ok(&rackcast(&[
        &"image",
        &"create",
        &src,
        &img,
        &"--chunk-size",
        &"1M",
    ]));
    let json = ok(&rackcast(&[
        &"image",
        &"inspect",
        &img,
        &"--json",
        &"--chunks",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let c5 = &v["chunks"][5];
    let frame = c5["frame_offset"].as_u64().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&[0xFF, 0x00, 0xFF], frame + 1000).unwrap();
    let err = fails(&rackcast(&[&"image", &"verify", &img]));
    assert!(err.contains("chunk 5"), "{err}");
    assert!(err.contains(&format!("disk offset {}", 5 << 20)), "{err}");
    assert!(err.contains(&format!("image byte offset {frame}")), "{err}");
    let err = fails(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &d.path().join("t"),
    ]));
    assert!(err.contains("chunk 5"), "{err}");
}

#[test]
fn signed_images_need_the_right_key() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("disk.raw");
    let img = d.path().join("s.rcimg");
    let key = d.path().join("site.key");
    let other = d.path().join("other.key");
    ok(&rackcast(&[&"image", &"sample", &src, &"--size", &"4M"]));
    ok(&rackcast(&[&"image", &"keygen", &key]));
    ok(&rackcast(&[&"image", &"keygen", &other]));
    fails(&rackcast(&[&"image", &"keygen", &key]));
    let out = ok(&rackcast(&[
        &"image", &"create", &src, &img, &"--sign", &key,
    ]));
    assert_eq!(field(&out, "signed"), "yes");
    let out = ok(&rackcast(&[
        &"image",
        &"verify",
        &img,
        &"--key",
        &d.path().join("site.key.pub"),
    ]));
    assert!(field(&out, "signature").starts_with("valid"));
    let err = fails(&rackcast(&[
        &"image",
        &"verify",
        &img,
        &"--key",
        &d.path().join("other.key.pub"),
    ]));
    assert!(err.contains("signature"), "{err}");
    let err = fails(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &d.path().join("t"),
        &"--key",
        &d.path().join("other.key.pub"),
    ]));
    assert!(err.contains("signature"), "{err}");
    assert!(
        !d.path().join("t").exists(),
        "restore wrote before checking the signature"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let err = fails(&rackcast(&[
        &"image",
        &"verify",
        &d.path().join("missing.rcimg"),
    ]));
    assert!(err.contains("missing.rcimg"), "{err}");
    let junk = d.path().join("junk");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = fails(&rackcast(&[&"image", &"inspect", &junk]));
    assert!(err.contains("not a rackcast image"), "{err}");
    let err = fails(&rackcast(&[
        &"image",
        &"create",
        &junk,
        &d.path().join("o"),
        &"--chunk-size",
        &"3M",
    ]));
    assert!(err.contains("power of two"), "{err}");
    let err = fails(&rackcast(&[
        &"image",
        &"create",
        &junk,
        &d.path().join("o"),
        &"--level",
        &"99",
    ]));
    assert!(err.contains("level"), "{err}");
    assert!(!d.path().join("o").exists() && !d.path().join("o.partial").exists());
}

#[test]
fn demo_runs_and_checks_every_target() {
    let d = tempfile::tempdir().unwrap();
    let out = ok(&rackcast(&[
        &"demo",
        &"--size",
        &"16M",
        &"--targets",
        &"2",
        &"--dir",
        &d.path(),
    ]));
    assert!(
        out.contains("all 2 targets match the source byte for byte"),
        "{out}"
    );
}

#[test]
fn ctrl_c_stops_a_capture_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.raw");
    let img = d.path().join("big.rcimg");
    // 16 GiB of holes: seconds to capture, so the signal lands mid-way.
    std::fs::File::create(&src)
        .unwrap()
        .set_len(16 << 30)
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rackcast"))
        .args(["image", "create"])
        .arg(&src)
        .arg(&img)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Until the partial output exists: the capture is under way.
    let partial = d.path().join("big.rcimg.partial");
    let t0 = std::time::Instant::now();
    while !partial.exists() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(partial.exists(), "no capture under way");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled after"), "{err}");
    assert!(!img.exists() && !partial.exists(), "output left behind");
}
