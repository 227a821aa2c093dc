//! Image format integration tests: real files, real compression, asserting on
//! bytes restored and on the exact chunk and offset every corruption names.

mod corruption;
mod data;
mod filesystems;
mod roundtrip;
mod signing;
