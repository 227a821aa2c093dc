//! TFTP: wire format, the sans-IO transfer state machine and the tokio shell.

mod batch;
pub mod packet;
pub mod server;
pub mod transfer;

pub use packet::{ErrorCode, Packet, Request};
pub use server::{TftpServer, TftpStats};
pub use transfer::{Negotiated, Outcome, Transfer, TransferLimits, Transmit};
