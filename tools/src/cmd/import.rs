//! `rackcast image import SRC OUT`: a virtual disk (qcow2, VMDK, VHD, VHDX,
//! raw, ...) captured as an image in one pass, with the same filesystem
//! scan as `image create`. `qemu-nbd` (Debian's qemu-utils) exports SRC
//! read-only on a Unix socket in a temporary directory; the capture reads
//! it through [`super::nbd`], so nothing is converted to a raw file first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rackcast_engine::image::{create_image_from, SourceInfo};

use super::image::{capture, capture_options, CaptureArgs};
use super::nbd::NbdClient;

/// Options of `rackcast image import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The virtual disk: qcow2, VMDK, VHD (vpc), VHDX, raw, or any format
    /// qemu-img reads.
    pub src: PathBuf,
    /// The image file to write.
    pub out: PathBuf,
    /// SRC's format as qemu-img names it (qcow2, vmdk, vpc, vhdx, raw, ...)
    /// [default: what `qemu-img info` detects].
    #[arg(long)]
    pub format: Option<String>,
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// Runs `rackcast image import`.
pub fn run(a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let opts = capture_options(&a.capture)?;
    if !a.src.is_file() {
        bail!("{}: no such file", a.src.display());
    }
    let format = match &a.format {
        Some(f) => f.clone(),
        None => detect_format(&a.src)?,
    };
    let dir = tempfile::Builder::new()
        .prefix("rackcast-import.")
        .tempdir()
        .context("a temporary directory for qemu-nbd's socket")?;
    let sock = dir.path().join("nbd.sock");
    let _server = QemuNbd::start(&a.src, &format, &sock)?;
    let nbd = NbdClient::connect(&sock)
        .with_context(|| format!("connecting to qemu-nbd at {}", sock.display()))?;
    let info = SourceInfo {
        size: nbd.size(),
        logical_sector_size: 512,
        physical_sector_size: 4096,
        is_block_device: false,
    };
    println!(
        "source    {} ({format}, {} bytes)",
        a.src.display(),
        info.size
    );
    capture(&a.src, &a.out, info.size, |pb| {
        create_image_from(&nbd, &a.src, info, &a.out, &opts, &mut |n| pb.inc(n))
    })
}

/// The format `qemu-img info` detects.
fn detect_format(src: &Path) -> anyhow::Result<String> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(src)
        .output()
        .context("qemu-img (Debian's qemu-utils) did not run")?;
    if !out.status.success() {
        bail!(
            "qemu-img info {}: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("qemu-img info")?;
    match v["format"].as_str() {
        Some(f) => Ok(f.to_string()),
        None => bail!("qemu-img info {}: no format", src.display()),
    }
}

/// `qemu-nbd` serving one file read-only, killed on drop.
struct QemuNbd(Child);

impl QemuNbd {
    fn start(src: &Path, format: &str, sock: &Path) -> anyhow::Result<QemuNbd> {
        let child = Command::new("qemu-nbd")
            .args(["--read-only", "--persistent", "--shared=1"])
            .arg(format!("--format={format}"))
            .arg(format!("--socket={}", sock.display()))
            .arg(src)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("qemu-nbd (Debian's qemu-utils) did not start")?;
        let mut server = QemuNbd(child);
        let start = Instant::now();
        while !sock.exists() {
            if let Some(status) = server.0.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = server.0.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("qemu-nbd {}: {status}: {}", src.display(), err.trim());
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("qemu-nbd did not open {} within 20 s", sock.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
