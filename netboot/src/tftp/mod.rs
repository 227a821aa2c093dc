//! TFTP: wire format, the sans-IO transfer state machine and the tokio shell.

mod batch;
pub mod budget;
pub mod packet;
pub mod server;
pub mod transfer;

pub use budget::{FlightBudget, Reservation};
pub use packet::{ErrorCode, Packet, Request};
pub use server::{TftpServer, TftpStats};
pub use transfer::{blksize_for_mtu, Negotiated, Outcome, Transfer, TransferLimits, Transmit};
