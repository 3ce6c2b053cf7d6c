//! Live and peak bytes of tensor storage, per device.
//!
//! Every storage buffer holds a [`MemTicket`]; creating one adds its bytes,
//! dropping it subtracts them. Benchmarks read [`stats`] to report the peak
//! memory of a forward+backward pass.

use crate::Device;
use std::sync::atomic::{AtomicUsize, Ordering};

const SLOTS: usize = 8;
static LIVE: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static PEAK: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live tensor storage now.
    pub live_bytes: usize,
    /// Highest `live_bytes` since start or the last [`reset_peak`].
    pub peak_bytes: usize,
}

pub fn stats(device: Device) -> MemoryStats {
    let s = device.slot();
    MemoryStats {
        live_bytes: LIVE[s].load(Ordering::Relaxed),
        peak_bytes: PEAK[s].load(Ordering::Relaxed),
    }
}

/// Sets the peak to the current live bytes, to measure one region.
pub fn reset_peak(device: Device) {
    let s = device.slot();
    PEAK[s].store(LIVE[s].load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Accounts `bytes` on `device` for as long as it lives.
#[derive(Debug)]
pub struct MemTicket {
    slot: usize,
    bytes: usize,
}

impl MemTicket {
    pub fn new(device: Device, bytes: usize) -> Self {
        let slot = device.slot();
        let now = LIVE[slot].fetch_add(bytes, Ordering::Relaxed) + bytes;
        PEAK[slot].fetch_max(now, Ordering::Relaxed);
        Self { slot, bytes }
    }
}

impl Drop for MemTicket {
    fn drop(&mut self) {
        LIVE[self.slot].fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
