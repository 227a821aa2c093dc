//! The persisted bitmap of chunks known to be on the target, durable.
//!
//! ```text
//! magic "RCRESUM1" | image root [32] | target size u64 | chunk count u64
//! | bitmap (one bit per chunk, LSB first) | BLAKE3 of everything before [32]
//! ```
//!
//! A bit is set only after the chunk's writes completed *and* a later
//! fdatasync returned, so a set bit is a promise that survives power loss.
//! A failed fdatasync breaks every promise about the disk: the writer then
//! removes this file (or, failing that, saves it empty) and sets no bit
//! again, because Linux may have dropped the unwritten pages and a later
//! fdatasync succeeds without them.
//! The file is replaced atomically (write, fsync, rename, fsync the
//! directory). It is keyed by the image root and the target size: a state
//! written for a different image or disk is ignored, never trusted.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Result, WriterError};

const MAGIC: &[u8; 8] = b"RCRESUM1";

/// The completed-chunk bitmap and where it lives.
#[derive(Debug)]
pub(crate) struct ResumeState {
    path: PathBuf,
    root: [u8; 32],
    target_size: u64,
    count: u64,
    bits: Vec<u8>,
}

impl ResumeState {
    /// Loads the state at `path` if it belongs to this image and target;
    /// otherwise an empty one. The flag says whether it was loaded.
    pub fn load_or_new(
        path: &Path,
        root: [u8; 32],
        target_size: u64,
        count: u64,
    ) -> (ResumeState, bool) {
        let mut s = ResumeState {
            path: path.to_path_buf(),
            root,
            target_size,
            count,
            bits: vec![0; count.div_ceil(8) as usize],
        };
        let loaded = match std::fs::read(path) {
            Ok(b) => s.parse(&b),
            Err(_) => false,
        };
        (s, loaded)
    }

    fn parse(&mut self, b: &[u8]) -> bool {
        let want = 8 + 32 + 8 + 8 + self.bits.len() + 32;
        if b.len() != want || &b[..8] != MAGIC {
            return false;
        }
        let (body, sum) = b.split_at(want - 32);
        if blake3::hash(body).as_bytes() != sum
            || body[8..40] != self.root
            || body[40..48] != self.target_size.to_le_bytes()
            || body[48..56] != self.count.to_le_bytes()
        {
            return false;
        }
        self.bits.copy_from_slice(&body[56..]);
        true
    }

    /// Whether chunk `i` is durable on the target.
    pub fn is_set(&self, i: u64) -> bool {
        self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Marks chunk `i` durable (persisted by the next [`ResumeState::save`]).
    pub fn set(&mut self, i: u64) {
        self.bits[(i / 8) as usize] |= 1 << (i % 8);
    }

    /// Unmarks chunk `i` (persisted by the next [`ResumeState::save`]).
    pub fn clear(&mut self, i: u64) {
        self.bits[(i / 8) as usize] &= !(1 << (i % 8));
    }

    /// Unmarks every chunk.
    pub fn clear_all(&mut self) {
        self.bits.fill(0);
    }

    /// Where the state lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the state file atomically.
    pub fn save(&self) -> Result<()> {
        let mut body = Vec::with_capacity(56 + self.bits.len() + 32);
        body.extend_from_slice(MAGIC);
        body.extend_from_slice(&self.root);
        body.extend_from_slice(&self.target_size.to_le_bytes());
        body.extend_from_slice(&self.count.to_le_bytes());
        body.extend_from_slice(&self.bits);
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let io = |what, e| WriterError::io(what, &tmp, e);
        let mut f = File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&body).map_err(|e| io("writing", e))?;
        f.sync_data().map_err(|e| io("flushing", e))?;
        std::fs::rename(&tmp, &self.path)
            .map_err(|e| WriterError::io("renaming", &self.path, e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| WriterError::io("flushing", dir, e))?;
        }
        Ok(())
    }

    /// Deletes the state file (after a complete, flushed restore).
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(WriterError::io("removing", &self.path, e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_round_trips_and_damaged_or_foreign_state_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.resume");
        let (mut s, loaded) = ResumeState::load_or_new(&path, [7; 32], 1 << 20, 20);
        assert!(!loaded);
        for i in [0, 9, 19] {
            s.set(i);
        }
        s.clear(9);
        s.save().unwrap();
        let (s2, loaded) = ResumeState::load_or_new(&path, [7; 32], 1 << 20, 20);
        assert!(loaded);
        let set: Vec<u64> = (0..20).filter(|&i| s2.is_set(i)).collect();
        assert_eq!(set, vec![0, 19]);
        // Another image, another target size, a damaged file: start afresh.
        assert!(!ResumeState::load_or_new(&path, [8; 32], 1 << 20, 20).1);
        assert!(!ResumeState::load_or_new(&path, [7; 32], 2 << 20, 20).1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[60] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(!ResumeState::load_or_new(&path, [7; 32], 1 << 20, 20).1);
        s.remove().unwrap();
        assert!(!path.exists());
    }
}
