//! Where a tensor's storage lives. Every op dispatches on the storage's
//! device (see [`crate::storage::Storage`]); autodiff and model code never
//! look at it, which is what lets a second device slot in without touching them.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal. Storage for it arrives with the CUDA backend;
    /// until then creating a tensor there is an `Unsupported` error.
    Cuda(usize),
}

impl Device {
    /// Index into per-device counters (see [`crate::memory`]).
    pub(crate) fn slot(self) -> usize {
        match self {
            Device::Cpu => 0,
            Device::Cuda(i) => 1 + i.min(6),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
