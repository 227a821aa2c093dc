//! Read-back verification against a disk that really lies: a FUSE file
//! system, served by this process, holds one file backed by a plain file and
//! flips a byte at a chosen disk offset in the first K reads (or writes) that
//! cover it. The restore runs in a child process (so its exit code is real)
//! with `--verify full`; every open is answered with FOPEN_DIRECT_IO, so each
//! read-back reaches the handler here rather than the page cache. The same
//! file system can also fail fsync ([`FlakyState::fail_fsyncs`]), which the
//! flush tests (`flush.rs`) use.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};
use rackcast_engine::image::{ChunkData, UsedMask};
use rackcast_writer::{EngineChoice, VerifyMode};

use crate::child::{wait, ChildRestore};
use crate::common::*;

const CHUNK: u32 = 256 * 1024;

#[test]
fn verify_rewrites_a_chunk_that_read_back_wrong_once() {
    let f = Fixture::new(4 << 20, CHUNK, 101);
    let (chunk, at) = data_byte(&f);
    let Some(disk) = FlakyDisk::mount(&f, Flip::Reads, at, 1) else {
        return;
    };
    let mut run = ChildRestore::new(&f, &disk.file(), EngineChoice::Auto);
    run.verify = VerifyMode::Full;
    run.retries = 1;
    let out = wait(run.command().spawn().expect("spawn restore"));
    assert!(
        out.status.success(),
        "restore over the flaky disk: {out:#?}"
    );
    assert_eq!(disk.state.flips.load(Ordering::SeqCst), 1, "bytes flipped");
    assert_eq!(
        out.field("chunks_rewritten"),
        "1",
        "chunk {chunk} rewritten once"
    );
    assert!(
        disk.state.reads_covering.load(Ordering::SeqCst) >= 2,
        "read-back and re-check both reached the file system"
    );
    let n_present = present_chunks(&f);
    assert_eq!(out.field("chunks_verified"), n_present.to_string());
    let backing = disk.unmount();
    assert_same(
        &std::fs::read(backing).expect("read"),
        &f.src,
        "backing file",
    );
}

/// The first write of the chunk lands corrupted; only a rewrite puts the
/// right bytes on disk, so a backing file equal to the source proves the
/// retry wrote.
#[test]
fn verify_rewrite_repairs_a_chunk_that_was_written_wrong_once() {
    let f = Fixture::new(4 << 20, CHUNK, 102);
    let (_, at) = data_byte(&f);
    let Some(disk) = FlakyDisk::mount(&f, Flip::Writes, at, 1) else {
        return;
    };
    let mut run = ChildRestore::new(&f, &disk.file(), EngineChoice::Auto);
    run.retries = 1;
    let out = wait(run.command().spawn().expect("spawn restore"));
    assert!(
        out.status.success(),
        "restore over the flaky disk: {out:#?}"
    );
    assert_eq!(disk.state.flips.load(Ordering::SeqCst), 1, "bytes flipped");
    assert_eq!(out.field("chunks_rewritten"), "1");
    let backing = disk.unmount();
    assert_same(
        &std::fs::read(backing).expect("read"),
        &f.src,
        "backing file",
    );
}

#[test]
fn verify_fails_naming_the_chunk_offsets_when_reads_never_come_right() {
    let f = Fixture::new(4 << 20, CHUNK, 103);
    let (chunk, at) = data_byte(&f);
    let Some(disk) = FlakyDisk::mount(&f, Flip::Reads, at, u64::MAX) else {
        return;
    };
    let retries = 2;
    let mut run = ChildRestore::new(&f, &disk.file(), EngineChoice::Auto);
    run.retries = retries;
    let out = wait(run.command().spawn().expect("spawn restore"));
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let err = out.error.as_deref().expect("the child names its error");
    let index = f.reader().index().clone();
    let (start, end) = (
        index.disk_offset(chunk),
        index.disk_offset(chunk) + index.chunk_len(chunk) as u64,
    );
    assert!(
        err.contains("read-back verification of")
            && err.contains(&format!("failed after {} attempts", retries + 1))
            && err.ends_with(&format!("chunks at disk offsets {start}..{end}")),
        "error: {err}"
    );
    assert_eq!(
        disk.state.reads_covering.load(Ordering::SeqCst),
        u64::from(retries) + 1,
        "one read-back per attempt reached the file system"
    );
    drop(disk);
}

/// A chunk holding data (every block used, not the last chunk, whose tail
/// is read for the bounce buffer) and a disk offset inside it.
fn data_byte(f: &Fixture) -> (u64, u64) {
    let r = f.reader();
    let index = r.index();
    let n = index.entries.len() as u64;
    let chunk = (1..n - 1)
        .find(|&i| {
            let e = &index.entries[i as usize];
            matches!(e.data, ChunkData::Raw(_) | ChunkData::Zstd(_))
                && matches!(e.used, UsedMask::All)
        })
        .expect("a data chunk");
    let at = index.disk_offset(chunk) + index.chunk_len(chunk) as u64 / 2 + 7;
    (chunk, at)
}

fn present_chunks(f: &Fixture) -> usize {
    f.reader()
        .index()
        .entries
        .iter()
        .filter(|e| !matches!(e.data, ChunkData::Absent))
        .count()
}

/// Which requests the file system corrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flip {
    /// What a read returns (the stored byte stays right).
    Reads,
    /// What a write stores.
    Writes,
}

/// What the file system does and has done; shared with the test.
#[derive(Debug)]
pub(crate) struct FlakyState {
    backing: File,
    owner: (u32, u32),
    flip: Flip,
    at: u64,
    flips_left: AtomicU64,
    flips: AtomicU64,
    reads_covering: AtomicU64,
    opens: AtomicU64,
    releases: AtomicU64,
    /// The next this many fsyncs fail with EIO without syncing anything.
    pub fail_fsyncs: AtomicU64,
    /// Fsyncs that reached the file system (failed ones included).
    pub fsyncs: AtomicU64,
}

impl FlakyState {
    /// Flips the byte at `self.at` in `data` (which starts at `offset`)
    /// while flips are left.
    fn corrupt(&self, offset: u64, data: &mut [u8]) {
        let Some(i) = self
            .at
            .checked_sub(offset)
            .filter(|&i| i < data.len() as u64)
        else {
            return;
        };
        let left = self
            .flips_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if left.is_ok() {
            data[i as usize] ^= 0x20;
            self.flips.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let (kind, perm, size) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o755, 0),
            DISK => (FileType::RegularFile, 0o644, self.backing.metadata()?.len()),
            _ => return Err(Errno::ENOENT),
        };
        Ok(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            // The backing file's owner: the user running the test.
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

const DISK: INodeNo = INodeNo(2);
const DISK_NAME: &str = "disk";
/// Attributes change (the restore sizes the file): do not let the kernel
/// cache them.
const TTL: Duration = Duration::ZERO;

/// The file system: `/disk` over the backing file.
struct FlakyFs(Arc<FlakyState>);

impl Filesystem for FlakyFs {
    fn lookup(&self, _: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT || name != DISK_NAME {
            return reply.error(Errno::ENOENT);
        }
        match self.0.attr(DISK) {
            Ok(a) => reply.entry(&TTL, &a, fuser::Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _: &Request, ino: INodeNo, _: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let (DISK, Some(len)) = (ino, size) {
            if let Err(e) = self.0.backing.set_len(len) {
                return reply.error(e.into());
            }
        }
        match self.0.attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _: &Request, ino: INodeNo, _: OpenFlags, reply: ReplyOpen) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        self.0.opens.fetch_add(1, Ordering::SeqCst);
        // Every read and write goes to this process: none is answered from
        // the page cache.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        offset: u64,
        size: u32,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = &self.0;
        let len = s.backing.metadata().map_or(0, |m| m.len());
        let n = len.saturating_sub(offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; n];
        if let Err(e) = s.backing.read_exact_at(&mut buf, offset) {
            return reply.error(e.into());
        }
        if (offset..offset + n as u64).contains(&s.at) {
            s.reads_covering.fetch_add(1, Ordering::SeqCst);
            if s.flip == Flip::Reads {
                s.corrupt(offset, &mut buf);
            }
        }
        reply.data(&buf);
    }

    fn write(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        offset: u64,
        data: &[u8],
        _: WriteFlags,
        _: OpenFlags,
        _: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let s = &self.0;
        let mut data = data.to_vec();
        if s.flip == Flip::Writes {
            s.corrupt(offset, &mut data);
        }
        match s.backing.write_all_at(&data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e.into()),
        }
    }

    fn release(
        &self,
        _: &Request,
        _: INodeNo,
        _: FileHandle,
        _: OpenFlags,
        _: Option<LockOwner>,
        _: bool,
        reply: ReplyEmpty,
    ) {
        self.0.releases.fetch_add(1, Ordering::SeqCst);
        reply.ok();
    }

    fn flush(&self, _: &Request, _: INodeNo, _: FileHandle, _: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _: &Request, _: INodeNo, _: FileHandle, _: bool, reply: ReplyEmpty) {
        let s = &self.0;
        s.fsyncs.fetch_add(1, Ordering::SeqCst);
        let fail = s
            .fail_fsyncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if fail.is_ok() {
            // A disk that lost the writes: say so once, as Linux does.
            return reply.error(Errno::EIO);
        }
        match s.backing.sync_data() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }
}

/// A mounted flaky disk; unmounted (and its mount point removed) on drop,
/// panics included.
pub(crate) struct FlakyDisk {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
    pub state: Arc<FlakyState>,
}

impl FlakyDisk {
    /// Mounts a flaky disk in `f`'s directory flipping the byte at disk
    /// offset `at` in the first `times` reads or writes covering it; `None`
    /// (with the reason printed) where FUSE cannot be mounted.
    pub fn mount(f: &Fixture, flip: Flip, at: u64, times: u64) -> Option<FlakyDisk> {
        let backing = f.path("backing.raw");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&backing)
            .expect("create backing file");
        let mountpoint = f.path("mnt");
        std::fs::create_dir(&mountpoint).expect("mount point");
        if let Err(e) = File::options().read(true).write(true).open("/dev/fuse") {
            eprintln!("skipping FUSE test: /dev/fuse: {e}");
            return None;
        }
        let meta = file.metadata().expect("stat backing file");
        let state = Arc::new(FlakyState {
            owner: (meta.uid(), meta.gid()),
            backing: file,
            flip,
            at,
            flips_left: AtomicU64::new(times),
            flips: AtomicU64::new(0),
            reads_covering: AtomicU64::new(0),
            opens: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            fail_fsyncs: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
        });
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            fuser::MountOption::FSName("rackcast-flaky".into()),
            fuser::MountOption::RW,
        ];
        cfg.n_threads = Some(2);
        match fuser::spawn_mount(FlakyFs(state.clone()), &mountpoint, &cfg) {
            Ok(session) => Some(FlakyDisk {
                session: Some(session),
                mountpoint,
                backing,
                state,
            }),
            // Not root, mounting takes the setuid fusermount3 (Debian's
            // fuse3), which may be missing or refuse.
            Err(e) if !is_root() => {
                eprintln!("skipping FUSE test: not root, and fusermount3 failed: {e}");
                None
            }
            Err(e) => panic!("mounting the FUSE file system: {e}"),
        }
    }

    /// The flaky file, the restore target.
    pub fn file(&self) -> PathBuf {
        self.mountpoint.join(DISK_NAME)
    }

    /// Unmounts and returns the backing file's path.
    pub fn unmount(mut self) -> PathBuf {
        self.release().expect("unmount the FUSE file system");
        self.backing.clone()
    }

    /// Waits (bounded) until every open of the file has been released — a
    /// ring the child set up on it lets go of the file only after the child
    /// has gone — then unmounts; lazily if the mount is still busy, so a
    /// wedged mount cannot keep the test (or the temporary directory's
    /// removal) waiting.
    fn release(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let s = &self.state;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.releases.load(Ordering::SeqCst) < s.opens.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = session.umount_and_join();
        if r.is_err() {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&self.mountpoint)
                .status();
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        r
    }
}

impl Drop for FlakyDisk {
    fn drop(&mut self) {
        let _ = self.release();
    }
}
