//! Launchers for `optim.cu`: the fused Adam/AdamW and EMA updates, and
//! the global gradient norm with its clip coefficient, on the device.
//!
//! # Clipping without a host round trip
//!
//! [`global_norm`] queues, for each gradient, a `sum_squares_partials`
//! launch writing its blocks' f64 partial sums into its own run of one
//! partials buffer, then one `clip_finalize` block that adds all partials
//! in a fixed order (deterministic: no atomics) and writes Σg², ‖g‖ and the
//! clip coefficient c into a small state buffer ([`NormState`]). [`adam`]
//! can take c by address ([`AdamScale::Device`]): the kernel reads it
//! itself, so a clipped step is queued without the host ever waiting for
//! the norm. The norm is read back only when asked for ([`read_norm`]).

use super::AdamStep;
use crate::cuda::abi::{Arg, Param};
use crate::cuda::{BLOCK, CudaDevice, DeviceBuffer, Result, grid_1d, grid_rows};

const MODULE: &str = "optim";

/// Layout of the state buffer [`global_norm`] writes, in f32 words: Σg²
/// (an f64 in words 0–1), ‖g‖ (an f64 in words 2–3), the clip coefficient
/// c (an f32, word 4); word 5 pads to whole f64s.
#[derive(Clone, Copy, Debug)]
pub struct NormState;

impl NormState {
    pub const WORDS: usize = 6;
    pub const SUM: usize = 0;
    pub const NORM: usize = 2;
    pub const COEF: usize = 4;
}

/// Where Adam's gradient scale comes from.
#[derive(Clone, Copy, Debug)]
pub enum AdamScale {
    /// A number known on the host.
    Value(f32),
    /// The f32 at this device address, written by an earlier kernel on the
    /// stream (the clip coefficient of [`global_norm`]).
    Device(u64),
}

/// The f32 constants of one Adam step, derived exactly as
/// `cpu::optim::adam` derives them (so both devices round alike).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConstants {
    pub l2: f32,
    pub keep: f32,
    pub b1: f32,
    pub b2: f32,
    pub one_b1: f32,
    pub one_b2: f32,
    pub step_size: f32,
    pub sqrt_bias2: f32,
    pub eps: f32,
}

impl AdamConstants {
    pub fn new(s: &AdamStep) -> Self {
        let (l2, keep) = if s.decoupled {
            (0.0, 1.0 - s.lr * s.weight_decay)
        } else {
            (s.weight_decay, 1.0)
        };
        Self {
            l2: l2 as f32,
            keep: keep as f32,
            b1: s.beta1 as f32,
            b2: s.beta2 as f32,
            one_b1: (1.0 - s.beta1) as f32,
            one_b2: (1.0 - s.beta2) as f32,
            step_size: (s.lr / s.bias1) as f32,
            sqrt_bias2: s.bias2.sqrt() as f32,
            eps: s.eps as f32,
        }
    }
}

/// The f64 stored in two consecutive f32 words of device memory (little
/// endian, as every CUDA device is), e.g. a [`NormState`] field read back
/// with [`CudaDevice::download`].
pub fn f64_from_words(lo: f32, hi: f32) -> f64 {
    f64::from_bits(lo.to_bits() as u64 | (hi.to_bits() as u64) << 32)
}

fn adam_params(
    [p, g, m, v]: [u64; 4],
    n: usize,
    scale: AdamScale,
    c: &AdamConstants,
) -> [Param; 16] {
    let (scale_ptr, scale_val) = match scale {
        AdamScale::Value(x) => (0, x),
        AdamScale::Device(ptr) => (ptr, 0.0),
    };
    [
        Param("p", Arg::Ptr(p)),
        Param("g", Arg::Ptr(g)),
        Param("m", Arg::Ptr(m)),
        Param("v", Arg::Ptr(v)),
        Param("n", Arg::I64(n as i64)),
        Param("scale_ptr", Arg::Ptr(scale_ptr)),
        Param("scale_val", Arg::F32(scale_val)),
        Param("l2", Arg::F32(c.l2)),
        Param("keep", Arg::F32(c.keep)),
        Param("b1", Arg::F32(c.b1)),
        Param("b2", Arg::F32(c.b2)),
        Param("one_b1", Arg::F32(c.one_b1)),
        Param("one_b2", Arg::F32(c.one_b2)),
        Param("step_size", Arg::F32(c.step_size)),
        Param("sqrt_bias2", Arg::F32(c.sqrt_bias2)),
        Param("eps", Arg::F32(c.eps)),
    ]
}

fn ema_params(ema: u64, p: u64, n: usize, decay: f64) -> [Param; 5] {
    [
        Param("ema", Arg::Ptr(ema)),
        Param("p", Arg::Ptr(p)),
        Param("n", Arg::I64(n as i64)),
        Param("d", Arg::F32(decay as f32)),
        Param("one_d", Arg::F32((1.0 - decay) as f32)),
    ]
}

fn sum_squares_params(x: u64, n: usize, partials: u64) -> [Param; 3] {
    [
        Param("x", Arg::Ptr(x)),
        Param("n", Arg::I64(n as i64)),
        Param("partials", Arg::Ptr(partials)),
    ]
}

fn clip_finalize_params(
    partials: u64,
    count: usize,
    max_norm: f64,
    state: u64,
    coef: u64,
) -> [Param; 5] {
    [
        Param("partials", Arg::Ptr(partials)),
        Param("count", Arg::I64(count as i64)),
        // The kernel reinterprets the bits (__longlong_as_double).
        Param("max_norm_bits", Arg::I64(max_norm.to_bits() as i64)),
        Param("state", Arg::Ptr(state)),
        Param("coef", Arg::Ptr(coef)),
    ]
}

/// One fused Adam/AdamW step in place over `n` contiguous elements of
/// `[param, grad, m, v]` (device addresses), using `scale`·grad as the
/// gradient (`cpu::optim::adam`).
pub fn adam(
    dev: &CudaDevice,
    bufs: [u64; 4],
    n: usize,
    step: &AdamStep,
    scale: AdamScale,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let params = adam_params(bufs, n, scale, &AdamConstants::new(step));
    dev.launch_params(MODULE, "adam_step", grid_1d(dev, n), &params)
}

/// ema ← decay·ema + (1 − decay)·param over `n` contiguous elements.
pub fn ema(dev: &CudaDevice, ema: u64, param: u64, n: usize, decay: f64) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let params = ema_params(ema, param, n, decay);
    dev.launch_params(MODULE, "ema_update", grid_1d(dev, n), &params)
}

/// Σg², ‖g‖ and the clip coefficient min(1, max_norm/(‖g‖ + 1e-6)) over
/// the tensors `(address, len)` (contiguous), into a new [`NormState`]
/// buffer. Queued only: nothing waits. `max_norm` = ∞ when only the norm
/// is wanted.
pub fn global_norm(
    dev: &CudaDevice,
    tensors: &[(u64, usize)],
    max_norm: f64,
) -> Result<DeviceBuffer> {
    // Each tensor's blocks write one f64 partial each (two f32 words).
    let grids: Vec<_> = tensors.iter().map(|&(_, n)| grid_1d(dev, n)).collect();
    let count: usize = grids.iter().map(|g| g.grid_dim.0 as usize).sum();
    let partials = dev.alloc(2 * count)?;
    let mut slot = 0;
    for (&(x, n), cfg) in tensors.iter().zip(grids) {
        let params = sum_squares_params(x, n, partials.ptr_at(2 * slot));
        dev.launch_params(MODULE, "sum_squares_partials", cfg, &params)?;
        slot += cfg.grid_dim.0 as usize;
    }
    let state = dev.alloc(NormState::WORDS)?;
    let params = clip_finalize_params(
        partials.ptr(),
        count,
        max_norm,
        state.ptr(),
        state.ptr_at(NormState::COEF),
    );
    dev.launch_params(MODULE, "clip_finalize", grid_rows(1, BLOCK, 0), &params)?;
    Ok(state)
}

/// The f64 at word `word` of a [`NormState`] buffer (waits for the stream).
pub fn read_state(dev: &CudaDevice, state: &DeviceBuffer, word: usize) -> Result<f64> {
    let w = dev.download(state, word, 2)?;
    Ok(f64_from_words(w[0], w[1]))
}

/// ‖g‖ from a [`NormState`] buffer (waits for the stream).
pub fn read_norm(dev: &CudaDevice, state: &DeviceBuffer) -> Result<f64> {
    read_state(dev, state, NormState::NORM)
}

/// Σx² over `n` contiguous elements, in f64, read back to the host.
pub fn sum_squares(dev: &CudaDevice, x: u64, n: usize) -> Result<f64> {
    let state = global_norm(dev, &[(x, n)], f64::INFINITY)?;
    read_state(dev, &state, NormState::SUM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::emu::source::assert_launcher_matches as check;

    const SRC: &str = include_str!("optim.cu");

    fn hyper(decoupled: bool) -> AdamStep {
        AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            decoupled,
            bias1: 1.0 - 0.9f64.powi(3),
            bias2: 1.0 - 0.999f64.powi(3),
        }
    }

    #[test]
    fn launcher_arguments_match_the_kernel_signatures() {
        let c = AdamConstants::new(&hyper(true));
        check(
            SRC,
            "adam_step",
            &adam_params([1, 2, 3, 4], 5, AdamScale::Device(6), &c),
        );
        check(SRC, "ema_update", &ema_params(1, 2, 3, 0.9));
        check(SRC, "sum_squares_partials", &sum_squares_params(1, 2, 3));
        check(SRC, "clip_finalize", &clip_finalize_params(1, 2, 1.0, 3, 4));
    }

    #[test]
    fn adam_scale_goes_to_exactly_one_argument() {
        let c = AdamConstants::new(&hyper(false));
        let arg = |scale| {
            let p = adam_params([1, 2, 3, 4], 5, scale, &c);
            match (p[5].1, p[6].1) {
                (Arg::Ptr(ptr), Arg::F32(val)) => (ptr, val),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(arg(AdamScale::Value(0.25)), (0, 0.25));
        assert_eq!(arg(AdamScale::Device(4096)), (4096, 0.0));
    }

    #[test]
    fn adam_constants_are_the_cpu_kernels() {
        let s = hyper(false);
        let c = AdamConstants::new(&s);
        assert_eq!((c.l2, c.keep), (0.05, 1.0));
        assert_eq!(c.step_size, (0.1 / s.bias1) as f32);
        assert_eq!(c.sqrt_bias2, s.bias2.sqrt() as f32);
        assert_eq!(
            (c.one_b1, c.one_b2),
            ((1.0f64 - 0.9) as f32, (1.0f64 - 0.999) as f32)
        );
        let w = AdamConstants::new(&hyper(true));
        assert_eq!((w.l2, w.keep), (0.0, (1.0 - 0.1 * 0.05) as f32));
    }

    #[test]
    fn f64_round_trips_through_two_f32_words() {
        for v in [0.0, -1.5, 1e-300, 123456.789, f64::INFINITY, f64::MAX] {
            let bits = v.to_bits();
            let lo = f32::from_bits(bits as u32);
            let hi = f32::from_bits((bits >> 32) as u32);
            assert_eq!(f64_from_words(lo, hi).to_bits(), bits, "{v}");
        }
        assert!(f64_from_words(0.0, f32::from_bits(0x7ff8_0000)).is_nan());
    }
}
