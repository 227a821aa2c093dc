//! `rackcast image create` on a disk with filesystems
//! (`scripts/test-disk.sh`: GPT, an ESP, ext4, swap): what it
//! reports, what `image inspect` shows of each partition, `--no-fs`, and
//! the refusal of a mounted partition (loop devices, as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{fails, field, ok, rackcast};

/// The test disk in `dir`, or `None` (printed why) without the tools.
fn test_disk(dir: &Path) -> Option<PathBuf> {
    for t in ["sfdisk", "mkfs.ext4", "mkswap", "mkfs.vfat", "mcopy"] {
        if !["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
        {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs e2fsprogs, fdisk)");
            return None;
        }
    }
    let disk = dir.join("disk.raw");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-disk.sh");
    let out = Command::new(script).arg(&disk).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    Some(disk)
}

#[test]
fn create_reads_the_filesystems_and_inspect_shows_each_partition() {
    let d = tempfile::tempdir().unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let img = d.path().join("disk.rcimg");
    let out = ok(&rackcast(&[&"image", &"create", &disk, &img]));
    assert!(
        field(&out, "read").ends_with("of 64.00 MiB (gpt partition table)"),
        "{out}"
    );
    let json = ok(&rackcast(&[&"image", &"inspect", &img, &"--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["partition_table"], "gpt");
    let parts = v["partitions"].as_array().unwrap();
    let fs: Vec<_> = parts.iter().map(|p| p["fs"].as_str()).collect();
    assert_eq!(
        fs,
        vec![Some("fat12"), Some("ext4"), Some("swap")],
        "{json}"
    );
    let n = |p: &serde_json::Value, k: &str| p[k].as_u64().unwrap();
    assert!(
        n(&parts[0], "used") < 2 << 20,
        "the ESP's free clusters: {json}"
    );
    assert!(n(&parts[1], "used") < n(&parts[1], "len") / 2, "{json}");
    assert_eq!(n(&parts[2], "used"), 4096, "swap: its header page");

    let whole = d.path().join("whole.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &whole, &"--no-fs"]));
    let json = ok(&rackcast(&[&"image", &"inspect", &whole, &"--json"]));
    let w: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(w["partitions"][1]["used"], w["partitions"][1]["len"]);
    assert!(
        n(&w, "stored_bytes") > 2 * n(&v, "stored_bytes"),
        "the free blocks' noise is stored without the scan"
    );
}

/// Runs a command that must succeed, returning its stdout.
fn sh(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_mounted_partition_is_refused_unless_read_only_and_allowed() {
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("SKIP: needs root for loop devices and mounts");
        return;
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let Ok(out) = Command::new("losetup")
        .args(["--find", "--show", "--partscan"])
        .arg(&disk)
        .output()
    else {
        eprintln!("SKIP: no losetup");
        return;
    };
    if !out.status.success() {
        eprintln!(
            "SKIP: no loop device: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // Detached (and unmounted) however the test ends.
    struct Loop(String, PathBuf);
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.1).status();
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let mnt = d.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _loop = Loop(dev.clone(), mnt.clone());
    // The partition's node: udev makes it where it runs; here it may not,
    // so it is made from the kernel's numbers in sysfs.
    // Some kernels scan the table at attach only when asked again.
    let _ = Command::new("partx").args(["-a", &dev]).output();
    let name = dev.trim_start_matches("/dev/");
    let sys = format!("/sys/class/block/{name}p2/dev");
    for _ in 0..50 {
        if Path::new(&sys).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let numbers = std::fs::read_to_string(&sys).expect("the loop device's partition 2");
    let mut part = format!("{dev}p2");
    if !Path::new(&part).exists() {
        let (major, minor) = numbers.trim().split_once(':').unwrap();
        part = d.path().join("p2").display().to_string();
        sh(Command::new("mknod").args([&part, "b", major, minor]));
    }
    let img = d.path().join("dev.rcimg");

    sh(Command::new("mount").args(["-o", "ro", &part]).arg(&mnt));
    let err = fails(&rackcast(&[&"image", &"create", &dev, &img]));
    assert!(
        err.contains("mounted read-only") && err.contains("--allow-mounted"),
        "{err}"
    );
    let out = ok(&rackcast(&[
        &"image",
        &"create",
        &dev,
        &img,
        &"--allow-mounted",
    ]));
    assert!(out.contains("ext4"), "{out}");
    sh(Command::new("umount").arg(&mnt));

    sh(Command::new("mount").args(["-o", "rw", &part]).arg(&mnt));
    let err = fails(&rackcast(&[
        &"image",
        &"create",
        &dev,
        &img,
        &"--allow-mounted",
    ]));
    assert!(err.contains("mounted read-write"), "{err}");
    sh(Command::new("umount").arg(&mnt));
}
