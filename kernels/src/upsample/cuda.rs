//! Launchers for `upsample.cu`: nearest-neighbour ×2 upsampling of
//! `[planes, h, w]` maps (planes = N·C) and its adjoint, as
//! [`crate::upsample::cpu`]. Pure data movement: grid-stride loops, one
//! thread per element written.

use crate::cuda::abi::Arg;
use crate::cuda::{CudaDevice, DeviceBuffer, Result, grid_1d};
use crate::elementwise::cuda::Dense;
use crate::elementwise::cuda::View;

const MODULE: &str = "upsample";

/// y `[planes, 2h, 2w]` (contiguous) from x `[planes, h, w]` (any view).
pub fn forward(
    dev: &CudaDevice,
    x: View,
    planes: usize,
    h: usize,
    w: usize,
) -> Result<DeviceBuffer> {
    let n = planes * h * w;
    let y = dev.alloc(4 * n)?;
    if n == 0 {
        return Ok(y);
    }
    let x = Dense::new(dev, x, n, "upsample_nearest2x")?;
    dev.launch(
        MODULE,
        "upsample_nearest2x",
        grid_1d(dev, 4 * n),
        &[
            Arg::Ptr(x.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::I64(planes as i64),
            Arg::I64(h as i64),
            Arg::I64(w as i64),
        ],
    )?;
    Ok(y)
}

/// dx `[planes, h, w]` (contiguous): each value the sum of its 2×2 block
/// of dy `[planes, 2h, 2w]` (any view).
pub fn backward(
    dev: &CudaDevice,
    dy: View,
    planes: usize,
    h: usize,
    w: usize,
) -> Result<DeviceBuffer> {
    let n = planes * h * w;
    let dx = dev.alloc(n)?;
    if n == 0 {
        return Ok(dx);
    }
    let dy = Dense::new(dev, dy, 4 * n, "upsample_nearest2x_backward")?;
    dev.launch(
        MODULE,
        "upsample_nearest2x_backward",
        grid_1d(dev, n),
        &[
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(dx.ptr()),
            Arg::I64(planes as i64),
            Arg::I64(h as i64),
            Arg::I64(w as i64),
        ],
    )?;
    Ok(dx)
}
