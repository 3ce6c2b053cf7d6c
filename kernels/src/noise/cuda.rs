//! Launchers for `noise.cu`: forward noising, L_simple with its gradient,
//! and the reverse step, on contiguous `[N, per-sample...]` buffers with
//! per-sample scalars (the equations of [`crate::noise::cpu`]).
//!
//! The per-sample scalars are uploaded as a small f32 table (2 or 8 floats
//! per sample). [`CudaDevice::upload`] waits for the stream (the host
//! slice must outlive the copy; a copy from pageable memory may wait for
//! the stream anyway), so `q_sample` and `denoise_step` each cost one wait:
//! in training it falls where the step uploads its batch, in sampling once
//! per reverse step, behind a whole U-Net forward. A pinned staging buffer
//! in the device would remove it.
//!
//! L_simple's sum is reduced on the device into a one-element buffer: the
//! loss never comes back to the host unless the caller reads it.

use super::{QSampleCoef, StepCoef};
use crate::cuda::abi::{Arg, Param};
use crate::cuda::{BLOCK, CudaDevice, CudaError, DeviceBuffer, Result, grid_1d, grid_rows};

const MODULE: &str = "noise";

/// Floats per sample in the [`step_table`] (the layout `denoise_step` reads).
pub const STEP_COEFS: usize = 8;

/// `[√ᾱ, √(1−ᾱ)]` per sample, in f32 (as the CPU converts them).
pub fn q_sample_table(coefs: &[QSampleCoef]) -> Vec<f32> {
    coefs
        .iter()
        .flat_map(|c| [c.sqrt_alpha_bar as f32, c.sqrt_one_minus_alpha_bar as f32])
        .collect()
}

/// [`STEP_COEFS`] floats per sample, in the order `denoise_step` reads:
/// x0_from_xt, x0_from_eps, −x0_clip, x0_clip, x0_weight, xt_weight,
/// eps_weight, sigma (each converted to f32 as the CPU does).
pub fn step_table(coefs: &[StepCoef]) -> Vec<f32> {
    coefs
        .iter()
        .flat_map(|c| {
            [
                c.x0_from_xt as f32,
                c.x0_from_eps as f32,
                (-c.x0_clip) as f32,
                c.x0_clip as f32,
                c.x0_weight as f32,
                c.xt_weight as f32,
                c.eps_weight as f32,
                c.sigma as f32,
            ]
        })
        .collect()
}

/// Elements per sample: `n` split into `samples` equal rows.
fn per_sample(op: &'static str, n: usize, samples: usize) -> Result<usize> {
    if samples == 0 || !n.is_multiple_of(samples) {
        return Err(CudaError::Driver {
            op,
            msg: format!("{n} elements do not split into {samples} samples"),
        });
    }
    Ok(n / samples)
}

fn q_sample_params(x0: u64, eps: u64, coefs: u64, per: usize, n: usize, out: u64) -> [Param; 6] {
    [
        Param("x0", Arg::Ptr(x0)),
        Param("eps", Arg::Ptr(eps)),
        Param("coefs", Arg::Ptr(coefs)),
        Param("per", Arg::I64(per as i64)),
        Param("n", Arg::I64(n as i64)),
        Param("out", Arg::Ptr(out)),
    ]
}

fn l_simple_partials_params(
    pred: u64,
    eps: u64,
    n: usize,
    scale: f32,
    grad: u64,
    partials: u64,
) -> [Param; 6] {
    [
        Param("pred", Arg::Ptr(pred)),
        Param("eps", Arg::Ptr(eps)),
        Param("n", Arg::I64(n as i64)),
        Param("scale", Arg::F32(scale)),
        Param("grad", Arg::Ptr(grad)),
        Param("partials", Arg::Ptr(partials)),
    ]
}

fn l_simple_finalize_params(partials: u64, count: usize, n: usize, loss: u64) -> [Param; 4] {
    [
        Param("partials", Arg::Ptr(partials)),
        Param("count", Arg::I64(count as i64)),
        Param("n", Arg::I64(n as i64)),
        Param("loss", Arg::Ptr(loss)),
    ]
}

fn denoise_step_params(
    x: u64,
    eps: u64,
    z: u64,
    coefs: u64,
    per: usize,
    n: usize,
    out: u64,
) -> [Param; 7] {
    [
        Param("x", Arg::Ptr(x)),
        Param("eps", Arg::Ptr(eps)),
        Param("z", Arg::Ptr(z)),
        Param("coefs", Arg::Ptr(coefs)),
        Param("per", Arg::I64(per as i64)),
        Param("n", Arg::I64(n as i64)),
        Param("out", Arg::Ptr(out)),
    ]
}

/// x_t = √ᾱ·x_0 + √(1−ᾱ)·ε per sample, over `n` contiguous elements at
/// `x0` and `eps` (sample k uses `coefs[k]`).
pub fn q_sample(
    dev: &CudaDevice,
    x0: u64,
    eps: u64,
    coefs: &[QSampleCoef],
    n: usize,
) -> Result<DeviceBuffer> {
    let out = dev.alloc(n)?;
    if n == 0 {
        return Ok(out);
    }
    let per = per_sample("q_sample", n, coefs.len())?;
    let table = dev.upload(&q_sample_table(coefs))?;
    let params = q_sample_params(x0, eps, table.ptr(), per, n, out.ptr());
    dev.launch_params(MODULE, "q_sample", grid_1d(dev, n), &params)?;
    Ok(out)
}

/// L_simple = mean((pred − eps)²) over `n` contiguous elements, as a
/// one-element device buffer, and the gradient 2(pred − eps)/n in the same
/// pass when `with_grad`. The sum is reduced on the device in f64: block
/// partials, then one block adds them in a fixed order.
pub fn l_simple(
    dev: &CudaDevice,
    pred: u64,
    eps: u64,
    n: usize,
    with_grad: bool,
) -> Result<(DeviceBuffer, Option<DeviceBuffer>)> {
    if n == 0 {
        // The mean of nothing, as the CPU kernel (and PyTorch) return.
        let loss = crate::elementwise::cuda::fill(dev, 1, f32::NAN)?;
        return Ok((loss, with_grad.then(|| dev.alloc(0)).transpose()?));
    }
    let cfg = grid_1d(dev, n);
    let count = cfg.grid_dim.0 as usize;
    // f64 partials: two f32 words each.
    let partials = dev.alloc(2 * count)?;
    let grad = with_grad.then(|| dev.alloc(n)).transpose()?;
    let scale = (2.0 / n as f64) as f32;
    let grad_ptr = grad.as_ref().map_or(0, DeviceBuffer::ptr);
    let params = l_simple_partials_params(pred, eps, n, scale, grad_ptr, partials.ptr());
    dev.launch_params(MODULE, "l_simple_partials", cfg, &params)?;
    let loss = dev.alloc(1)?;
    let params = l_simple_finalize_params(partials.ptr(), count, n, loss.ptr());
    dev.launch_params(MODULE, "l_simple_finalize", grid_rows(1, BLOCK, 0), &params)?;
    Ok((loss, grad))
}

/// One reverse step per sample (see [`StepCoef`]) over `n` contiguous
/// elements; `z` is the noise (`None`: z = 0).
pub fn denoise_step(
    dev: &CudaDevice,
    x: u64,
    eps: u64,
    z: Option<u64>,
    coefs: &[StepCoef],
    n: usize,
) -> Result<DeviceBuffer> {
    let out = dev.alloc(n)?;
    if n == 0 {
        return Ok(out);
    }
    let per = per_sample("denoise_step", n, coefs.len())?;
    let table = dev.upload(&step_table(coefs))?;
    let params = denoise_step_params(x, eps, z.unwrap_or(0), table.ptr(), per, n, out.ptr());
    dev.launch_params(MODULE, "denoise_step", grid_1d(dev, n), &params)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::emu::source::assert_launcher_matches as check;

    const SRC: &str = include_str!("noise.cu");

    #[test]
    fn launcher_arguments_match_the_kernel_signatures() {
        check(SRC, "q_sample", &q_sample_params(1, 2, 3, 4, 5, 6));
        check(
            SRC,
            "l_simple_partials",
            &l_simple_partials_params(1, 2, 3, 0.5, 4, 5),
        );
        check(
            SRC,
            "l_simple_finalize",
            &l_simple_finalize_params(1, 2, 3, 4),
        );
        check(
            SRC,
            "denoise_step",
            &denoise_step_params(1, 2, 3, 4, 5, 6, 7),
        );
    }

    #[test]
    fn coefficient_tables_follow_the_kernel_layout() {
        let q = [
            QSampleCoef::from_alpha_bar(0.25),
            QSampleCoef::from_alpha_bar(0.64),
        ];
        let f = |v: f64| v.sqrt() as f32;
        assert_eq!(
            q_sample_table(&q),
            [f(0.25), f(0.75), f(0.64), f(1.0 - 0.64)]
        );
        let c = StepCoef {
            x0_from_xt: 1.0,
            x0_from_eps: 2.0,
            x0_clip: f64::INFINITY,
            x0_weight: 4.0,
            xt_weight: 5.0,
            eps_weight: 6.0,
            sigma: 7.0,
        };
        let t = step_table(&[StepCoef { x0_clip: 3.0, ..c }, c]);
        assert_eq!(t.len(), 2 * STEP_COEFS);
        assert_eq!(&t[..8], &[1.0, 2.0, -3.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        assert_eq!(&t[10..12], &[f32::NEG_INFINITY, f32::INFINITY]);
    }

    #[test]
    fn samples_must_split_the_elements() {
        assert_eq!(per_sample("t", 12, 3).unwrap(), 4);
        assert!(per_sample("t", 12, 5).is_err());
        assert!(per_sample("t", 12, 0).is_err());
    }
}
