//! A cloud-init NoCloud seed on a deployed disk, so a stock cloud image
//! boots into its own identity: a small FAT volume labelled `CIDATA`
//! holding `meta-data`, `user-data` and (optionally) `network-config`
//! (cloud-init's NoCloud datasource finds it by that label), in a partition
//! made at the end of the disk's last free gap. A rerun finds the partition
//! by its name and rewrites the volume.

use std::fs::OpenOptions;
use std::io::{Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rackcast_engine::image::fs::{add_partition, GptFixError, Partition};
pub use rackcast_engine::sched::api::NoCloudSeed;

use crate::error::{Result, WriterError};

/// The seed's size: FAT12 with room to spare for the three files.
pub const SEED_BYTES: u64 = 4 << 20;
/// What a grown last partition leaves free so the seed's partition fits
/// after it (1 MiB of it for alignment).
pub const SEED_ROOM: u64 = SEED_BYTES + (1 << 20);
/// The partition's name in the GPT.
const NAME: &str = "cidata";
/// "Microsoft basic data", as GPT type GUIDs are stored (mixed-endian):
/// EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, what FAT volumes carry.
const BASIC_DATA: [u8; 16] = [
    0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x99, 0xC7,
];

/// Writes `seed` onto the GPT disk `dest` (`sector`-byte sectors) and
/// returns the partition it is in.
pub fn write_seed(dest: &Path, sector: u32, seed: &NoCloudSeed) -> Result<Partition> {
    let io = |what, e| WriterError::io(what, dest, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dest)
        .map_err(|e| io("opening", e))?;
    // The partition's GUID: stable for this seed, unique enough per disk.
    let digest = blake3::hash(format!("{dest:?}{seed:?}").as_bytes());
    let mut unique = [0u8; 16];
    unique.copy_from_slice(&digest.as_bytes()[..16]);
    let (part, writes) = match add_partition(&file, sector, SEED_BYTES, BASIC_DATA, unique, NAME) {
        Ok(r) => r,
        Err(GptFixError::Io(e)) => return Err(io("reading", e)),
        Err(e) => return Err(WriterError::Seed(e.to_string())),
    };
    let serial = u32::from_le_bytes([unique[0], unique[1], unique[2], unique[3]]);
    let volume = fat_volume(part.len, serial, seed)?;
    // The volume first: the table names the partition only once it holds one.
    file.write_all_at(&volume, part.start)
        .map_err(|e| io("writing the seed to", e))?;
    for (off, bytes) in &writes {
        file.write_all_at(bytes, *off)
            .map_err(|e| io("writing the partition table of", e))?;
    }
    file.sync_data().map_err(|e| io("flushing", e))?;
    Ok(part)
}

/// A FAT volume of `len` bytes labelled `CIDATA`, serial number `serial`,
/// holding the seed's files.
fn fat_volume(len: u64, serial: u32, seed: &NoCloudSeed) -> Result<Vec<u8>> {
    let fat = |e: std::io::Error| WriterError::Seed(format!("building the FAT volume: {e}"));
    let mut disk = Cursor::new(vec![0u8; len as usize]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .volume_label(*b"CIDATA     ")
            .volume_id(serial),
    )
    .map_err(fat)?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(fat)?;
        let mut files = vec![
            ("meta-data", &seed.meta_data),
            ("user-data", &seed.user_data),
        ];
        if let Some(n) = &seed.network_config {
            files.push(("network-config", n));
        }
        for (name, text) in files {
            let mut f = fs.root_dir().create_file(name).map_err(fat)?;
            f.truncate().map_err(fat)?;
            f.write_all(text.as_bytes()).map_err(fat)?;
            f.flush().map_err(fat)?;
        }
        fs.unmount().map_err(fat)?;
    }
    Ok(disk.into_inner())
}
