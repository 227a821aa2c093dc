//! A server-wide cap on unacknowledged bytes across all running transfers.
//!
//! Each transfer reserves `window * blksize` bytes when it negotiates; the
//! granted windowsize is lowered to what the other transfers leave (never
//! below one block, so a busy server still serves everyone, just in lock
//! step), and the reservation goes back when the transfer ends. No clock and
//! no sockets here: a mutex-guarded counter the state machine holds a share of.

use std::sync::{Arc, Mutex};

/// The bytes in flight all transfers of one server may share.
#[derive(Debug)]
pub struct FlightBudget {
    cap: usize,
    used: Mutex<usize>,
}

impl FlightBudget {
    /// A budget of `cap` bytes, none of them reserved.
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(FlightBudget {
            cap,
            used: Mutex::new(0),
        })
    }

    /// The configured cap in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes reserved by running transfers now.
    pub fn in_use(&self) -> usize {
        *self.lock()
    }

    /// Reserves room for up to `window` blocks of `blksize` bytes: as many
    /// whole blocks as fit in what is left of the cap, at least one (even
    /// over the cap, so no client is starved), at most `window`.
    pub fn reserve(self: &Arc<Self>, window: u16, blksize: usize) -> Reservation {
        let blksize = blksize.max(1);
        let mut used = self.lock();
        let room = self.cap.saturating_sub(*used) / blksize;
        let granted = room.clamp(1, usize::from(window.max(1))) as u16;
        let bytes = usize::from(granted).saturating_mul(blksize);
        *used = used.saturating_add(bytes);
        Reservation {
            budget: self.clone(),
            bytes,
            window: granted,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // The counter stays consistent even if a holder panicked.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A transfer's share of a [`FlightBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<FlightBudget>,
    bytes: usize,
    window: u16,
}

impl Reservation {
    /// The windowsize the reservation covers.
    pub fn window(&self) -> u16 {
        self.window
    }

    /// The bytes reserved.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.lock();
        *used = used.saturating_sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_reservations_get_what_is_left_then_one_block() {
        let b = FlightBudget::new(10 * 1000);
        let r1 = b.reserve(6, 1000);
        let r2 = b.reserve(6, 1000);
        let r3 = b.reserve(6, 1000);
        assert_eq!((r1.window(), r2.window(), r3.window()), (6, 4, 1));
        assert_eq!(b.in_use(), 11_000, "the floor of one block may overshoot");
        drop(r2);
        assert_eq!(b.in_use(), 7_000);
        let r4 = b.reserve(64, 1000);
        assert_eq!(r4.window(), 3);
        drop((r1, r3, r4));
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let b = FlightBudget::new(0);
        assert_eq!(b.reserve(0, 0).window(), 1);
        assert_eq!(b.reserve(u16::MAX, usize::MAX).window(), 1);
        assert_eq!(b.in_use(), 0);
        let big = FlightBudget::new(usize::MAX);
        let r = big.reserve(u16::MAX, 65464);
        assert_eq!(r.window(), u16::MAX);
    }
}
