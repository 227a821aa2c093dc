//! The image file as a capture writes it: bytes are staged in aligned buffers
//! and written behind by a thread of their own, with O_DIRECT where the file
//! system allows it.
//!
//! A buffered write costs a core the copy into the page cache and the
//! writeback work behind it (a quarter of a capture's CPU on mixed input, by
//! `perf`); O_DIRECT hands the staged buffer to the disk instead, so the cores
//! stay on compression and the disk works at the same time. Where O_DIRECT is
//! refused (tmpfs, some network file systems) the same thread writes through
//! the page cache and syncs what it wrote every [`SYNC_EVERY`] bytes, so the
//! final flush only waits for the tail.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::error::{ImageError, Result};

/// Offset, length and memory alignment used for O_DIRECT: 4 KiB satisfies
/// every logical block size in use (512 and 4096).
const ALIGN: usize = 4096;
/// Size of one staged write.
const STAGE: usize = 8 << 20;
/// Buffered fallback: sync after this many bytes.
const SYNC_EVERY: u64 = 64 << 20;
/// Staged buffers in circulation: one filling, the others being written.
const BUFFERS: usize = 3;

/// A heap buffer whose usable part starts at an [`ALIGN`] boundary.
struct Staged {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Staged {
    fn new() -> Staged {
        let mem = vec![0u8; STAGE + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Staged { mem, start, len: 0 }
    }

    fn room(&self) -> usize {
        STAGE - self.len
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = self.start + self.len;
        self.mem[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The filled part, padded with whatever the buffer held to `len`.
    fn bytes(&self, len: usize) -> &[u8] {
        &self.mem[self.start..self.start + len]
    }
}

struct Write {
    offset: u64,
    buf: Staged,
    /// Bytes to write: the staged length, rounded up to [`ALIGN`] for O_DIRECT.
    len: usize,
}

/// Sequential writer of one new file.
pub(crate) struct OutFile {
    path: PathBuf,
    file: File,
    direct: bool,
    cur: Staged,
    /// File offset of `cur`'s first byte.
    cur_at: u64,
    to_writer: Option<Sender<Write>>,
    free: Receiver<Staged>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
}

impl OutFile {
    /// Creates (truncates) `path`.
    pub(crate) fn create(path: &Path) -> Result<OutFile> {
        let file = File::create(path).map_err(|e| ImageError::io("creating", path, e))?;
        let direct_fd = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        let direct = direct_fd.is_some();
        let wfile = match direct_fd {
            Some(f) => f,
            None => file
                .try_clone()
                .map_err(|e| ImageError::io("opening", path, e))?,
        };
        let (to_writer, jobs) = bounded::<Write>(BUFFERS);
        let (free_tx, free) = bounded::<Staged>(BUFFERS);
        for _ in 1..BUFFERS {
            free_tx.send(Staged::new()).expect("pool has room");
        }
        let writer = std::thread::Builder::new()
            .name("image-write".into())
            .spawn(move || write_behind(&wfile, direct, &jobs, &free_tx))
            .map_err(|e| ImageError::io("starting the writer for", path, e))?;
        Ok(OutFile {
            path: path.to_path_buf(),
            file,
            direct,
            cur: Staged::new(),
            cur_at: 0,
            to_writer: Some(to_writer),
            free,
            writer: Some(writer),
        })
    }

    /// Appends `bytes`.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(self.cur.room());
            self.cur.push(&bytes[..n]);
            bytes = &bytes[n..];
            if self.cur.room() == 0 {
                self.hand_off()?;
            }
        }
        Ok(())
    }

    /// Sends the full staged buffer to the writer and takes a free one.
    fn hand_off(&mut self) -> Result<()> {
        let next = match self.free.recv() {
            Ok(b) => b,
            Err(_) => return Err(self.writer_error()),
        };
        let buf = std::mem::replace(&mut self.cur, next);
        self.cur.len = 0;
        let len = buf.len;
        let w = Write {
            offset: self.cur_at,
            buf,
            len,
        };
        self.cur_at += len as u64;
        let sent = self.to_writer.as_ref().map(|tx| tx.send(w).is_ok());
        if sent != Some(true) {
            return Err(self.writer_error());
        }
        Ok(())
    }

    /// Writes the tail, waits for the writer, cuts the file to its exact
    /// length and makes it durable.
    pub(crate) fn finish(mut self) -> Result<()> {
        let total = self.cur_at + self.cur.len as u64;
        let mut tail = std::mem::replace(
            &mut self.cur,
            Staged {
                mem: Vec::new(),
                start: 0,
                len: 0,
            },
        );
        let len = if self.direct {
            // O_DIRECT writes whole blocks; the padding is cut off below.
            let padded = tail.len.div_ceil(ALIGN) * ALIGN;
            let end = tail.start + padded;
            tail.mem[tail.start + tail.len..end].fill(0);
            padded
        } else {
            tail.len
        };
        if len > 0 {
            let w = Write {
                offset: self.cur_at,
                buf: tail,
                len,
            };
            let sent = self.to_writer.as_ref().map(|tx| tx.send(w).is_ok());
            if sent != Some(true) {
                return Err(self.writer_error());
            }
        }
        drop(self.to_writer.take());
        if let Some(h) = self.writer.take() {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ImageError::io("writing", &self.path, e)),
                Err(_) => return Err(self.thread_died()),
            }
        }
        self.file
            .set_len(total)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| ImageError::io("writing", &self.path, e))
    }

    /// The writer stopped early: its error.
    fn writer_error(&mut self) -> ImageError {
        drop(self.to_writer.take());
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(Err(e))) => ImageError::io("writing", &self.path, e),
            _ => self.thread_died(),
        }
    }

    fn thread_died(&self) -> ImageError {
        ImageError::io(
            "writing",
            &self.path,
            std::io::Error::other("the image writer thread stopped"),
        )
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        drop(self.to_writer.take());
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

fn write_behind(
    file: &File,
    direct: bool,
    jobs: &Receiver<Write>,
    free: &Sender<Staged>,
) -> std::io::Result<()> {
    let mut unsynced = 0u64;
    for w in jobs {
        file.write_all_at(w.buf.bytes(w.len), w.offset)?;
        if !direct {
            unsynced += w.len as u64;
            if unsynced >= SYNC_EVERY {
                file.sync_data()?;
                unsynced = 0;
            }
        }
        // The last buffer has nowhere to go: fine.
        let _ = free.send(w.buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_exact_bytes_across_stage_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut expect = Vec::new();
        let mut out = OutFile::create(&path).unwrap();
        // Odd sizes so that stage boundaries fall inside writes.
        for (i, n) in [1usize, 4095, 4097, STAGE - 3, 7, STAGE + 11, 12345]
            .into_iter()
            .enumerate()
        {
            let chunk: Vec<u8> = (0..n).map(|j| (i * 31 + j % 251) as u8).collect();
            out.write_all(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
        }
        out.finish().unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect, "file content differs from what was written");
    }

    #[test]
    fn empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        OutFile::create(&path).unwrap().finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
