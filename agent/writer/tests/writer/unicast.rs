//! `receive_unicast` from a file that stands in for the server: the image
//! arrives byte-exact; a second run over a half-written target fetches only
//! what is missing; a damaged frame or another image is refused.

use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use rackcast_engine::cast::sink::ReadBack;
use rackcast_engine::cast::{CastError, SessionKey};
use rackcast_writer::receive::CastReceive;
use rackcast_writer::unicast::{receive_unicast, RangeSource};
use rackcast_writer::{LayoutOptions, WriterConfig};

use super::common::Fixture;

/// An image file read by ranges, counting what was asked; `flip` damages
/// one byte of whatever covers it.
struct FileSource {
    file: std::fs::File,
    asked: u64,
    flip: Option<u64>,
}

impl RangeSource for FileSource {
    fn file_len(&mut self) -> Result<u64, String> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    }

    fn read_at(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut b, offset)
            .map_err(|e| e.to_string())?;
        if let Some(at) = self.flip.filter(|&at| (offset..offset + len).contains(&at)) {
            b[(at - offset) as usize] ^= 1;
        }
        self.asked += len;
        Ok(b)
    }
}

fn spec(fx: &Fixture, dest: &str, root: [u8; 32]) -> CastReceive {
    CastReceive {
        dest: fx.path(dest),
        group: "239.255.42.1:7400".parse().unwrap(),
        iface_addr: std::net::Ipv4Addr::UNSPECIFIED,
        key: SessionKey::from_secret(&[0; 32]),
        receiver: 1,
        session: None,
        expected_root: Some(root),
        resume: true,
        read_back: ReadBack::Full,
        limits: rackcast_cast_net::ReceiveLimits::timeout(std::time::Duration::from_secs(60)),
        writer: WriterConfig {
            state_dir: fx.path("state"),
            ..WriterConfig::default()
        },
        layout: LayoutOptions::default(),
    }
}

fn source(fx: &Fixture, flip: Option<u64>) -> FileSource {
    FileSource {
        file: std::fs::File::open(&fx.img).unwrap(),
        asked: 0,
        flip,
    }
}

#[test]
fn the_image_arrives_byte_exact_and_a_rerun_fetches_only_what_is_missing() {
    let fx = Fixture::new(6 << 20, 256 * 1024, 41);
    let root = fx.reader().root();
    let image_len = std::fs::metadata(&fx.img).unwrap().len();
    let s = spec(&fx, "t.raw", root);
    let mut src = source(&fx, None);
    let r = receive_unicast(&s, &mut src, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(r.root, root);
    assert!(
        std::fs::read(&s.dest).unwrap() == fx.src,
        "the target differs"
    );
    assert!(src.asked <= image_len, "{} of {image_len} asked", src.asked);

    // Half the target lost: the rerun fetches about half the frames.
    let half = (fx.src.len() / 2) as u64;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&s.dest)
        .unwrap();
    f.write_all_at(&vec![0xEE; half as usize], 0).unwrap();
    let mut again = source(&fx, None);
    let r = receive_unicast(&s, &mut again, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(r.sink.resumed_chunks > 0, "{:?}", r.sink);
    assert!(
        std::fs::read(&s.dest).unwrap() == fx.src,
        "the target differs"
    );
    assert!(
        again.asked < src.asked,
        "{} then {}",
        src.asked,
        again.asked
    );
}

#[test]
fn a_damaged_frame_or_another_image_is_refused() {
    let fx = Fixture::new(2 << 20, 256 * 1024, 42);
    let r = fx.reader();
    let root = r.root();
    let first = r
        .index()
        .entries
        .iter()
        .find_map(|e| e.data.frame().copied())
        .expect("a stored frame");
    let s = spec(&fx, "bad.raw", root);
    let e = receive_unicast(&s, &mut source(&fx, Some(first.offset + 5)), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    let msg = rackcast_engine::sched::ErrorChain(&e).to_string();
    assert!(
        msg.contains("does not hash to what the index says"),
        "{msg}"
    );

    let other = spec(&fx, "other.raw", [7; 32]);
    let e = receive_unicast(&other, &mut source(&fx, None), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(matches!(e, CastError::Source(_)), "{e:?}");
    let msg = rackcast_engine::sched::ErrorChain(&e).to_string();
    assert!(msg.contains("not the one the task pinned"), "{msg}");
}
