//! rackcast agent: the target side of an imaging job.
//!
//! - [`control`]: the control loop `rackcast-agent` runs: register with the
//!   deployment server, follow its directives (run a script, capture and
//!   upload a disk, receive a multicast image, reboot), report on them.
//! - [`cli`]: the command line of `rackcast-agent` (and of its alias
//!   `rackcast agent`).
//!
//! The disk writer, restore and multicast receive it drives are the
//! `rackcast-writer` crate, usable without this control loop.

#![deny(unsafe_code)]

pub mod cli;
pub mod control;
mod error;

pub use control::{run, AgentConfig, KernelArgs, Outcome, RebootMode};
pub use error::{AgentError, Result};
