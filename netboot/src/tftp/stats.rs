//! What the TFTP server counts, and how a transfer's end is counted and
//! reported: shared by the server (transfers that end before a shard takes
//! them) and the shards (the rest).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::transfer::Outcome;
use crate::events::{BootEvent, Events, Step};

/// Counters of the TFTP server.
#[derive(Debug, Default)]
pub struct TftpStats {
    /// Read requests received.
    pub requests: AtomicU64,
    /// Transfers acknowledged to the last block.
    pub completed: AtomicU64,
    /// File bytes of the transfers acknowledged to the last block.
    pub bytes: AtomicU64,
    /// Transfers ended by the client's ERROR or by its silence.
    pub aborted: AtomicU64,
    /// Requests refused (not found, traversal, write, bad mode, caps).
    pub refused: AtomicU64,
    /// Requests refused because the server ran as many transfers as
    /// `max_transfers` allows (answered with ERROR 0).
    pub over_server_cap: AtomicU64,
    /// Requests refused because their client address ran as many transfers
    /// as `max_transfers_per_client` allows (answered with ERROR 0).
    pub over_client_cap: AtomicU64,
    /// Datagrams that did not parse; dropped.
    pub malformed: AtomicU64,
    /// Transfers running now.
    pub active: AtomicU64,
    /// Datagrams that reached a transfer's port from another address than
    /// its client (answered with ERROR 5, unless they were an ERROR).
    pub stray: AtomicU64,
    /// Transfers granted a smaller windowsize because of the server-wide cap
    /// on bytes in flight.
    pub window_capped: AtomicU64,
    /// Transfers whose blksize the path MTU towards the client lowered.
    pub blksize_capped_by_mtu: AtomicU64,
    /// Requests repeated by a client before its transfer's first block got
    /// through; the running transfer answers them. Counts too the
    /// repetitions dropped on arrival while two of that port's requests
    /// were in hand.
    pub duplicates: AtomicU64,
}

/// Counts a transfer's end and reports it as a boot step.
pub(super) fn finish_event(
    stats: &TftpStats,
    events: &Events,
    peer: SocketAddr,
    filename: &str,
    len: usize,
    result: std::result::Result<Outcome, String>,
) {
    let (counter, step, detail) = match result {
        Ok(Outcome::Complete) => (
            &stats.completed,
            Step::TftpDone,
            format!("{filename} ({len} bytes)"),
        ),
        Ok(Outcome::ClientError { code, message }) => (
            &stats.aborted,
            Step::TftpFailed,
            format!(
                "{filename}: client error {code} {message:?}{}",
                if code == 8 {
                    " (size probe, normal)"
                } else {
                    ""
                }
            ),
        ),
        Ok(Outcome::TimedOut) => (
            &stats.aborted,
            Step::TftpFailed,
            format!("{filename}: client went silent"),
        ),
        Err(reason) => (
            &stats.aborted,
            Step::TftpFailed,
            format!("{filename}: {reason}"),
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if step == Step::TftpDone {
        stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
    }
    events.emit(BootEvent {
        mac: None,
        peer,
        step,
        detail,
    });
}
