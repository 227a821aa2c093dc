//! What we learn about a capture source or a restore target from the OS.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

/// A partition of a capture source that is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedPart {
    /// The device, as `/proc/self/mountinfo` names it.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// Mounted read-write.
    pub read_write: bool,
}

/// The mounts of block device `file` and of its partitions, from
/// `/sys/dev/block/MAJ:MIN` (its partitions are the entries holding a
/// `partition` file) and `/proc/self/mountinfo`.
pub fn mounted_parts(file: &File) -> Result<Vec<MountedPart>> {
    let io = |e| ImageError::io("reading", Path::new("/proc/self/mountinfo"), e);
    let rdev = file
        .metadata()
        .map_err(|e| ImageError::io("examining", Path::new("the source"), e))?
        .rdev();
    let whole = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
    let mut devs = vec![whole.clone()];
    if let Ok(dir) = std::fs::read_dir(format!("/sys/dev/block/{whole}")) {
        for e in dir.flatten() {
            if e.path().join("partition").exists() {
                if let Ok(d) = std::fs::read_to_string(e.path().join("dev")) {
                    devs.push(d.trim().to_string());
                }
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
    Ok(parse_mountinfo(&info, &devs))
}

/// The mounts in `mountinfo` text of the devices `devs` (`MAJ:MIN`).
fn parse_mountinfo(info: &str, devs: &[String]) -> Vec<MountedPart> {
    let mut out = Vec::new();
    for line in info.lines() {
        // id parent MAJ:MIN root mount-point options ... - fstype source super-options
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 6 || !devs.iter().any(|d| d == f[2]) {
            continue;
        }
        let source = line
            .split(" - ")
            .nth(1)
            .and_then(|rest| rest.split(' ').nth(1))
            .unwrap_or(f[2]);
        out.push(MountedPart {
            device: source.to_string(),
            mount_point: f[4].to_string(),
            read_write: f[5].split(',').any(|o| o == "rw"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_names_the_mounts_of_our_devices_only() {
        let info = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
                    30 22 259:1 / /boot/efi ro,relatime shared:5 - vfat /dev/nvme0n1p1 rw\n\
                    31 22 8:1 / /mnt rw shared:6 - xfs /dev/sda1 rw\n";
        let m = parse_mountinfo(info, &["259:0".into(), "259:1".into(), "259:2".into()]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].device, "/dev/nvme0n1p2");
        assert_eq!(m[0].mount_point, "/");
        assert!(m[0].read_write);
        assert_eq!(m[1].mount_point, "/boot/efi");
        assert!(!m[1].read_write);
    }
}
