//! What we learn about a capture source or a restore target from the OS.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::error::{ImageError, Result};

/// Size and geometry of a file or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceInfo {
    /// Size in bytes.
    pub size: u64,
    /// Logical sector size (512 for plain files).
    pub logical_sector_size: u32,
    /// Physical sector size (4096 for plain files, the common flash page).
    pub physical_sector_size: u32,
    /// Whether it is a block device.
    pub is_block_device: bool,
}

/// Probes an open file or block device.
pub fn probe_source(file: &File, path: &Path) -> Result<SourceInfo> {
    let meta = file
        .metadata()
        .map_err(|e| ImageError::io("examining", path, e))?;
    if meta.file_type().is_block_device() {
        // A block device's length is where seeking to its end lands.
        let mut f = file;
        let size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| ImageError::io("sizing", path, e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| ImageError::io("seeking", path, e))?;
        let logical = rustix::fs::ioctl_blksszget(file).unwrap_or(512);
        let physical = rustix::fs::ioctl_blkpbszget(file).unwrap_or(logical);
        Ok(SourceInfo {
            size,
            logical_sector_size: logical,
            physical_sector_size: physical,
            is_block_device: true,
        })
    } else if meta.is_file() {
        Ok(SourceInfo {
            size: meta.len(),
            logical_sector_size: 512,
            physical_sector_size: 4096,
            is_block_device: false,
        })
    } else {
        Err(ImageError::InvalidParameter(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        )))
    }
}
