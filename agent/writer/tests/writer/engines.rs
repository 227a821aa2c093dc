//! io_uring (with and without registered buffers) and positioned writes
//! produce identical targets, including an unaligned last chunk.

use rackcast_writer::{EngineChoice, EngineKind};

use crate::common::*;

/// Not a multiple of any sector size: the last chunk's tail goes through
/// the bounce buffer.
const SIZE: usize = 6 * 1024 * 1024 + 5 * 4096 + 123;

#[test]
fn both_engines_write_identical_files() {
    let f = Fixture::new(SIZE, 1 << 20, 41);
    let mut outputs = Vec::new();
    for (name, engine, register) in [
        ("uring-fixed", EngineChoice::Uring, true),
        ("uring-plain", EngineChoice::Uring, false),
        ("sync", EngineChoice::Sync, true),
    ] {
        let dest = f.path(name);
        let mut cfg = restore_config(engine, f.dir.path());
        cfg.writer.register_buffers = register;
        let rep = restore_to(&f, &dest, &cfg);
        let want = match engine {
            EngineChoice::Sync => EngineKind::Sync,
            _ => EngineKind::Uring {
                registered_buffers: register,
            },
        };
        assert_eq!(rep.write.engine, Some(want), "{name}");
        assert_eq!(
            std::fs::metadata(&dest).expect("stat").len(),
            SIZE as u64,
            "{name}: length"
        );
        assert!(
            !f.path(&format!("{name}.rackcast-resume")).exists(),
            "{name}: resume bitmap left behind"
        );
        outputs.push(std::fs::read(&dest).expect("read"));
    }
    assert_same(&outputs[0], &f.src, "io_uring vs source");
    assert_same(
        &outputs[1],
        &outputs[0],
        "io_uring without registered buffers vs with",
    );
    assert_same(&outputs[2], &outputs[0], "sync vs io_uring");
}

#[test]
fn both_engines_write_identical_loop_devices() {
    let f = Fixture::new(SIZE, 1 << 20, 42);
    let mut outputs = Vec::new();
    for (name, engine) in [("uring", EngineChoice::Uring), ("sync", EngineChoice::Sync)] {
        let Some(lo) = LoopDev::new(&f.path(&format!("{name}.bin")), 8 << 20) else {
            return;
        };
        std::fs::write(&lo.dev, vec![0x5Au8; 8 << 20]).expect("prefill");
        restore_to(&f, &lo.dev, &restore_config(engine, f.dir.path()));
        outputs.push(read_prefix(&lo.dev, 8 << 20));
    }
    assert_same(
        &outputs[0][..SIZE],
        &f.src,
        "io_uring loop device vs source",
    );
    assert_same(&outputs[1], &outputs[0], "sync vs io_uring, whole device");
    assert!(
        outputs[0][SIZE..].iter().all(|&b| b == 0x5A),
        "bytes past the image were touched"
    );
}
