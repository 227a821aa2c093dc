//! Tokens: an operator token and an agent enrollment token in the data
//! directory (created on first start, mode 0600), and a per-boot token
//! issued to each agent at registration (only its hash is kept).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::{HeaderMap, StatusCode};

use super::ApiErr;
use rackcast_engine::image::hex;

/// Reads the token in `path` (narrowing a wider mode to 0600), or writes a
/// new random one there.
pub(crate) fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    super::datadir::restrict(path, 0o600)?;
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = random_token()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    Ok(token)
}

/// The 32-byte key in `path` (hex), or a new random one written there.
pub(crate) fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    let text = load_or_create_token(path)?;
    rackcast_engine::image::from_hex(&text)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not 64 hex digits: delete it to make a new key (outstanding boot tokens stop working)",
            )
        })
}

/// 32 random bytes as hex.
pub(crate) fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(std::io::Error::other)?;
    Ok(hex(&b))
}

/// The hash kept for a boot token.
pub(crate) fn token_hash(token: &str) -> String {
    hex(blake3::hash(token.as_bytes()).as_bytes())
}

/// The bearer token of a request.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiErr> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiErr(
                StatusCode::UNAUTHORIZED,
                "missing Authorization: Bearer TOKEN".into(),
            )
        })
}

/// Refuses a request whose bearer token is not `want`. Hashes are compared,
/// so the comparison takes the same time wherever the tokens differ.
pub(crate) fn require(headers: &HeaderMap, want: &str, what: &str) -> Result<(), ApiErr> {
    let got = bearer(headers)?;
    if blake3::hash(got.as_bytes()) == blake3::hash(want.as_bytes()) {
        Ok(())
    } else {
        Err(ApiErr(
            StatusCode::UNAUTHORIZED,
            format!("wrong {what} token"),
        ))
    }
}
