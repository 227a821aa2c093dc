//! `rackcast image seed DISK`: a cloud-init NoCloud seed written onto a
//! restored disk (see `rackcast_writer::seed`), so a stock cloud image
//! boots with this machine's hostname, users and network.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use rackcast_writer::{write_seed, NoCloudSeed};

use super::util::human_bytes;

/// Options of `rackcast image seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The disk (or disk image file) an image was restored to: a GPT disk
    /// with at least 4 MiB of free space between or after its partitions.
    pub disk: PathBuf,
    /// The machine's hostname (meta-data `local-hostname`).
    #[arg(long)]
    pub hostname: Option<String>,
    /// meta-data `instance-id` [default: rackcast-HOSTNAME]; a new id makes
    /// cloud-init run its first-boot modules again.
    #[arg(long)]
    pub instance_id: Option<String>,
    /// A meta-data file, instead of --hostname and --instance-id.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["hostname", "instance_id"])]
    pub meta_data: Option<PathBuf>,
    /// The user-data file (#cloud-config, or a script).
    #[arg(long, value_name = "FILE")]
    pub user_data: PathBuf,
    /// A network-config file (version 1 or 2).
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
}

/// Runs `rackcast image seed`.
pub fn run(a: &SeedArgs) -> anyhow::Result<ExitCode> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
    };
    let meta_data = match (&a.meta_data, &a.hostname) {
        (Some(p), _) => read(p)?,
        (None, Some(h)) => {
            let id = a
                .instance_id
                .clone()
                .unwrap_or_else(|| format!("rackcast-{h}"));
            NoCloudSeed::meta_data(&id, h)
        }
        (None, None) => bail!("give --hostname (and --instance-id) or --meta-data FILE"),
    };
    let seed = NoCloudSeed {
        meta_data,
        user_data: read(&a.user_data)?,
        network_config: a.network_config.as_ref().map(read).transpose()?,
    };
    let part =
        write_seed(&a.disk, 512, &seed).with_context(|| format!("seeding {}", a.disk.display()))?;
    println!(
        "seed      partition {} (cidata) at {}, {}: meta-data, user-data{}",
        part.number,
        human_bytes(part.start),
        human_bytes(part.len),
        if seed.network_config.is_some() {
            ", network-config"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
