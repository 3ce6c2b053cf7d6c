//! Where a tensor's storage lives. Every op dispatches on the storage's
//! device (see [`crate::storage::Storage`]); autodiff and model code never
//! look at it, which is what lets a second device slot in without touching them.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (see `cuda_backend`); tensors there are f32.
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

impl Device {
    /// Whether a CUDA GPU can be used on this machine (driver and device
    /// present). Never panics, also without any CUDA library installed.
    pub fn cuda_available() -> bool {
        noisegrad_kernels::cuda::is_available()
    }

    /// `Cuda(0)` when a GPU is available, else `Cpu`.
    pub fn cuda_if_available() -> Device {
        if Device::cuda_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, as PyTorch spells them.
    fn from_str(s: &str) -> Result<Device, String> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device `{other}` (expected cpu, cuda or cuda:N)")),
        }
    }
}
