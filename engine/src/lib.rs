//! rackcast engine: the core library.
//!
//! - [`image`]: the on-disk image format (header, chunk frames, index,
//!   trailer, signing), capture, verification and a simple restore.
#![forbid(unsafe_code)]

pub mod cast;
pub mod image;
pub mod sched;
pub mod server;
pub mod store;
