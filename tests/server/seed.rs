//! Distribute with a cloud-init NoCloud seed: two agents image 96 MiB disks
//! from a 64 MiB GPT disk (`scripts/test-disk.sh`), grow its last
//! partition (ext4) to leave just room for the seed (as root), then each
//! writes a CIDATA partition whose meta-data and user-data carry its own
//! name, MAC, job and `rack` variable, read back with mtools.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::rig::Server;
use super::{mac, submit};

/// stdout of a command that must succeed.
fn sh(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{c:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_distribute_with_cloud_init_gives_each_disk_its_own_seed() {
    for t in ["sfdisk", "mkfs.ext4", "mkfs.vfat", "mkswap", "mtype"] {
        if !["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|d| Path::new(d).join(t).exists())
        {
            eprintln!("SKIP: {t} not installed (scripts/deps.sh test)");
            return;
        }
    }
    let uid = sh(Command::new("id").arg("-u"));
    let grow = uid.trim() == "0";
    if !grow {
        eprintln!("SKIP (grow only): growing needs root for its loop device");
    }
    let mut s = Server::start("400M");
    let disk = s.dir.path().join("golden.raw");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-disk.sh");
    sh(Command::new(script).arg(&disk));
    let img = s.dir.path().join("golden.rcimg");
    sh(Command::new(rackcast_tests::rc())
        .args(["image", "create"])
        .arg(&disk)
        .arg(&img));
    s.upload("golden", &img);
    let macs: Vec<String> = (1..=2).map(|i| mac(0x40 + i)).collect();
    let names = ["rack12-u01", "rack12-u02"];
    let racks = ["r12", "r13"];
    let mut disks = Vec::new();
    for (i, m) in macs.iter().enumerate() {
        // One target gets its variable when enrolled, the other after.
        let vars = if i == 0 {
            json!({"rack": racks[0]})
        } else {
            json!({})
        };
        s.call(
            "POST",
            "/api/v1/targets",
            Some(json!({"mac": m, "name": names[i], "vars": vars})),
        )
        .unwrap();
        let d = s.dir.path().join(format!("seeded-{i}.disk"));
        std::fs::File::create(&d)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        s.agent(m, &d, "linux-x64");
        disks.push(d);
    }
    let vars_path = format!("/api/v1/targets/{}/vars", macs[1]);
    let t = s
        .call(
            "PATCH",
            &vars_path,
            Some(json!({"set": {"rack": racks[1], "role": "db"}, "unset": ["role"]})),
        )
        .unwrap();
    assert_eq!(t["vars"], json!({"rack": racks[1]}));
    // A built-in name is refused, and the refusal changes nothing.
    let (code, _) = s
        .call(
            "PATCH",
            &vars_path,
            Some(json!({"set": {"ip": "1.2.3.4", "rack": "r99"}})),
        )
        .unwrap_err();
    assert_eq!(code, 422);
    let t = s
        .call("GET", &format!("/api/v1/targets/{}", macs[1]), None)
        .unwrap();
    assert_eq!(t["vars"], json!({"rack": racks[1]}));
    s.wait_registered(&macs, Duration::from_secs(30));
    let id = submit(
        &s,
        json!({
            "name": "seeded",
            "targets": macs,
            "cast": {"max_wait": 30},
            "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 300,
                      "grow": grow,
                      "cloud_init": {"user_data": "#cloud-config\nfqdn: {hostname}.{rack}\n# {mac} {nope}\n"}}],
        }),
    );
    let j = s.wait_job(id, Duration::from_secs(180));
    assert_eq!(j.status, "done", "{:#?}\n{}", j.targets, s.agents_log());
    for (i, d) in disks.iter().enumerate() {
        let table = sh(Command::new("sfdisk").arg("-d").arg(d));
        let line = table
            .lines()
            .find(|l| l.contains("name=\"cidata\""))
            .unwrap_or_else(|| panic!("no cidata partition on {}:\n{table}", d.display()));
        let start: u64 = line
            .split("start=")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let file = |name: &str| {
            sh(Command::new("mtype")
                .arg("-i")
                .arg(format!("{}@@{}", d.display(), start * 512))
                .arg(format!("::/{name}")))
        };
        assert_eq!(
            file("meta-data"),
            format!(
                "instance-id: rackcast-{id}-{}\nlocal-hostname: {}\n",
                macs[i], names[i]
            )
        );
        assert_eq!(
            file("user-data"),
            format!(
                "#cloud-config\nfqdn: {}.{}\n# {} {{nope}}\n",
                names[i], racks[i], macs[i]
            )
        );
        if grow {
            check_grown(d, &table, start);
        }
    }
}

/// Partition 3 (ext4) ends where the seed's room begins, 1 MiB aligned,
/// and its filesystem fills it and checks clean.
fn check_grown(disk: &Path, table: &str, seed_start: u64) {
    let field = |line: &str, key: &str| -> u64 {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    let line = table
        .lines()
        .find(|l| l.contains("3 : start="))
        .unwrap_or_else(|| panic!("no partition 3:\n{table}"));
    let (start, size) = (field(line, "start="), field(line, "size="));
    let end = (start + size) * 512;
    // The 64 MiB source's ext4 ended at 63 MiB; the 96 MiB disk's must
    // end 5 MiB (the seed's room) before its last usable MiB.
    assert_eq!(end % (1 << 20), 0, "{table}");
    assert!(end > 80 << 20, "partition 3 not grown:\n{table}");
    assert!(seed_start * 512 >= end, "{table}");
    let part = disk.with_extension("p3");
    sh(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=512", &format!("skip={start}"), &format!("count={size}")])
        .arg("status=none"));
    sh(Command::new("e2fsck").arg("-fn").arg(&part));
    let sb = sh(Command::new("dumpe2fs").arg("-h").arg(&part));
    let get = |k: &str| -> u64 {
        sb.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in dumpe2fs -h"))
    };
    assert_eq!(get("Block count:") * get("Block size:"), size * 512, "{sb}");
    std::fs::remove_file(&part).unwrap();
}
