//! Boot events: one log line per boot step per MAC, and a feed tests
//! subscribe to (the deployment server logs them).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::arch::MacAddr;

/// A step of a target's boot, as seen by netboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// A DHCP or proxy-DHCP OFFER was sent.
    Offer,
    /// A DHCP ACK was sent (full mode).
    Ack,
    /// A DHCP NAK was sent (full mode).
    Nak,
    /// A boot-server ACK was sent on port 4011.
    BootServerAck,
    /// The client was deliberately not answered (not a boot client, or policy).
    Ignored,
    /// A lease was released or declined.
    Released,
    /// A TFTP transfer started.
    TftpStart,
    /// A TFTP transfer completed.
    TftpDone,
    /// A TFTP transfer ended early (client error, timeout) or was refused.
    TftpFailed,
    /// An iPXE script was served over HTTP.
    HttpScript,
    /// A file was served over HTTP.
    HttpFile,
}

/// One boot step of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEvent {
    /// The client's MAC when known (DHCP always; TFTP/HTTP via the IP map).
    pub mac: Option<MacAddr>,
    /// The client's address.
    pub peer: SocketAddr,
    /// What happened.
    pub step: Step,
    /// Details (boot file, arch, error).
    pub detail: String,
}

impl fmt::Display for BootEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mac {
            Some(m) => write!(f, "{m} ")?,
            None => write!(f, "? ")?,
        }
        write!(f, "{:?} from {}: {}", self.step, self.peer, self.detail)
    }
}

/// Where components report boot steps.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<BootEvent>,
    macs: Arc<Mutex<HashMap<IpAddr, MacAddr>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A new feed; events sent with no subscriber are only logged.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Events {
            tx,
            macs: Arc::default(),
        }
    }

    /// Logs and publishes one event.
    pub fn emit(&self, mut ev: BootEvent) {
        if ev.mac.is_none() {
            ev.mac = self.mac_of(ev.peer.ip());
        }
        tracing::info!(target: "rackcast::netboot", "{ev}");
        let _ = self.tx.send(ev);
    }

    /// Receives every later event.
    pub fn subscribe(&self) -> broadcast::Receiver<BootEvent> {
        self.tx.subscribe()
    }

    /// Remembers which MAC uses `ip`, so TFTP and HTTP lines name the MAC.
    pub fn learn(&self, ip: IpAddr, mac: MacAddr) {
        if ip.is_unspecified() {
            return;
        }
        if let Ok(mut m) = self.macs.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(ip, mac);
        }
    }

    /// The MAC last seen using `ip`.
    pub fn mac_of(&self, ip: IpAddr) -> Option<MacAddr> {
        self.macs.lock().ok()?.get(&ip).copied()
    }
}
