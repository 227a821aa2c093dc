//! The read-only file tree served by TFTP and HTTP: path safety and a shared
//! cache of `Bytes`, so a thousand clients of one boot file share one buffer.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
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
}

#[derive(Debug, Default)]
struct Cache {
    bytes: u64,
    files: HashMap<PathBuf, (SystemTime, u64, Bytes)>,
}

impl FileTree {
    /// Serves `root` (canonicalised now, so later checks compare real paths).
    pub fn new(root: &Path, policy: Arc<dyn BootPolicy>) -> Result<Self> {
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        Ok(FileTree {
            root,
            policy,
            cache: Arc::default(),
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
        if let Ok(cache) = self.cache.lock() {
            if let Some((m, l, b)) = cache.files.get(&path) {
                if *m == mtime && *l == len {
                    return Ok(b.clone());
                }
            }
        }
        let bytes = Bytes::from(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        if len <= MAX_CACHED_FILE {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.bytes + len > MAX_CACHE_BYTES {
                    cache.files.clear();
                    cache.bytes = 0;
                }
                cache.bytes += len;
                cache.files.insert(path, (mtime, len, bytes.clone()));
            }
        }
        Ok(bytes)
    }

    /// The policy these files come with.
    pub fn policy(&self) -> &Arc<dyn BootPolicy> {
        &self.policy
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
