//! Parameter initializers, as in the DDPM reference implementation
//! (Ho et al. 2020, `diffusion_tf/nn.py`).
//!
//! The reference initialises every dense and conv weight with
//! `default_init(scale)` = TensorFlow's
//! `variance_scaling(scale, mode='fan_avg', distribution='uniform')`,
//! biases with zeros, and uses `scale = 0` for the last conv of each
//! residual block and of the attention block (the "zero-init option": those
//! branches start as near-identities). `scale = 0` is replaced by 1e-10
//! because variance scaling rejects a zero scale.

use crate::error::{Result, bad_arg};
use crate::{DType, Device, Philox, Tensor};

/// How a new parameter's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All 0 (biases).
    Zeros,
    /// All 1 (normalisation gains).
    Ones,
    /// U(−a, a) (closed [−a, a] after rounding to f32) with a = √(3·scale / max(1, (fan_in + fan_out)/2)), so the
    /// variance is a²/3 = scale / fan_avg (TF `variance_scaling`, fan_avg,
    /// uniform). Fans come from the shape, see [`fans`].
    FanAvgUniform { scale: f64 },
}

/// The DDPM reference's `default_init(scale)`: [`Init::FanAvgUniform`] with
/// `scale`, where `scale == 0` means 1e-10 (near-zero init, see module docs).
pub fn default_init(scale: f64) -> Init {
    Init::FanAvgUniform {
        scale: if scale == 0.0 { 1e-10 } else { scale },
    }
}

/// `(fan_in, fan_out)` of a weight laid out `[out, in, k1, k2, ...]`:
/// fan_in = in·k1·k2·…, fan_out = out·k1·k2·… . A dense weight `[out, in]`
/// has no kernel axes; a conv weight `[out, in, kh, kw]` has two. A vector
/// `[n]` has fan_in = fan_out = n and a scalar 1 and 1 (as in TF).
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, kernel @ ..] => {
            let receptive: usize = kernel.iter().product();
            (inp * receptive, out * receptive)
        }
    }
}

/// The bound a of [`Init::FanAvgUniform`] for `shape`:
/// a = √(3·scale / max(1, (fan_in + fan_out)/2)).
pub fn fan_avg_uniform_limit(shape: &[usize], scale: f64) -> f64 {
    let (fan_in, fan_out) = fans(shape);
    let fan_avg = ((fan_in + fan_out) as f64 / 2.0).max(1.0);
    (3.0 * scale / fan_avg).sqrt()
}

impl Init {
    /// A new tensor of `shape` drawn from this initializer; random draws
    /// come from `rng` (reproducible for a given seed and call order).
    pub fn sample(
        self,
        shape: &[usize],
        dtype: DType,
        device: Device,
        rng: &mut Philox,
    ) -> Result<Tensor> {
        match self {
            Init::Zeros => Tensor::zeros(shape, dtype, device),
            Init::Ones => Tensor::ones(shape, dtype, device),
            Init::FanAvgUniform { scale } => {
                if !(scale > 0.0 && scale.is_finite()) {
                    return Err(bad_arg(
                        "init",
                        format!("variance scaling needs a positive finite scale, got {scale}"),
                    ));
                }
                let a = fan_avg_uniform_limit(shape, scale);
                // u ∈ (0, 1) → 2a·u − a ∈ (−a, a).
                Tensor::rand(shape, dtype, device, rng)?.affine(2.0 * a, -a)
            }
        }
    }
}
