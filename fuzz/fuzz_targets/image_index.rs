//! Header, trailer and index parsing: never panic, and whatever parses
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackcast_engine::image::header::{Header, HEADER_LEN};
use rackcast_engine::image::trailer::{Trailer, TRAILER_LEN};
use rackcast_engine::image::ChunkIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        assert_eq!(&h.emit()[..], &data[..HEADER_LEN]);
    }
    if let Ok(tb) = <&[u8; TRAILER_LEN]>::try_from(data.get(..TRAILER_LEN).unwrap_or(&[])) {
        if let Ok(t) = Trailer::parse(tb, 0) {
            assert_eq!(&t.emit(), tb);
        }
    }
    if let Ok(idx) = ChunkIndex::parse(data, 0, u64::MAX) {
        assert_eq!(idx.emit(), data);
    }
});
