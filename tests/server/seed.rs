//! Distribute with a cloud-init NoCloud seed: two agents image 96 MiB disks
//! from a 64 MiB GPT disk (`scripts/test-disk.sh`), then each writes a
//! CIDATA partition whose meta-data and user-data carry its own name, MAC
//! and job, read back with mtools.

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
    let mut disks = Vec::new();
    for (i, m) in macs.iter().enumerate() {
        s.call(
            "POST",
            "/api/v1/targets",
            Some(json!({"mac": m, "name": names[i]})),
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
    s.wait_registered(&macs, Duration::from_secs(30));
    let id = submit(
        &s,
        json!({
            "name": "seeded",
            "targets": macs,
            "cast": {"max_wait": 30},
            "task": [{"kind": "distribute", "image": "golden", "verify": "full", "timeout": 300,
                      "cloud_init": {"user_data": "#cloud-config\nfqdn: {hostname}.rack12\n# {mac}\n"}}],
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
            format!("#cloud-config\nfqdn: {}.rack12\n# {}\n", names[i], macs[i])
        );
    }
}
