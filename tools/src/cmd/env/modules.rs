//! Kernel modules for the initramfs: find the kernel's module tree, resolve
//! the modules the NIC and disk need with their dependencies (from
//! `modules.dep`, or, where `depmod` never ran, as after `dpkg -x` of a
//! Debian kernel package, from each module's own `.modinfo`), order them so
//! every module comes after what it depends on, and read them uncompressed
//! (busybox's `insmod` takes only plain `.ko` files).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::elf::{is_elf, Elf};

/// Modules every environment carries: the virtio PCI transport, NIC and disk.
pub const REQUIRED: &[&str] = &["virtio_pci", "virtio_net", "virtio_blk"];

/// Common NIC and disk drivers, carried when the kernel has them as modules,
/// and efivarfs (for efibootmgr on UEFI targets).
pub const OPTIONAL: &[&str] = &[
    "efivarfs",
    "virtio_scsi",
    "sd_mod",
    "nvme",
    "ahci",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "ena",
];

/// Modules carried but loaded only when needed (`modprobe`, from the
/// carried modules.dep): loop devices and XFS, for growing a deployed
/// disk's last filesystem (`job distribute --grow`).
pub const ON_DEMAND: &[&str] = &["loop", "xfs"];

/// A module's name as the kernel knows it: the file name without `.ko` and
/// compression suffix, `-` read as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".xz")
        .or_else(|| file.strip_suffix(".zst"))
        .or_else(|| file.strip_suffix(".gz"))
        .unwrap_or(file);
    let stem = stem.strip_suffix(".ko").unwrap_or(stem);
    stem.replace('-', "_")
}

/// True for `x.ko`, `x.ko.xz`, `x.ko.zst`, `x.ko.gz`.
fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The path a module has in the initramfs (relative to `lib/modules/VERSION`):
/// its path in the tree without the compression suffix.
pub fn plain_path(rel: &str) -> String {
    for s in [".xz", ".zst", ".gz"] {
        if let Some(p) = rel.strip_suffix(s) {
            return p.to_string();
        }
    }
    rel.to_string()
}

/// The kernel release a bzImage was built as (its setup header's
/// `kernel_version` string, first word), if `image` is a bzImage that has one.
pub fn bzimage_version(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes(image.get(0x20e..0x210)?.try_into().ok()?) as usize;
    if ptr == 0 {
        return None;
    }
    let s = image.get(ptr + 0x200..)?;
    let end = s.iter().position(|&b| b == 0 || b == b' ')?;
    let v = std::str::from_utf8(&s[..end]).ok()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// Finds `lib/modules/VERSION` from what the user gave: that directory
/// itself, `lib/modules`, or a root holding `lib/modules/VERSION`; with
/// nothing given, beside the kernel (`ROOT/boot/vmlinuz-V` next to
/// `ROOT/lib/modules/V`, as `dpkg -x` leaves a kernel package) or
/// `/lib/modules/V`. `version` (from the kernel image) picks among several
/// and must match what is found.
pub fn find_tree(given: Option<&Path>, kernel: &Path, version: Option<&str>) -> Result<PathBuf> {
    let is_tree = |p: &Path| {
        p.join("modules.order").is_file()
            || p.join("modules.dep").is_file()
            || p.join("kernel").is_dir()
    };
    let pick = |modules_dir: &Path| -> Result<Option<PathBuf>> {
        if let Some(v) = version {
            let p = modules_dir.join(v);
            return Ok(is_tree(&p).then_some(p));
        }
        let trees: Vec<PathBuf> = std::fs::read_dir(modules_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_tree(p))
            .collect();
        match trees.len() {
            0 => Ok(None),
            1 => Ok(trees.into_iter().next()),
            _ => bail!(
                "{} holds modules for several kernels; name one: --modules {}/VERSION",
                modules_dir.display(),
                modules_dir.display()
            ),
        }
    };
    if let Some(g) = given {
        let g = std::fs::canonicalize(g).with_context(|| format!("--modules {}", g.display()))?;
        if is_tree(&g) {
            return Ok(g);
        }
        for dir in [g.clone(), g.join("lib/modules")] {
            if let Some(t) = pick(&dir)? {
                return Ok(t);
            }
        }
        bail!(
            "--modules {}: no kernel module tree there{} (want lib/modules/VERSION with modules.order)",
            g.display(),
            version.map(|v| format!(" for {v}")).unwrap_or_default()
        );
    }
    let Some(v) = version else {
        bail!(
            "cannot tell the kernel's version from its image: give --modules lib/modules/VERSION"
        );
    };
    let kernel = std::fs::canonicalize(kernel)?;
    let mut tried = Vec::new();
    if let Some(dir) = kernel.parent() {
        for c in [
            dir.join("../lib/modules").join(v),
            dir.join("lib/modules").join(v),
            dir.join("modules").join(v),
            dir.join("modules"),
        ] {
            if is_tree(&c) {
                return Ok(std::fs::canonicalize(c)?);
            }
            tried.push(c);
        }
    }
    let sys = Path::new("/lib/modules").join(v);
    if is_tree(&sys) {
        return Ok(sys);
    }
    tried.push(sys);
    bail!(
        "no modules for kernel {v} (looked in {}): give --modules",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A kernel's module tree (`lib/modules/VERSION`).
#[derive(Debug)]
pub struct Tree {
    /// The directory.
    pub dir: PathBuf,
    /// Its kernel release (the directory's name).
    pub version: String,
    /// Module name -> path relative to `dir`.
    by_name: BTreeMap<String, String>,
    /// Built into the kernel (`modules.builtin`).
    builtin: BTreeSet<String>,
    /// `modules.dep`: relative path -> the paths it depends on.
    dep: Option<BTreeMap<String, Vec<String>>>,
}

/// Where a module's dependencies came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepSource {
    /// The tree's `modules.dep`.
    ModulesDep,
    /// Each module's `.modinfo` `depends=` (no `modules.dep`).
    Modinfo,
}

/// The modules to carry, in load order.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Relative paths in the tree (possibly compressed), dependencies first.
    pub order: Vec<String>,
    /// Requested modules that are built into the kernel.
    pub builtin: Vec<String>,
    /// Optional modules this kernel does not have.
    pub absent: Vec<String>,
    /// Each carried module's dependencies as the tree gives them.
    pub deps: BTreeMap<String, Vec<String>>,
}

impl Resolved {
    /// Everything `rel` needs loaded first, in load order.
    pub fn closure(&self, rel: &str) -> Vec<String> {
        load_order(&[rel.to_string()], |m| {
            Ok(self.deps.get(m).cloned().unwrap_or_default())
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m != rel)
        .collect()
    }
}

impl Tree {
    /// Indexes `dir`: every module file, `modules.builtin`, `modules.dep`.
    pub fn open(dir: &Path) -> Result<Self> {
        let version = dir
            .file_name()
            .and_then(|f| f.to_str())
            .context("module tree has no name")?
            .to_string();
        let mut by_name = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let e = e?;
                let p = e.path();
                let ft = e.file_type()?;
                if ft.is_dir() {
                    // `build` and `source` point into kernel headers.
                    if d != dir || (e.file_name() != "build" && e.file_name() != "source") {
                        stack.push(p);
                    }
                } else if let Some(name) = e.file_name().to_str().filter(|n| is_module_file(n)) {
                    let rel = p
                        .strip_prefix(dir)
                        .expect("under dir")
                        .to_string_lossy()
                        .into_owned();
                    by_name.entry(module_name(name)).or_insert(rel);
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        let dep = match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(text) => Some(parse_modules_dep(&text, dir)),
            Err(_) => None,
        };
        Ok(Tree {
            dir: dir.to_path_buf(),
            version,
            by_name,
            builtin,
            dep,
        })
    }

    /// How dependencies are found in this tree.
    pub fn dep_source(&self) -> DepSource {
        if self.dep.is_some() {
            DepSource::ModulesDep
        } else {
            DepSource::Modinfo
        }
    }

    /// Number of module files in the tree.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The relative path of module `name`.
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name
            .get(&name.replace('-', "_"))
            .map(String::as_str)
    }

    /// Modules `rel` depends on (relative paths).
    fn deps_of(&self, rel: &str) -> Result<Vec<String>> {
        if let Some(dep) = &self.dep {
            return Ok(dep.get(rel).cloned().unwrap_or_default());
        }
        let data = read_module(&self.dir.join(rel))?;
        let info = modinfo(&data).with_context(|| rel.to_string())?;
        let mut out = Vec::new();
        for (k, v) in info {
            if k != "depends" {
                continue;
            }
            for d in v.split(',').filter(|d| !d.is_empty()) {
                let Some(p) = self.path_of(d) else {
                    bail!(
                        "{rel} depends on {d}, which is not in {}",
                        self.dir.display()
                    );
                };
                out.push(p.to_string());
            }
        }
        Ok(out)
    }

    /// Resolves `required` (an error when missing) and `optional` (skipped
    /// when missing) into load order; built-in ones need nothing.
    pub fn resolve(&self, required: &[String], optional: &[String]) -> Result<Resolved> {
        let mut out = Resolved::default();
        let mut roots = Vec::new();
        for (name, must) in required
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)))
        {
            let key = name.replace('-', "_");
            if let Some(p) = self.path_of(&key) {
                roots.push(p.to_string());
            } else if self.builtin.contains(&key) {
                out.builtin.push(key);
            } else if must {
                bail!(
                    "module {name} is neither in {} nor built into kernel {}",
                    self.dir.display(),
                    self.version
                );
            } else {
                out.absent.push(key);
            }
        }
        let mut deps = BTreeMap::new();
        out.order = load_order(&roots, |rel| {
            let d = self.deps_of(rel)?;
            deps.insert(rel.to_string(), d.clone());
            Ok(d)
        })?;
        out.deps = deps;
        Ok(out)
    }
}

/// Parses `modules.dep` (`kernel/a.ko: kernel/b.ko kernel/c.ko`); paths are
/// made relative to `dir` where they are absolute.
pub fn parse_modules_dep(text: &str, dir: &Path) -> BTreeMap<String, Vec<String>> {
    let rel = |p: &str| -> String {
        Path::new(p)
            .strip_prefix(dir)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| p.to_string())
    };
    text.lines()
        .filter_map(|line| {
            let (m, deps) = line.split_once(':')?;
            Some((
                rel(m.trim()),
                deps.split_whitespace().map(rel).collect::<Vec<_>>(),
            ))
        })
        .collect()
}

/// Orders `roots` and everything they depend on (per `deps`) so that each
/// module comes after all of its dependencies; roots keep their order where
/// dependencies allow. A cycle is an error.
pub fn load_order<F>(roots: &[String], mut deps: F) -> Result<Vec<String>>
where
    F: FnMut(&str) -> Result<Vec<String>>,
{
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    // Depth-first, post-order, with an explicit stack: (module, its deps, next index).
    for root in roots {
        if marks.contains_key(root) {
            continue;
        }
        let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
        marks.insert(root.clone(), Mark::Visiting);
        stack.push((root.clone(), deps(root)?, 0));
        while let Some((m, ds, i)) = stack.last_mut() {
            if *i < ds.len() {
                let d = ds[*i].clone();
                *i += 1;
                match marks.get(&d) {
                    Some(Mark::Done) => {}
                    Some(Mark::Visiting) => bail!("module dependency cycle: {m} needs {d}"),
                    None => {
                        marks.insert(d.clone(), Mark::Visiting);
                        let dd = deps(&d)?;
                        stack.push((d, dd, 0));
                    }
                }
            } else {
                let m = m.clone();
                stack.pop();
                marks.insert(m.clone(), Mark::Done);
                order.push(m);
            }
        }
    }
    Ok(order)
}

/// A module file's bytes, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz`).
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {name}"))?;
    } else if name.ends_with(".zst") {
        out = zstd::decode_all(&raw[..]).with_context(|| format!("decompressing {name}"))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {name}"))?;
    } else {
        out = raw;
    }
    if !is_elf(&out) {
        bail!("{name} is not a kernel module (not ELF)");
    }
    Ok(out)
}

/// A module's `.modinfo` key/value pairs (`depends`, `vermagic`, `alias`...).
pub fn modinfo(module: &[u8]) -> Result<Vec<(String, String)>> {
    let elf = Elf::parse(module)?;
    let Some(sec) = elf.section(".modinfo") else {
        bail!("no .modinfo section");
    };
    Ok(sec
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// Checks that `module` (bytes) was built for kernel `version` (its
/// `vermagic` starts with the release).
pub fn check_vermagic(module: &[u8], version: &str) -> Result<()> {
    let info = modinfo(module)?;
    if let Some((_, v)) = info.iter().find(|(k, _)| k == "vermagic") {
        let built_for = v.split_whitespace().next().unwrap_or("");
        if built_for != version {
            bail!("built for kernel {built_for}, not {version}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// A minimal ELF64 relocatable with a `.modinfo` section, as a module has.
    fn fake_module(info: &[&str]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut modinfo = Vec::new();
        for kv in info {
            modinfo.extend_from_slice(kv.as_bytes());
            modinfo.push(0);
        }
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        f[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        let shstr_off = f.len();
        f.extend_from_slice(shstr);
        let info_off = f.len();
        f.extend_from_slice(&modinfo);
        while f.len() % 8 != 0 {
            f.push(0);
        }
        let shoff = f.len();
        f[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[58..60].copy_from_slice(&64u16.to_le_bytes());
        f[60..62].copy_from_slice(&3u16.to_le_bytes());
        f[62..64].copy_from_slice(&1u16.to_le_bytes());
        let sh = |name: u32, kind: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        f.extend(sh(0, 0, 0, 0));
        f.extend(sh(1, 3, shstr_off, shstr.len()));
        f.extend(sh(11, 1, info_off, modinfo.len()));
        f
    }

    /// A module tree: net_drv -> (core_a, core-b), core-b -> core_a; one built in.
    fn fake_tree(with_dep: bool) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("6.1.0-test");
        let vm = "vermagic=6.1.0-test SMP mod_unload modversions";
        let mods: [(&str, &str); 3] = [
            ("kernel/net/core_a.ko", ""),
            ("kernel/net/core-b.ko.zst", "core_a"),
            ("kernel/drivers/net_drv.ko.xz", "core_b,core_a"),
        ];
        for (rel, deps) in mods {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let body = fake_module(&[
                &format!("name={}", module_name(rel)),
                &format!("depends={deps}"),
                vm,
            ]);
            let data = if rel.ends_with(".zst") {
                zstd::encode_all(&body[..], 3).unwrap()
            } else if rel.ends_with(".xz") {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
                std::io::Write::write_all(&mut e, &body).unwrap();
                e.finish().unwrap()
            } else {
                body
            };
            std::fs::write(p, data).unwrap();
        }
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/builtin_nic.ko\n",
        )
        .unwrap();
        std::fs::write(dir.join("modules.order"), "").unwrap();
        if with_dep {
            std::fs::write(
                dir.join("modules.dep"),
                "kernel/net/core_a.ko:\n\
                 kernel/net/core-b.ko.zst: kernel/net/core_a.ko\n\
                 kernel/drivers/net_drv.ko.xz: kernel/net/core-b.ko.zst kernel/net/core_a.ko\n",
            )
            .unwrap();
        }
        root
    }

    #[test]
    fn modinfo_and_modules_dep_give_the_same_order() {
        for with_dep in [false, true] {
            let root = fake_tree(with_dep);
            let tree = Tree::open(&root.path().join("6.1.0-test")).unwrap();
            let want = if with_dep {
                DepSource::ModulesDep
            } else {
                DepSource::Modinfo
            };
            assert_eq!(tree.dep_source(), want);
            let r = tree
                .resolve(&s(&["net_drv"]), &s(&["builtin_nic", "not_here"]))
                .unwrap();
            assert_eq!(
                r.order,
                s(&[
                    "kernel/net/core_a.ko",
                    "kernel/net/core-b.ko.zst",
                    "kernel/drivers/net_drv.ko.xz"
                ]),
                "with modules.dep: {with_dep}"
            );
            assert_eq!(r.builtin, s(&["builtin_nic"]));
            assert_eq!(r.absent, s(&["not_here"]));
            assert_eq!(
                r.closure("kernel/drivers/net_drv.ko.xz"),
                s(&["kernel/net/core_a.ko", "kernel/net/core-b.ko.zst"])
            );
            for rel in &r.order {
                let data = read_module(&tree.dir.join(rel)).unwrap();
                check_vermagic(&data, "6.1.0-test").unwrap();
                assert!(check_vermagic(&data, "6.1.0-other").is_err());
            }
            // A required module that is nowhere is an error, naming it.
            let e = tree
                .resolve(&s(&["mlx5_core"]), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("mlx5_core"), "{e}");
        }
    }

    #[test]
    fn the_tree_is_found_from_a_root_or_beside_the_kernel() {
        let root = fake_tree(false);
        let boot = root.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        let kernel = boot.join("vmlinuz-6.1.0-test");
        std::fs::write(&kernel, b"").unwrap();
        // `dpkg -x` layout: ROOT/boot/vmlinuz-V beside ROOT/lib/modules/V.
        let lib = root.path().join("lib/modules");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::rename(root.path().join("6.1.0-test"), lib.join("6.1.0-test")).unwrap();
        let want = std::fs::canonicalize(lib.join("6.1.0-test")).unwrap();
        assert_eq!(find_tree(None, &kernel, Some("6.1.0-test")).unwrap(), want);
        assert_eq!(
            find_tree(Some(root.path()), &kernel, Some("6.1.0-test")).unwrap(),
            want
        );
        assert_eq!(find_tree(Some(&lib), &kernel, None).unwrap(), want);
        assert!(find_tree(Some(root.path()), &kernel, Some("6.2.0")).is_err());
        assert!(find_tree(None, &kernel, None).is_err());
    }

    #[test]
    fn names_drop_suffixes_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko"),
            "nvme_core"
        );
        assert_eq!(module_name("virtio_net.ko.xz"), "virtio_net");
        assert_eq!(module_name("a/b/virtio-rng.ko.zst"), "virtio_rng");
        assert_eq!(plain_path("kernel/x/y.ko.zst"), "kernel/x/y.ko");
        assert_eq!(plain_path("kernel/x/y.ko"), "kernel/x/y.ko");
    }

    #[test]
    fn modules_dep_resolution_puts_dependencies_first() {
        // The shape of Debian 6.1's virtio modules (depmod lists each
        // module's whole closure, the last to be loaded first).
        let dep = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";
        let map = parse_modules_dep(dep, Path::new("/lib/modules/6.1.0-57-cloud-amd64"));
        let roots = s(&[
            "kernel/drivers/virtio/virtio_pci.ko",
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/block/virtio_blk.ko",
        ]);
        let order = load_order(&roots, |m| Ok(map.get(m).cloned().unwrap_or_default())).unwrap();
        let pos = |m: &str| order.iter().position(|x| x.ends_with(m)).unwrap();
        // Every module after each of its dependencies.
        for (m, deps) in &map {
            if let Some(mi) = order.iter().position(|x| x == m) {
                for d in deps {
                    assert!(pos(d) < mi, "{d} must load before {m}: {order:?}");
                }
            }
        }
        assert_eq!(order.len(), 9, "each module once: {order:?}");
        // Roots keep their order where dependencies allow.
        assert!(pos("/virtio_pci.ko") < pos("/virtio_net.ko"));
        assert!(pos("/virtio_net.ko") < pos("/virtio_blk.ko"));
        assert_eq!(order.last().unwrap(), "kernel/drivers/block/virtio_blk.ko");
    }

    #[test]
    fn absolute_modules_dep_paths_become_relative() {
        let dir = Path::new("/lib/modules/6.1.0");
        let map = parse_modules_dep(
            "/lib/modules/6.1.0/kernel/a.ko: /lib/modules/6.1.0/kernel/b.ko\n",
            dir,
        );
        assert_eq!(map["kernel/a.ko"], s(&["kernel/b.ko"]));
    }

    #[test]
    fn a_dependency_cycle_is_an_error() {
        let deps = |m: &str| -> Result<Vec<String>> {
            Ok(match m {
                "a" => s(&["b"]),
                "b" => s(&["c"]),
                "c" => s(&["a"]),
                _ => vec![],
            })
        };
        let e = load_order(&s(&["a"]), deps).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn diamond_dependencies_load_once() {
        let deps = |m: &str| -> Result<Vec<String>> {
            Ok(match m {
                "top" => s(&["left", "right"]),
                "left" | "right" => s(&["base"]),
                _ => vec![],
            })
        };
        let order = load_order(&s(&["top", "left"]), deps).unwrap();
        assert_eq!(order, s(&["base", "left", "right", "top"]));
    }

    #[test]
    fn bzimage_version_comes_from_the_setup_header() {
        let mut img = vec![0u8; 0x600];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x500 + 30].copy_from_slice(b"6.1.0-57-cloud-amd64 (debian) ");
        assert_eq!(
            bzimage_version(&img).as_deref(),
            Some("6.1.0-57-cloud-amd64")
        );
        img[0x202] = b'X';
        assert_eq!(bzimage_version(&img), None);
    }

    #[test]
    fn compressed_modules_are_read_plain() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"\x7fELF\x02\x01 a module".to_vec();
        let zst = dir.path().join("m.ko.zst");
        std::fs::write(&zst, zstd::encode_all(&body[..], 3).unwrap()).unwrap();
        assert_eq!(read_module(&zst).unwrap(), body);
        let xz = dir.path().join("m.ko.xz");
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        std::io::Write::write_all(&mut enc, &body).unwrap();
        std::fs::write(&xz, enc.finish().unwrap()).unwrap();
        assert_eq!(read_module(&xz).unwrap(), body);
        let bad = dir.path().join("bad.ko");
        std::fs::write(&bad, b"nope").unwrap();
        assert!(read_module(&bad).is_err());
    }
}
