//! A minimal NBD client (the NetworkBlockDevice protocol, `proto.md` of
//! the nbd project): fixed-newstyle handshake, `NBD_OPT_EXPORT_NAME`, then
//! simple-reply `NBD_CMD_READ`s over a Unix socket. It reads a virtual disk
//! that `qemu-nbd` exports (qcow2, VMDK, VHD(X), ...) as a stream of
//! blocks, without converting it to a raw file first.
//!
//! By hand because the protocol subset is small and no maintained crate
//! offers a plain blocking client.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;

use rackcast_engine::image::fs::ReadAt;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
/// Largest read asked for at once (servers accept at least 32 MiB).
const MAX_READ: usize = 32 << 20;

/// A connected NBD export.
#[derive(Debug)]
pub struct NbdClient {
    sock: Mutex<UnixStream>,
    size: u64,
}

impl NbdClient {
    /// Connects to the server at `path` and opens its default export.
    pub fn connect(path: &Path) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(path)?;
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello)?;
        let (magic, opt, flags) = (be64(&hello[..8]), be64(&hello[8..16]), be16(&hello[16..]));
        if magic != NBDMAGIC || opt != IHAVEOPT || flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(bad("not a fixed-newstyle NBD server"));
        }
        let no_zeroes = flags & FLAG_NO_ZEROES != 0;
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
        s.write_all(&client_flags.to_be_bytes())?;
        // NBD_OPT_EXPORT_NAME with the empty (default) export name.
        let mut opt = Vec::with_capacity(16);
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes());
        s.write_all(&opt)?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply)?;
        if !no_zeroes {
            s.read_exact(&mut [0u8; 124])?;
        }
        Ok(NbdClient {
            sock: Mutex::new(s),
            size: be64(&reply[..8]),
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl ReadAt for NbdClient {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut s = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_READ);
            let at = offset + done as u64;
            let mut req = [0u8; 28];
            req[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            req[6..8].copy_from_slice(&CMD_READ.to_be_bytes());
            req[8..16].copy_from_slice(&at.to_be_bytes());
            req[16..24].copy_from_slice(&at.to_be_bytes());
            req[24..28].copy_from_slice(&(n as u32).to_be_bytes());
            s.write_all(&req)?;
            let mut reply = [0u8; 16];
            s.read_exact(&mut reply)?;
            if be32(&reply[..4]) != SIMPLE_REPLY_MAGIC || be64(&reply[8..]) != at {
                return Err(bad("unexpected NBD reply"));
            }
            let err = be32(&reply[4..8]);
            if err != 0 {
                return Err(io::Error::other(format!(
                    "NBD read of {n} bytes at {at} failed: error {err}"
                )));
            }
            s.read_exact(&mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}
