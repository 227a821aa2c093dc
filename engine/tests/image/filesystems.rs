//! Filesystem-aware capture on a real disk layout: a GPT made by `sfdisk`,
//! an ext4 made and filled by `mke2fs -d`, swap by `mkswap`, an unknown
//! partition (an ESP type holding noise), over noise everywhere else, as a
//! disk that had other data on it. The scan must agree with `dumpe2fs` on
//! the used blocks, the image must store only those, and the restore (onto
//! another disk full of noise, which it leaves where blocks are unused)
//! must pass `e2fsck -fn` and hold every file byte for byte.

use std::path::Path;
use std::process::Command;

use rackcast_engine::image::fs::{scan_disk, TableKind};
use rackcast_engine::image::{
    create_image, restore_image, ChunkKind, CreateOptions, ImageReader, RestoreOptions,
};

use super::data::{random, text};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;
/// Partitions in 512-byte sectors: ESP 8 MiB, ext4 40 MiB, swap 8 MiB.
const ESP: (u64, u64) = (2048, 16384);
const EXT4: (u64, u64) = (18432, 81920);
const SWAP: (u64, u64) = (100352, 16384);

fn have_tools() -> bool {
    for t in [
        "sfdisk",
        "mkfs.ext4",
        "dumpe2fs",
        "e2fsck",
        "debugfs",
        "mkswap",
    ] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs e2fsprogs, fdisk)");
            return false;
        }
    }
    true
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A partition image of `sectors` full of noise, then `mk` run on it.
fn partition(dir: &Path, name: &str, sectors: u64, seed: u64, mk: &mut Command) -> Vec<u8> {
    let p = dir.join(name);
    std::fs::write(&p, random((sectors * 512) as usize, seed)).unwrap();
    run(mk.arg(&p));
    std::fs::read(&p).unwrap()
}

fn field(dump: &str, name: &str) -> u64 {
    dump.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {dump}"))
}

#[test]
fn ext4_and_swap_store_only_their_used_blocks_and_restore_clean() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The files the ext4 holds: noise, text, a directory.
    let files = dir.join("files");
    std::fs::create_dir_all(files.join("etc")).unwrap();
    let big = random(3 * MIB as usize + 123, 41);
    std::fs::write(files.join("big.bin"), &big).unwrap();
    std::fs::write(files.join("etc/hostname"), b"rack12-u01\n").unwrap();
    std::fs::write(files.join("notes.txt"), text(200_000, 42)).unwrap();

    let disk_path = dir.join("disk.raw");
    let mut disk = random(DISK as usize, 1);
    std::fs::write(&disk_path, &disk).unwrap();
    let layout = format!(
        "label: gpt\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n\
         start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n\
         start={}, size={}, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F\n",
        ESP.0, ESP.1, EXT4.0, EXT4.1, SWAP.0, SWAP.1
    );
    let mut sf = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&disk_path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut sf.stdin.take().unwrap(), layout.as_bytes()).unwrap();
    assert!(sf.wait().unwrap().success());
    disk = std::fs::read(&disk_path).unwrap();
    let ext4 = partition(
        dir,
        "ext4.img",
        EXT4.1,
        2,
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-b", "4096", "-E", "nodiscard", "-d"])
            .arg(&files),
    );
    let swap = partition(dir, "swap.img", SWAP.1, 3, Command::new("mkswap").arg("-q"));
    for (at, bytes) in [(EXT4.0, &ext4), (SWAP.0, &swap)] {
        let at = (at * 512) as usize;
        disk[at..at + bytes.len()].copy_from_slice(bytes);
    }
    std::fs::write(&disk_path, &disk).unwrap();

    // The scan agrees with dumpe2fs and finds the swap header.
    let dump = run(Command::new("dumpe2fs").arg("-h").arg(dir.join("ext4.img")));
    let fs_used = (field(&dump, "Block count:") - field(&dump, "Free blocks:")) * 4096;
    let scan = scan_disk(&disk.as_slice(), DISK, 512).unwrap();
    assert_eq!(scan.table, Some(TableKind::Gpt));
    let p: Vec<_> = scan
        .partitions
        .iter()
        .map(|p| (p.number, p.start, p.fs.as_deref(), p.used))
        .collect();
    assert_eq!(
        p,
        vec![
            (1, ESP.0 * 512, None, ESP.1 * 512),
            (2, EXT4.0 * 512, Some("ext4"), fs_used),
            (3, SWAP.0 * 512, Some("swap"), 4096),
        ]
    );
    let outside = ESP.0 * 512 + (DISK - (SWAP.0 + SWAP.1) * 512);
    assert_eq!(
        scan.map.used_bytes(),
        outside + ESP.1 * 512 + fs_used + 4096,
        "the tables, gaps and the unknown partition are kept whole"
    );

    // The image stores the used blocks only; a raw capture stores the noise.
    let img = dir.join("disk.rcimg");
    let opts = CreateOptions {
        chunk_size: 1 << 20,
        threads: 2,
        ..CreateOptions::default()
    };
    let s = create_image(&disk_path, &img, &opts, &mut |_| {}).unwrap();
    assert_eq!(s.scan.as_ref().unwrap().used_bytes, scan.map.used_bytes());
    let raw = create_image(
        &disk_path,
        &dir.join("raw.rcimg"),
        &CreateOptions {
            filesystems: false,
            ..opts
        },
        &mut |_| {},
    )
    .unwrap();
    assert!(raw.scan.is_none());
    let (aware, whole) = (s.index.stored_bytes(), raw.index.stored_bytes());
    eprintln!(
        "stored: {} MiB filesystem-aware, {} MiB whole ({} MiB used by the filesystems)",
        aware / MIB,
        whole / MIB,
        scan.map.used_bytes() / MIB
    );
    assert!(aware <= scan.map.used_bytes() + MIB, "{aware} > used");
    assert!(
        whole > 2 * aware,
        "a raw capture stores the noise in free blocks: {whole}"
    );
    assert!(
        s.index
            .entries
            .iter()
            .any(|e| e.data.kind() == ChunkKind::Absent),
        "the swap's unused megabytes are absent chunks"
    );

    // Restore onto another disk of noise: unused blocks keep its noise, and
    // the filesystem is whole.
    let target = dir.join("target.raw");
    std::fs::write(&target, random(DISK as usize, 99)).unwrap();
    let reader = ImageReader::open(&img).unwrap();
    reader.verify(2, &|_| {}).unwrap();
    restore_image(&reader, &target, &RestoreOptions::default(), &mut |_| {}).unwrap();
    let got = std::fs::read(&target).unwrap();
    let esp_end = ((ESP.0 + ESP.1) * 512) as usize;
    assert_eq!(got[..esp_end], disk[..esp_end], "the GPT and the ESP");
    let back = dir.join("ext4.back");
    let (a, n) = ((EXT4.0 * 512) as usize, (EXT4.1 * 512) as usize);
    std::fs::write(&back, &got[a..a + n]).unwrap();
    run(Command::new("e2fsck").arg("-fn").arg(&back));
    for (inside, want) in [
        ("/big.bin", big),
        ("/etc/hostname", b"rack12-u01\n".to_vec()),
        ("/notes.txt", text(200_000, 42)),
    ] {
        let out = dir.join("out");
        run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("dump {inside} {}", out.display()))
            .arg(&back));
        assert_eq!(std::fs::read(&out).unwrap(), want, "{inside}");
    }
    let sw = (SWAP.0 * 512) as usize;
    assert_eq!(got[sw..sw + 4096], disk[sw..sw + 4096], "the swap header");
    assert_ne!(
        got[sw + 4096..sw + 8192],
        disk[sw + 4096..sw + 8192],
        "the swap's unused pages were not written"
    );
}

/// `mkfs.vfat` and `mkfs.xfs -p` (a prototype file) filesystems alone, no
/// table: the scan's used bytes equal what `fsck.fat` and `xfs_db` count,
/// and a restore onto noise passes their checks with the files intact
/// (FAT read with mtools; XFS mounted read-only where root can).
#[test]
fn fat_and_xfs_store_only_their_used_blocks_and_restore_clean() {
    for t in [
        "mkfs.vfat",
        "fsck.fat",
        "mkfs.xfs",
        "xfs_db",
        "xfs_repair",
        "mcopy",
    ] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs dosfstools, xfsprogs, mtools)");
            return;
        }
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let big = random(3 * MIB as usize + 77, 51);
    std::fs::write(dir.join("big.bin"), &big).unwrap();

    // FAT16 of 64 MiB over noise, one file in a directory.
    let fat = dir.join("fat.img");
    std::fs::write(&fat, random(64 * MIB as usize, 5)).unwrap();
    run(Command::new("mkfs.vfat").arg(&fat));
    let img = fat.display().to_string();
    run(Command::new("mmd").args(["-i", &img, "::/EFI"]));
    run(Command::new("mcopy")
        .args(["-i", &img])
        .arg(dir.join("big.bin"))
        .arg("::/EFI/big.bin"));
    // "fat.img: 2 files, 1542/16334 clusters"
    let check = run(Command::new("fsck.fat").arg("-n").arg(&fat));
    let clusters: u64 = check
        .split_whitespace()
        .find_map(|w| w.split_once('/').and_then(|(u, _)| u.parse().ok()))
        .unwrap_or_else(|| panic!("{check}"));

    // XFS of 300 MiB (its minimum), sparse, holding the same file.
    let xfs = dir.join("xfs.img");
    std::fs::File::create(&xfs)
        .unwrap()
        .set_len(300 * MIB)
        .unwrap();
    let proto = dir.join("proto");
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\nbig.bin ---644 0 0 {}\n$\n",
            dir.join("big.bin").display()
        ),
    )
    .unwrap();
    run(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-p"])
        .arg(&proto)
        .arg(&xfs));
    let db = |cmds: &[&str]| {
        let mut c = Command::new("xfs_db");
        c.arg("-r");
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        run(c.arg(&xfs))
    };
    let dblocks = field(&db(&["sb 0", "p dblocks"]).replace(" = ", ":"), "dblocks:");
    let free = field(
        &db(&["freesp -s"]).replace("total free blocks", "free:"),
        "free:",
    );

    for (path, name, want_used) in [
        (&fat, "fat16", None),
        (&xfs, "xfs", Some((dblocks - free) * 4096)),
    ] {
        let disk = std::fs::read(path).unwrap();
        let scan = scan_disk(&disk.as_slice(), disk.len() as u64, 512).unwrap();
        assert_eq!(scan.table, None);
        assert_eq!(scan.partitions[0].fs.as_deref(), Some(name));
        let used = scan.partitions[0].used;
        match want_used {
            Some(w) => assert_eq!(used, w, "{name}"),
            None => {
                // The metadata ahead of the clusters, then 2 KiB clusters.
                let meta = used - clusters * 2048;
                assert!(
                    meta > 0 && meta < MIB,
                    "{name}: {used} for {clusters} clusters"
                );
            }
        }
        eprintln!(
            "{name}: {} KiB used of {} MiB",
            used / 1024,
            disk.len() as u64 / MIB
        );

        let out = dir.join(format!("{name}.rcimg"));
        create_image(path, &out, &CreateOptions::default(), &mut |_| {}).unwrap();
        let target = dir.join(format!("{name}.back"));
        std::fs::write(&target, random(disk.len(), 77)).unwrap();
        let r = ImageReader::open(&out).unwrap();
        assert!(r.index().stored_bytes() < used + MIB);
        restore_image(&r, &target, &RestoreOptions::default(), &mut |_| {}).unwrap();
        if name == "xfs" {
            run(Command::new("xfs_repair").arg("-n").arg(&target));
            check_xfs_file(dir, &target, &big);
        } else {
            run(Command::new("fsck.fat").arg("-n").arg(&target));
            let got = dir.join("got.bin");
            let t = target.display().to_string();
            run(Command::new("mcopy")
                .args(["-i", &t, "::/EFI/big.bin"])
                .arg(&got));
            assert_eq!(std::fs::read(&got).unwrap(), big, "{name}");
        }
    }
}

/// The file from the restored XFS, mounted read-only (root only).
fn check_xfs_file(dir: &Path, xfs: &Path, want: &[u8]) {
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-o", "loop,ro,norecovery"])
        .arg(xfs)
        .arg(&mnt)
        .output()
        .unwrap();
    if !mounted.status.success() {
        eprintln!(
            "xfs: the file is not compared (no loop mount: {})",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    let got = std::fs::read(mnt.join("big.bin"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(got.unwrap(), want, "xfs: big.bin");
}

/// `mkfs.ntfs` over noise with a file `ntfscp` put there: the scan's used
/// bytes equal what `ntfscluster -i` counts, and a restore onto noise
/// passes `ntfsfix -n` with the file intact (`ntfscat`).
#[test]
fn ntfs_stores_only_its_used_clusters_and_restores_clean() {
    for t in ["mkfs.ntfs", "ntfscp", "ntfscat", "ntfscluster", "ntfsfix"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists());
        if !found {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test installs ntfs-3g)");
            return;
        }
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let dir = tmp.path();
    let ntfs = dir.join("ntfs.img");
    std::fs::write(&ntfs, random(64 * MIB as usize, 7)).unwrap();
    run(Command::new("mkfs.ntfs")
        .args(["-F", "-Q", "-q"])
        .arg(&ntfs));
    let big = random(3 * MIB as usize + 99, 61);
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    run(Command::new("ntfscp")
        .arg(&ntfs)
        .arg(dir.join("big.bin"))
        .arg("/big.bin"));
    let info = run(Command::new("ntfscluster").arg("-i").arg(&ntfs));
    let num = |key: &str| -> u64 {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {info}"))
    };
    let want = num("bytes per volume") - num("bytes of free space");

    let disk = std::fs::read(&ntfs).unwrap();
    let scan = scan_disk(&disk.as_slice(), disk.len() as u64, 512).unwrap();
    assert_eq!(scan.partitions[0].fs.as_deref(), Some("ntfs"));
    assert_eq!(scan.partitions[0].used, want);

    let out = dir.join("ntfs.rcimg");
    create_image(&ntfs, &out, &CreateOptions::default(), &mut |_| {}).unwrap();
    let r = ImageReader::open(&out).unwrap();
    assert!(r.index().stored_bytes() < want + MIB);
    let target = dir.join("ntfs.back");
    std::fs::write(&target, random(disk.len(), 78)).unwrap();
    restore_image(&r, &target, &RestoreOptions::default(), &mut |_| {}).unwrap();
    run(Command::new("ntfsfix").arg("-n").arg(&target));
    let got = Command::new("ntfscat")
        .arg(&target)
        .arg("/big.bin")
        .output()
        .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert!(got.stdout == big, "ntfscat /big.bin differs");
}
