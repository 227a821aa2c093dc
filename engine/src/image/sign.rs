//! Ed25519 signing of the image root.
//!
//! Key files are one line of text so that operators can read, copy and diff
//! them: `rackcast-ed25519-secret <64 hex digits>` for the secret seed and
//! `rackcast-ed25519-public <64 hex digits>` for the public key.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::error::{ImageError, Result};
use super::trailer::{RootSignature, Trailer, TRAILER_LEN};
use super::{from_hex, hex};

const SECRET_TAG: &str = "rackcast-ed25519-secret";
const PUBLIC_TAG: &str = "rackcast-ed25519-public";
/// Domain separation: a signature over an image root can never be mistaken for
/// a signature over anything else.
const CONTEXT: &[u8] = b"rackcast image root v1\0";

/// A signing key loaded from a secret key file.
#[derive(Debug)]
pub struct ImageSigner {
    key: SigningKey,
}

impl ImageSigner {
    /// Creates a new random key pair and writes `path` (secret, mode 0600)
    /// and `path.pub` (public). Refuses to overwrite either.
    pub fn generate(path: &Path) -> Result<(ImageSigner, std::path::PathBuf)> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            ImageError::io(
                "gathering randomness for",
                path,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let key = SigningKey::from_bytes(&seed);
        let pub_path = public_path(path);
        for p in [path, pub_path.as_path()] {
            if p.exists() {
                return Err(ImageError::Key {
                    path: p.to_path_buf(),
                    detail: "already exists; refusing to overwrite a key".into(),
                });
            }
        }
        write_private(path, &format!("{SECRET_TAG} {}\n", hex(&seed)))?;
        std::fs::write(
            &pub_path,
            format!("{PUBLIC_TAG} {}\n", hex(key.verifying_key().as_bytes())),
        )
        .map_err(|e| ImageError::io("writing", &pub_path, e))?;
        Ok((ImageSigner { key }, pub_path))
    }

    /// Loads a secret key file.
    pub fn load(path: &Path) -> Result<ImageSigner> {
        let seed = read_key(path, SECRET_TAG)?;
        Ok(ImageSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The public half.
    pub fn public_key(&self) -> [u8; 32] {
        *self.key.verifying_key().as_bytes()
    }

    /// Signs an image root.
    pub fn sign_root(&self, root: &[u8; 32]) -> RootSignature {
        let sig = self.key.sign(&message(root));
        RootSignature {
            signature: sig.to_bytes(),
            public_key: self.public_key(),
        }
    }
}

/// A public key the operator trusts, loaded from a `.pub` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedKey(pub [u8; 32]);

impl TrustedKey {
    /// Loads a public key file.
    pub fn load(path: &Path) -> Result<TrustedKey> {
        Ok(TrustedKey(read_key(path, PUBLIC_TAG)?))
    }

    /// Checks `sig` over `root` with this key.
    pub fn verify(&self, root: &[u8; 32], sig: Option<&RootSignature>) -> Result<()> {
        let sig = sig.ok_or_else(|| {
            ImageError::Signature("the image is not signed but a key was given".into())
        })?;
        let key = VerifyingKey::from_bytes(&self.0)
            .map_err(|e| ImageError::Signature(format!("the trusted key is not valid: {e}")))?;
        key.verify(&message(root), &Signature::from_bytes(&sig.signature))
            .map_err(|_| {
                ImageError::Signature(format!(
                    "the signature over root {} does not verify with key {} (signed by {})",
                    hex(root),
                    hex(&self.0),
                    hex(&sig.public_key)
                ))
            })
    }
}

/// Signs the image at `path` in place: its trailer (the last
/// [`TRAILER_LEN`] bytes, which always have room for a signature) gets
/// `signer`'s signature over the root it records, replacing any earlier
/// one. Nothing else in the file changes, so the root stays what it was.
/// The caller verifies the image first; this only reads the trailer.
pub fn sign_file(path: &Path, signer: &ImageSigner) -> Result<RootSignature> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io("opening", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| ImageError::io("reading the size of", path, e))?
        .len();
    let at = len
        .checked_sub(TRAILER_LEN as u64)
        .ok_or_else(|| ImageError::io("signing", path, std::io::ErrorKind::UnexpectedEof.into()))?;
    let mut buf = [0u8; TRAILER_LEN];
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| ImageError::io("reading the trailer of", path, e))?;
    let mut trailer = Trailer::parse(&buf, at)?;
    let sig = signer.sign_root(&trailer.root);
    trailer.signature = Some(sig);
    f.seek(SeekFrom::Start(at))
        .and_then(|_| f.write_all(&trailer.emit()))
        .and_then(|_| f.sync_all())
        .map_err(|e| ImageError::io("writing the trailer of", path, e))?;
    Ok(sig)
}

/// `key` -> `key.pub`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    s.into()
}

fn message(root: &[u8; 32]) -> Vec<u8> {
    [CONTEXT, root.as_slice()].concat()
}

fn read_key(path: &Path, tag: &str) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).map_err(|e| ImageError::io("reading", path, e))?;
    let bad = |detail: String| ImageError::Key {
        path: path.to_path_buf(),
        detail,
    };
    let mut parts = text.split_whitespace();
    let found_tag = parts.next().unwrap_or("");
    if found_tag != tag {
        let hint = if found_tag == SECRET_TAG || found_tag == PUBLIC_TAG {
            format!(" (this is a `{found_tag}` file)")
        } else {
            String::new()
        };
        return Err(bad(format!("expected a `{tag}` key file{hint}")));
    }
    let hexs = parts.next().unwrap_or("");
    let bytes = from_hex(hexs).ok_or_else(|| bad("the key is not valid hex".into()))?;
    bytes
        .try_into()
        .map_err(|_| bad("the key is not 32 bytes".into()))
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ImageError::io("creating", path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| ImageError::io("writing", path, e))
}
