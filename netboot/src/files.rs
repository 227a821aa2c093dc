//! The read-only file tree served by TFTP and HTTP: path safety and a shared
//! cache of `Bytes`, so a thousand clients of one boot file share one buffer.
//!
//! A file is read once however many requests for it arrive together: reads
//! of uncached files take turns, and each looks in the cache again first.
//! Files too large to cache are shared too while any transfer holds them
//! (the cache keeps a weak reference), so concurrent transfers of a large
//! file hold one copy, not one each.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::policy::BootPolicy;

/// Files larger than this are read per transfer instead of cached.
const MAX_CACHED_FILE: u64 = 512 * 1024 * 1024;
/// The cache is cleared when it would grow past this.
const MAX_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// A served root directory plus the policy's virtual files.
#[derive(Debug, Clone)]
pub struct FileTree {
    root: PathBuf,
    policy: Arc<dyn BootPolicy>,
    cache: Arc<Mutex<Cache>>,
    /// Held while an uncached file is read, so that a burst of requests for
    /// it reads it once.
    loading: Arc<Mutex<()>>,
}

#[derive(Debug, Default)]
struct Cache {
    bytes: u64,
    files: HashMap<PathBuf, (SystemTime, u64, Bytes)>,
    /// Files over [`MAX_CACHED_FILE`] that some transfer still holds.
    large: HashMap<PathBuf, (SystemTime, u64, Weak<Vec<u8>>)>,
}

/// A large file's content, shared by the `Bytes` of every transfer of it.
struct SharedFile(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Cache {
    fn get(&self, path: &Path, mtime: SystemTime, len: u64) -> Option<Bytes> {
        if let Some((m, l, b)) = self.files.get(path) {
            if *m == mtime && *l == len {
                return Some(b.clone());
            }
        }
        let (m, l, w) = self.large.get(path)?;
        let arc = w.upgrade().filter(|_| *m == mtime && *l == len)?;
        Some(Bytes::from_owner(SharedFile(arc)))
    }
}

impl FileTree {
    /// Serves `root` (canonicalised now, so later checks compare real paths).
    pub fn new(root: &Path, policy: Arc<dyn BootPolicy>) -> Result<Self> {
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        Ok(FileTree {
            root,
            policy,
            cache: Arc::default(),
            loading: Arc::default(),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a client-supplied name to a real path under the root.
    ///
    /// Refuses `..`, absolute names, backslashes (Windows-style clients would
    /// otherwise smuggle separators) and symlinks that lead out of the root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let rel = check_name(name)?;
        let joined = self.root.join(rel);
        let real = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(name.into()))
            }
            Err(e) => return Err(Error::io(joined, e)),
        };
        if !real.starts_with(&self.root) {
            return Err(Error::PathRefused(name.into()));
        }
        if !real.is_file() {
            return Err(Error::NotFound(name.into()));
        }
        Ok(real)
    }

    /// The whole content of `name`: a virtual file, or a (cached) real one.
    pub fn read(&self, name: &str) -> Result<Bytes> {
        check_name(name)?;
        if let Some(b) = self.policy.virtual_file(name) {
            return Ok(b);
        }
        let path = self.resolve(name)?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let len = meta.len();
        let cached = || self.lock_cache().get(&path, mtime, len);
        if let Some(b) = cached() {
            return Ok(b);
        }
        let _turn = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        // Whoever held the turn before may have read this very file.
        if let Some(b) = cached() {
            return Ok(b);
        }
        let content = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut cache = self.lock_cache();
        if len <= MAX_CACHED_FILE {
            let bytes = Bytes::from(content);
            if cache.bytes + len > MAX_CACHE_BYTES {
                cache.files.clear();
                cache.bytes = 0;
            }
            cache.bytes += len;
            cache.files.insert(path, (mtime, len, bytes.clone()));
            Ok(bytes)
        } else {
            let arc = Arc::new(content);
            cache.large.retain(|_, (_, _, w)| w.strong_count() > 0);
            cache.large.insert(path, (mtime, len, Arc::downgrade(&arc)));
            Ok(Bytes::from_owner(SharedFile(arc)))
        }
    }

    /// The policy these files come with.
    pub fn policy(&self) -> &Arc<dyn BootPolicy> {
        &self.policy
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A cache left half-updated by a panic is still a valid cache.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Checks a client-supplied name is a plain relative path.
pub fn check_name(name: &str) -> Result<&Path> {
    let refuse = || Error::PathRefused(name.into());
    if name.is_empty() || name.contains('\\') || name.contains('\0') || name.starts_with('/') {
        return Err(refuse());
    }
    let p = Path::new(name);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => return Err(refuse()),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BootAction, StaticPolicy};

    fn tree() -> (tempfile::TempDir, tempfile::TempDir, FileTree) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"no").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/boot.efi"), b"efi").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape"))
            .unwrap();
        std::os::unix::fs::symlink("sub/boot.efi", dir.path().join("inside")).unwrap();
        let mut p = StaticPolicy::with_default(BootAction::Ignore);
        p.add_file("virtual.ipxe", Bytes::from_static(b"#!ipxe"));
        let t = FileTree::new(dir.path(), Arc::new(p)).unwrap();
        (outside, dir, t)
    }

    #[test]
    fn traversal_refused() {
        let (_o, _d, t) = tree();
        for bad in [
            "../secret",
            "sub/../../secret",
            "/etc/passwd",
            "sub\\boot.efi",
            "..\\secret",
            "escape",
            "",
            "..",
        ] {
            assert!(matches!(t.read(bad), Err(Error::PathRefused(_))), "{bad:?}");
        }
    }

    #[test]
    fn serves_files_symlinks_inside_and_virtual() {
        let (_o, _d, t) = tree();
        assert_eq!(&t.read("sub/boot.efi").unwrap()[..], b"efi");
        assert_eq!(&t.read("./sub/boot.efi").unwrap()[..], b"efi");
        assert_eq!(&t.read("inside").unwrap()[..], b"efi");
        assert_eq!(&t.read("virtual.ipxe").unwrap()[..], b"#!ipxe");
        assert!(matches!(t.read("missing"), Err(Error::NotFound(_))));
        assert!(matches!(t.read("sub"), Err(Error::NotFound(_))));
    }
}
