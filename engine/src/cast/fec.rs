//! Forward error correction per object (chunk frame or index).
//!
//! An object of `len` bytes is cut into `k = ceil(len / S)` source symbols of
//! `S` bytes (the last zero-padded). The code is systematic: symbol ids `0..k`
//! are the source itself, so a receiver that lost nothing never decodes; ids
//! `k..k + repair_count(k)` are repair symbols, and any `k` distinct symbols
//! rebuild the object. One repair symbol fixes different losses at different
//! receivers, which is why repair traffic follows the worst receiver rather
//! than the sum of everyone's losses.

use super::CastError;

/// A systematic erasure code behind which implementations can be swapped.
pub trait ErasureCode: Send + Sync + std::fmt::Debug {
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Number of repair symbols available for an object of `k` source symbols.
    fn repair_count(&self, k: u32) -> u32;
    /// All repair symbols of an object, in id order (`k`, `k+1`, ...).
    fn encode(&self, source: &[&[u8]]) -> Result<Vec<Vec<u8>>, CastError>;
    /// Rebuilds the `k` source symbols from at least `k` distinct symbols
    /// `(id, bytes)`, each `symbol_size` long.
    fn decode(
        &self,
        k: u32,
        symbol_size: usize,
        symbols: &[(u32, &[u8])],
    ) -> Result<Vec<Vec<u8>>, CastError>;
}

/// Reed–Solomon over GF(2^16) (Leopard algorithm) via `reed-solomon-simd`:
/// O(n log n), SIMD, MIT/Apache-2.0. Up to 32768 source and as many repair
/// symbols per object.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReedSolomon;

/// Most source symbols an object may have.
pub const MAX_SOURCE_SYMBOLS: u32 = 32_768;

impl ErasureCode for ReedSolomon {
    fn name(&self) -> &'static str {
        "reed-solomon-simd"
    }

    fn repair_count(&self, k: u32) -> u32 {
        k.clamp(1, MAX_SOURCE_SYMBOLS)
    }

    fn encode(&self, source: &[&[u8]]) -> Result<Vec<Vec<u8>>, CastError> {
        let k = source.len() as u32;
        reed_solomon_simd::encode(k as usize, self.repair_count(k) as usize, source)
            .map_err(|e| CastError::Fec(e.to_string()))
    }

    fn decode(
        &self,
        k: u32,
        symbol_size: usize,
        symbols: &[(u32, &[u8])],
    ) -> Result<Vec<Vec<u8>>, CastError> {
        let mut out: Vec<Option<Vec<u8>>> = vec![None; k as usize];
        let mut recovery = Vec::new();
        for &(id, b) in symbols {
            if b.len() != symbol_size {
                return Err(CastError::Fec("symbol of the wrong size".into()));
            }
            if id < k {
                out[id as usize] = Some(b.to_vec());
            } else if id - k < self.repair_count(k) {
                recovery.push(((id - k) as usize, b));
            }
        }
        if out.iter().any(Option::is_none) {
            let originals = out
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.as_deref().map(|s| (i, s)));
            let restored = reed_solomon_simd::decode(
                k as usize,
                self.repair_count(k) as usize,
                originals,
                recovery,
            )
            .map_err(|e| CastError::Fec(e.to_string()))?;
            for (i, s) in restored {
                out[i] = Some(s);
            }
        }
        out.into_iter()
            .map(|s| s.ok_or_else(|| CastError::Fec("not enough symbols".into())))
            .collect()
    }
}

/// Number of source symbols for an object.
pub fn source_symbols(len: usize, symbol_size: usize) -> u32 {
    len.div_ceil(symbol_size).max(1) as u32
}

/// Source symbol `i` of `object`, zero-padded to `symbol_size`.
pub fn source_symbol(object: &[u8], symbol_size: usize, i: u32, out: &mut Vec<u8>) {
    out.clear();
    let start = (i as usize * symbol_size).min(object.len());
    let end = (start + symbol_size).min(object.len());
    out.extend_from_slice(&object[start..end]);
    out.resize(symbol_size, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_symbols_rebuild_the_object() {
        let s = 64;
        let obj: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let k = source_symbols(obj.len(), s);
        let mut src = Vec::new();
        for i in 0..k {
            let mut b = Vec::new();
            source_symbol(&obj, s, i, &mut b);
            src.push(b);
        }
        let refs: Vec<&[u8]> = src.iter().map(|v| v.as_slice()).collect();
        let rs = ReedSolomon;
        let repair = rs.encode(&refs).unwrap();
        assert_eq!(repair.len() as u32, rs.repair_count(k));
        // Drop every third source symbol, fill in with repairs.
        let mut have: Vec<(u32, &[u8])> = (0..k)
            .filter(|i| i % 3 != 0)
            .map(|i| (i, refs[i as usize]))
            .collect();
        let missing = k as usize - have.len();
        for (j, r) in repair.iter().enumerate().skip(2).take(missing) {
            have.push((k + j as u32, r.as_slice()));
        }
        let back = rs.decode(k, s, &have).unwrap();
        let joined: Vec<u8> = back.concat();
        assert_eq!(&joined[..obj.len()], &obj[..]);
    }
}
