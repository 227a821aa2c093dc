//! TFTP: wire format, the sans-IO transfer state machine and the tokio shell.

pub mod admission;
pub mod budget;
mod mtu;
mod netascii;
mod outbox;
pub mod packet;
pub mod server;
mod shard;
mod stats;
pub mod transfer;

pub use admission::{Permit, Refused, TransferCaps};
pub use budget::{FlightBudget, Reservation};
pub use mtu::path_mtu;
pub use packet::{ErrorCode, Packet, Request};
pub use server::TftpServer;
pub use stats::TftpStats;
pub use transfer::{blksize_for_mtu, Negotiated, Outcome, Transfer, TransferLimits, Transmit};
