//! A failed fsync never lets the resume bitmap vouch for a chunk. Linux
//! reports a writeback error once and may drop the pages it could not
//! write, so the flush after a failed one can succeed with the data gone:
//! these tests fail one fsync on the FUSE disk of `flaky.rs` and let the
//! next ones succeed, which is exactly when trusting a retry would go wrong.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rackcast_engine::image::{ChunkData, ChunkDecoder};
use rackcast_writer::{ChunkPayload, DiskWriter, EngineChoice, WriterConfig, WriterError};

use crate::child::{wait, ChildRestore};
use crate::common::*;
use crate::flaky::{FlakyDisk, Flip};

const CHUNK: u32 = 256 * 1024;

#[test]
fn a_failed_fsync_marks_no_chunk_durable_even_when_the_next_fsync_succeeds() {
    let f = Fixture::new(4 << 20, CHUNK, 111);
    // No byte is flipped: this disk only fails fsync when told to.
    let Some(disk) = FlakyDisk::mount(&f, Flip::Writes, u64::MAX, 0) else {
        return;
    };
    let r = f.reader();
    let index = Arc::new(r.index().clone());
    let present: Vec<u64> = (0..index.entries.len() as u64)
        .filter(|&i| !matches!(index.entries[i as usize].data, ChunkData::Absent))
        .collect();
    let cfg = WriterConfig {
        state_path: Some(f.path("flaky.resume")),
        // Only the test's own flushes sync.
        checkpoint_interval: Duration::from_secs(3600),
        ..writer_config(EngineChoice::Auto, f.dir.path())
    };
    let (first, second): (Vec<u64>, Vec<u64>) = present.iter().partition(|&&i| i % 2 == 0);

    let mut w = DiskWriter::open(&disk.file(), index.clone(), r.root(), &cfg).expect("open");
    send(&f, &mut w, &first);
    w.flush().expect("a good flush");
    let good = disk.state.fsyncs.load(Ordering::SeqCst);
    assert!(good >= 1, "the flush reached the file system");

    disk.state.fail_fsyncs.store(1, Ordering::SeqCst);
    send(&f, &mut w, &second);
    let err = w
        .flush()
        .expect_err("a failed fsync was reported as success");
    assert_flush_failed(&err, &disk.file());
    assert_eq!(disk.state.fsyncs.load(Ordering::SeqCst), good + 1);
    // The disk would answer the next fsync with success; the writer must
    // not ask, nor believe it.
    let again = w.flush().expect_err("a flush after a failed one succeeded");
    assert_flush_failed(&again, &disk.file());
    assert_eq!(
        disk.state.fsyncs.load(Ordering::SeqCst),
        good + 1,
        "fsync was retried after it failed"
    );
    w.abandon();

    // What the writer left on disk vouches for nothing: the next run starts
    // over (chunks the good flush covered included) and rewrites it all.
    let mut w = DiskWriter::open(&disk.file(), index, r.root(), &cfg).expect("reopen");
    assert_eq!(
        w.summary().chunks_resumed,
        0,
        "chunks were resumed after a failed flush"
    );
    assert_eq!(w.pending(), present, "every chunk is wanted again");
    send(&f, &mut w, &present);
    let s = w.finish().expect("finish with good fsyncs");
    assert_eq!(s.duplicates_dropped, 0);
    assert!(
        !f.path("flaky.resume").exists(),
        "bitmap left after success"
    );
    let backing = disk.unmount();
    assert_same(
        &std::fs::read(backing).expect("read"),
        &f.src,
        "rewritten target",
    );
}

#[test]
fn a_restore_whose_final_fsync_fails_errs_and_its_rerun_resumes_nothing() {
    let f = Fixture::new(4 << 20, CHUNK, 112);
    let Some(disk) = FlakyDisk::mount(&f, Flip::Writes, u64::MAX, 0) else {
        return;
    };
    disk.state.fail_fsyncs.store(1, Ordering::SeqCst);
    let run = ChildRestore::new(&f, &disk.file(), EngineChoice::Auto);
    let out = wait(run.command().spawn().expect("spawn restore"));
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    let err = out.error.as_deref().expect("the child names its error");
    assert!(
        err.starts_with(&format!("flushing {} failed: ", disk.file().display()))
            && err.contains("Input/output error")
            && err.contains("resume bitmap was discarded"),
        "error: {err}"
    );
    assert_eq!(disk.state.fail_fsyncs.load(Ordering::SeqCst), 0);

    // The bitmap the failed run left (if any) claims nothing.
    let r = f.reader();
    let cfg = WriterConfig {
        state_path: Some(run.state.clone()),
        ..writer_config(EngineChoice::Sync, f.dir.path())
    };
    let w = DiskWriter::open(&disk.file(), Arc::new(r.index().clone()), r.root(), &cfg)
        .expect("open to look at the bitmap");
    assert_eq!(w.summary().chunks_resumed, 0, "a chunk was left durable");
    drop(w);

    let out = wait(run.command().spawn().expect("spawn rerun"));
    assert!(out.status.success(), "rerun with good fsyncs: {out:#?}");
    assert_eq!(out.field("chunks_resumed"), "0");
    assert_ne!(out.field("chunks_written"), "0");
    let backing = disk.unmount();
    assert_same(
        &std::fs::read(backing).expect("read"),
        &f.src,
        "rerun target",
    );
}

fn assert_flush_failed(err: &WriterError, path: &Path) {
    match err {
        WriterError::FlushFailed { path: p, source } => {
            assert_eq!(p, path);
            assert_eq!(source.raw_os_error(), Some(libc::EIO), "cause kept: {err}");
        }
        e => panic!("expected FlushFailed, got {e}"),
    }
}

/// Decodes and submits `chunks` in order.
fn send(f: &Fixture, w: &mut DiskWriter, chunks: &[u64]) {
    let r = f.reader();
    let index = r.index();
    let mut dec = ChunkDecoder::new();
    let (mut frame, mut out) = (Vec::new(), Vec::new());
    for &i in chunks {
        let p = match index.entries[i as usize].data {
            ChunkData::Zero => ChunkPayload::Zero,
            _ => {
                r.read_chunk(i, &mut dec, &mut frame, &mut out)
                    .expect("decode");
                let mut b = w.buffer().expect("buffer");
                b.copy_from(&out);
                ChunkPayload::Data(b)
            }
        };
        w.submit(i, p).expect("submit");
    }
}
