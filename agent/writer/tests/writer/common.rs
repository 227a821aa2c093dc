//! Fixtures: generated source disks, images made from them, loop devices.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rackcast_engine::image::{create_image, ChunkData, ChunkDecoder, CreateOptions, ImageReader};
use rackcast_writer::{
    restore, ChunkPayload, DiskWriter, EngineChoice, RestoreConfig, RestoreReport, VerifyMode,
    WriteSummary, WriterConfig,
};

/// A source disk and its image in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub src: Vec<u8>,
    pub img: PathBuf,
}

impl Fixture {
    /// `size` bytes in 64 KiB runs of random, text-like and zero data
    /// (seeded), captured with `chunk` byte chunks.
    pub fn new(size: usize, chunk: u32, seed: u64) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = sample(size, seed);
        let raw = dir.path().join("src.raw");
        std::fs::write(&raw, &src).expect("write source");
        let img = dir.path().join("src.rcimg");
        let opts = CreateOptions {
            chunk_size: chunk,
            threads: 2,
            ..CreateOptions::default()
        };
        create_image(&raw, &img, &opts, &mut |_| {}).expect("create image");
        Fixture { dir, src, img }
    }

    pub fn reader(&self) -> ImageReader {
        ImageReader::open(&self.img).expect("open image")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Seeded pseudo-random generator (xorshift64*): tests are repeatable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// Runs of 64 KiB to 512 KiB of random, text-like or zero bytes.
pub fn sample(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(2).wrapping_add(1));
    let mut v = vec![0u8; size];
    let mut pos = 0;
    while pos < size {
        let run = ((rng.below(8) as usize + 1) * 64 * 1024).min(size - pos);
        let block = &mut v[pos..pos + run];
        pos += run;
        match rng.below(3) {
            0 => block.iter_mut().for_each(|b| *b = rng.next() as u8),
            1 => {
                let words = [
                    &b"kernel: "[..],
                    b"ok ",
                    b"eth0 up\n",
                    b"0x1f ",
                    b"GET /index ",
                ];
                let mut at = 0;
                while at < block.len() {
                    let w = words[rng.below(words.len() as u64) as usize];
                    let n = w.len().min(block.len() - at);
                    block[at..at + n].copy_from_slice(&w[..n]);
                    at += n;
                }
            }
            _ => {}
        }
    }
    v
}

/// A small writer configuration; block-device resume bitmaps under `dir`.
pub fn writer_config(engine: EngineChoice, dir: &Path) -> WriterConfig {
    WriterConfig {
        engine,
        buffers: 4,
        state_dir: dir.join("state"),
        ..WriterConfig::default()
    }
}

pub fn restore_config(engine: EngineChoice, dir: &Path) -> RestoreConfig {
    RestoreConfig {
        writer: writer_config(engine, dir),
        threads: 2,
        delta: false,
        verify: VerifyMode::Full,
        verify_retries: 1,
    }
}

pub fn restore_to(f: &Fixture, dest: &Path, cfg: &RestoreConfig) -> RestoreReport {
    restore(&f.reader(), dest, cfg, &mut |_| {}).expect("restore")
}

/// Delivers chunks to a writer in exactly the given order (repeats allowed),
/// decoding each on this thread.
pub fn deliver(f: &Fixture, dest: &Path, order: &[u64], cfg: &WriterConfig) -> WriteSummary {
    let r = f.reader();
    let index = Arc::new(r.index().clone());
    let mut w = DiskWriter::open(dest, index.clone(), r.root(), cfg).expect("open writer");
    let mut dec = ChunkDecoder::new();
    let (mut frame, mut out) = (Vec::new(), Vec::new());
    for &i in order {
        let payload = match index.entries[i as usize].data {
            ChunkData::Zero => ChunkPayload::Zero,
            _ => {
                r.read_chunk(i, &mut dec, &mut frame, &mut out)
                    .expect("decode");
                let mut b = w.buffer().expect("buffer");
                b.copy_from(&out);
                ChunkPayload::Data(b)
            }
        };
        w.submit(i, payload).expect("submit");
    }
    w.finish().expect("finish")
}

/// The first `len` bytes of a file or device.
pub fn read_prefix(path: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("read target");
    v
}

/// Asserts equality without printing megabytes on failure.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte offset {at}");
    }
}

/// A loop device over a backing file, detached on drop (even on panic).
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// Attaches `size` bytes of zeros at `backing`; `None` (with the reason
    /// printed) when not root or losetup is missing.
    pub fn new(backing: &Path, size: u64) -> Option<LoopDev> {
        if !is_root() {
            eprintln!("skipping loop-device test: not root");
            return None;
        }
        let f = std::fs::File::create(backing).expect("create backing file");
        f.set_len(size).expect("size backing file");
        let out = match Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping loop-device test: losetup: {e}");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "losetup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).expect("utf-8").trim());
        Some(LoopDev { dev })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
