//! Block-device ioctls the writer needs that rustix does not wrap. One of the
//! two modules where unsafe code is allowed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `BLKZEROOUT`: `_IO(0x12, 127)`.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// `BLKDISCARD`: `_IO(0x12, 119)`.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Zeroes `len` bytes at `offset` of a block device (both multiples of the
/// logical sector size); the device uses WRITE ZEROES or UNMAP where it can.
pub(crate) fn blk_zero_out(dev: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads exactly two u64 (start, length) from the
    // pointer, which points at `range`, live for the call; `dev` is an open
    // descriptor for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Discards `len` bytes at `offset` of a block device (both multiples of
/// the logical sector size): the device may forget them.
pub(crate) fn blk_discard(dev: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads exactly two u64 (start, length) from the
    // pointer, which points at `range`, live for the call; `dev` is an open
    // descriptor for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Flushes a block device's buffer cache and writes back its dirty pages.
pub(crate) fn blk_flush_buffers(dev: &File) -> io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument and touches no user memory; `dev`
    // is an open descriptor for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF as _, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
