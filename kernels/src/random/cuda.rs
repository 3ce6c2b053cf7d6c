//! Launcher for `random.cu`: uniform and normal fills from the Philox
//! stream, equal to the CPU's fills for the same seed and blocks.

use crate::cuda::abi::Arg;
use crate::cuda::{CudaDevice, DeviceBuffer, Result, grid_1d};

const MODULE: &str = "random";

/// `n` values from Philox blocks `first..first + ceil(n / 4)` of stream
/// `seed`: U(0, 1) (open interval), or N(0, 1) by Box–Muller when
/// `normal`, exactly as `CpuStorage::rand` computes them. The caller
/// reserves the blocks on its generator (`Philox::reserve_blocks`).
pub fn philox_fill(
    dev: &CudaDevice,
    n: usize,
    seed: u64,
    first: u64,
    normal: bool,
) -> Result<DeviceBuffer> {
    let y = dev.alloc(n)?;
    if n == 0 {
        return Ok(y);
    }
    dev.launch(
        MODULE,
        "philox_fill",
        grid_1d(dev, n.div_ceil(4)),
        &[
            Arg::Ptr(y.ptr()),
            Arg::I64(n as i64),
            Arg::U32(seed as u32),
            Arg::U32((seed >> 32) as u32),
            // Same 8 bytes as the kernel's `unsigned long long`.
            Arg::I64(first as i64),
            Arg::I32(normal as i32),
        ],
    )?;
    Ok(y)
}
