//! `rackcast image`: capture, inspect, verify, sign and restore disk images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rackcast_engine::image::{
    self, create_image, hex, ChunkKind, CreateOptions, ImageReader, ImageSigner, TrustedKey,
};
use rackcast_engine::sched::api::UnusedBlocks;

use super::util::{human_bytes, parse_size, progress_bar, rate};

/// `rackcast image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Capture a file or block device into a new image.
    ///
    /// Chunks are hashed (BLAKE3) and compressed (zstd) on all cores; zero and
    /// repeated chunks cost nothing. Writes OUT.partial and renames it to OUT
    /// once the image is complete and on disk.
    Create(CreateArgs),
    /// Capture a virtual disk (qcow2, VMDK, VHD, VHDX, raw) into a new
    /// image, with the same filesystem scan as `create`.
    ///
    /// qemu-nbd (Debian's qemu-utils) exports it read-only; the capture
    /// reads the export directly, with no raw copy on disk.
    Import(super::import::ImportArgs),
    /// Show an image's metadata, chunk-kind histogram and root.
    Inspect(InspectArgs),
    /// Check every chunk and the root (and the signature, with --key).
    ///
    /// Exits non-zero naming the first bad chunk and its byte offsets.
    Verify(VerifyArgs),
    /// Write an image to a file or block device.
    ///
    /// Each chunk is verified before it is written; absent chunks are left
    /// untouched, zero chunks become holes in files.
    Restore(RestoreArgs),
    /// Write a cloud-init NoCloud seed (meta-data, user-data,
    /// network-config) onto a restored GPT disk.
    ///
    /// A 4 MiB FAT partition labelled CIDATA, made at the end of the disk's
    /// free space (rerunning rewrites it): a stock cloud image boots with
    /// this machine's identity.
    Seed(super::seed::SeedArgs),
    /// Create an Ed25519 key pair for signing images: KEY (secret) and KEY.pub.
    Keygen(KeygenArgs),
    /// Sign an existing image with a secret key (from `rackcast image keygen`).
    ///
    /// Verifies every chunk and the root first, then writes the signature
    /// into the image's trailer in place (any earlier signature is replaced;
    /// the root does not change). A server with `trusted_keys` accepts only
    /// images signed by one of them.
    #[command(after_help = "Example:\n  rackcast image keygen site.key\n  \
        rackcast image sign golden.rcimg --key site.key\n  \
        rackcast image verify golden.rcimg --key site.key.pub")]
    Sign(SignArgs),
    /// Write a generated, reproducible sample disk (for demos and benchmarks).
    Sample(SampleArgs),
    /// List the images in the server's library.
    List(super::image_remote::ListArgs),
    /// Upload an image file into the server's library (streamed; the server
    /// verifies the root before accepting it).
    Upload(super::image_remote::UploadArgs),
}

/// Options of `rackcast image sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// The file to write.
    pub out: PathBuf,
    /// Size (suffixes K, M, G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Content shape.
    #[arg(long, value_enum, default_value = "mixed")]
    pub shape: super::sample::Shape,
    /// Another seed makes other content of the same shape (0: the default
    /// sample), e.g. distinct files for a filesystem.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Options of `rackcast image create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Source: a file or a block device (e.g. /dev/nvme0n1).
    pub src: PathBuf,
    /// The image file to write.
    pub out: PathBuf,
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Capture a device with a partition mounted read-only (one mounted
    /// read-write is always refused).
    #[arg(long)]
    pub allow_mounted: bool,
}

/// How a capture stores what it reads (`image create` and `image import`).
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Chunk size: a power of two, 64K to 64M (suffixes K, M, G).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// zstd compression level (1 fastest .. 19 smallest; negative = faster still).
    #[arg(long, default_value_t = image::DEFAULT_LEVEL, allow_hyphen_values = true)]
    pub level: i32,
    /// Encoder threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sign the image root with this secret key (from `rackcast image keygen`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// A label to record, KEY=VALUE (repeatable), e.g. --label os=debian12.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Store every block. By default the partition table (GPT or MBR) and
    /// the filesystems rackcast reads (ext2/3/4, NTFS, FAT12/16/32, XFS; swap
    /// keeps its header) are scanned and their free blocks are neither read
    /// nor stored; unknown partitions and the gaps between them are stored
    /// whole.
    #[arg(long)]
    pub no_fs: bool,
}

/// Options of `rackcast image inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image.
    pub img: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also list every chunk (kind, disk offset, hash).
    #[arg(long)]
    pub chunks: bool,
}

/// Options of `rackcast image verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The image.
    pub img: PathBuf,
    /// Require a valid signature by this public key (KEY.pub).
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
    /// Threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `rackcast image restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The image.
    pub img: PathBuf,
    /// Target: a file (created if missing) or a block device.
    pub dest: PathBuf,
    /// Require a valid signature by this public key before writing anything.
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
    /// Decoder threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Hash what the target already holds and write only the chunks that differ.
    #[arg(long)]
    pub delta: bool,
    /// Read back after the final flush: off, a sample of chunks, or all.
    #[arg(long, value_enum, default_value = "sample")]
    pub verify: VerifyArg,
    /// Rewrite a chunk that reads back wrong up to this many times.
    #[arg(long, default_value_t = 2)]
    pub verify_retries: u32,
    /// What to do with the blocks the image leaves out (the filesystems'
    /// free space): keep what the target holds there, zero them, or
    /// discard them (TRIM; a punched hole in a file).
    #[arg(long, value_enum, default_value = "keep")]
    pub unused: UnusedArg,
    /// On a target larger than the source: extend the last partition to
    /// the end and grow its ext2/3/4 (e2fsck, resize2fs) or XFS
    /// (xfs_growfs on a temporary mount); needs root for the loop device.
    /// The backup GPT moves to the end with or without it.
    #[arg(long)]
    pub grow: bool,
    /// With --grow, leave 5 MiB free at the end for `rackcast image seed`
    /// (its CIDATA partition goes in the last free space).
    #[arg(long, requires = "grow")]
    pub seed_room: bool,
    /// I/O engine: io_uring, positioned writes, or io_uring when available.
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineArg,
    /// io_uring queue depth.
    #[arg(long, default_value_t = 32)]
    pub queue_depth: u32,
    /// Write a block device even if it (or one of its partitions) is
    /// mounted or held open exclusively (skips both the mount check and
    /// the exclusive O_EXCL open that catches busy devices).
    #[arg(long)]
    pub force: bool,
    /// Ignore and do not keep the resume bitmap of an interrupted restore.
    #[arg(long)]
    pub no_resume: bool,
    /// Where resume bitmaps for block devices are kept.
    #[arg(long, default_value = "/var/lib/rackcast")]
    pub state_dir: PathBuf,
    /// Cap the write rate, bytes per second (suffixes K, M, G); for tests.
    #[arg(long, value_parser = parse_size, hide = true)]
    pub max_rate: Option<u64>,
    /// Checkpoint interval of the resume bitmap, in milliseconds.
    #[arg(long, default_value_t = 1000, hide = true)]
    pub checkpoint_ms: u64,
}

/// `--unused` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UnusedArg {
    /// Leave them as they are (the fastest).
    Keep,
    /// Make them read as zeros.
    Zero,
    /// Discard them (the device may forget them).
    Discard,
}

impl From<UnusedArg> for UnusedBlocks {
    fn from(a: UnusedArg) -> UnusedBlocks {
        match a {
            UnusedArg::Keep => UnusedBlocks::Keep,
            UnusedArg::Zero => UnusedBlocks::Zero,
            UnusedArg::Discard => UnusedBlocks::Discard,
        }
    }
}

/// `--verify` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum VerifyArg {
    /// No read-back.
    Off,
    /// About one chunk in sixteen, plus the first and last.
    Sample,
    /// Every chunk.
    Full,
}

/// `--engine` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EngineArg {
    /// io_uring unless the kernel disables it.
    Auto,
    /// io_uring or fail.
    Uring,
    /// Positioned writes.
    Sync,
}

/// Options of `rackcast image sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The image to sign (changed in place).
    pub img: PathBuf,
    /// The secret key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Worker threads for the verification (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Options of `rackcast image keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the secret key; the public key goes to KEY.pub.
    pub key: PathBuf,
}

/// Runs `rackcast image ...`.
pub fn run(cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Create(a) => create(a),
        ImageCommand::Import(a) => super::import::run(&a),
        ImageCommand::Seed(a) => super::seed::run(&a),
        ImageCommand::Inspect(a) => inspect(&a),
        ImageCommand::Verify(a) => verify(&a),
        ImageCommand::Restore(a) => restore(&a),
        ImageCommand::Keygen(a) => keygen(&a),
        ImageCommand::Sign(a) => sign(&a),
        ImageCommand::List(a) => super::image_remote::list(&a),
        ImageCommand::Upload(a) => super::image_remote::upload(&a),
        ImageCommand::Sample(a) => {
            super::sample::write_sample(&a.out, a.size, a.shape, a.seed)?;
            println!(
                "wrote {} ({}, {:?})",
                a.out.display(),
                human_bytes(a.size),
                a.shape
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn threads(n: Option<usize>) -> usize {
    n.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let mut opts = capture_options(&a.capture)?;
    opts.allow_mounted = a.allow_mounted;
    let total = std::fs::File::open(&a.src)
        .map_err(anyhow::Error::from)
        .and_then(|f| Ok(image::probe_source(&f, &a.src)?.size))
        .with_context(|| format!("opening {}", a.src.display()))?;
    capture(&a.src, &a.out, total, |pb| {
        create_image(&a.src, &a.out, &opts, &mut |n| pb.inc(n))
    })
}

/// The engine's options from the shared capture flags.
pub(crate) fn capture_options(a: &CaptureArgs) -> anyhow::Result<CreateOptions> {
    let mut labels = BTreeMap::new();
    for l in &a.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?}: expected KEY=VALUE");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let signer = a
        .sign
        .as_deref()
        .map(ImageSigner::load)
        .transpose()
        .context("loading the signing key")?;
    let chunk_size = u32::try_from(a.chunk_size).context("--chunk-size is too large")?;
    image::check_chunk_size(chunk_size as u64)?;
    Ok(CreateOptions {
        chunk_size,
        level: a.level,
        threads: threads(a.threads),
        signer,
        labels,
        cancel: Some(cancel_on_ctrl_c()),
        filesystems: !a.no_fs,
        allow_mounted: false,
    })
}

/// Runs a capture of `total` bytes from `src` into `out` behind a progress
/// bar and prints its summary; Ctrl-C exits 130 with nothing written.
pub(crate) fn capture(
    src: &Path,
    out: &Path,
    total: u64,
    run: impl FnOnce(&indicatif::ProgressBar) -> image::Result<image::CreateSummary>,
) -> anyhow::Result<ExitCode> {
    let pb = progress_bar(total, "capturing");
    let s = match run(&pb) {
        Ok(s) => s,
        Err(image::ImageError::Cancelled { done, total }) => {
            pb.abandon();
            eprintln!(
                "cancelled after {} of {}; {} was not written",
                human_bytes(done),
                human_bytes(total),
                out.display()
            );
            return Ok(ExitCode::from(130));
        }
        Err(e) => {
            return Err(anyhow::Error::from(e))
                .with_context(|| format!("capturing {} into {}", src.display(), out.display()))
        }
    };
    pb.finish_and_clear();
    let m = &s.index.meta;
    let stored = s.index.stored_bytes();
    println!("image     {} -> {}", src.display(), out.display());
    println!(
        "size      {} ({} bytes), {} chunks of {}",
        human_bytes(m.source_size),
        m.source_size,
        s.index.entries.len(),
        human_bytes(m.chunk_size as u64)
    );
    println!(
        "stored    {} in frames, {} image file, ratio {:.2}x",
        human_bytes(stored),
        human_bytes(s.image_bytes),
        m.source_size as f64 / s.image_bytes.max(1) as f64
    );
    if let Some(scan) = &s.scan {
        print_scan(scan, m.source_size);
    }
    println!("chunks    {}", histogram_line(&s.index));
    println!("root      {}", hex(&s.root));
    println!("signed    {}", if s.signed { "yes" } else { "no" });
    println!(
        "time      {:.2} s, {}",
        s.elapsed.as_secs_f64(),
        rate(m.source_size, s.elapsed)
    );
    Ok(ExitCode::SUCCESS)
}

/// The filesystem scan's lines: the table, then each partition's number,
/// offset, size, filesystem and used bytes.
fn print_scan(scan: &image::ScanReport, size: u64) {
    println!(
        "read      {} of {} ({} partition table)",
        human_bytes(scan.used_bytes),
        human_bytes(size),
        scan.table.map_or("no", table_name)
    );
    for p in &scan.partitions {
        let fs = p.fs.as_deref().unwrap_or("unknown: stored whole");
        println!("{}", partition_line(p, fs));
    }
}

fn table_name(t: image::fs::TableKind) -> &'static str {
    match t {
        image::fs::TableKind::Gpt => "gpt",
        image::fs::TableKind::Mbr => "mbr",
    }
}

/// One partition: number, offset, size, filesystem (`fs`: what to say
/// when none was read), used bytes and type.
fn partition_line(p: &image::fs::PartitionUsage, fs: &str) -> String {
    format!(
        "  part {:<3} at {:>10}  {:>10}  {fs:<22} used {:>10}  {:<36}",
        p.number,
        human_bytes(p.start),
        human_bytes(p.len),
        human_bytes(p.used),
        p.table_type
    )
}

/// A flag set by the first Ctrl-C (SIGINT), so that a long capture stops
/// cleanly and leaves no partial file; a second Ctrl-C is the default again
/// (the process ends at once).
fn cancel_on_ctrl_c() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = rt {
        std::thread::spawn(move || {
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    set.store(true, std::sync::atomic::Ordering::Relaxed);
                    eprintln!("\nstopping at the next chunk (Ctrl-C again to quit at once)");
                }
                // A second one ends the process at once.
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            });
        });
    }
    flag
}

fn histogram_line(index: &image::ChunkIndex) -> String {
    index
        .histogram()
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(serde::Serialize)]
struct InspectJson<'a> {
    path: String,
    format_version: u16,
    root: String,
    signed: bool,
    signer_public_key: Option<String>,
    image_bytes: u64,
    stored_bytes: u64,
    chunk_count: usize,
    metadata: &'a image::Metadata,
    chunk_kinds: BTreeMap<&'static str, u64>,
    /// `gpt`, `mbr`, or none.
    partition_table: Option<&'static str>,
    partitions: Vec<image::fs::PartitionLayout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chunks: Option<Vec<ChunkJson>>,
}

#[derive(serde::Serialize)]
struct ChunkJson {
    chunk: u64,
    disk_offset: u64,
    len: usize,
    kind: ChunkKind,
    hash: String,
    frame_offset: Option<u64>,
    frame_len: Option<u32>,
    duplicate_of: Option<u64>,
}

fn inspect(a: &InspectArgs) -> anyhow::Result<ExitCode> {
    let r = ImageReader::open(&a.img).with_context(|| format!("opening {}", a.img.display()))?;
    let idx = r.index();
    let chunks = a.chunks.then(|| {
        idx.entries
            .iter()
            .enumerate()
            .map(|(i, e)| ChunkJson {
                chunk: i as u64,
                disk_offset: idx.disk_offset(i as u64),
                len: idx.chunk_len(i as u64),
                kind: e.data.kind(),
                hash: hex(&e.hash),
                frame_offset: e.data.frame().map(|f| f.offset),
                frame_len: e.data.frame().map(|f| f.len),
                duplicate_of: match e.data {
                    image::ChunkData::Duplicate { of } => Some(of),
                    _ => None,
                },
            })
            .collect::<Vec<_>>()
    });
    // An image whose chunks do not decode still shows its index.
    let (table, partitions, partitions_error) = match image::fs::image_layout(&r) {
        Ok((t, p)) => (t, p, None),
        Err(e) => (None, Vec::new(), Some(e.to_string())),
    };
    let j = InspectJson {
        path: a.img.display().to_string(),
        format_version: r.header().version,
        root: hex(&r.root()),
        signed: r.signature().is_some(),
        signer_public_key: r.signature().map(|s| hex(&s.public_key)),
        image_bytes: r.file_len(),
        stored_bytes: idx.stored_bytes(),
        chunk_count: idx.entries.len(),
        metadata: &idx.meta,
        chunk_kinds: idx
            .histogram()
            .into_iter()
            .map(|(k, n)| (k.name(), n))
            .collect(),
        partition_table: table.map(table_name),
        partitions,
        partitions_error,
        chunks,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &idx.meta;
    println!("image            {}", j.path);
    println!("format version   {}", j.format_version);
    println!("root             {}", j.root);
    match &j.signer_public_key {
        Some(k) => println!("signed           yes, by key {k} (check with verify --key)"),
        None => println!("signed           no"),
    }
    println!(
        "source size      {} ({} bytes)",
        human_bytes(m.source_size),
        m.source_size
    );
    println!("min target size  {} bytes", m.min_target_size);
    println!(
        "sector size      {} logical, {} physical",
        m.logical_sector_size, m.physical_sector_size
    );
    println!("chunk size       {}", human_bytes(m.chunk_size as u64));
    println!(
        "stored           {} in frames, {} image file, ratio {:.2}x",
        human_bytes(j.stored_bytes),
        human_bytes(j.image_bytes),
        m.source_size as f64 / j.image_bytes.max(1) as f64
    );
    println!(
        "chunks           {} ({})",
        j.chunk_count,
        histogram_line(idx)
    );
    println!("created          {} (unix time)", m.created_unix);
    println!("tool             {}", m.tool_version);
    for (k, v) in &m.labels {
        println!("label            {k}={v}");
    }
    match (&j.partitions_error, j.partition_table) {
        (Some(e), _) => println!("partitions       unreadable: {e}"),
        (None, t) => println!("partitions       {} table", t.unwrap_or("no")),
    }
    for p in &j.partitions {
        let fs = p.part.fs.as_deref().unwrap_or("unknown: held whole");
        println!(
            "{}  stored {:>10}",
            partition_line(&p.part, fs),
            human_bytes(p.stored)
        );
    }
    if let Some(chunks) = &j.chunks {
        println!(
            "{:>8} {:>14} {:>10} {:<9} hash",
            "chunk", "disk offset", "frame len", "kind"
        );
        for c in chunks {
            println!(
                "{:>8} {:>14} {:>10} {:<9} {}",
                c.chunk,
                c.disk_offset,
                c.frame_len.map_or("-".into(), |l| l.to_string()),
                c.kind.name(),
                c.hash
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let r = ImageReader::open(&a.img).with_context(|| format!("verifying {}", a.img.display()))?;
    if let Some(k) = &a.key {
        let key = TrustedKey::load(k)?;
        r.check_signature(&key)
            .with_context(|| format!("verifying {}", a.img.display()))?;
    }
    let pb = progress_bar(r.index().meta.source_size, "verifying");
    let rep = r
        .verify(threads(a.threads), &|n| pb.inc(n))
        .with_context(|| format!("verifying {}", a.img.display()))?;
    pb.finish_and_clear();
    println!("image     {}", a.img.display());
    println!("root      {} (index matches)", hex(&r.root()));
    match (&a.key, r.signature()) {
        (Some(k), _) => println!("signature valid, by {}", k.display()),
        (None, Some(s)) => println!(
            "signature present (key {}), not checked: pass --key PUB",
            hex(&s.public_key)
        ),
        (None, None) => println!("signature none"),
    }
    println!(
        "chunks    {} checked, {} frame bytes read, {:.2} s, {}",
        rep.chunks_checked,
        human_bytes(rep.bytes_read),
        rep.elapsed.as_secs_f64(),
        rate(rep.source_bytes, rep.elapsed)
    );
    println!("verified  ok");
    Ok(ExitCode::SUCCESS)
}

fn restore(a: &RestoreArgs) -> anyhow::Result<ExitCode> {
    use rackcast_writer::{EngineChoice, RestoreConfig, VerifyMode, WriterConfig};
    let r = ImageReader::open(&a.img).with_context(|| format!("opening {}", a.img.display()))?;
    if let Some(k) = &a.key {
        r.check_signature(&TrustedKey::load(k)?)
            .with_context(|| format!("checking {}", a.img.display()))?;
    }
    let total = r.index().meta.source_size;
    let layout = rackcast_writer::LayoutOptions {
        unused: a.unused.into(),
        grow: a.grow,
        reserve: if a.seed_room {
            rackcast_writer::seed::SEED_ROOM
        } else {
            0
        },
    };
    if a.grow {
        // Refused before anything is written, not after.
        let (_, parts) = image::fs::image_layout(&r)
            .with_context(|| format!("reading the partitions of {}", a.img.display()))?;
        match parts
            .iter()
            .map(|p| &p.part)
            .max_by_key(|p| p.start + p.len)
        {
            Some(p) if rackcast_writer::growable(p.fs.as_deref()) => {}
            Some(p) => bail!(
                "--grow: the last partition ({}) holds {}; rackcast grows ext2/3/4 and XFS",
                p.number,
                p.fs.as_deref().unwrap_or("a filesystem it does not read")
            ),
            None => bail!("--grow: {} holds no partition", a.img.display()),
        }
    }
    let pb = progress_bar(total, "restoring");
    let cfg = RestoreConfig {
        writer: WriterConfig {
            engine: match a.engine {
                EngineArg::Auto => EngineChoice::Auto,
                EngineArg::Uring => EngineChoice::Uring,
                EngineArg::Sync => EngineChoice::Sync,
            },
            queue_depth: a.queue_depth,
            force: a.force,
            resume: !a.no_resume,
            state_dir: a.state_dir.clone(),
            checkpoint_interval: std::time::Duration::from_millis(a.checkpoint_ms),
            max_rate: a.max_rate,
            ..WriterConfig::default()
        },
        threads: threads(a.threads),
        delta: a.delta,
        verify: match a.verify {
            VerifyArg::Off => VerifyMode::Off,
            VerifyArg::Sample => VerifyMode::Sample,
            VerifyArg::Full => VerifyMode::Full,
        },
        verify_retries: a.verify_retries,
    };
    let s = rackcast_writer::restore(&r, &a.dest, &cfg, &mut |n| pb.inc(n))
        .with_context(|| format!("restoring {} to {}", a.img.display(), a.dest.display()))?;
    pb.finish_and_clear();
    let laid = rackcast_writer::finish_layout(r.index(), &a.dest, &layout)
        .with_context(|| format!("after restoring to {}", a.dest.display()))?;
    let w = &s.write;
    println!("restored  {} -> {}", a.img.display(), a.dest.display());
    println!("root      {}", hex(&r.root()));
    println!(
        "engine    {}, {}, alignment {} (physical sector {})",
        w.engine.map_or("none".into(), |e| e.to_string()),
        if w.direct { "O_DIRECT" } else { "buffered" },
        w.align,
        w.physical_sector
    );
    if let Some(why) = &w.engine_fallback {
        println!("          io_uring not used: {why}");
    }
    println!(
        "written   {} in {} chunks, {} of zeros left as holes",
        human_bytes(w.bytes_written),
        w.chunks_written,
        human_bytes(w.zero_bytes_skipped + w.zero_bytes_discarded)
    );
    println!(
        "skipped   {} ({} bytes) in {} chunks already on the target{}",
        human_bytes(w.bytes_matched),
        w.bytes_matched,
        w.chunks_matched,
        if a.delta { "" } else { " (no --delta)" }
    );
    println!(
        "resumed   {} ({} bytes) in {} chunks from an interrupted restore",
        human_bytes(w.bytes_resumed),
        w.bytes_resumed,
        w.chunks_resumed
    );
    println!(
        "verified  {} in {} chunks read back ({:?}), {} rewritten",
        human_bytes(s.bytes_verified),
        s.chunks_verified,
        a.verify,
        s.chunks_rewritten
    );
    if laid.unused_bytes > 0 {
        let how = match a.unused {
            UnusedArg::Discard => "discarded",
            _ => "zeroed",
        };
        println!("unused    {} {how}", human_bytes(laid.unused_bytes));
    }
    if laid.gpt_moved {
        println!("gpt       backup header and table moved to the target's end");
    }
    if let Some((n, fs, from, to)) = &laid.grown {
        println!(
            "grown     partition {n} ({fs}) from {} to {}",
            human_bytes(*from),
            human_bytes(*to)
        );
    }
    println!(
        "time      {:.2} s, {} (flushed)",
        s.elapsed.as_secs_f64(),
        rate(total, s.elapsed)
    );
    Ok(ExitCode::SUCCESS)
}

fn sign(a: &SignArgs) -> anyhow::Result<ExitCode> {
    let signer = ImageSigner::load(&a.key).context("loading the signing key")?;
    let r = ImageReader::open(&a.img).with_context(|| format!("signing {}", a.img.display()))?;
    let pb = progress_bar(r.index().meta.source_size, "verifying");
    r.verify(threads(a.threads), &|n| pb.inc(n))
        .with_context(|| format!("{} is damaged: not signing it", a.img.display()))?;
    pb.finish_and_clear();
    drop(r);
    let sig = image::sign_file(&a.img, &signer)
        .with_context(|| format!("signing {}", a.img.display()))?;
    let r = ImageReader::open(&a.img).with_context(|| format!("re-reading {}", a.img.display()))?;
    println!("image     {}", a.img.display());
    println!("root      {}", hex(&r.root()));
    println!("signed    by key {}", hex(&sig.public_key));
    Ok(ExitCode::SUCCESS)
}

fn keygen(a: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let (signer, pub_path) = ImageSigner::generate(&a.key)?;
    println!("secret key  {} (keep it private)", a.key.display());
    println!(
        "public key  {} ({})",
        pub_path.display(),
        hex(&signer.public_key())
    );
    println!(
        "sign with   rackcast image create SRC OUT --sign {}",
        a.key.display()
    );
    println!(
        "check with  rackcast image verify IMG --key {}",
        pub_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
