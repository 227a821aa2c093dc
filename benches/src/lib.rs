//! Benches live in `benches/` beside this crate; see `benches/*.sh` for peer comparisons.
