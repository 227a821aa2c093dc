//! `rackcast image create` on a disk with filesystems
//! (`scripts/test-disk.sh`: GPT, an ESP, ext4, swap): what it
//! reports, what `image inspect` shows of each partition, `--no-fs`, and
//! the refusal of a mounted partition (loop devices, as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{fails, field, ok, rackcast};

/// Whether every tool is installed; prints what is missing and which
/// packages bring it (`scripts/deps.sh test` installs them) otherwise.
fn have_tools(tools: &[&str], packages: &str) -> bool {
    for t in tools {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs {packages})");
            return false;
        }
    }
    true
}

/// `rackcast image restore IMG TARGET --grow --state-dir STATE`.
fn restore_grow(img: &Path, target: &Path, state: &Path) -> std::process::Output {
    rackcast(&[
        &"image",
        &"restore",
        &img,
        &target,
        &"--grow",
        &"--state-dir",
        &state,
    ])
}

/// A file of `size` bytes, all a hole.
fn blank(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// The block count of the ext4 in `part` (`dumpe2fs -h`).
fn ext4_blocks(part: &Path) -> u64 {
    let info = sh(Command::new("dumpe2fs").arg("-h").arg(part));
    info.lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block count in {info}"))
}

/// Writes the partition table `layout` (sfdisk's script) to the file `disk`.
fn sfdisk(disk: &Path, layout: &str) {
    let mut sf = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sf.stdin.take().unwrap(), layout.as_bytes()).unwrap();
    assert!(sf.wait().unwrap().success(), "sfdisk {}", disk.display());
}

/// The test disk in `dir`, or `None` (printed why) without the tools.
fn test_disk(dir: &Path) -> Option<PathBuf> {
    if !have_tools(
        &["sfdisk", "mkfs.ext4", "mkswap", "mkfs.vfat", "mcopy"],
        "e2fsprogs, fdisk",
    ) {
        return None;
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
        vec![Some("fat12"), Some("swap"), Some("ext4")],
        "{json}"
    );
    let n = |p: &serde_json::Value, k: &str| p[k].as_u64().unwrap();
    assert!(
        n(&parts[0], "used") < 2 << 20,
        "the ESP's free clusters: {json}"
    );
    assert_eq!(n(&parts[1], "used"), 4096, "swap: its header page");
    assert!(n(&parts[2], "used") < n(&parts[2], "len") / 2, "{json}");

    let whole = d.path().join("whole.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &whole, &"--no-fs"]));
    let json = ok(&rackcast(&[&"image", &"inspect", &whole, &"--json"]));
    let w: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(w["partitions"][2]["used"], w["partitions"][2]["len"]);
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
    let sys = format!("/sys/class/block/{name}p3/dev");
    for _ in 0..50 {
        if Path::new(&sys).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let numbers = std::fs::read_to_string(&sys).expect("the loop device's partition 3");
    let mut part = format!("{dev}p3");
    if !Path::new(&part).exists() {
        let (major, minor) = numbers.trim().split_once(':').unwrap();
        part = d.path().join("p3").display().to_string();
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

fn is_root() -> bool {
    rustix::process::geteuid().as_raw() == 0
}

/// Bytes `at..at + len` of `path`.
fn bytes_at(path: &Path, at: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    b
}

#[test]
fn a_larger_target_gets_the_gpt_at_its_end_and_with_grow_a_grown_ext4() {
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let img = d.path().join("disk.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &img]));
    let state = d.path().join("state");
    let noise = |p: &Path| {
        let mut f = std::fs::File::create(p).unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..96 {
            for c in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            std::io::Write::write_all(&mut f, &block).unwrap();
        }
    };

    // Without --grow: the backup GPT moves; unused blocks keep the noise.
    let kept = d.path().join("kept.raw");
    noise(&kept);
    let before = bytes_at(&kept, (9 << 20) + 8192, 4096);
    let out = ok(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &kept,
        &"--state-dir",
        &state,
    ]));
    assert!(out.contains("backup header and table moved"), "{out}");
    sh(Command::new("sfdisk").arg("-V").arg(&kept));
    assert_eq!(
        bytes_at(&kept, (9 << 20) + 8192, 4096),
        before,
        "swap page 3 kept"
    );

    if !is_root() {
        eprintln!("SKIP: --grow needs root (loop device)");
        return;
    }
    let grown = d.path().join("grown.raw");
    noise(&grown);
    let out = ok(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &grown,
        &"--grow",
        &"--unused",
        &"zero",
        &"--state-dir",
        &state,
    ]));
    assert!(out.contains("grown     partition 3 (ext4)"), "{out}");
    sh(Command::new("sfdisk").arg("-V").arg(&grown));
    assert!(
        bytes_at(&grown, (9 << 20) + 8192, 4096)
            .iter()
            .all(|&b| b == 0),
        "--unused zero"
    );
    // Partition 3 runs from 17 MiB to the backup table (33 sectors).
    let table = sh(Command::new("sfdisk").arg("-d").arg(&grown));
    let p3 = table
        .lines()
        .find(|l| l.contains("raw3"))
        .unwrap()
        .to_string();
    let sectors = (96u64 << 20) / 512 - 33 - 34816;
    assert!(p3.contains(&format!("size={sectors:>12}")), "{table}");
    let part = d.path().join("p3.raw");
    std::fs::write(&part, bytes_at(&grown, 17 << 20, (sectors * 512) as usize)).unwrap();
    sh(Command::new("e2fsck").arg("-fn").arg(&part));
    let blocks = ext4_blocks(&part);
    assert_eq!(blocks, sectors * 512 / 4096, "the ext4 fills its partition");
    let host = sh(Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(&part));
    assert_eq!(host, "rack12-u01");
}

#[test]
fn grow_on_an_xfs_partition_runs_xfs_growfs() {
    if !is_root() {
        eprintln!("SKIP: needs root (loop devices, a mount)");
        return;
    }
    if !have_tools(
        &["sfdisk", "mkfs.xfs", "xfs_growfs", "xfs_repair"],
        "xfsprogs, fdisk",
    ) {
        return;
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    // A GPT disk of 320 MiB, one XFS partition from 1 MiB (its minimum
    // size is 300 MiB) holding one file.
    let disk = d.path().join("xfs-disk.raw");
    blank(&disk, 320 << 20);
    sfdisk(
        &disk,
        "label: gpt\nstart=2048, size=640000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
    );
    let part = d.path().join("xfs.raw");
    let len = 640_000 * 512;
    blank(&part, len);
    let file = d.path().join("hello");
    std::fs::write(&file, b"hello from xfs\n").unwrap();
    let proto = d.path().join("proto");
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\nhello ---644 0 0 {}\n$\n",
            file.display()
        ),
    )
    .unwrap();
    sh(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&part));
    sh(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc,sparse", "status=none"]));

    let img = d.path().join("xfs.rcimg");
    let out = ok(&rackcast(&[&"image", &"create", &disk, &img]));
    assert!(out.contains("xfs"), "{out}");
    let target = d.path().join("target.raw");
    blank(&target, 400 << 20);
    let state = d.path().join("state");
    let out = ok(&restore_grow(&img, &target, &state));
    assert!(out.contains("grown     partition 1 (xfs)"), "{out}");
    sh(Command::new("sfdisk").arg("-V").arg(&target));
    let sectors = (400u64 << 20) / 512 - 33 - 2048;
    let grown = d.path().join("grown-xfs.raw");
    std::fs::write(&grown, bytes_at(&target, 1 << 20, (sectors * 512) as usize)).unwrap();
    sh(Command::new("xfs_repair").arg("-n").arg(&grown));
    let dblocks = sh(Command::new("xfs_db")
        .args(["-r", "-c", "sb 0", "-c", "p dblocks"])
        .arg(&grown));
    let dblocks: u64 = dblocks.trim_start_matches("dblocks = ").parse().unwrap();
    assert!(dblocks * 4096 > 390 << 20, "xfs grew: {dblocks} blocks");
}

/// The chunk hashes `image inspect --json --chunks` lists.
fn chunk_hashes(img: &Path) -> Vec<String> {
    let json = ok(&rackcast(&[
        &"image",
        &"inspect",
        &img,
        &"--json",
        &"--chunks",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hash"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn import_reads_qcow2_vmdk_vhdx_and_vhd_like_the_raw_disk() {
    if !have_tools(&["qemu-img", "qemu-nbd"], "qemu-utils") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let raw = d.path().join("raw.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &raw]));
    let want = chunk_hashes(&raw);
    for format in ["qcow2", "vmdk", "vhdx", "vpc"] {
        let vdisk = d.path().join(format!("disk.{format}"));
        sh(Command::new("qemu-img")
            .args(["convert", "-O", format])
            .arg(&disk)
            .arg(&vdisk));
        let img = d.path().join(format!("{format}.rcimg"));
        let out = ok(&rackcast(&[&"image", &"import", &vdisk, &img]));
        assert!(out.contains(&format!("({format}, ")), "{out}");
        assert!(
            out.contains("ext4"),
            "the scan ran through the export: {out}"
        );
        if format == "vpc" {
            // VHD rounds the disk up to its geometry (and a restore then
            // moves the backup GPT to the new end): the partitions restore
            // as the raw disk's image restores them.
            let state = d.path().join("state");
            let restored = |img: &Path, name: &str| {
                let back = d.path().join(name);
                ok(&rackcast(&[
                    &"image",
                    &"restore",
                    &img,
                    &back,
                    &"--state-dir",
                    &state,
                ]));
                let b = std::fs::read(&back).unwrap();
                blake3::hash(&b[1 << 20..63 << 20])
            };
            assert!(
                restored(&img, "vpc.raw") == restored(&raw, "raw.raw"),
                "vpc: the partitions differ from the raw disk's"
            );
        } else {
            assert_eq!(chunk_hashes(&img), want, "{format}");
        }
    }
    let err = fails(&rackcast(&[
        &"image",
        &"import",
        &d.path().join("missing.qcow2"),
        &d.path().join("x.rcimg"),
    ]));
    assert!(err.contains("no such file"), "{err}");
}

#[test]
fn a_target_smaller_than_the_image_needs_is_refused() {
    if !is_root() {
        eprintln!("SKIP: needs root for a loop device");
        return;
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let img = d.path().join("disk.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &img]));
    let small = d.path().join("small.raw");
    blank(&small, 32 << 20);
    let dev = sh(Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&small));
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _dev = Detach(dev.clone());
    let state = d.path().join("state");
    let err = fails(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &dev,
        &"--state-dir",
        &state,
    ]));
    assert!(
        err.contains("smaller than the image's minimum target size"),
        "{err}"
    );
    assert!(
        std::fs::read(&small).unwrap().iter().all(|&b| b == 0),
        "nothing was written"
    );
}

/// `mtype` of a file on the FAT volume at byte `at` of `disk`.
fn fat_file(disk: &Path, at: u64, name: &str) -> String {
    sh(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{at}", disk.display()))
        .arg(format!("::/{name}")))
}

#[test]
fn a_nocloud_seed_is_made_in_free_space_rewritten_on_a_rerun_and_refused_without_room() {
    if !have_tools(&["mtype", "blkid", "sfdisk"], "mtools, util-linux, fdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let Some(disk) = test_disk(d.path()) else {
        return;
    };
    let img = d.path().join("disk.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &img]));
    let state = d.path().join("state");
    let target = d.path().join("target.raw");
    blank(&target, 96 << 20);
    ok(&rackcast(&[
        &"image",
        &"restore",
        &img,
        &target,
        &"--state-dir",
        &state,
    ]));
    let user = d.path().join("user-data");
    std::fs::write(&user, "#cloud-config\nssh_pwauth: false\n").unwrap();
    let net = d.path().join("network-config");
    std::fs::write(&net, "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n").unwrap();
    let seed = |host: &str| {
        ok(&rackcast(&[
            &"image",
            &"seed",
            &target,
            &"--hostname",
            &host,
            &"--user-data",
            &user,
            &"--network-config",
            &net,
        ]))
    };
    let out = seed("rack12-u01");
    assert!(out.contains("partition 4 (cidata)"), "{out}");
    sh(Command::new("sfdisk").arg("-V").arg(&target));
    let table = sh(Command::new("sfdisk").arg("-d").arg(&target));
    let p4 = table
        .lines()
        .find(|l| l.contains("name=\"cidata\""))
        .unwrap();
    let start: u64 = p4
        .split("start=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let at = start * 512;
    let probe = sh(Command::new("blkid")
        .args(["-p", "-O", &at.to_string(), "-s", "LABEL", "-o", "value"])
        .arg(&target));
    assert_eq!(probe, "CIDATA");
    assert_eq!(
        fat_file(&target, at, "meta-data"),
        "instance-id: rackcast-rack12-u01\nlocal-hostname: rack12-u01"
    );
    assert_eq!(
        fat_file(&target, at, "user-data"),
        "#cloud-config\nssh_pwauth: false"
    );
    assert!(fat_file(&target, at, "network-config").contains("dhcp4: true"));
    // A rerun rewrites the same partition.
    let out = seed("rack12-u02");
    assert!(out.contains("partition 4 (cidata)"), "{out}");
    assert!(fat_file(&target, at, "meta-data").contains("rack12-u02"));
    // The source disk itself has no 4 MiB gap.
    let err = fails(&rackcast(&[
        &"image",
        &"seed",
        &disk,
        &"--hostname",
        &"x",
        &"--user-data",
        &user,
    ]));
    assert!(err.contains("free space"), "{err}");
}

#[test]
fn logical_partitions_of_an_mbr_disk_are_read() {
    if !have_tools(&["sfdisk", "mkfs.ext4"], "e2fsprogs, fdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let disk = d.path().join("mbr.raw");
    blank(&disk, 64 << 20);
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=5\n\
         start=20480, size=40960, type=83\nstart=63488, size=40960, type=83\n",
    );
    // An ext4 in each logical partition (5 and 6); partition 1 stays empty.
    for at in [20480u64, 63488] {
        let part = d.path().join("part.img");
        blank(&part, 40960 * 512);
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&part));
        let bytes = std::fs::read(&part).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &bytes, at * 512).unwrap();
    }
    let img = d.path().join("mbr.rcimg");
    let out = ok(&rackcast(&[&"image", &"create", &disk, &img]));
    assert!(out.contains("(mbr partition table)"), "{out}");
    let json = ok(&rackcast(&[&"image", &"inspect", &img, &"--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let parts: Vec<_> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["fs"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        parts,
        vec![
            (1, None),
            (5, Some("ext4".into())),
            (6, Some("ext4".into()))
        ],
        "{json}"
    );
    // The last partition is a logical one: --grow says so, the table stays.
    let target = d.path().join("bigger.raw");
    blank(&target, 96 << 20);
    let state = d.path().join("state");
    let out = restore_grow(&img, &target, &state);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("logical one"),
        "{out:?}"
    );
    assert!(
        bytes_at(&target, 0, 512) == bytes_at(&disk, 0, 512),
        "the MBR was changed"
    );
}

#[test]
fn grow_on_an_mbr_disk_extends_its_last_primary_partition() {
    if !is_root() {
        eprintln!("SKIP: needs root (loop device)");
        return;
    }
    if !have_tools(&["sfdisk", "mkfs.ext4", "e2fsck"], "e2fsprogs, fdisk") {
        return;
    }
    let d = tempfile::tempdir_in("/var/tmp").unwrap();
    let disk = d.path().join("mbr.raw");
    blank(&disk, 64 << 20);
    sfdisk(
        &disk,
        "label: dos\nstart=2048, size=16384, type=83\nstart=18432, type=83\n",
    );
    let part = d.path().join("part.img");
    let len = (64u64 << 20) - 18432 * 512;
    blank(&part, len);
    sh(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(&part));
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(&part).unwrap(), 18432 * 512)
        .unwrap();
    let img = d.path().join("mbr.rcimg");
    ok(&rackcast(&[&"image", &"create", &disk, &img]));
    let target = d.path().join("bigger.raw");
    blank(&target, 96 << 20);
    let state = d.path().join("state");
    let out = ok(&restore_grow(&img, &target, &state));
    assert!(out.contains("grown     partition 2 (ext4)"), "{out}");
    assert!(!out.contains("backup header"), "an MBR has none: {out}");
    let sectors = (96u64 << 20) / 512 - 18432;
    let table = sh(Command::new("sfdisk").arg("-d").arg(&target));
    assert!(table.contains(&format!("size={sectors:>12}")), "{table}");
    let grown = d.path().join("grown.img");
    std::fs::write(
        &grown,
        bytes_at(&target, 18432 * 512, (sectors * 512) as usize),
    )
    .unwrap();
    sh(Command::new("e2fsck").arg("-fn").arg(&grown));
    let blocks = ext4_blocks(&grown);
    assert_eq!(blocks, sectors * 512 / 4096, "the ext4 fills its partition");
}
