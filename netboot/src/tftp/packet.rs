//! TFTP wire format (RFC 1350, options per RFC 2347): a checked parse into a
//! borrowed view and an `emit` into a caller's buffer. Malformed input is an
//! error value, never a panic.

use crate::error::{Error, Result};

/// TFTP error codes (RFC 1350 section 5, RFC 2347 for 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// 0: see the message.
    NotDefined = 0,
    /// 1: file not found.
    FileNotFound = 1,
    /// 2: access violation.
    AccessViolation = 2,
    /// 3: disk full.
    DiskFull = 3,
    /// 4: illegal TFTP operation.
    IllegalOperation = 4,
    /// 5: unknown transfer ID.
    UnknownTid = 5,
    /// 6: file already exists.
    FileExists = 6,
    /// 7: no such user.
    NoSuchUser = 7,
    /// 8: option negotiation refused (OVMF sends it after its size probe).
    OptionRefused = 8,
}

/// One TFTP packet, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request.
    Rrq(Request<'a>),
    /// Write request (always refused: the server is read-only).
    Wrq(Request<'a>),
    /// A data block.
    Data {
        /// Block number on the wire (wraps past 65535).
        block: u16,
        /// Up to blksize bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of a block (0 acknowledges an OACK).
    Ack(u16),
    /// An error; ends the transfer.
    Error {
        /// Raw error code (peers send values outside [`ErrorCode`]).
        code: u16,
        /// Human-readable message.
        message: &'a str,
    },
    /// Option acknowledgement.
    Oack(Vec<(&'a str, &'a str)>),
}

/// A read or write request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// Requested file name as sent.
    pub filename: &'a str,
    /// Transfer mode (`octet`, `netascii`, `mail`), as sent.
    pub mode: &'a str,
    /// Options (RFC 2347) in the order sent; names as sent.
    pub options: Vec<(&'a str, &'a str)>,
}

/// Opcodes.
const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// At most this many options are read from a request; more is hostile.
const MAX_OPTIONS: usize = 16;

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        if buf.len() < 2 {
            return Err(Error::malformed("tftp", "shorter than an opcode"));
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let body = &buf[2..];
        match op {
            RRQ | WRQ => {
                let mut fields = cstrings(body)?;
                let filename = fields
                    .next()
                    .ok_or_else(|| Error::malformed("tftp", "request without file name"))?;
                let mode = fields
                    .next()
                    .ok_or_else(|| Error::malformed("tftp", "request without mode"))?;
                let options = pairs(fields)?;
                let req = Request {
                    filename,
                    mode,
                    options,
                };
                Ok(if op == RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            DATA => {
                let (block, data) = u16_then(body)?;
                Ok(Packet::Data { block, data })
            }
            ACK => {
                let (block, _) = u16_then(body)?;
                Ok(Packet::Ack(block))
            }
            ERROR => {
                let (code, rest) = u16_then(body)?;
                // Some clients omit the trailing NUL or send garbage: be lenient.
                let msg = rest.split(|&b| b == 0).next().unwrap_or(&[]);
                Ok(Packet::Error {
                    code,
                    message: std::str::from_utf8(msg).unwrap_or("<non-utf8>"),
                })
            }
            OACK => Ok(Packet::Oack(pairs(cstrings(body)?)?)),
            other => Err(Error::malformed("tftp", format!("unknown opcode {other}"))),
        }
    }

    /// Appends the wire form to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    RRQ
                } else {
                    WRQ
                };
                out.extend_from_slice(&op.to_be_bytes());
                for s in [r.filename, r.mode] {
                    out.extend_from_slice(s.as_bytes());
                    out.push(0);
                }
                emit_pairs(&r.options, out);
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&DATA.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack(block) => {
                out.extend_from_slice(&ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
                out.push(0);
            }
            Packet::Oack(opts) => {
                out.extend_from_slice(&OACK.to_be_bytes());
                emit_pairs(opts, out);
            }
        }
    }

    /// The wire form as a new vector (tests and cold paths).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }
}

/// An ERROR packet's bytes.
pub fn error_packet(code: ErrorCode, message: &str) -> Vec<u8> {
    Packet::Error {
        code: code as u16,
        message,
    }
    .to_vec()
}

fn u16_then(body: &[u8]) -> Result<(u16, &[u8])> {
    if body.len() < 2 {
        return Err(Error::malformed("tftp", "truncated block number"));
    }
    Ok((u16::from_be_bytes([body[0], body[1]]), &body[2..]))
}

/// NUL-terminated UTF-8 strings; the last one must be terminated.
fn cstrings(body: &[u8]) -> Result<impl Iterator<Item = &str>> {
    if !body.is_empty() && body.last() != Some(&0) {
        return Err(Error::malformed("tftp", "unterminated string"));
    }
    let body = body.strip_suffix(&[0]).unwrap_or(body);
    let mut v = Vec::new();
    if !body.is_empty() {
        for part in body.split(|&b| b == 0) {
            if v.len() > 2 + 2 * MAX_OPTIONS {
                return Err(Error::malformed("tftp", "too many options"));
            }
            v.push(
                std::str::from_utf8(part)
                    .map_err(|_| Error::malformed("tftp", "non-UTF-8 string"))?,
            );
        }
    }
    Ok(v.into_iter())
}

fn pairs<'a>(mut it: impl Iterator<Item = &'a str>) -> Result<Vec<(&'a str, &'a str)>> {
    let mut v = Vec::new();
    while let Some(name) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::malformed("tftp", "option without value"))?;
        v.push((name, value));
    }
    Ok(v)
}

fn emit_pairs(opts: &[(&str, &str)], out: &mut Vec<u8>) {
    for (k, v) in opts {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rrq_with_options_round_trips() {
        let p = Packet::Rrq(Request {
            filename: "pxelinux.0",
            mode: "octet",
            options: vec![("blksize", "1468"), ("tsize", "0")],
        });
        let bytes = p.to_vec();
        assert_eq!(Packet::parse(&bytes).unwrap(), p);
    }

    #[test]
    fn malformed_is_error_not_panic() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01file",
            b"\x00\x01file\x00",
            b"\x00\x01file\x00octet\x00blksize\x00",
            b"\x00\x04\x00",
            b"\x00\x09\x00\x00",
            b"\x00\x01\xff\xfe\x00octet\x00",
        ] {
            assert!(Packet::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn error_without_nul_is_accepted() {
        let p = Packet::parse(b"\x00\x05\x00\x08abort").unwrap();
        assert_eq!(
            p,
            Packet::Error {
                code: 8,
                message: "abort"
            }
        );
    }
}
