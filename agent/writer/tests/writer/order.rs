//! Chunks arrive in any order, some more than once (as multicast delivers
//! them): the disk comes out the same.

use rackcast_writer::EngineChoice;

use crate::common::*;

const SIZE: usize = 9 * 1024 * 1024 + 3 * 4096 + 700;

fn orders(count: u64, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let in_order: Vec<u64> = (0..count).collect();
    let mut rng = Rng(seed);
    let mut shuffled = in_order.clone();
    rng.shuffle(&mut shuffled);
    // Every third chunk again, at a random later place.
    for i in (0..count).step_by(3) {
        let at = rng.below(shuffled.len() as u64 + 1) as usize;
        shuffled.insert(at, i);
    }
    (in_order, shuffled)
}

#[test]
fn out_of_order_and_duplicate_delivery_gives_the_same_file() {
    let f = Fixture::new(SIZE, 256 * 1024, 7);
    let count = f.reader().index().entries.len() as u64;
    let (in_order, shuffled) = orders(count, 99);
    for engine in [EngineChoice::Uring, EngineChoice::Sync] {
        let cfg = writer_config(engine, f.dir.path());
        let a = f.path(&format!("in-order-{engine:?}"));
        let b = f.path(&format!("shuffled-{engine:?}"));
        deliver(&f, &a, &in_order, &cfg);
        let s = deliver(&f, &b, &shuffled, &cfg);
        assert_eq!(
            s.duplicates_dropped,
            count.div_ceil(3),
            "{engine:?}: duplicates not dropped"
        );
        let a = std::fs::read(&a).expect("read");
        assert_same(&a, &f.src, "in-order restore vs source");
        assert_same(
            &std::fs::read(&b).expect("read"),
            &a,
            "shuffled restore vs in-order restore",
        );
    }
}

#[test]
fn out_of_order_and_duplicate_delivery_gives_the_same_loop_device() {
    let f = Fixture::new(SIZE, 256 * 1024, 8);
    let count = f.reader().index().entries.len() as u64;
    let (_, shuffled) = orders(count, 5);
    let Some(lo) = LoopDev::new(&f.path("loop.bin"), 12 << 20) else {
        return;
    };
    // Dirty the device first: zero chunks must really be zeroed there.
    std::fs::write(&lo.dev, vec![0xEEu8; 12 << 20]).expect("fill loop device");
    for engine in [EngineChoice::Uring, EngineChoice::Sync] {
        let s = deliver(&f, &lo.dev, &shuffled, &writer_config(engine, f.dir.path()));
        assert!(
            s.zero_bytes_discarded > 0,
            "zero chunks should be zeroed on the device"
        );
        assert_same(&read_prefix(&lo.dev, SIZE), &f.src, "loop device vs source");
    }
}
