//! The fixed 64-byte header at the start of every image file.
//!
//! ```text
//! 0   8  magic "RCIMAGE\0"
//! 8   2  format version (u16 LE)
//! 10  2  flags (reserved, 0)
//! 12  4  chunk size in bytes (power of two)
//! 16  8  source size in bytes
//! 24 32  reserved, 0
//! 56  8  checksum: BLAKE3(bytes 0..56)[..8]
//! ```

use super::error::{ImageError, Result};
use super::wire::{checksum8, Cursor, Put};
use super::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};

/// Magic at byte 0 of an image.
pub const HEADER_MAGIC: [u8; 8] = *b"RCIMAGE\0";
/// Length of the header; chunk frames start right after it.
pub const HEADER_LEN: usize = 64;

/// The image header: enough to recognise an image and size its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Logical chunk size in bytes.
    pub chunk_size: u32,
    /// Size of the captured source in bytes.
    pub source_size: u64,
}

impl Header {
    /// Encodes the header into its 64 bytes.
    pub fn emit(&self) -> [u8; HEADER_LEN] {
        let mut v = Vec::with_capacity(HEADER_LEN);
        v.put(&HEADER_MAGIC);
        v.put_u16(self.version);
        v.put_u16(0);
        v.put_u32(self.chunk_size);
        v.put_u64(self.source_size);
        v.put(&[0u8; 32]);
        let sum = checksum8(&v);
        v.put(&sum);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Decodes and checks a header (magic, version, checksum, chunk size).
    pub fn parse(buf: &[u8]) -> Result<Header> {
        if buf.len() < HEADER_LEN {
            return Err(ImageError::Truncated {
                detail: format!(
                    "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
                    buf.len()
                ),
            });
        }
        let mut c = Cursor::new(&buf[..HEADER_LEN]);
        let short = |_| ImageError::Truncated {
            detail: "header".into(),
        };
        let magic: [u8; 8] = c.array().map_err(short)?;
        if magic != HEADER_MAGIC {
            return Err(ImageError::BadMagic {
                offset: 0,
                found: magic.to_vec(),
            });
        }
        let version = c.u16().map_err(short)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(ImageError::UnsupportedVersion {
                part: "header",
                found: version,
                supported: FORMAT_VERSION,
                offset: 8,
            });
        }
        let sum = checksum8(&buf[..56]);
        if sum != buf[56..64] {
            return Err(ImageError::CorruptStructure {
                part: "header",
                offset: 0,
                detail: "header checksum does not match".into(),
            });
        }
        let flags = c.u16().map_err(short)?;
        let chunk_size = c.u32().map_err(short)?;
        let source_size = c.u64().map_err(short)?;
        if flags != 0 || buf[24..56].iter().any(|&b| b != 0) {
            return Err(ImageError::CorruptStructure {
                part: "header",
                offset: 10,
                detail: "reserved header bytes are not zero".into(),
            });
        }
        super::check_chunk_size(chunk_size as u64).map_err(|e| ImageError::CorruptStructure {
            part: "header",
            offset: 12,
            detail: e.to_string(),
        })?;
        Ok(Header {
            version,
            chunk_size,
            source_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let h = Header {
            version: FORMAT_VERSION,
            chunk_size: 1 << 22,
            source_size: 12345,
        };
        assert_eq!(Header::parse(&h.emit()).unwrap(), h);
    }

    #[test]
    fn every_byte_flip_is_caught() {
        let h = Header {
            version: FORMAT_VERSION,
            chunk_size: 1 << 20,
            source_size: 1 << 30,
        };
        let good = h.emit();
        for i in 0..HEADER_LEN {
            let mut bad = good;
            bad[i] ^= 0x01;
            assert!(Header::parse(&bad).is_err(), "flip at {i} not caught");
        }
    }
}
