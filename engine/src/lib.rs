//! rackcast engine: the sans-IO cores every other crate builds on.
//!
//! - [`image`]: the on-disk image format (header, chunk frames, index,
//!   trailer, signing), capture, verification and a simple restore;
//!   `docs/image-format.md` has its byte tables.
//! - [`cast`]: the multicast protocol's wire format, FEC, sender and
//!   receiver state machines, pacing and rate control; the sockets that
//!   drive them are in `rackcast-cast-net`, the protocol in
//!   `docs/cast-protocol.md`.
//! - [`sched`]: jobs, tasks, targets and cast sessions (the scheduler and
//!   its session planner) and the wire types of the server's APIs.
//!
//! Nothing here owns a socket, a database or an async runtime, and nothing
//! reads the clock inside a state machine: time is an argument.
#![forbid(unsafe_code)]

pub mod cast;
pub mod image;
pub mod sched;
