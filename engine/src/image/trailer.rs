//! The fixed trailer at the end of every image file: where the index is, the
//! image root and the optional signature.
//!
//! ```text
//! 0    8  magic "RCTRAIL\0"
//! 8    2  format version (u16 LE)
//! 10   2  flags: bit 0 = signed
//! 12   4  reserved, 0
//! 16   8  index byte offset
//! 24   8  index length
//! 32  32  image root: BLAKE3 over the index bytes (metadata included)
//! 64  64  Ed25519 signature over "rackcast image root v1\0" || root (0 if unsigned)
//! 128 32  the signer's public key (0 if unsigned)
//! 160  8  checksum: BLAKE3(bytes 0..160)[..8]
//! ```
//!
//! A file that does not end in a valid trailer is an unfinished capture.

use super::error::{ImageError, Result};
use super::wire::{checksum8, Cursor, Put};
use super::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};

/// Magic at the start of the trailer.
pub const TRAILER_MAGIC: [u8; 8] = *b"RCTRAIL\0";
/// Length of the trailer.
pub const TRAILER_LEN: usize = 168;

const FLAG_SIGNED: u16 = 1;

/// An Ed25519 signature over the image root and the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootSignature {
    /// The signature bytes.
    pub signature: [u8; 64],
    /// The signer's public key, as recorded by the signer (informational:
    /// verification uses the key the operator trusts).
    pub public_key: [u8; 32],
}

/// The decoded trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The format version it is encoded in (an older image keeps its own,
    /// also when it is signed later).
    pub version: u16,
    /// Byte offset of the index in the image file.
    pub index_offset: u64,
    /// Length of the index in bytes.
    pub index_len: u64,
    /// BLAKE3 over the index bytes.
    pub root: [u8; 32],
    /// Signature over the root, when the image is signed.
    pub signature: Option<RootSignature>,
}

impl Trailer {
    /// Encodes the trailer.
    pub fn emit(&self) -> [u8; TRAILER_LEN] {
        let mut v = Vec::with_capacity(TRAILER_LEN);
        v.put(&TRAILER_MAGIC);
        v.put_u16(self.version);
        v.put_u16(if self.signature.is_some() {
            FLAG_SIGNED
        } else {
            0
        });
        v.put_u32(0);
        v.put_u64(self.index_offset);
        v.put_u64(self.index_len);
        v.put(&self.root);
        match &self.signature {
            Some(s) => {
                v.put(&s.signature);
                v.put(&s.public_key);
            }
            None => v.put(&[0u8; 96]),
        }
        let sum = checksum8(&v);
        v.put(&sum);
        let mut out = [0u8; TRAILER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Decodes and checks a trailer found at byte `offset` of the file.
    pub fn parse(buf: &[u8; TRAILER_LEN], offset: u64) -> Result<Trailer> {
        let mut c = Cursor::new(buf);
        let short = |_| ImageError::Truncated {
            detail: "trailer".into(),
        };
        let magic: [u8; 8] = c.array().map_err(short)?;
        if magic != TRAILER_MAGIC {
            return Err(ImageError::Truncated {
                detail: format!(
                    "no trailer at byte offset {offset} (found {magic:02x?}): the file is cut short or the capture never finished"
                ),
            });
        }
        let version = c.u16().map_err(short)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ImageError::UnsupportedVersion {
                part: "trailer",
                found: version,
                supported: FORMAT_VERSION,
                offset: offset + 8,
            });
        }
        if checksum8(&buf[..160]) != buf[160..] {
            return Err(ImageError::CorruptStructure {
                part: "trailer",
                offset,
                detail: "trailer checksum does not match".into(),
            });
        }
        let flags = c.u16().map_err(short)?;
        let reserved = c.u32().map_err(short)?;
        let index_offset = c.u64().map_err(short)?;
        let index_len = c.u64().map_err(short)?;
        let root = c.array().map_err(short)?;
        let signature: [u8; 64] = c.array().map_err(short)?;
        let public_key: [u8; 32] = c.array().map_err(short)?;
        let unsigned_with_bytes =
            flags & FLAG_SIGNED == 0 && (signature != [0; 64] || public_key != [0; 32]);
        if reserved != 0 || unsigned_with_bytes {
            return Err(ImageError::CorruptStructure {
                part: "trailer",
                offset,
                detail: "reserved or unused trailer bytes are not zero".into(),
            });
        }
        if flags & !FLAG_SIGNED != 0 {
            return Err(ImageError::CorruptStructure {
                part: "trailer",
                offset: offset + 10,
                detail: format!("unknown trailer flags {flags:#x}"),
            });
        }
        let signature = (flags & FLAG_SIGNED != 0).then_some(RootSignature {
            signature,
            public_key,
        });
        Ok(Trailer {
            version,
            index_offset,
            index_len,
            root,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flips() {
        let t = Trailer {
            version: FORMAT_VERSION,
            index_offset: 4096,
            index_len: 777,
            root: [7; 32],
            signature: Some(RootSignature {
                signature: [1; 64],
                public_key: [2; 32],
            }),
        };
        let good = t.emit();
        assert_eq!(Trailer::parse(&good, 0).unwrap(), t);
        for i in 0..TRAILER_LEN {
            let mut bad = good;
            bad[i] ^= 0x80;
            assert!(Trailer::parse(&bad, 0).is_err(), "flip at {i} not caught");
        }
    }
}
