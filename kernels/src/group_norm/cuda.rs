//! Launchers for `group_norm.cu`: group normalisation with affine γ/β and
//! an optional fused SiLU, forward and backward, with the same saved
//! statistics (μ and 1/σ per (n, group)) and formulas as
//! [`crate::group_norm::cpu`].
//!
//! Forward is one kernel, one block per (n, group). Backward is two: one
//! block per (n, group) for dx and the per-(n, channel) sums Σdh and
//! r·Σdh·(x − μ), then one block per channel reducing those over n into dβ
//! and dγ (a fixed order, so no atomics and deterministic results).

use super::GroupNormDims;
use crate::cuda::abi::Arg;
use crate::cuda::{BLOCK, CudaDevice, CudaError, DeviceBuffer, Result, grid_rows};
use crate::elementwise::cuda::Dense;
use crate::elementwise::cuda::View;

const MODULE: &str = "group_norm";

/// Threads per block for a group of `len` elements: a multiple of 32 (the
/// block reductions need whole warps), up to [`BLOCK`]; small groups (a
/// 4×4 map of 8 channels is 128 values) get small blocks instead of idle
/// threads.
pub fn threads_for(len: usize) -> u32 {
    len.next_multiple_of(32).clamp(32, BLOCK as usize) as u32
}

fn int(what: &str, v: usize) -> Result<Arg> {
    i32::try_from(v)
        .map(Arg::I32)
        .map_err(|_| CudaError::Driver {
            op: "group_norm",
            msg: format!("{what} = {v} does not fit the kernels' 32-bit sizes"),
        })
}

fn check(dims: &GroupNormDims) -> Result<()> {
    if dims.groups == 0 || !dims.channels.is_multiple_of(dims.groups) {
        return Err(CudaError::Driver {
            op: "group_norm",
            msg: format!(
                "{} channels do not split into {} groups",
                dims.channels, dims.groups
            ),
        });
    }
    Ok(())
}

/// Forward group norm of x `[N, C, S]` (any view) with γ, β `[C]`:
/// returns (y `[N, C, S]`, mean `[N·G]`, rstd `[N·G]`), all contiguous.
pub fn forward(
    dev: &CudaDevice,
    dims: GroupNormDims,
    x: View,
    gamma: View,
    beta: View,
    eps: f32,
    silu: bool,
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    check(&dims)?;
    let numel = dims.n * dims.channels * dims.spatial;
    let cpg = dims.channels / dims.groups;
    let tasks = dims.n * dims.groups;
    let m = cpg * dims.spatial;
    let y = dev.alloc(numel)?;
    let (mean, rstd) = (dev.alloc(tasks)?, dev.alloc(tasks)?);
    if m == 0 || tasks == 0 {
        // Empty groups: the CPU kernel saves μ = r = 0.
        mean.memset_zero(dev)?;
        rstd.memset_zero(dev)?;
        return Ok((y, mean, rstd));
    }
    int("batch × groups (blocks)", tasks)?;
    let op = "group_norm";
    let x = Dense::new(dev, x, numel, op)?;
    let gamma = Dense::new(dev, gamma, dims.channels, op)?;
    let beta = Dense::new(dev, beta, dims.channels, op)?;
    dev.launch(
        MODULE,
        "group_norm_forward",
        grid_rows(tasks, threads_for(m), 0),
        &[
            Arg::Ptr(x.ptr()),
            Arg::Ptr(gamma.ptr()),
            Arg::Ptr(beta.ptr()),
            Arg::Ptr(y.ptr()),
            Arg::Ptr(mean.ptr()),
            Arg::Ptr(rstd.ptr()),
            int("groups", dims.groups)?,
            int("channels per group", cpg)?,
            Arg::I64(dims.spatial as i64),
            Arg::F32(eps),
            Arg::I32(silu as i32),
        ],
    )?;
    Ok((y, mean, rstd))
}

/// Backward group norm from x, ∂L/∂y (any views, `[N, C, S]`), γ, β and
/// the saved `mean`, `rstd` (`[N·G]`, contiguous): returns (dx `[N, C, S]`,
/// dγ `[C]`, dβ `[C]`), all contiguous.
pub fn backward(
    dev: &CudaDevice,
    dims: GroupNormDims,
    (x, dy): (View, View),
    (gamma, beta): (View, View),
    (mean, rstd): (&DeviceBuffer, &DeviceBuffer),
    silu: bool,
) -> Result<(DeviceBuffer, DeviceBuffer, DeviceBuffer)> {
    check(&dims)?;
    let (n, c) = (dims.n, dims.channels);
    let numel = n * c * dims.spatial;
    let cpg = c / dims.groups;
    let tasks = n * dims.groups;
    let m = cpg * dims.spatial;
    let dx = dev.alloc(numel)?;
    let (dgamma, dbeta) = (dev.alloc(c)?, dev.alloc(c)?);
    if m == 0 || tasks == 0 {
        // Nothing to sum: dγ = dβ = 0 (dx is empty).
        dgamma.memset_zero(dev)?;
        dbeta.memset_zero(dev)?;
        return Ok((dx, dgamma, dbeta));
    }
    if mean.len() < tasks || rstd.len() < tasks {
        return Err(CudaError::Driver {
            op: "group_norm_backward",
            msg: format!("saved statistics hold fewer than N·G = {tasks} values"),
        });
    }
    int("batch × groups (blocks)", tasks)?;
    int("channels (blocks)", c)?;
    let op = "group_norm_backward";
    let x = Dense::new(dev, x, numel, op)?;
    let dy = Dense::new(dev, dy, numel, op)?;
    let gamma = Dense::new(dev, gamma, c, op)?;
    let beta = Dense::new(dev, beta, c, op)?;
    // Per-(n, c) sums of dh and r·dh·(x − μ), reduced over n below.
    let (s1, s2) = (dev.alloc(n * c)?, dev.alloc(n * c)?);
    dev.launch(
        MODULE,
        "group_norm_backward_input",
        grid_rows(tasks, threads_for(m), 0),
        &[
            Arg::Ptr(x.ptr()),
            Arg::Ptr(dy.ptr()),
            Arg::Ptr(gamma.ptr()),
            Arg::Ptr(beta.ptr()),
            Arg::Ptr(mean.ptr()),
            Arg::Ptr(rstd.ptr()),
            Arg::Ptr(dx.ptr()),
            Arg::Ptr(s1.ptr()),
            Arg::Ptr(s2.ptr()),
            int("groups", dims.groups)?,
            int("channels per group", cpg)?,
            Arg::I64(dims.spatial as i64),
            Arg::I32(silu as i32),
        ],
    )?;
    dev.launch(
        MODULE,
        "group_norm_param_grads",
        grid_rows(c, threads_for(n), 0),
        &[
            Arg::Ptr(s1.ptr()),
            Arg::Ptr(s2.ptr()),
            Arg::Ptr(dgamma.ptr()),
            Arg::Ptr(dbeta.ptr()),
            Arg::I64(n as i64),
            Arg::I64(c as i64),
        ],
    )?;
    Ok((dx, dgamma, dbeta))
}

#[cfg(test)]
mod tests {
    use super::threads_for;

    #[test]
    fn blocks_are_whole_warps_up_to_256() {
        assert_eq!(threads_for(0), 32);
        assert_eq!(threads_for(1), 32);
        assert_eq!(threads_for(32), 32);
        assert_eq!(threads_for(33), 64);
        assert_eq!(threads_for(128), 128);
        assert_eq!(threads_for(200), 224);
        assert_eq!(threads_for(4096), 256);
        for len in 0..1000 {
            let t = threads_for(len);
            assert!(t.is_multiple_of(32) && (32..=256).contains(&t));
        }
    }
}
