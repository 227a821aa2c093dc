//! The console PIN: read once at start from `menu_pin_file` (default
//! `DATA/console.pin`), which must be readable by its owner only.

use std::os::unix::fs::PermissionsExt;

use crate::{ServerConfig, ServerError};

/// The PIN's file name in the data directory.
pub(crate) const FILE: &str = "console.pin";

/// The PIN, or `None` when no file is configured and `DATA/console.pin`
/// does not exist. A configured file that is missing, readable by others,
/// or not 4 to 64 characters without spaces is an error: a console that
/// silently took no PIN, or a world-readable one, is worse than none.
pub(crate) fn load(cfg: &ServerConfig) -> Result<Option<String>, ServerError> {
    let path = match &cfg.menu_pin_file {
        Some(p) => p.clone(),
        None => {
            let p = cfg.data.join(FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let bad = |why: String| ServerError::Config(format!("menu_pin_file {}: {why}", path.display()));
    let meta = std::fs::metadata(&path).map_err(|e| bad(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(bad(format!(
            "mode {:o} lets others read it: chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let pin = text.trim_end_matches(['\n', '\r']);
    if !(4..=64).contains(&pin.chars().count()) || pin.chars().any(char::is_whitespace) {
        return Err(bad(
            "the PIN must be 4 to 64 characters without spaces".into()
        ));
    }
    Ok(Some(pin.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_file_must_be_private_and_sane() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path().to_path_buf());
        assert_eq!(load(&cfg).unwrap(), None);
        let p = dir.path().join(FILE);
        std::fs::write(&p, "2468\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(load(&cfg).unwrap().as_deref(), Some("2468"));
        std::fs::write(&p, "12 34\n").unwrap();
        assert!(load(&cfg).unwrap_err().to_string().contains("4 to 64"));
        cfg.menu_pin_file = Some(dir.path().join("missing"));
        assert!(load(&cfg).is_err());
    }
}
