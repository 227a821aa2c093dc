//! The vocabulary every rackcast crate shares, defined once: a target's
//! [`MacAddr`], parsed and normalised at the edge, the network
//! [`Interface`] lookup (address and MTU) that netboot, the cast sockets and
//! the server all need, and the words of power control ([`PowerOp`],
//! [`PowerState`], [`BootDevice`]).

#![forbid(unsafe_code)]

#[cfg(feature = "iface")]
mod iface;
mod mac;
mod power;

#[cfg(feature = "iface")]
pub use iface::{Interface, InterfaceError};
pub use mac::{MacAddr, MacParseError};
pub use power::{BootDevice, PowerOp, PowerState, WordError};

/// An error and its causes on one line, `what failed: why: root cause`, for
/// messages that leave the process (task reports, events, logs). Errors
/// keep their causes as `source()`, so their own text names one layer.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(c) = cause {
            // Some errors print their cause in their own text too: say it
            // once.
            let c_text = c.to_string();
            if !text.ends_with(&c_text) {
                text.push_str(": ");
                text.push_str(&c_text);
            }
            cause = c.source();
        }
        f.write_str(&text)
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
        let e = Inline(std::io::Error::other("disk on fire"));
        assert_eq!(ErrorChain(&e).to_string(), "writing: disk on fire");
    }

    /// An error that prints its cause itself.
    #[derive(Debug, thiserror::Error)]
    #[error("writing: {0}")]
    struct Inline(#[source] std::io::Error);
}
