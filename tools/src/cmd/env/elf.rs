//! Just enough ELF (64-bit, little-endian) to carry programs into an
//! initramfs: a program's interpreter and the shared libraries it needs,
//! found the way the dynamic loader finds them (an `ldd` that runs nothing),
//! and one named section (a kernel module's `.modinfo`).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_LOAD: u32 = 1;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// A parsed ELF64 little-endian file (borrowing its bytes).
#[derive(Debug)]
pub struct Elf<'a> {
    data: &'a [u8],
    /// `e_machine` (62: x86-64, 183: AArch64).
    pub machine: u16,
    phdrs: Vec<Phdr>,
}

#[derive(Debug, Clone, Copy)]
struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn u16_at(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

/// The NUL-terminated string at `at`.
fn cstr(d: &[u8], at: usize) -> Option<&str> {
    let rest = d.get(at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// True when `data` starts like an ELF file (any class).
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

impl<'a> Elf<'a> {
    /// Parses the header and program headers.
    pub fn parse(data: &'a [u8]) -> Result<Self> {
        if !is_elf(data) {
            bail!("not an ELF file");
        }
        if data.get(4) != Some(&2) || data.get(5) != Some(&1) {
            bail!("not a 64-bit little-endian ELF file");
        }
        let bad = || anyhow::anyhow!("truncated ELF header");
        let machine = u16_at(data, 18).ok_or_else(bad)?;
        let phoff = u64_at(data, 32).ok_or_else(bad)? as usize;
        let phentsize = u16_at(data, 54).ok_or_else(bad)? as usize;
        let phnum = u16_at(data, 56).ok_or_else(bad)? as usize;
        let mut phdrs = Vec::with_capacity(phnum);
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            let ph = (|| {
                Some(Phdr {
                    kind: u32_at(data, at)?,
                    offset: u64_at(data, at + 8)?,
                    vaddr: u64_at(data, at + 16)?,
                    filesz: u64_at(data, at + 32)?,
                })
            })()
            .ok_or_else(|| anyhow::anyhow!("truncated ELF program header {i}"))?;
            phdrs.push(ph);
        }
        Ok(Elf {
            data,
            machine,
            phdrs,
        })
    }

    /// The program interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`);
    /// `None` for a static program or a shared library.
    pub fn interp(&self) -> Option<&'a str> {
        let ph = self.phdrs.iter().find(|p| p.kind == PT_INTERP)?;
        cstr(self.data, ph.offset as usize)
    }

    /// True when the file has a dynamic section (needs the loader or is a
    /// shared library).
    pub fn is_dynamic(&self) -> bool {
        self.phdrs.iter().any(|p| p.kind == PT_DYNAMIC)
    }

    /// File offset of virtual address `vaddr` (through the `PT_LOAD` segments).
    fn offset_of(&self, vaddr: u64) -> Option<usize> {
        self.phdrs
            .iter()
            .find(|p| p.kind == PT_LOAD && vaddr >= p.vaddr && vaddr < p.vaddr + p.filesz)
            .map(|p| (vaddr - p.vaddr + p.offset) as usize)
    }

    /// `DT_NEEDED` names and the search path (`DT_RUNPATH`, else `DT_RPATH`).
    pub fn dynamic(&self) -> Result<Dynamic> {
        let mut out = Dynamic::default();
        let Some(ph) = self.phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
            return Ok(out);
        };
        let mut entries = Vec::new();
        let mut at = ph.offset as usize;
        let end = (ph.offset + ph.filesz) as usize;
        while at + 16 <= end {
            let tag = u64_at(self.data, at).context("truncated dynamic section")?;
            let val = u64_at(self.data, at + 8).context("truncated dynamic section")?;
            if tag == DT_NULL {
                break;
            }
            entries.push((tag, val));
            at += 16;
        }
        let Some(strtab) = entries
            .iter()
            .find(|(t, _)| *t == DT_STRTAB)
            .and_then(|(_, v)| self.offset_of(*v))
        else {
            bail!("dynamic section without a string table");
        };
        let string = |off: u64| {
            cstr(self.data, strtab + off as usize)
                .map(str::to_string)
                .context("bad dynamic string")
        };
        let (mut rpath, mut runpath) = (None, None);
        for &(tag, val) in &entries {
            match tag {
                DT_NEEDED => out.needed.push(string(val)?),
                DT_RPATH => rpath = Some(string(val)?),
                DT_RUNPATH => runpath = Some(string(val)?),
                _ => {}
            }
        }
        // The loader ignores DT_RPATH when DT_RUNPATH is present.
        if let Some(p) = runpath.or(rpath) {
            out.search = p
                .split(':')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
        Ok(out)
    }

    /// The contents of the section called `name`, if there is one.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        let d = self.data;
        let shoff = u64_at(d, 40)? as usize;
        let shentsize = u16_at(d, 58)? as usize;
        let shnum = u16_at(d, 60)? as usize;
        let shstrndx = u16_at(d, 62)? as usize;
        let sh = |i: usize| -> Option<(u32, usize, usize)> {
            let at = shoff + i * shentsize;
            Some((
                u32_at(d, at)?,
                u64_at(d, at + 24)? as usize,
                u64_at(d, at + 32)? as usize,
            ))
        };
        let (_, names, _) = sh(shstrndx)?;
        (0..shnum).find_map(|i| {
            let (n, off, size) = sh(i)?;
            (cstr(d, names + n as usize)? == name).then(|| d.get(off..off + size))?
        })
    }
}

/// What a dynamic object asks of the loader.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` (or `DT_RPATH`) directories, `$ORIGIN` unexpanded.
    pub search: Vec<String>,
}

/// One file a program needs at run time: where the loader will look for it
/// (`at`, an absolute path inside the image) and the file to copy there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// Absolute path in the image, e.g. `/lib/x86_64-linux-gnu/libc.so.6`.
    pub at: PathBuf,
    /// The real file on this machine (symbolic links followed).
    pub source: PathBuf,
}

/// The directories the loader searches after a library's own run path: the
/// `/etc/ld.so.conf` directories, then the built-in ones.
pub fn system_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
    for d in [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `/etc/ld.so.conf`: directories, one a line, and `include GLOB` lines
/// (only `DIR/*` and `DIR/*.SUFFIX` globs, which is what distributions ship).
fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: u32) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    if depth > 4 {
        return;
    }
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            let pattern = Path::new(pattern.trim());
            let (Some(dir), Some(glob)) = (
                pattern.parent(),
                pattern.file_name().and_then(|f| f.to_str()),
            ) else {
                continue;
            };
            let Some(suffix) = glob.strip_prefix('*') else {
                read_ld_so_conf(pattern, dirs, depth + 1);
                continue;
            };
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
                .collect();
            files.sort();
            for f in files {
                read_ld_so_conf(&f, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// Everything `program` needs to run, found as the loader finds it: its
/// interpreter and its `DT_NEEDED` libraries, transitively, each searched in
/// the requesting object's run path, then `system`. Empty for a static
/// program. Candidates of another machine (e.g. 32-bit or foreign-arch
/// libraries in the same directory) are skipped, as the loader skips them.
pub fn needed_files(program: &Path, system: &[PathBuf]) -> Result<Vec<Needed>> {
    let data = std::fs::read(program).with_context(|| format!("reading {}", program.display()))?;
    let elf = Elf::parse(&data).with_context(|| program.display().to_string())?;
    let machine = elf.machine;
    let mut out: BTreeMap<String, Needed> = BTreeMap::new();
    if let Some(interp) = elf.interp() {
        let source = std::fs::canonicalize(interp).with_context(|| {
            format!(
                "{} needs the loader {interp}, which is not on this machine",
                program.display()
            )
        })?;
        out.insert(
            file_name(Path::new(interp)),
            Needed {
                at: PathBuf::from(interp),
                source,
            },
        );
    }
    let mut queue: VecDeque<(PathBuf, Dynamic)> = VecDeque::new();
    queue.push_back((program.to_path_buf(), elf.dynamic()?));
    while let Some((from, dynamic)) = queue.pop_front() {
        let origin = from.parent().unwrap_or(Path::new("/")).to_path_buf();
        for name in &dynamic.needed {
            if out.contains_key(name.as_str()) {
                continue;
            }
            let mut dirs: Vec<PathBuf> = dynamic
                .search
                .iter()
                .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
                .collect();
            dirs.extend(system.iter().cloned());
            let candidates: Vec<PathBuf> = if name.contains('/') {
                vec![PathBuf::from(name)]
            } else {
                dirs.iter().map(|d| d.join(name)).collect()
            };
            let mut found = None;
            for c in candidates {
                let Ok(bytes) = std::fs::read(&c) else {
                    continue;
                };
                let Ok(lib) = Elf::parse(&bytes) else {
                    continue;
                };
                if lib.machine != machine {
                    continue;
                }
                let deps = lib.dynamic()?;
                found = Some((c, deps));
                break;
            }
            let Some((at, deps)) = found else {
                bail!(
                    "{} needs {name}, which is not in {}",
                    from.display(),
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                );
            };
            let source = std::fs::canonicalize(&at)?;
            out.insert(
                name.clone(),
                Needed {
                    at: at.clone(),
                    source,
                },
            );
            queue.push_back((at, deps));
        }
    }
    Ok(out.into_values().collect())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_needs_libc_and_the_loader() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let elf = Elf::parse(&data).unwrap();
        let Some(interp) = elf.interp() else {
            eprintln!("SKIP: the test binary is static");
            return;
        };
        let files = needed_files(&exe, &system_search_dirs()).unwrap();
        assert!(files.iter().any(|n| n.at == Path::new(interp)), "{files:?}");
        assert!(
            files
                .iter()
                .any(|n| n.at.file_name().unwrap() == "libc.so.6" && n.source.is_file()),
            "{files:?}"
        );
        // libc's own needs (the loader) are there once.
        let loaders = files
            .iter()
            .filter(|n| n.source == std::fs::canonicalize(interp).unwrap())
            .count();
        assert_eq!(loaders, 1, "{files:?}");
    }

    #[test]
    fn rejects_what_is_not_elf64_le() {
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 1; // 32-bit
        h[5] = 1;
        assert!(Elf::parse(&h).is_err());
    }
}
