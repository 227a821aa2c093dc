//! Signatures over the root: the right key passes, a wrong key or a changed
//! root fails.

use std::os::unix::fs::FileExt;

use rackcast_engine::image::trailer::{Trailer, TRAILER_LEN};
use rackcast_engine::image::{
    public_path, ChunkIndex, ImageError, ImageReader, ImageSigner, TrustedKey,
};

use crate::data::{capture, mixed, opts};

#[test]
fn right_key_passes_wrong_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let other = dir.path().join("other");
    ImageSigner::generate(&key).unwrap();
    ImageSigner::generate(&other).unwrap();
    let mut o = opts(65536);
    o.signer = Some(ImageSigner::load(&key).unwrap());
    let (img, _) = capture(dir.path(), "src", &mixed(4, 0), &o);
    let r = ImageReader::open(&img).unwrap();
    r.check_signature(&TrustedKey::load(&public_path(&key)).unwrap())
        .unwrap();
    let e = r
        .check_signature(&TrustedKey::load(&public_path(&other)).unwrap())
        .unwrap_err();
    assert!(matches!(e, ImageError::Signature(_)), "{e}");
    // A secret key is not a public key.
    assert!(TrustedKey::load(&key).is_err());
    // Keys are never overwritten.
    assert!(ImageSigner::generate(&key).is_err());
}

#[test]
fn unsigned_image_fails_when_a_key_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ImageSigner::generate(&key).unwrap();
    let (img, _) = capture(dir.path(), "src", &mixed(2, 0), &opts(65536));
    let r = ImageReader::open(&img).unwrap();
    assert!(r.signature().is_none());
    assert!(r
        .check_signature(&TrustedKey::load(&public_path(&key)).unwrap())
        .is_err());
}

/// An attacker rewrites the index (here: a label) and fixes up the root and
/// the trailer checksum: the structure is consistent, the signature is not.
#[test]
fn modified_root_fails_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    ImageSigner::generate(&key).unwrap();
    let mut o = opts(65536);
    o.signer = Some(ImageSigner::load(&key).unwrap());
    let (img, s) = capture(dir.path(), "src", &mixed(4, 0), &o);
    let mut bytes = std::fs::read(&img).unwrap();
    let tb: [u8; TRAILER_LEN] = bytes[bytes.len() - TRAILER_LEN..].try_into().unwrap();
    let mut t = Trailer::parse(&tb, 0).unwrap();
    let mut idx: ChunkIndex = s.index;
    idx.meta.labels.insert("owner".into(), "mallory".into());
    let new_index = idx.emit();
    t.index_len = new_index.len() as u64;
    t.root = *blake3::hash(&new_index).as_bytes();
    bytes.truncate(t.index_offset as usize);
    bytes.extend_from_slice(&new_index);
    bytes.extend_from_slice(&t.emit());
    std::fs::write(&img, &bytes).unwrap();
    let r = ImageReader::open(&img).expect("structurally consistent");
    r.verify(2, &|_| {}).unwrap();
    let e = r
        .check_signature(&TrustedKey::load(&public_path(&key)).unwrap())
        .unwrap_err();
    assert!(matches!(e, ImageError::Signature(_)), "{e}");
    let f = std::fs::File::open(&img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 0).unwrap();
}
