//! Samplers: DDPM ancestral sampling and DDIM, both deterministic given a
//! seed, each step one pass of the fused `denoise_step` kernel (whose
//! equations `process::{ddpm_step, ddim_step}` state and test).

use crate::langevin::LangevinCorrector;
use crate::process::{
    DdimSpacing, ReverseVariance, ddim_step_coef, ddim_timesteps, ddpm_step_coefs,
    predict_x0_from_eps,
};
use crate::respace::Respaced;
use crate::schedule::Schedule;
use crate::variance::{ReverseModel, Sigma, p_mean_log_variance};
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
    /// Langevin corrector steps after each reverse step (None: plain sampling).
    pub corrector: Option<LangevinCorrector>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            clip: true,
            progressive_every: 0,
            corrector: None,
        }
    }
}

/// Final samples and, when asked for, the x̂_0 predictions along the chain.
pub struct Samples {
    pub images: Tensor,
    pub progressive: Vec<(usize, Tensor)>,
}

/// DDIM's own settings (Song et al. 2021): how many steps, how they are
/// spaced over 0..T, and the noise scale η (0: deterministic).
#[derive(Clone, Copy, Debug)]
pub struct DdimOptions {
    pub steps: usize,
    pub spacing: DdimSpacing,
    pub eta: f64,
}

/// DDPM ancestral sampling (Ho et al. Alg. 2): x_T ~ N(0, I) of `(shape,
/// device)`, then x_{t−1} = μ_θ(x_t, t) + σ_t z for t = T−1 … 0.
pub fn ddpm_sample(
    s: &Schedule,
    var: ReverseVariance,
    model: &mut EpsModel,
    (shape, device): (&[usize], Device),
    rng: &mut Philox,
    opts: &SampleOptions,
    on_step: impl FnMut(usize),
) -> Result<Samples> {
    let all = Respaced::new(s, (0..s.steps()).collect())?;
    let mut fixed = |x: &Tensor, t: &[usize]| Ok((model(x, t)?, None));
    respaced_ddpm_sample(
        &all,
        Sigma::Fixed(var),
        &mut fixed,
        (shape, device),
        rng,
        opts,
        on_step,
    )
}

/// DDPM ancestral sampling on a respaced schedule (Nichol & Dhariwal 2021,
/// §4): x_T ~ N(0, I), then x_{S_{i−1}} = μ_θ + σ z for i = K−1 … 0, with
/// the respaced β', fixed or learned Σ_θ. With S = 0..T−1 this is
/// [`ddpm_sample`].
pub fn respaced_ddpm_sample(
    r: &Respaced,
    sigma: Sigma,
    model: &mut ReverseModel,
    (shape, device): (&[usize], Device),
    rng: &mut Philox,
    opts: &SampleOptions,
    on_step: impl FnMut(usize),
) -> Result<Samples> {
    no_grad(|| {
        let x = Tensor::randn(shape, DType::F32, device, rng)?;
        respaced_ddpm_from(r, sigma, model, (x, r.timesteps.len()), rng, opts, on_step)
    })
}

/// The reverse chain of [`respaced_ddpm_sample`] from a given `(x, from)`:
/// x at respaced level `from` (x is x_{S_{from−1}}; `from` = K starts at
/// noise) down to x_0. `on_step` gets the original step of each model call.
pub fn respaced_ddpm_from(
    r: &Respaced,
    sigma: Sigma,
    model: &mut ReverseModel,
    (mut x, from): (Tensor, usize),
    rng: &mut Philox,
    opts: &SampleOptions,
    mut on_step: impl FnMut(usize),
) -> Result<Samples> {
    no_grad(|| {
        let s = &r.schedule;
        let n = x.dim(0)?;
        let mut progressive = Vec::new();
        for i in (0..from).rev() {
            let ts = vec![i; n];
            let orig = r.original(&ts);
            let (eps, v) = model(&x, &orig)?;
            if keep(opts, from - 1 - i, i) {
                progressive.push((
                    orig[0],
                    predict_x0_from_eps(s, &x, &ts, &eps)?.clamp(-1.0, 1.0)?,
                ));
            }
            let z = Tensor::randn(x.shape(), x.dtype(), x.device(), rng)?;
            x = match sigma {
                Sigma::Fixed(var) => {
                    x.denoise_step(&eps, Some(&z), &ddpm_step_coefs(s, var, &ts, opts.clip))?
                }
                Sigma::Learned => {
                    let (mean, logvar) =
                        p_mean_log_variance(s, sigma, &x, &ts, &eps, v.as_ref(), opts.clip)?;
                    match i {
                        0 => mean,
                        _ => mean.add(&z.mul(&logvar.mul_scalar(0.5)?.exp()?)?)?,
                    }
                }
            };
            if let (Some(c), true) = (&opts.corrector, i > 0) {
                let mut eps_only = |x: &Tensor, t: &[usize]| Ok(model(x, t)?.0);
                x = c.correct(s, i - 1, r.timesteps[i - 1], &mut eps_only, x, rng)?;
            }
            on_step(orig[0]);
        }
        Ok(Samples {
            images: x.clamp(-1.0, 1.0)?,
            progressive,
        })
    })
}

/// DDIM sampling (Song et al. 2021) from x_T ~ N(0, I) of `(shape,
/// device)` over `ddim.steps` timesteps with noise scale `ddim.eta`.
pub fn ddim_sample(
    s: &Schedule,
    model: &mut EpsModel,
    (shape, device): (&[usize], Device),
    ddim: DdimOptions,
    rng: &mut Philox,
    opts: &SampleOptions,
    mut on_step: impl FnMut(usize),
) -> Result<Samples> {
    no_grad(|| {
        let DdimOptions {
            steps,
            spacing,
            eta,
        } = ddim;
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
            if let (Some(c), Some(&prev)) = (&opts.corrector, seq.get(i + 1)) {
                x = c.correct(s, prev, prev, model, x, rng)?;
            }
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
            (&shape, Device::Cpu),
            DdimOptions {
                steps: 50,
                spacing: DdimSpacing::Quadratic,
                eta: 0.0,
            },
            &mut Philox::new(1),
            &opts,
            |_| {},
        );
        close(&ddim.unwrap().images, 1e-4);
        let ddpm = ddpm_sample(
            &s,
            ReverseVariance::FixedLarge,
            &mut oracle,
            (&shape, Device::Cpu),
            &mut Philox::new(2),
            &opts,
            |_| {},
        );
        close(&ddpm.unwrap().images, 0.05);
    }

    /// The same with every prediction target (the exact x₀ / v predictor
    /// read through the ε conversion) and every sampler: DDPM on all T steps,
    /// respaced DDPM (fixed and learned Σ, 50 steps), DDIM, and DDPM/DDIM
    /// with the Langevin corrector.
    #[test]
    fn every_sampler_recovers_the_point_for_every_target() {
        use crate::parameterization::{Prediction, eps_from_prediction, prediction_target};
        use crate::respace::{Respaced, Spacing};
        use crate::schedule::BetaSchedule;
        let s = Schedule::new(BetaSchedule::COSINE, 1000);
        let target: Vec<f64> = (0..12).map(|i| ((i as f64) * 0.61).cos() * 0.8).collect();
        let shape = [1, 3, 2, 2];
        let xstar = Tensor::from_vec(&target, &shape, DType::F32, Device::Cpu).unwrap();
        let close = |got: &Tensor, tol: f64, what: &str| {
            let err = got
                .to_vec_f64()
                .iter()
                .zip(&target)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < tol, "{what}: max |x − x*| = {err}");
        };
        let corrected = SampleOptions {
            corrector: LangevinCorrector::new(1, 0.05).unwrap(),
            ..Default::default()
        };
        let respaced = Respaced::spaced(&s, &Spacing::Sections(vec![50])).unwrap();
        for pred in [Prediction::Eps, Prediction::X0, Prediction::V] {
            // The network's exact output for target `pred`, read back as ε.
            let mut oracle = |x: &Tensor, t: &[usize]| -> Result<(Tensor, Option<Tensor>)> {
                let ab = s.alphas_cumprod[t[0]];
                let eps = x
                    .sub(&xstar.mul_scalar(ab.sqrt())?)?
                    .mul_scalar(1.0 / (1.0 - ab).sqrt())?;
                let out = prediction_target(&s, pred, &xstar, &eps, t)?;
                Ok((
                    eps_from_prediction(&s, pred, x, t, &out)?,
                    Some(x.zeros_like()?),
                ))
            };
            let mut eps_only = |x: &Tensor, t: &[usize]| Ok(oracle(x, t)?.0);
            let ddim = |eps: &mut EpsModel, opts: &SampleOptions| {
                ddim_sample(
                    &s,
                    eps,
                    (&shape, Device::Cpu),
                    DdimOptions {
                        steps: 50,
                        spacing: DdimSpacing::Quadratic,
                        eta: 0.0,
                    },
                    &mut Philox::new(1),
                    opts,
                    |_| {},
                )
            };
            close(
                &ddim(&mut eps_only, &SampleOptions::default())
                    .unwrap()
                    .images,
                1e-3,
                "DDIM",
            );
            close(
                &ddim(&mut eps_only, &corrected).unwrap().images,
                0.05,
                "DDIM + corrector",
            );
            let full = ddpm_sample(
                &s,
                ReverseVariance::FixedLarge,
                &mut eps_only,
                (&shape, Device::Cpu),
                &mut Philox::new(2),
                &SampleOptions::default(),
                |_| {},
            );
            close(&full.unwrap().images, 0.05, "DDPM");
            for (sigma, opts, what) in [
                (
                    Sigma::Fixed(ReverseVariance::FixedLarge),
                    SampleOptions::default(),
                    "respaced fixed",
                ),
                (Sigma::Learned, SampleOptions::default(), "respaced learned"),
                (
                    Sigma::Learned,
                    corrected.clone(),
                    "respaced learned + corrector",
                ),
            ] {
                let out = respaced_ddpm_sample(
                    &respaced,
                    sigma,
                    &mut oracle,
                    (&shape, Device::Cpu),
                    &mut Philox::new(3),
                    &opts,
                    |_| {},
                );
                close(&out.unwrap().images, 0.05, what);
            }
        }
    }
}
