//! `rackcast env local-boot`: the quick-local-boot loader netboot hands a
//! UEFI machine with no work (see `rackcast_netboot::policy::local_loader`).
//!
//! A standalone GRUB (grub-mkstandalone, from Debian's grub-efi-*-bin) whose
//! embedded grub.cfg looks for the usual EFI loaders on the local disks and
//! chains the first it finds. Nothing is fetched after the image itself, so
//! it works under proxy DHCP, where GRUB's own network configuration would
//! read the primary server's answer, not ours.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;
use rackcast_netboot::policy::local_loader;
use rackcast_netboot::ClientArch;

/// `rackcast env local-boot`
#[derive(Debug, Args)]
pub struct LocalBootArgs {
    /// The boot root netboot serves (the server's DATA/boot by default, or
    /// `rackcast netboot --root`); the loader is written at its top, where
    /// netboot looks for it when it starts.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The targets' platform.
    #[arg(long, default_value = "x64", value_parser = ["x64", "arm64"])]
    arch: String,
    /// EFI loaders to try before the usual ones, as paths on an EFI system
    /// partition (e.g. `/EFI/acme/boot.efi`); repeatable.
    #[arg(long = "try", value_name = "PATH")]
    first: Vec<String>,
}

/// What one platform needs: GRUB's target and where Debian keeps it, the
/// loader names, and the removable-media path every firmware knows.
struct Platform {
    arch: ClientArch,
    grub: &'static str,
    package: &'static str,
    shim: &'static str,
    grub_efi: &'static str,
    removable: &'static str,
}

const X64: Platform = Platform {
    arch: ClientArch::X64Uefi,
    grub: "x86_64-efi",
    package: "grub-efi-amd64-bin",
    shim: "shimx64.efi",
    grub_efi: "grubx64.efi",
    removable: "/EFI/BOOT/BOOTX64.EFI",
};

const ARM64: Platform = Platform {
    arch: ClientArch::Arm64Uefi,
    grub: "arm64-efi",
    package: "grub-efi-arm64-bin",
    shim: "shimaa64.efi",
    grub_efi: "grubaa64.efi",
    removable: "/EFI/BOOT/BOOTAA64.EFI",
};

/// Distributions' directories on the ESP, tried in this order (shim
/// first: it boots with Secure Boot on or off).
const VENDORS: &[&str] = &[
    "debian",
    "ubuntu",
    "redhat",
    "rocky",
    "almalinux",
    "centos",
    "fedora",
    "opensuse",
    "sles",
];

/// The GRUB modules the image carries: the config's commands, and the
/// partition tables and filesystem of an ESP.
const MODULES: &str = "part_gpt part_msdos fat search search_fs_file chain echo sleep normal test";

/// Runs `rackcast env local-boot`.
pub fn run(a: LocalBootArgs) -> Result<ExitCode> {
    let p = if a.arch == "arm64" { &ARM64 } else { &X64 };
    let Some(name) = local_loader(p.arch) else {
        bail!("no quick local boot for {}", a.arch);
    };
    let grub_dir = Path::new("/usr/lib/grub").join(p.grub);
    if !grub_dir.join("normal.mod").is_file() {
        bail!(
            "{} has no GRUB modules: install {} (apt-get install {})",
            grub_dir.display(),
            p.package,
            p.package
        );
    }
    if !a.root.is_dir() {
        bail!("--root {}: no such directory", a.root.display());
    }
    // Both beside the loader, so the rename below is atomic and a failed
    // run leaves nothing netboot would serve.
    let cfg = a.root.join(format!(".{name}.cfg.tmp"));
    std::fs::write(&cfg, grub_cfg(&candidates(p, &a.first)?))
        .with_context(|| format!("{}", cfg.display()))?;
    let out = a.root.join(format!(".{name}.tmp"));
    let status = Command::new("grub-mkstandalone")
        .args(["-O", p.grub, "-d"])
        .arg(&grub_dir)
        .arg("-o")
        .arg(&out)
        .arg(format!("--modules={MODULES}"))
        .arg(format!("--install-modules={MODULES} configfile"))
        .args(["--locales=", "--fonts=", "--themes="])
        .arg(format!("boot/grub/grub.cfg={}", cfg.display()))
        .status();
    let _ = std::fs::remove_file(&cfg);
    let status = status.context("grub-mkstandalone (grub-common) did not run")?;
    if !status.success() {
        let _ = std::fs::remove_file(&out);
        bail!("grub-mkstandalone failed: {status}");
    }
    let dest = a.root.join(name);
    std::fs::rename(&out, &dest).with_context(|| format!("{}", dest.display()))?;
    let len = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
    println!(
        "{} ({} KiB): UEFI targets with no work chain their disk's loader through it \
         (restart netboot to pick it up)",
        dest.display(),
        len / 1024
    );
    Ok(ExitCode::SUCCESS)
}

/// The loaders to look for, in order: the operator's, each distribution's
/// shim then GRUB, Windows', then the removable-media path.
fn candidates(p: &Platform, first: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in first {
        // The path lands in a GRUB script, quoted: refuse what could end the
        // quote or is not an absolute ESP path.
        if !f.starts_with('/')
            || f.chars()
                .any(|c| c == '"' || c == '\\' || c == '$' || c.is_control())
        {
            bail!("--try {f:?}: give an absolute path on the ESP, like /EFI/acme/boot.efi");
        }
        out.push(f.clone());
    }
    for v in VENDORS {
        out.push(format!("/EFI/{v}/{}", p.shim));
    }
    for v in VENDORS {
        out.push(format!("/EFI/{v}/{}", p.grub_efi));
    }
    if p.arch == ClientArch::X64Uefi {
        out.push("/EFI/Microsoft/Boot/bootmgfw.efi".into());
    }
    out.push(p.removable.into());
    Ok(out)
}

/// The embedded grub.cfg: chain the first loader found on any local disk,
/// else back to the firmware (its next boot option).
fn grub_cfg(loaders: &[String]) -> String {
    let list: Vec<String> = loaders.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "set timeout=0\n\
         echo \"rackcast: no work for this machine: booting its disk\"\n\
         for f in {}; do\n\
         \x20 if search --no-floppy --file --set=root \"$f\"; then\n\
         \x20   echo \"rackcast: chaining ($root)$f\"\n\
         \x20   chainloader \"$f\"\n\
         \x20   boot\n\
         \x20 fi\n\
         done\n\
         echo \"rackcast: no EFI loader on a local disk: back to the firmware\"\n\
         sleep 3\n\
         exit\n",
        list.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_tries_the_operators_loaders_first_and_the_removable_path_last() {
        let c = candidates(&X64, &["/EFI/acme/boot.efi".into()]).unwrap();
        assert_eq!(c[0], "/EFI/acme/boot.efi");
        assert_eq!(c[1], "/EFI/debian/shimx64.efi");
        assert_eq!(c.last().unwrap(), "/EFI/BOOT/BOOTX64.EFI");
        assert!(c.contains(&"/EFI/Microsoft/Boot/bootmgfw.efi".to_string()));
        let arm = candidates(&ARM64, &[]).unwrap();
        assert_eq!(arm.last().unwrap(), "/EFI/BOOT/BOOTAA64.EFI");
        assert!(arm
            .iter()
            .all(|l| !l.contains("x64") && !l.contains("Microsoft")));
        for bad in ["EFI/x.efi", "/EFI/\"; reboot; \"", "/EFI/$x", "/EFI/a\nb"] {
            assert!(candidates(&X64, &[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_config_is_valid_grub_script() {
        let cfg = grub_cfg(&candidates(&X64, &[]).unwrap());
        assert!(cfg.contains("chainloader \"$f\""), "{cfg}");
        let Ok(mut check) = Command::new("grub-script-check")
            .stdin(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIP: grub-script-check (grub-common) not installed");
            return;
        };
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(cfg.as_bytes())
            .unwrap();
        assert!(check.wait().unwrap().success(), "{cfg}");
    }
}
