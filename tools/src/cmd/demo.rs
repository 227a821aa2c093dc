//! `rackcast demo`: the README's main job.
//!
//! Until the deployment server, netboot and multicast land, the demo runs the
//! image pipeline end to end on a generated sample disk: capture, inspect,
//! verify, restore to several targets, and check every target's bytes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Args;
use rackcast_engine::image::{
    create_image, hex, restore_image, CreateOptions, ImageReader, RestoreOptions,
};

use super::util::{human_bytes, parse_size, progress_bar, rate};

/// Options of `rackcast demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the generated sample disk (suffixes K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Number of local targets (files) to restore to.
    #[arg(long, default_value_t = 4)]
    pub targets: usize,
    /// Use this file as the sample disk instead of generating one.
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// Work directory [default: a new temporary directory, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    ensure!(a.targets >= 1, "--targets must be at least 1");
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new()?;
            tmp.0.clone()
        }
    };
    let start = Instant::now();
    let src = match &a.source {
        Some(s) => s.clone(),
        None => {
            let p = dir.join("sample-disk.raw");
            println!(
                "[1/4] generating a {} sample disk (25% random, 25% text-like, 50% zero runs)",
                human_bytes(a.size)
            );
            super::sample::write_sample(&p, a.size, super::sample::Shape::Mixed)?;
            p
        }
    };
    let img = dir.join("sample.rcimg");
    println!("[2/4] capturing {} -> {}", src.display(), img.display());
    let total = std::fs::metadata(&src)?.len();
    let pb = progress_bar(total, "capturing");
    let c = create_image(&src, &img, &CreateOptions::default(), &mut |n| pb.inc(n))?;
    pb.finish_and_clear();
    println!(
        "      {} -> {} ({:.2}x) in {:.2} s, {}",
        human_bytes(total),
        human_bytes(c.image_bytes),
        total as f64 / c.image_bytes.max(1) as f64,
        c.elapsed.as_secs_f64(),
        rate(total, c.elapsed)
    );
    println!("[3/4] verifying the image");
    let r = ImageReader::open(&img)?;
    let v = r.verify(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        &|_| {},
    )?;
    println!(
        "      {} chunks ok, root {}",
        v.chunks_checked,
        hex(&r.root())
    );
    println!(
        "[4/4] restoring to {} targets and checking every byte",
        a.targets
    );
    let want = blake3_file(&src)?;
    let mut rows = Vec::new();
    for t in 0..a.targets {
        let dest = dir.join(format!("target-{t}.disk"));
        let s = restore_image(&r, &dest, &RestoreOptions::default(), &mut |_| {})
            .with_context(|| format!("restoring target {t}"))?;
        let got = blake3_file(&dest)?;
        ensure!(
            got == want,
            "target {t}: restored disk differs from the source"
        );
        rows.push((dest, s, got));
    }
    println!();
    println!("summary");
    println!("  sample disk   {} ({})", human_bytes(total), src.display());
    println!(
        "  image         {} stored, root {}",
        human_bytes(c.image_bytes),
        hex(&c.root)
    );
    for (dest, s, got) in &rows {
        println!(
            "  target        {}  {} written in {:.2} s  blake3 {}  verified",
            dest.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            human_bytes(s.bytes_written),
            s.elapsed.as_secs_f64(),
            &hex(got)[..16]
        );
    }
    println!("  wall time     {:.2} s", start.elapsed().as_secs_f64());
    println!(
        "  result        all {} targets match the source byte for byte",
        a.targets
    );
    Ok(ExitCode::SUCCESS)
}

fn blake3_file(p: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    h.update_mmap(p)
        .with_context(|| format!("hashing {}", p.display()))?;
    Ok(*h.finalize().as_bytes())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("rackcast-demo-{}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
