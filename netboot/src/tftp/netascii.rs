//! netascii (RFC 764: LF becomes CR LF, a bare CR becomes CR NUL) produced
//! block by block while a transfer moves forward.
//!
//! Converting the whole file per request made every netascii transfer hold
//! its own converted copy: fifty requests for a 64 MiB file took 2 GB. Here a
//! transfer keeps only the blocks it may still have to send again (those
//! after the last ACK, at most one window) and reads the shared file forward
//! as the client acknowledges. The converted size is not known until the end
//! is reached, so a netascii transfer answers no `tsize`.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// The netascii blocks of one file, produced in order and dropped once
/// acknowledged. Block indices start at 1 as on the wire (before wrapping).
#[derive(Debug)]
pub(super) struct NetasciiBlocks {
    src: Bytes,
    /// Next source byte to convert.
    pos: usize,
    /// The second byte of a pair whose first ended the previous block.
    carry: Option<u8>,
    blksize: usize,
    /// Blocks `first..first + kept.len()`, kept for retransmission.
    kept: VecDeque<Bytes>,
    first: u64,
    /// Index of the final (short, maybe empty) block once produced.
    last: Option<u64>,
}

impl NetasciiBlocks {
    /// Blocks of `blksize` bytes (at least one) of `src` in netascii.
    pub(super) fn new(src: Bytes, blksize: usize) -> Self {
        NetasciiBlocks {
            src,
            pos: 0,
            carry: None,
            blksize: blksize.max(1),
            kept: VecDeque::new(),
            first: 1,
            last: None,
        }
    }

    /// The final block's index, once the conversion has reached it.
    pub(super) fn last(&self) -> Option<u64> {
        self.last
    }

    /// Block `i`, converting forward as far as needed; `None` for a block
    /// already released or past the end.
    pub(super) fn block(&mut self, i: u64) -> Option<Bytes> {
        if i < self.first {
            return None;
        }
        while self.first + self.kept.len() as u64 <= i {
            if self.last.is_some() {
                return None;
            }
            let b = self.produce();
            if b.len() < self.blksize {
                self.last = Some(self.first + self.kept.len() as u64);
            }
            self.kept.push_back(b);
        }
        self.kept.get((i - self.first) as usize).cloned()
    }

    /// Forgets blocks up to `acked`: the client has them.
    pub(super) fn release_through(&mut self, acked: u64) {
        while self.first <= acked && self.kept.pop_front().is_some() {
            self.first += 1;
        }
    }

    /// Bytes held for retransmission.
    #[cfg(test)]
    pub(super) fn kept_bytes(&self) -> usize {
        self.kept.iter().map(Bytes::len).sum()
    }

    /// The next block: full unless the source runs out first.
    fn produce(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.blksize);
        if let Some(c) = self.carry.take() {
            out.extend_from_slice(&[c]);
        }
        while out.len() < self.blksize {
            let Some(&b) = self.src.get(self.pos) else {
                break;
            };
            self.pos += 1;
            let pair = match b {
                b'\n' => [b'\r', b'\n'],
                b'\r' => [b'\r', 0],
                b => {
                    out.extend_from_slice(&[b]);
                    continue;
                }
            };
            out.extend_from_slice(&pair[..1]);
            if out.len() < self.blksize {
                out.extend_from_slice(&pair[1..]);
            } else {
                self.carry = Some(pair[1]);
            }
        }
        out.freeze()
    }
}

/// The whole of `data` in netascii at once: the reference the blockwise
/// conversion is checked against.
#[cfg(test)]
pub(super) fn to_netascii(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block of `src` at `blksize`, read forward with a window of
    /// `window` and each window read twice (a retransmission).
    fn blockwise(src: &[u8], blksize: usize, window: u64) -> Vec<u8> {
        let mut n = NetasciiBlocks::new(Bytes::copy_from_slice(src), blksize);
        let mut out = Vec::new();
        let mut acked = 0;
        for _ in 0..1_000_000 {
            let mut first_pass = Vec::new();
            for i in acked + 1..=acked + window {
                match n.block(i) {
                    Some(b) => first_pass.push(b),
                    None => break,
                }
            }
            let again: Vec<Bytes> = (acked + 1..acked + 1 + first_pass.len() as u64)
                .map(|i| n.block(i).expect("a kept block"))
                .collect();
            assert_eq!(first_pass, again, "a resent block differs");
            assert!(n.kept_bytes() <= window as usize * blksize);
            for b in &first_pass {
                assert!(b.len() <= blksize);
                out.extend_from_slice(b);
            }
            acked += first_pass.len() as u64;
            n.release_through(acked);
            assert_eq!(n.block(acked), None, "released blocks are gone");
            if n.last().is_some_and(|l| acked >= l) {
                return out;
            }
        }
        panic!("no end");
    }

    #[test]
    fn blockwise_matches_whole_file_conversion() {
        // Pairs straddling every block boundary: CRs and LFs at every offset
        // around a multiple of the block size.
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n".to_vec(),
            b"\r".to_vec(),
            b"a\nb\r".to_vec(),
            vec![b'\n'; 64],
            vec![b'\r'; 65],
        ];
        for len in [7, 8, 9, 15, 16, 17, 100, 511, 512, 513, 3000] {
            inputs.push(
                (0..len)
                    .map(|_| match rand() % 4 {
                        0 => b'\n',
                        1 => b'\r',
                        _ => b'x',
                    })
                    .collect(),
            );
            let mut at_edge = vec![b'y'; len];
            at_edge[len - 1] = b'\n';
            inputs.push(at_edge);
        }
        for src in &inputs {
            let whole = to_netascii(src);
            for blksize in [8, 9, 16, 512] {
                for window in [1, 3, 16] {
                    let got = blockwise(src, blksize, window);
                    assert!(
                        got == whole,
                        "len {} blksize {blksize} window {window}",
                        src.len()
                    );
                    // The block count is the whole output's, plus the final
                    // short or empty block.
                    let mut n = NetasciiBlocks::new(Bytes::copy_from_slice(src), blksize);
                    let mut i = 1;
                    while n.block(i).is_some() {
                        n.release_through(i);
                        i += 1;
                    }
                    assert_eq!(n.last(), Some(whole.len() as u64 / blksize as u64 + 1));
                }
            }
        }
    }

    #[test]
    fn a_pair_split_by_a_block_end_carries_its_second_byte() {
        let mut n = NetasciiBlocks::new(Bytes::from_static(b"abc\ndef\r"), 4);
        assert_eq!(&n.block(1).unwrap()[..], b"abc\r");
        assert_eq!(&n.block(2).unwrap()[..], b"\ndef");
        assert_eq!(&n.block(3).unwrap()[..], b"\r\0");
        assert_eq!(n.last(), Some(3));
        assert_eq!(n.block(4), None);
    }
}
