//! Where a tensor's storage lives. Every op dispatches on the storage's
//! device (see [`crate::storage::Storage`]); autodiff and model code never
//! look at it, which is what lets a second device slot in without touching them.

use crate::error::Result;
use std::fmt;

/// Bytes reserved from and in use in a CUDA device's memory pool.
pub use noisegrad_kernels::cuda::PoolStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal; tensors there are f32.
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

/// Device controls: what a caller may ask of a device without reaching into
/// its backend. On the CPU each is a no-op (or `None`).
impl Device {
    /// Lets f32 matrix products use TF32 tensor cores (PyTorch's
    /// `allow_tf32`: ~10-bit mantissa products, f32 accumulation). Opens the
    /// device, so an unusable GPU is an error here.
    pub fn set_tf32(self, on: bool) -> Result<()> {
        if let Device::Cuda(i) = self {
            crate::cuda_backend::cuda_device(i)?.set_tf32(on);
        }
        Ok(())
    }

    /// Waits until all work queued on the device has finished.
    pub fn synchronize(self) -> Result<()> {
        if let Device::Cuda(i) = self {
            crate::cuda_backend::cuda_device(i)?.synchronize()?;
        }
        Ok(())
    }

    /// What the device is, e.g. `NVIDIA H100 80GB HBM3 (sm_90)` or `cpu`.
    pub fn describe(self) -> Result<String> {
        Ok(match self {
            Device::Cpu => "cpu".into(),
            Device::Cuda(i) => {
                let dev = crate::cuda_backend::cuda_device(i)?;
                format!("{} ({})", dev.name(), dev.arch())
            }
        })
    }

    /// The CUDA memory pool's counters (`None` on the CPU, which has no pool;
    /// see [`crate::memory`] for the per-device tensor bytes).
    pub fn pool_stats(self) -> Result<Option<PoolStats>> {
        Ok(match self {
            Device::Cpu => None,
            Device::Cuda(i) => Some(crate::cuda_backend::cuda_device(i)?.pool_stats()),
        })
    }

    /// Sets the pool's peak to what is in use now, to measure one region.
    pub fn reset_pool_peak(self) -> Result<()> {
        if let Device::Cuda(i) = self {
            crate::cuda_backend::cuda_device(i)?.reset_peak();
        }
        Ok(())
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// Parses `cpu`, `cuda` (= `cuda:0`) or `cuda:N`, as PyTorch spells them.
    fn from_str(s: &str) -> std::result::Result<Device, String> {
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
