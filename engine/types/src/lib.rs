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

/// An error and its causes on one line, `what failed: why: root cause`, for
/// messages that leave the process (task reports, events, logs). Errors
/// keep their causes as `source()`, so their own text names one layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_prints_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(ErrorChain(&e).to_string(), "outer: disk on fire");
    }
}
