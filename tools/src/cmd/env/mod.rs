//! `rackcast env build`: assembles an automation environment, the Linux a
//! target boots to run the agent: the kernel, an initramfs (busybox, the
//! NIC and disk modules, the agent and the shared libraries it needs, an
//! `/init` that brings the network up by DHCP and starts the agent with the
//! server named on the kernel command line) and the `env.toml` the server
//! serves it by.

mod cpio;
mod elf;
mod local_boot;
mod modules;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rackcast_agent::cli::BAKED_CA;
use rackcast_engine::sched::api::Environment;

use self::cpio::Archive;
use self::modules::{DepSource, Tree};
use super::util::{human_bytes, progress_bar};

/// `/init`, the initramfs's PID 1.
const INIT: &str = include_str!("init.sh");
/// udhcpc's event script.
const UDHCPC_SCRIPT: &str = include_str!("udhcpc.sh");

/// The kernel command line of a built environment; the server replaces
/// `{server}`, `{token}` and `{env}`.
pub const CMDLINE: &str =
    "console=ttyS0 rackcast.server={server} rackcast.token={token} rackcast.env={env} quiet";

/// Programs `job distribute --grow` runs on the target (the writer's
/// layout.rs): e2fsprogs, xfsprogs and util-linux's losetup (busybox's
/// has no --sizelimit).
const GROW_TOOLS: &[&str] = &["e2fsck", "resize2fs", "xfs_growfs", "losetup"];

/// Where `scripts/fetch-kernel.sh` leaves busybox-static by default.
const CACHED_BUSYBOX: &str = "/var/cache/rackcast/kernel/busybox";

/// Applets `/init` and the udhcpc script use; a busybox without them is refused.
const ESSENTIAL_APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "cat", "echo", "grep", "tr", "uname", "insmod", "ip", "udhcpc",
    "usleep", "sleep", "timeout", "setsid", "cttyhack", "sync", "reboot", "poweroff",
];

/// Linked when busybox cannot be asked for its list (`--list`).
const FALLBACK_APPLETS: &[&str] = &[
    "sh",
    "ash",
    "mount",
    "umount",
    "mkdir",
    "cat",
    "echo",
    "grep",
    "tr",
    "uname",
    "insmod",
    "modprobe",
    "lsmod",
    "rmmod",
    "ip",
    "udhcpc",
    "usleep",
    "sleep",
    "timeout",
    "setsid",
    "cttyhack",
    "sync",
    "reboot",
    "poweroff",
    "ls",
    "cp",
    "mv",
    "rm",
    "ln",
    "dmesg",
    "ps",
    "kill",
    "vi",
    "less",
    "wget",
    "ping",
    "nc",
    "dd",
    "blockdev",
    "fdisk",
    "sed",
    "awk",
    "head",
    "tail",
    "wc",
    "df",
    "free",
    "hexdump",
    "sha256sum",
    "test",
    "[",
    "true",
    "false",
];

/// `rackcast env ...`
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Assemble an automation environment in a directory: vmlinuz, initrd.img
    /// (busybox, NIC and disk modules, the agent) and env.toml.
    Build(BuildArgs),
    /// Write the quick-local-boot loader into the boot root: a UEFI target
    /// with no work, set to boot from the network first, gets it and
    /// chains its disk's EFI loader in seconds (without it, the firmware
    /// reaches the disk after 2-3 minutes of network boot timeouts).
    LocalBoot(local_boot::LocalBootArgs),
}

/// `rackcast env build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The kernel image, e.g. boot/vmlinuz-VERSION from Debian's
    /// linux-image-cloud-amd64 (scripts/fetch-kernel.sh fetches it).
    #[arg(long, value_name = "VMLINUZ")]
    kernel: PathBuf,
    /// Output directory (created): vmlinuz, initrd.img, env.toml.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// The kernel's modules: lib/modules/VERSION, or a root holding it
    /// [default: beside the kernel, as `dpkg -x` leaves it, or /lib/modules/VERSION].
    #[arg(long, value_name = "DIR")]
    modules: Option<PathBuf>,
    /// Environment name (env.toml, `rackcast.env=`).
    #[arg(long, default_value = "linux-x64")]
    name: String,
    /// The agent binary to carry [default: the rackcast-agent beside this
    /// rackcast, as `cargo build` and the packages leave it].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// busybox, preferably static [default: the first static one of
    /// /var/cache/rackcast/kernel/busybox, /bin/busybox, /usr/bin/busybox].
    #[arg(long, value_name = "PATH", env = "RACKCAST_BUSYBOX")]
    busybox: Option<PathBuf>,
    /// More modules to carry and load, with their dependencies
    /// (e.g. `--extra-module mlx5_core`); repeatable, or comma-separated.
    #[arg(long = "extra-module", value_name = "NAME", num_args = 1.., value_delimiter = ',')]
    extra_modules: Vec<String>,
    /// efibootmgr, which the agent runs on UEFI targets to set a one-time
    /// network boot [default: the one on PATH; without one, UEFI targets
    /// cannot be told to boot another environment].
    #[arg(long, value_name = "PATH")]
    efibootmgr: Option<PathBuf>,
    /// The CA the server's HTTPS certificate chains to (the server's
    /// DATA/tls/ca.pem when it made its own), carried as
    /// /etc/rackcast/ca.pem, which the agent trusts. Without it the agent
    /// trusts only the public web PKI: enough for a server with a publicly
    /// issued certificate, not for the CA `rackcast server` makes.
    #[arg(long, value_name = "FILE")]
    server_ca: Option<PathBuf>,
    /// Leave out what `job distribute --grow` runs on the target (e2fsck,
    /// resize2fs, xfs_growfs, losetup and the loop and xfs modules): about
    /// 1.6 MiB less initrd for every target that boots the environment.
    #[arg(long)]
    no_grow_tools: bool,
    /// Keep the agent's debug information (by default `strip --strip-debug`
    /// removes it when binutils is installed).
    #[arg(long)]
    no_strip: bool,
}

/// Runs `rackcast env ...`.
pub fn run(cmd: EnvCommand) -> Result<ExitCode> {
    match cmd {
        EnvCommand::Build(a) => build(a),
        EnvCommand::LocalBoot(a) => local_boot::run(a),
    }
}

/// A file the initramfs carries from this machine.
#[derive(Debug)]
struct Carried {
    /// Path in the image (no leading `/`).
    at: String,
    source: PathBuf,
    len: u64,
    perm: u32,
}

fn carried(at: &str, source: &Path, perm: u32) -> Result<Carried> {
    let len = std::fs::metadata(source)
        .with_context(|| format!("{}", source.display()))?
        .len();
    Ok(Carried {
        at: at.trim_start_matches('/').to_string(),
        source: source.to_path_buf(),
        len,
        perm,
    })
}

fn step(msg: &str) {
    eprintln!("env build: {msg}");
}

fn build(a: BuildArgs) -> Result<ExitCode> {
    let started = Instant::now();
    if a.name.is_empty()
        || !a
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("--name {:?}: use letters, digits, '.', '_' and '-'", a.name);
    }

    // The kernel and its modules.
    let kernel =
        std::fs::read(&a.kernel).with_context(|| format!("--kernel {}", a.kernel.display()))?;
    let kver = modules::bzimage_version(&kernel);
    if kver.is_none() {
        step(&format!(
            "{} is not a bzImage with a version string; trusting --modules",
            a.kernel.display()
        ));
    }
    let tree_dir = modules::find_tree(a.modules.as_deref(), &a.kernel, kver.as_deref())?;
    step(&format!("indexing modules in {}", tree_dir.display()));
    let tree = Tree::open(&tree_dir)?;
    if let Some(v) = &kver {
        if &tree.version != v {
            bail!(
                "the kernel is {v} but the modules in {} are for {}",
                tree_dir.display(),
                tree.version
            );
        }
    }
    let mut required: Vec<String> = modules::REQUIRED.iter().map(|s| s.to_string()).collect();
    for m in &a.extra_modules {
        let m = m.trim().to_string();
        if !m.is_empty() && !required.contains(&m) {
            required.push(m);
        }
    }
    let optional: Vec<String> = modules::OPTIONAL
        .iter()
        .map(|s| s.to_string())
        .filter(|s| !required.contains(s))
        .collect();
    let resolved = tree.resolve(&required, &optional)?;
    let on_demand: Vec<String> = if a.no_grow_tools {
        Vec::new()
    } else {
        modules::ON_DEMAND.iter().map(|s| s.to_string()).collect()
    };
    let demand = tree.resolve(&[], &on_demand)?;
    let demand_order: Vec<&String> = demand
        .order
        .iter()
        .filter(|r| !resolved.order.contains(r))
        .collect();
    let mut module_files = Vec::new();
    for rel in resolved.order.iter().chain(demand_order.iter().copied()) {
        let data = modules::read_module(&tree.dir.join(rel))?;
        modules::check_vermagic(&data, &tree.version).with_context(|| rel.clone())?;
        module_files.push((modules::plain_path(rel), data));
    }

    // The server's CA: checked now, not when a target first fails to trust it.
    let server_ca = match &a.server_ca {
        Some(p) => {
            rackcast_client::tls_trusting(p)?;
            Some(std::fs::read(p).with_context(|| format!("--server-ca {}", p.display()))?)
        }
        None => None,
    };

    // busybox.
    let busybox = pick_busybox(a.busybox.as_deref())?;
    let bb_data = std::fs::read(&busybox)?;
    let bb_elf = elf::Elf::parse(&bb_data).with_context(|| busybox.display().to_string())?;
    let bb_static = bb_elf.interp().is_none() && !bb_elf.is_dynamic();
    let applets = applets(&busybox)?;
    drop(bb_data);

    // The agent, without its debug information.
    let agent_src = match &a.agent {
        Some(p) => p.clone(),
        None => default_agent()?,
    };
    let agent_data =
        std::fs::read(&agent_src).with_context(|| format!("--agent {}", agent_src.display()))?;
    elf::Elf::parse(&agent_data).with_context(|| format!("--agent {}", agent_src.display()))?;
    let agent_len = agent_data.len() as u64;
    drop(agent_data);
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    let stripped_tmp = a.output.join(".rackcast-agent.stripped");
    let _cleanup = RemoveOnDrop(vec![stripped_tmp.clone(), a.output.join(".initrd.img.tmp")]);
    let agent_file = if a.no_strip {
        agent_src.clone()
    } else {
        step(&format!(
            "stripping debug information from {}",
            agent_src.display()
        ));
        match Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&stripped_tmp)
            .arg(&agent_src)
            .status()
        {
            Ok(s) if s.success() => stripped_tmp.clone(),
            Ok(s) => bail!("strip --strip-debug {} failed: {s}", agent_src.display()),
            Err(_) => {
                step("strip (binutils) not found: carrying the agent as it is");
                agent_src.clone()
            }
        }
    };

    // efibootmgr, and the shared libraries of the agent, efibootmgr (and
    // busybox, if it is dynamic).
    let system = elf::system_search_dirs();
    let efibootmgr = match &a.efibootmgr {
        Some(p) if p.is_file() => Some(p.clone()),
        Some(p) => bail!("--efibootmgr {}: no such file", p.display()),
        None => find_on_path("efibootmgr"),
    };
    let mut programs = vec![agent_src.clone()];
    if !bb_static {
        programs.push(busybox.clone());
    }
    programs.extend(efibootmgr.iter().cloned());
    // What growing a deployed disk's last filesystem runs (layout.rs in the
    // writer): carried when this machine has them.
    let grow_tools: Vec<(&str, Option<PathBuf>)> = if a.no_grow_tools {
        Vec::new()
    } else {
        GROW_TOOLS.iter().map(|&t| (t, find_on_path(t))).collect()
    };
    programs.extend(grow_tools.iter().filter_map(|(_, p)| p.clone()));
    let mut libs: Vec<elf::Needed> = Vec::new();
    for p in &programs {
        for n in elf::needed_files(p, &system)? {
            if !libs.iter().any(|l| l.at == n.at) {
                libs.push(n);
            }
        }
    }
    libs.sort_by(|x, y| x.at.cmp(&y.at));
    let mut libpath: Vec<String> = Vec::new();
    for l in &libs {
        let dir =
            l.at.parent()
                .unwrap_or(Path::new("/"))
                .display()
                .to_string();
        if !libpath.contains(&dir) {
            libpath.push(dir);
        }
    }

    // Everything carried from this machine, for the progress bar and summary.
    let mut files = vec![carried("bin/busybox", &busybox, 0o755)?];
    for l in &libs {
        files.push(carried(&l.at.display().to_string(), &l.source, 0o755)?);
    }
    files.push(carried("bin/rackcast-agent", &agent_file, 0o755)?);
    if let Some(e) = &efibootmgr {
        files.push(carried("bin/efibootmgr", e, 0o755)?);
    }
    for (name, path) in &grow_tools {
        if let Some(p) = path {
            files.push(carried(&format!("bin/{name}"), p, 0o755)?);
        }
    }

    let kdir = format!("lib/modules/{}", tree.version);
    let module_paths: Vec<&str> = module_files.iter().map(|(p, _)| p.as_str()).collect();
    // /init loads the boot modules; the on-demand ones wait for modprobe.
    let boot_modules = &module_paths[..resolved.order.len()];
    let build_conf = build_conf(&[
        ("RACKCAST_VERSION", env!("CARGO_PKG_VERSION")),
        ("RACKCAST_ENV_NAME", &a.name),
        ("RACKCAST_KVER", &tree.version),
        ("RACKCAST_MODULES", &boot_modules.join(" ")),
        ("RACKCAST_LIBPATH", &libpath.join(":")),
    ])?;
    // A modules.dep of what is carried, for `modprobe` in a debug shell.
    let mut mini_dep = String::new();
    let boot = resolved.order.iter().map(|r| (r, &resolved));
    let later = demand_order.iter().map(|&r| (r, &demand));
    for ((rel, from), p) in boot.chain(later).zip(&module_paths) {
        mini_dep.push_str(p);
        mini_dep.push(':');
        // The whole closure, the last to load first, as depmod writes it.
        for d in from.closure(rel).iter().rev() {
            mini_dep.push(' ');
            mini_dep.push_str(&modules::plain_path(d));
        }
        mini_dep.push('\n');
    }

    // vmlinuz.
    std::fs::write(a.output.join("vmlinuz"), &kernel)
        .with_context(|| format!("writing {}", a.output.join("vmlinuz").display()))?;

    // initrd.img.
    let total: u64 = files.iter().map(|f| f.len).sum::<u64>()
        + module_files
            .iter()
            .map(|(_, d)| d.len() as u64)
            .sum::<u64>();
    step(&format!(
        "writing initrd.img ({} before compression)",
        human_bytes(total)
    ));
    let initrd_tmp = a.output.join(".initrd.img.tmp");
    let mtime = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    let gz = flate2::GzBuilder::new().mtime(mtime).write(
        BufWriter::with_capacity(1 << 20, File::create(&initrd_tmp)?),
        flate2::Compression::default(),
    );
    let mut ar = Archive::new(gz, mtime);
    let pb = progress_bar(total, "initrd.img");
    for d in [
        "bin", "dev", "etc", "lib", "proc", "run", "sys", "var", "usr",
    ] {
        ar.dir(d)?;
    }
    ar.dir_mode("root", 0o700)?;
    ar.dir_mode("tmp", 0o1777)?;
    ar.dir_mode("var/tmp", 0o1777)?;
    ar.symlink("sbin", "bin")?;
    ar.symlink("usr/bin", "../bin")?;
    ar.symlink("usr/sbin", "../bin")?;
    ar.symlink("var/run", "../run")?;
    ar.char_dev("dev/console", 0o600, 5, 1)?;
    ar.char_dev("dev/null", 0o666, 1, 3)?;
    ar.file("init", 0o755, INIT.as_bytes())?;
    ar.file("etc/udhcpc/default.script", 0o755, UDHCPC_SCRIPT.as_bytes())?;
    ar.file("etc/rackcast/build.conf", 0o644, build_conf.as_bytes())?;
    ar.file(
        "etc/hosts",
        0o644,
        b"127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    )?;
    ar.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    ar.file("etc/group", 0o644, b"root:x:0:\ntty:x:5:\n")?;
    ar.file("etc/nsswitch.conf", 0o644, b"hosts: files dns\n")?;
    // e2fsck and losetup look here for what is mounted.
    ar.symlink("etc/mtab", "../proc/self/mounts")?;
    if let Some(pem) = &server_ca {
        ar.file(BAKED_CA.trim_start_matches('/'), 0o644, pem)?;
    }
    for f in &files {
        let mut src = File::open(&f.source).with_context(|| f.source.display().to_string())?;
        ar.file_from(&f.at, f.perm, f.len, &mut src)
            .with_context(|| format!("adding {}", f.at))?;
        pb.inc(f.len);
    }
    for app in &applets {
        let at = format!("bin/{app}");
        if !ar.entries().contains_key(&at) {
            ar.symlink(&at, "busybox")?;
        }
    }
    for (p, data) in &module_files {
        ar.file(&format!("{kdir}/{p}"), 0o644, data)?;
        pb.inc(data.len() as u64);
    }
    ar.file(&format!("{kdir}/modules.dep"), 0o644, mini_dep.as_bytes())?;
    let entries = ar.entries().len();
    let uncompressed = ar.data_bytes;
    let gz = ar.finish()?;
    let mut out = gz.finish()?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    pb.finish_and_clear();
    std::fs::rename(&initrd_tmp, a.output.join("initrd.img"))?;

    // env.toml.
    let env = environment(&a.name);
    let toml_text = format!(
        "# rackcast automation environment, built by `rackcast env build`.\n\
         # Paths are under the server's boot root: put this directory there as {0}/.\n{1}",
        a.name,
        toml::to_string(&env).context("encoding env.toml")?
    );
    std::fs::write(a.output.join("env.toml"), toml_text)?;

    // Summary.
    let size = |p: &str| {
        std::fs::metadata(a.output.join(p))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let names = |v: &[String]| {
        v.iter()
            .map(|p| modules::module_name(p))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("environment {} in {}", a.name, a.output.display());
    println!(
        "  vmlinuz     {:>10}  kernel {}",
        human_bytes(size("vmlinuz")),
        tree.version
    );
    println!(
        "  initrd.img  {:>10}  gzip'd newc cpio: {} entries, {} uncompressed",
        human_bytes(size("initrd.img")),
        entries,
        human_bytes(uncompressed)
    );
    println!(
        "  env.toml    {:>10}  cmdline: {}",
        human_bytes(size("env.toml")),
        env.cmdline
    );
    let dep_how = match tree.dep_source() {
        DepSource::ModulesDep => "modules.dep",
        DepSource::Modinfo => ".modinfo, no modules.dep",
    };
    println!(
        "  modules     {:>10}  {} of {} in load order (dependencies from {dep_how}): {}",
        human_bytes(module_files.iter().map(|(_, d)| d.len() as u64).sum()),
        module_files.len(),
        tree.len(),
        names(&resolved.order)
    );
    if !resolved.builtin.is_empty() {
        println!(
            "              built into the kernel: {}",
            resolved.builtin.join(" ")
        );
    }
    if !resolved.absent.is_empty() {
        println!(
            "              not in this kernel: {}",
            resolved.absent.join(" ")
        );
    }
    println!(
        "  busybox     {:>10}  {} ({}, {} applets)",
        human_bytes(files[0].len),
        busybox.display(),
        if bb_static { "static" } else { "dynamic" },
        applets.len()
    );
    let agent_carried = files
        .iter()
        .find(|f| f.at == "bin/rackcast-agent")
        .map_or(0, |f| f.len);
    println!(
        "  agent       {:>10}  {}{}",
        human_bytes(agent_carried),
        agent_src.display(),
        if agent_carried < agent_len {
            format!(
                " (debug information stripped from {})",
                human_bytes(agent_len)
            )
        } else {
            String::new()
        }
    );
    match &efibootmgr {
        Some(e) => println!(
            "  efibootmgr  {:>10}  {}",
            human_bytes(std::fs::metadata(e).map(|m| m.len()).unwrap_or(0)),
            e.display()
        ),
        None => println!(
            "  efibootmgr  {:>10}  not found (apt-get install efibootmgr): UEFI targets \
             cannot be sent to another environment",
            "-"
        ),
    }
    let missing: Vec<&str> = grow_tools
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(n, _)| *n)
        .collect();
    println!(
        "  grow tools  {:>10}  {}",
        human_bytes(
            grow_tools
                .iter()
                .filter_map(|(_, p)| p.as_ref())
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum()
        ),
        if a.no_grow_tools {
            "left out (--no-grow-tools): `job distribute --grow` fails on these targets".into()
        } else if missing.is_empty() {
            format!(
                "{}; modules {} on demand",
                GROW_TOOLS.join(" "),
                names(
                    &demand_order
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                )
            )
        } else {
            format!(
                "{} not found (apt-get install e2fsprogs xfsprogs mount): `job distribute --grow` \
                 fails on these targets",
                missing.join(" ")
            )
        }
    );
    match (&a.server_ca, &server_ca) {
        (Some(p), Some(pem)) => println!(
            "  server CA   {:>10}  {} as {BAKED_CA}",
            human_bytes(pem.len() as u64),
            p.display()
        ),
        _ => println!(
            "  server CA   {:>10}  none (--server-ca): the agent trusts only publicly issued \
             server certificates",
            "-"
        ),
    }
    for l in &libs {
        println!(
            "  library     {:>10}  {}",
            human_bytes(std::fs::metadata(&l.source).map(|m| m.len()).unwrap_or(0)),
            l.at.display()
        );
    }
    println!("built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// Removes temporary files however the build ends.
#[derive(Debug)]
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The `Environment` written to env.toml.
pub fn environment(name: &str) -> Environment {
    Environment {
        name: name.to_string(),
        kernel: Some(format!("{name}/vmlinuz")),
        initrd: Some(format!("{name}/initrd.img")),
        cmdline: CMDLINE.to_string(),
        boot_file: None,
    }
}

/// `/etc/rackcast/build.conf`: shell assignments `/init` sources.
fn build_conf(vars: &[(&str, &str)]) -> Result<String> {
    let mut s = String::from("# Written by `rackcast env build`; sourced by /init.\n");
    for (k, v) in vars {
        if v.contains('\'') || v.contains('\n') {
            bail!("{k} value {v:?} cannot be quoted for the init script");
        }
        s.push_str(&format!("{k}='{v}'\n"));
    }
    Ok(s)
}

/// `name` on PATH (or in the sbin directories a root PATH would have).
/// `rackcast-agent` beside this executable (cargo puts both binaries of a
/// build in one directory; the packages install them side by side).
fn default_agent() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let agent = exe.with_file_name("rackcast-agent");
    if !agent.is_file() {
        bail!(
            "no rackcast-agent beside {}: build it (cargo build --release -p rackcast-agent) \
             or name one with --agent PATH",
            exe.display()
        );
    }
    Ok(agent)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// The busybox to carry: the one given, or the first static one found.
fn pick_busybox(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--busybox {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let candidates: Vec<PathBuf> = [CACHED_BUSYBOX, "/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    for c in &candidates {
        let data = std::fs::read(c)?;
        if elf::Elf::parse(&data).is_ok_and(|e| e.interp().is_none()) {
            return Ok(c.clone());
        }
    }
    match candidates.into_iter().next() {
        Some(c) => {
            step(&format!(
                "{} is dynamically linked (busybox-static is better: scripts/fetch-kernel.sh \
                 fetches it); carrying its libraries too",
                c.display()
            ));
            Ok(c)
        }
        None => bail!(
            "no busybox found: run scripts/fetch-kernel.sh /var/cache/rackcast/kernel, or give --busybox"
        ),
    }
}

/// The applets to link: busybox's own `--list`, checked for what `/init`
/// needs; a fixed list where busybox cannot run here (another architecture).
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains('/') && *l != "busybox")
                .map(str::to_string)
                .collect::<BTreeSet<String>>()
        });
    let Some(list) = listed else {
        step(&format!(
            "{} --list did not run; linking {} common applets",
            busybox.display(),
            FALLBACK_APPLETS.len()
        ));
        return Ok(FALLBACK_APPLETS.iter().map(|s| s.to_string()).collect());
    };
    let missing: Vec<&str> = ESSENTIAL_APPLETS
        .iter()
        .copied()
        .filter(|a| !list.contains(*a))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks applets the environment needs: {}",
            busybox.display(),
            missing.join(" ")
        );
    }
    // `rackcast` is ours, whatever busybox calls itself.
    Ok(list.into_iter().filter(|a| a != "rackcast").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_toml_round_trips_with_the_cmdline_template() {
        let env = environment("linux-x64");
        let text = toml::to_string(&env).unwrap();
        let back: Environment = toml::from_str(&text).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.kernel.as_deref(), Some("linux-x64/vmlinuz"));
        assert_eq!(back.initrd.as_deref(), Some("linux-x64/initrd.img"));
        assert_eq!(back.boot_file, None);
        assert_eq!(
            back.cmdline,
            "console=ttyS0 rackcast.server={server} rackcast.token={token} rackcast.env={env} quiet"
        );
        // What the server does with it.
        let line = back
            .cmdline
            .replace("{server}", "http://10.0.0.1:8080")
            .replace("{token}", "t0k")
            .replace("{env}", &back.name);
        assert_eq!(
            line,
            "console=ttyS0 rackcast.server=http://10.0.0.1:8080 rackcast.token=t0k rackcast.env=linux-x64 quiet"
        );
    }

    #[test]
    fn init_parses_every_key_the_template_sets() {
        for word in CMDLINE.split_whitespace() {
            if let Some((key, _)) = word.split_once('=') {
                if key.starts_with("rackcast.") {
                    assert!(
                        INIT.contains(&format!("    {key}=*)")),
                        "/init ignores {key}"
                    );
                }
            }
        }
        for key in [
            "rackcast.disk",
            "rackcast.poweroff",
            "rackcast.debug",
            "BOOTIF",
        ] {
            assert!(INIT.contains(key), "/init ignores {key}");
        }
        assert!(
            INIT.contains("rackcast-env: up, agent starting")
                || INIT.contains("say \"up, agent starting")
        );
        assert!(INIT.contains("--on-reboot system"));
    }

    #[test]
    fn build_conf_quotes_and_refuses_what_it_cannot() {
        let s = build_conf(&[("A", "x y"), ("B", "/lib:/lib64")]).unwrap();
        assert!(s.contains("A='x y'\nB='/lib:/lib64'\n"));
        assert!(build_conf(&[("A", "it's")]).is_err());
    }

    #[test]
    fn the_init_scripts_are_valid_shell() {
        for (name, text) in [("init", INIT), ("udhcpc", UDHCPC_SCRIPT)] {
            let out = Command::new("sh")
                .args(["-n", "-c", text])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
