//! Samplers: DDPM ancestral sampling and DDIM, both deterministic given a
//! seed, each step one pass of the fused `denoise_step` kernel (whose
//! equations `process::{ddpm_step, ddim_step}` state and test).

use crate::process::{
    DdimSpacing, ReverseVariance, ddim_step_coef, ddim_timesteps, ddpm_step_coefs,
    predict_x0_from_eps,
};
use crate::schedule::Schedule;
use crate::vlb::EpsModel;
use noisegrad_engine::{DType, Device, Philox, Result, Tensor, no_grad};

/// Options shared by both samplers.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// Clip x̂_0 to [−1, 1] at every step (the DDPM reference does).
    pub clip: bool,
    /// Keep x̂_0 every `progressive_every` steps (0 = never): the
    /// coarse-to-fine picture of DDPM Fig. 6.
    pub progressive_every: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            clip: true,
            progressive_every: 0,
        }
    }
}

/// Final samples and, when asked for, the x̂_0 predictions along the chain.
pub struct Samples {
    pub images: Tensor,
    pub progressive: Vec<(usize, Tensor)>,
}

/// DDPM ancestral sampling (Ho et al. Alg. 2): x_T ~ N(0, I), then
/// x_{t−1} = μ_θ(x_t, t) + σ_t z for t = T−1 … 0.
#[allow(clippy::too_many_arguments)]
pub fn ddpm_sample(
    s: &Schedule,
    var: ReverseVariance,
    model: &mut EpsModel,
    shape: &[usize],
    device: Device,
    rng: &mut Philox,
    opts: &SampleOptions,
    mut on_step: impl FnMut(usize),
) -> Result<Samples> {
    no_grad(|| {
        let mut x = Tensor::randn(shape, DType::F32, device, rng)?;
        let mut progressive = Vec::new();
        for t in (0..s.steps()).rev() {
            let ts = vec![t; shape[0]];
            let eps = model(&x, &ts)?;
            if keep(opts, s.steps() - 1 - t, t) {
                progressive.push((t, predict_x0_from_eps(s, &x, &ts, &eps)?.clamp(-1.0, 1.0)?));
            }
            let z = Tensor::randn(shape, DType::F32, device, rng)?;
            x = x.denoise_step(&eps, Some(&z), &ddpm_step_coefs(s, var, &ts, opts.clip))?;
            on_step(t);
        }
        Ok(Samples {
            images: x.clamp(-1.0, 1.0)?,
            progressive,
        })
    })
}

/// DDIM sampling (Song et al. 2021) over `steps` timesteps with noise scale `eta`.
#[allow(clippy::too_many_arguments)]
pub fn ddim_sample(
    s: &Schedule,
    model: &mut EpsModel,
    shape: &[usize],
    device: Device,
    steps: usize,
    spacing: DdimSpacing,
    eta: f64,
    rng: &mut Philox,
    opts: &SampleOptions,
    mut on_step: impl FnMut(usize),
) -> Result<Samples> {
    no_grad(|| {
        let seq = ddim_timesteps(s.steps(), steps, spacing);
        let mut x = Tensor::randn(shape, DType::F32, device, rng)?;
        let mut progressive = Vec::new();
        for (i, &t) in seq.iter().enumerate() {
            let ts = vec![t; shape[0]];
            let eps = model(&x, &ts)?;
            if keep(opts, i, t) {
                progressive.push((t, predict_x0_from_eps(s, &x, &ts, &eps)?.clamp(-1.0, 1.0)?));
            }
            let z = Tensor::randn(shape, DType::F32, device, rng)?;
            let coef = ddim_step_coef(s, t, seq.get(i + 1).copied(), eta, opts.clip);
            x = x.denoise_step(&eps, Some(&z), &vec![coef; shape[0]])?;
            on_step(t);
        }
        Ok(Samples {
            images: x.clamp(-1.0, 1.0)?,
            progressive,
        })
    })
}

fn keep(opts: &SampleOptions, index: usize, t: usize) -> bool {
    opts.progressive_every > 0 && (index.is_multiple_of(opts.progressive_every) || t == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{DdimSpacing, ReverseVariance};

    /// For data that is one image x*, the exact noise predictor is
    /// ε(x_t, t) = (x_t − √ᾱ_t x*)/√(1 − ᾱ_t); with it both samplers must
    /// land on x* (DDIM η = 0 exactly, DDPM up to its final tiny noise).
    #[test]
    fn samplers_recover_the_single_data_point_with_the_exact_model() {
        let s = Schedule::ddpm();
        let target: Vec<f64> = (0..2 * 3 * 4 * 4)
            .map(|i| ((i as f64) * 0.37).sin() * 0.9)
            .collect();
        let xstar = Tensor::from_vec(&target, &[2, 3, 4, 4], DType::F32, Device::Cpu).unwrap();
        let mut oracle = |x: &Tensor, t: &[usize]| {
            let ab = s.alphas_cumprod[t[0]];
            x.sub(&xstar.mul_scalar(ab.sqrt())?)?
                .mul_scalar(1.0 / (1.0 - ab).sqrt())
        };
        let opts = SampleOptions::default();
        let close = |got: &Tensor, tol: f64| {
            let err = got
                .to_vec_f64()
                .iter()
                .zip(&target)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < tol, "max |x − x*| = {err}");
        };
        let shape = [2, 3, 4, 4];
        let ddim = ddim_sample(
            &s,
            &mut oracle,
            &shape,
            Device::Cpu,
            50,
            DdimSpacing::Quadratic,
            0.0,
            &mut Philox::new(1),
            &opts,
            |_| {},
        );
        close(&ddim.unwrap().images, 1e-4);
        let ddpm = ddpm_sample(
            &s,
            ReverseVariance::FixedLarge,
            &mut oracle,
            &shape,
            Device::Cpu,
            &mut Philox::new(2),
            &opts,
            |_| {},
        );
        close(&ddpm.unwrap().images, 0.05);
    }
}
