//! The data directory holds secrets (the tokens, the boot key, a database
//! of session hashes and job output, lease files): it is 0700 and those
//! files 0600. Wider modes found at start (an older server, a copy, a
//! hand-made directory) are narrowed with a warning.

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` and `dir/images` as 0700, or narrows them to 0700.
pub(crate) fn prepare(dir: &Path) -> io::Result<()> {
    for d in [dir.to_path_buf(), dir.join("images")] {
        DirBuilder::new().recursive(true).mode(0o700).create(&d)?;
        restrict(&d, 0o700)?;
    }
    Ok(())
}

/// Narrows `path` to `mode` when its group or others have any access to
/// it; a missing file is left missing.
pub(crate) fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let was = meta.permissions().mode() & 0o777;
    if was & 0o077 != 0 {
        tracing::warn!(
            "{} was mode {was:03o}: narrowed to {mode:03o}",
            path.display()
        );
        std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_wide_data_directory_is_narrowed_and_a_new_one_made_0700() {
        let t = tempfile::tempdir().unwrap();
        let new = t.path().join("new");
        prepare(&new).unwrap();
        assert_eq!(mode(&new), 0o700);
        assert_eq!(mode(&new.join("images")), 0o700);
        let old = t.path().join("old");
        std::fs::create_dir_all(old.join("images")).unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        std::fs::write(old.join("admin.token"), "x").unwrap();
        std::fs::set_permissions(old.join("admin.token"), Permissions::from_mode(0o644)).unwrap();
        prepare(&old).unwrap();
        restrict(&old.join("admin.token"), 0o600).unwrap();
        restrict(&old.join("missing"), 0o600).unwrap();
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("admin.token")), 0o600);
    }
}
