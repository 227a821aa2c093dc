//! The initramfs archive: "newc" cpio, the format the kernel unpacks, written
//! with the `cpio` crate's entry writer. This layer adds what an initramfs
//! needs on top: parent directories before their contents (the kernel's
//! unpacker creates no missing parents), unique inode numbers, one fixed
//! mtime (so the same inputs give the same bytes), no duplicate paths, and a
//! byte count for progress.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use cpio::NewcBuilder;

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;

/// Hides `flush` from the entry writer, which flushes after every entry: on
/// a gzip stream each flush would end a deflate block and cost ratio.
#[derive(Debug)]
pub struct NoFlush<W>(pub W);

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the archive holds at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Directory.
    Dir,
    /// Regular file of this many bytes.
    File(u64),
    /// Symbolic link.
    Symlink,
    /// Device node.
    Device,
}

/// A newc archive being written to `W`.
#[derive(Debug)]
pub struct Archive<W: Write> {
    out: Option<NoFlush<W>>,
    next_ino: u32,
    mtime: u32,
    entries: BTreeMap<String, Kind>,
    /// Bytes of file data written so far.
    pub data_bytes: u64,
}

fn clean(path: &str) -> io::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad archive path {path:?}"),
        ));
    }
    Ok(p.to_string())
}

impl<W: Write> Archive<W> {
    /// Starts an archive; every entry gets modification time `mtime`.
    pub fn new(out: W, mtime: u32) -> Self {
        Archive {
            out: Some(NoFlush(out)),
            next_ino: 1,
            mtime,
            entries: BTreeMap::new(),
            data_bytes: 0,
        }
    }

    /// What the archive holds so far, by path.
    pub fn entries(&self) -> &BTreeMap<String, Kind> {
        &self.entries
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        kind: Kind,
        rdev: (u32, u32),
        len: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let path = clean(path)?;
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        if let Some(old) = self.entries.get(&path) {
            if *old == Kind::Dir && kind == Kind::Dir {
                return Ok(());
            }
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} is already in the archive ({old:?})"),
            ));
        }
        let len32 = u32::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: newc cannot hold a file over 4 GiB"),
            )
        })?;
        let nlink = if kind == Kind::Dir { 2 } else { 1 };
        let b = NewcBuilder::new(&path)
            .ino(self.next_ino)
            .mode(mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .mtime(self.mtime)
            .rdev_major(rdev.0)
            .rdev_minor(rdev.1);
        self.next_ino += 1;
        let out = self.out.take().expect("archive already finished");
        let mut w = b.write(out, len32);
        let copied = io::copy(&mut data.take(len), &mut w)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: expected {len} bytes, got {copied}"),
            ));
        }
        self.out = Some(w.finish()?);
        self.data_bytes += len;
        self.entries.insert(path, kind);
        Ok(())
    }

    /// A directory (mode 0755) and its parents; nothing if already there.
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        self.dir_mode(path, 0o755)
    }

    /// A directory with permission bits `perm`.
    pub fn dir_mode(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let p = clean(path)?;
        if self.entries.get(&p) == Some(&Kind::Dir) {
            return Ok(());
        }
        self.entry(&p, S_IFDIR | perm, Kind::Dir, (0, 0), 0, &mut io::empty())
    }

    /// A regular file with permission bits `perm` and contents `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.file_from(path, perm, data.len() as u64, &mut &data[..])
    }

    /// A regular file of `len` bytes read from `data`.
    pub fn file_from(
        &mut self,
        path: &str,
        perm: u32,
        len: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, Kind::File(len), (0, 0), len, data)
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let t = target.as_bytes();
        self.entry(
            path,
            S_IFLNK | 0o777,
            Kind::Symlink,
            (0, 0),
            t.len() as u64,
            &mut &t[..],
        )
    }

    /// A character device node.
    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(
            path,
            S_IFCHR | perm,
            Kind::Device,
            (major, minor),
            0,
            &mut io::empty(),
        )
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let out = self.out.take().expect("archive already finished");
        let mut out = cpio::newc::trailer(out)?;
        out.0.flush()?;
        Ok(out.0)
    }
}

/// One entry read back from an archive.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path as stored.
    pub name: String,
    /// `st_mode`.
    pub mode: u32,
    /// Device numbers.
    pub rdev: (u32, u32),
    /// Contents (a symbolic link's target).
    pub data: Vec<u8>,
}

/// Reads every entry of a newc archive (for tests).
#[cfg(test)]
pub fn read_all(mut input: impl Read) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    loop {
        let mut r = cpio::NewcReader::new(input)?;
        if r.entry().is_trailer() {
            return Ok(out);
        }
        let (name, mode, rdev) = {
            let e = r.entry();
            (
                e.name().to_string(),
                e.mode(),
                (e.rdev_major(), e.rdev_minor()),
            )
        };
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        out.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
        input = r.finish()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut a = Archive::new(Vec::new(), 0);
        a.file("bin/busybox", 0o755, b"\x7fELF pretend").unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.dir_mode("tmp", 0o1777).unwrap();
        // Lengths 0..=4 cover every padding case.
        for n in 0..5 {
            a.file(&format!("etc/pad{n}"), 0o644, &vec![b'x'; n])
                .unwrap();
        }
        a.file("/init", 0o755, b"#!/bin/sh\n").unwrap();
        a.finish().unwrap()
    }

    #[test]
    fn entries_read_back_with_parents_first() {
        let bytes = sample();
        let entries = read_all(&bytes[..]).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "tmp",
                "etc",
                "etc/pad0",
                "etc/pad1",
                "etc/pad2",
                "etc/pad3",
                "etc/pad4",
                "init"
            ]
        );
        let by = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(by("bin/busybox").data, b"\x7fELF pretend");
        assert_eq!(by("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(by("bin/sh").data, b"busybox");
        assert_eq!(by("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(by("dev/console").rdev, (5, 1));
        assert_eq!(by("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(by("tmp").mode, S_IFDIR | 0o1777);
        assert_eq!(by("etc/pad3").data, b"xxx");
        // newc: every header and every file body starts 4-byte aligned.
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("SKIP: cpio not installed");
            return;
        }
        let bytes = sample();
        let mut child = Command::new("cpio")
            .args(["-i", "-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        let line = |name: &str| {
            listing
                .lines()
                .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"))
                .to_string()
        };
        assert!(line("bin/busybox").starts_with("-rwxr-xr-x"), "{listing}");
        assert!(line("bin/sh").starts_with('l') && line("bin/sh").ends_with("-> busybox"));
        assert!(line("dev/console").starts_with("crw-------"), "{listing}");
        assert!(line("tmp").starts_with("drwxrwxrwt"), "{listing}");
        assert!(line("init").contains(" 10 "), "size of init: {listing}");
    }

    #[test]
    fn duplicates_and_bad_paths_are_refused() {
        let mut a = Archive::new(Vec::new(), 0);
        a.file("etc/x", 0o644, b"1").unwrap();
        assert!(a.file("etc/x", 0o644, b"2").is_err());
        assert!(a.symlink("etc", "elsewhere").is_err());
        assert!(a.file("etc/../x", 0o644, b"").is_err());
        assert!(a.file("", 0o644, b"").is_err());
        // A directory twice is fine.
        a.dir("etc").unwrap();
    }

    #[test]
    fn same_inputs_same_bytes() {
        assert_eq!(sample(), sample());
    }
}
