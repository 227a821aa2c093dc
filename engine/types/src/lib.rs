//! The vocabulary every rackcast crate shares, defined once: a target's
//! [`MacAddr`], parsed and normalised at the edge, and the network
//! [`Interface`] lookup (address and MTU) that netboot, the cast sockets and
//! the server all need.

#![forbid(unsafe_code)]

#[cfg(feature = "iface")]
mod iface;
mod mac;

#[cfg(feature = "iface")]
pub use iface::{Interface, InterfaceError};
pub use mac::{MacAddr, MacParseError};
