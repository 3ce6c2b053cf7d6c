//! The forward process q, its posterior, and the reverse-process updates of
//! DDPM and DDIM, written with tensor ops. Each function is one equation.
//!
//! Per-sample step indices `t` (one per batch element) select coefficients
//! from the [`Schedule`] tables; [`extract`] turns them into a [N, 1, 1, 1]
//! tensor that broadcasts over the image.

use crate::schedule::Schedule;
use noisegrad_engine::{QSampleCoef, Result, StepCoef, Tensor};

/// Coefficients `table[t_i]` as a tensor of shape [N, 1, …, 1] (rank `rank`)
/// on the device and dtype of `like`.
pub fn extract(table: &[f64], t: &[usize], like: &Tensor) -> Result<Tensor> {
    let vals: Vec<f64> = t.iter().map(|&i| table[i]).collect();
    let mut shape = vec![1; like.rank()];
    shape[0] = t.len();
    Tensor::from_vec(&vals, &shape, like.dtype(), like.device())
}

/// Per-sample coefficients of the fused `q_sample` kernel (same equation as [`q_sample`]).
pub fn q_sample_coefs(s: &Schedule, t: &[usize]) -> Vec<QSampleCoef> {
    t.iter()
        .map(|&i| QSampleCoef::from_alpha_bar(s.alphas_cumprod[i]))
        .collect()
}

/// Per-sample coefficients of the fused DDPM step (same equation as
/// [`ddpm_step`]): σ_t from `var`, no noise at t = 0.
pub fn ddpm_step_coefs(
    s: &Schedule,
    var: ReverseVariance,
    t: &[usize],
    clip: bool,
) -> Vec<StepCoef> {
    let (_, logv) = var.tables(s);
    t.iter()
        .map(|&i| {
            let sigma = if i == 0 { 0.0 } else { (0.5 * logv[i]).exp() };
            if clip {
                StepCoef::ddpm_clipped(
                    s.alphas_cumprod[i],
                    s.posterior_mean_coef1[i],
                    s.posterior_mean_coef2[i],
                    sigma,
                )
            } else {
                StepCoef::ddpm(s.alphas[i], s.alphas_cumprod[i], sigma)
            }
        })
        .collect()
}

/// Coefficients of the fused DDIM step from t to `prev` (None: the end).
pub fn ddim_step_coef(
    s: &Schedule,
    t: usize,
    prev: Option<usize>,
    eta: f64,
    clip: bool,
) -> StepCoef {
    StepCoef::ddim(
        s.alphas_cumprod[t],
        prev.map_or(1.0, |p| s.alphas_cumprod[p]),
        eta,
        clip,
    )
}

/// q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I): returns (mean, variance).
pub fn q_mean_variance(s: &Schedule, x0: &Tensor, t: &[usize]) -> Result<(Tensor, Tensor)> {
    let mean = x0.mul(&extract(&s.sqrt_alphas_cumprod, t, x0)?)?;
    let var = extract(&s.alphas_cumprod, t, x0)?.affine(-1.0, 1.0)?;
    Ok((mean, var))
}

/// A sample of q(x_t | x_0): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε ~ N(0, I).
pub fn q_sample(s: &Schedule, x0: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
    x0.mul(&extract(&s.sqrt_alphas_cumprod, t, x0)?)?
        .add(&eps.mul(&extract(&s.sqrt_one_minus_alphas_cumprod, t, x0)?)?)
}

/// The posterior q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I) with
/// μ̃_t = β_t √ᾱ_{t−1}/(1 − ᾱ_t) · x_0 + (1 − ᾱ_{t−1}) √α_t/(1 − ᾱ_t) · x_t.
/// Returns (μ̃_t, β̃_t, log β̃_t clipped).
pub fn q_posterior_mean_variance(
    s: &Schedule,
    x0: &Tensor,
    xt: &Tensor,
    t: &[usize],
) -> Result<(Tensor, Tensor, Tensor)> {
    let mean = x0
        .mul(&extract(&s.posterior_mean_coef1, t, x0)?)?
        .add(&xt.mul(&extract(&s.posterior_mean_coef2, t, x0)?)?)?;
    Ok((
        mean,
        extract(&s.posterior_variance, t, x0)?,
        extract(&s.posterior_log_variance_clipped, t, x0)?,
    ))
}

/// x̂_0 from a noise prediction: x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ)/√ᾱ_t
/// = √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε_θ.
pub fn predict_x0_from_eps(s: &Schedule, xt: &Tensor, t: &[usize], eps: &Tensor) -> Result<Tensor> {
    xt.mul(&extract(&s.sqrt_recip_alphas_cumprod, t, xt)?)?
        .sub(&eps.mul(&extract(&s.sqrt_recipm1_alphas_cumprod, t, xt)?)?)
}

/// The reverse-process variance Σ_θ(x_t, t) = σ_t² I, fixed (not learned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReverseVariance {
    /// σ_t² = β_t (the DDPM reference's "fixedlarge"; β̃_1 at t = 0 so the
    /// decoder's log-variance is finite).
    FixedLarge,
    /// σ_t² = β̃_t ("fixedsmall").
    FixedSmall,
}

impl ReverseVariance {
    /// (σ_t², log σ_t²) tables.
    pub fn tables(self, s: &Schedule) -> (Vec<f64>, Vec<f64>) {
        match self {
            ReverseVariance::FixedLarge => {
                let mut v = s.betas.clone();
                if v.len() > 1 {
                    v[0] = s.posterior_variance[1];
                }
                let log = v.iter().map(|x| x.ln()).collect();
                (v, log)
            }
            ReverseVariance::FixedSmall => (
                s.posterior_variance.clone(),
                s.posterior_log_variance_clipped.clone(),
            ),
        }
    }
}

/// p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) with μ_θ = μ̃_t(x̂_0, x_t), x̂_0 from ε_θ
/// (clipped to [−1, 1] when `clip`). Returns (μ_θ, σ_t², log σ_t², x̂_0).
pub fn p_mean_variance(
    s: &Schedule,
    var: ReverseVariance,
    xt: &Tensor,
    t: &[usize],
    eps: &Tensor,
    clip: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let mut x0 = predict_x0_from_eps(s, xt, t, eps)?;
    if clip {
        x0 = x0.clamp(-1.0, 1.0)?;
    }
    let (mean, _, _) = q_posterior_mean_variance(s, &x0, xt, t)?;
    let (v, logv) = var.tables(s);
    Ok((mean, extract(&v, t, xt)?, extract(&logv, t, xt)?, x0))
}

/// One DDPM ancestral step (Ho et al. Alg. 2):
/// x_{t−1} = μ_θ(x_t, t) + σ_t z, z ~ N(0, I), with no noise at t = 0.
/// Without clipping μ_θ = (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t.
pub fn ddpm_step(
    s: &Schedule,
    var: ReverseVariance,
    xt: &Tensor,
    t: &[usize],
    eps: &Tensor,
    z: &Tensor,
    clip: bool,
) -> Result<Tensor> {
    let (mean, _, logv, _) = p_mean_variance(s, var, xt, t, eps, clip)?;
    let nonzero: Vec<f64> = t.iter().map(|&i| if i == 0 { 0.0 } else { 1.0 }).collect();
    let mask = extract(&nonzero, &(0..t.len()).collect::<Vec<_>>(), xt)?;
    mean.add(&z.mul(&logv.mul_scalar(0.5)?.exp()?)?.mul(&mask)?)
}

/// One DDIM step (Song et al. 2021, eq. 12) from step t to an earlier step
/// `prev` (None = the end, ᾱ = 1):
/// x_prev = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev − σ²) ε_θ + σ z,
/// σ = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev).
pub fn ddim_step(
    s: &Schedule,
    xt: &Tensor,
    (t, prev): (usize, Option<usize>),
    eps: &Tensor,
    z: &Tensor,
    eta: f64,
    clip: bool,
) -> Result<Tensor> {
    let ts = vec![t; xt.dim(0)?];
    let mut x0 = predict_x0_from_eps(s, xt, &ts, eps)?;
    if clip {
        x0 = x0.clamp(-1.0, 1.0)?;
    }
    let ab = s.alphas_cumprod[t];
    let ab_prev = prev.map_or(1.0, |p| s.alphas_cumprod[p]);
    let sigma = ddim_sigma(ab, ab_prev, eta);
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
    x0.mul_scalar(ab_prev.sqrt())?
        .add(&eps.mul_scalar(dir)?)?
        .add(&z.mul_scalar(sigma)?)
}

/// σ_t(η) = η √((1 − ᾱ_prev)/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev): η = 0 is
/// deterministic DDIM, η = 1 matches DDPM's posterior variance.
pub fn ddim_sigma(alpha_bar: f64, alpha_bar_prev: f64, eta: f64) -> f64 {
    eta * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).sqrt()
        * (1.0 - alpha_bar / alpha_bar_prev).sqrt()
}

/// The S timesteps DDIM visits, descending. `Uniform`: every ⌊T/S⌋-th step;
/// `Quadratic`: ⌊(linspace(0, √(0.8T), S))²⌋ as in the DDIM paper's CIFAR-10
/// runs. Repeated indices (the first few quadratic ones round to the same
/// integer) are merged: a DDIM step from t to t is the identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdimSpacing {
    Uniform,
    Quadratic,
}

pub fn ddim_timesteps(total: usize, steps: usize, spacing: DdimSpacing) -> Vec<usize> {
    let steps = steps.clamp(1, total);
    let mut ts: Vec<usize> = match spacing {
        DdimSpacing::Uniform => (0..steps).map(|i| i * (total / steps)).collect(),
        DdimSpacing::Quadratic => {
            let top = (total as f64 * 0.8).sqrt();
            (0..steps)
                .map(|i| {
                    // numpy.linspace: i·step, with the last point exactly `top`.
                    let v = match steps {
                        1 => 0.0,
                        _ if i == steps - 1 => top,
                        _ => i as f64 * (top / (steps - 1) as f64),
                    };
                    ((v * v) as usize).min(total - 1)
                })
                .collect()
        }
    };
    ts.dedup();
    ts.reverse();
    ts
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::{DType, Device, Philox};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        Tensor::randn(shape, DType::F64, Device::Cpu, &mut Philox::new(seed)).unwrap()
    }

    #[test]
    fn x0_recovered_from_true_noise() {
        let s = Schedule::ddpm();
        let (x0, eps) = (rand(&[2, 1, 2, 2], 1), rand(&[2, 1, 2, 2], 2));
        let t = [10, 900];
        let xt = q_sample(&s, &x0, &t, &eps).unwrap();
        let back = predict_x0_from_eps(&s, &xt, &t, &eps).unwrap();
        for (a, b) in back.to_vec_f64().iter().zip(x0.to_vec_f64()) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn unclipped_ddpm_mean_equals_closed_form() {
        // μ_θ via the posterior equals (x_t − β_t/√(1−ᾱ_t) ε)/√α_t.
        let s = Schedule::ddpm();
        let (xt, eps) = (rand(&[1, 1, 2, 2], 3), rand(&[1, 1, 2, 2], 4));
        let t = [321];
        let (mean, _, _, _) =
            p_mean_variance(&s, ReverseVariance::FixedLarge, &xt, &t, &eps, false).unwrap();
        let (b, ab, a) = (s.betas[321], s.alphas_cumprod[321], s.alphas[321]);
        for ((m, x), e) in mean
            .to_vec_f64()
            .iter()
            .zip(xt.to_vec_f64())
            .zip(eps.to_vec_f64())
        {
            let want = (x - b / (1.0 - ab).sqrt() * e) / a.sqrt();
            assert!((m - want).abs() < 1e-10);
        }
    }

    /// The fused kernels compute the same equations as the composite ops.
    #[test]
    fn fused_steps_match_the_equations() {
        let s = Schedule::ddpm();
        let to32 = |t: Tensor| t.to_dtype(noisegrad_engine::DType::F32).unwrap();
        let (xt, eps, z) = (
            to32(rand(&[3, 2, 4, 4], 5)),
            to32(rand(&[3, 2, 4, 4], 6)),
            to32(rand(&[3, 2, 4, 4], 7)),
        );
        let close = |a: &Tensor, b: &Tensor| {
            let err = a
                .to_vec_f64()
                .iter()
                .zip(b.to_vec_f64())
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err < 1e-4, "max |diff| {err}");
        };
        let t = [0, 17, 950];
        for clip in [false, true] {
            for var in [ReverseVariance::FixedLarge, ReverseVariance::FixedSmall] {
                let fused = xt
                    .denoise_step(&eps, Some(&z), &ddpm_step_coefs(&s, var, &t, clip))
                    .unwrap();
                close(
                    &fused,
                    &ddpm_step(&s, var, &xt, &t, &eps, &z, clip).unwrap(),
                );
            }
            for (step, prev) in [(950, Some(900)), (17, None)] {
                let c = ddim_step_coef(&s, step, prev, 0.5, clip);
                let fused = xt.denoise_step(&eps, Some(&z), &[c, c, c]).unwrap();
                close(
                    &fused,
                    &ddim_step(&s, &xt, (step, prev), &eps, &z, 0.5, clip).unwrap(),
                );
            }
        }
        close(
            &xt.q_sample(&eps, &q_sample_coefs(&s, &t)).unwrap(),
            &q_sample(&s, &xt, &t, &eps).unwrap(),
        );
    }

    #[test]
    fn ddim_eta_one_matches_posterior_std() {
        let s = Schedule::ddpm();
        let t = 500;
        let sigma = ddim_sigma(s.alphas_cumprod[t], s.alphas_cumprod[t - 1], 1.0);
        assert!((sigma * sigma - s.posterior_variance[t]).abs() < 1e-12);
    }

    #[test]
    fn ddim_spacings() {
        assert_eq!(
            ddim_timesteps(1000, 4, DdimSpacing::Uniform),
            vec![750, 500, 250, 0]
        );
        let q = ddim_timesteps(1000, 100, DdimSpacing::Quadratic);
        // ⌊(k·√800/99)²⌋, k = 0..99, has 96 distinct values (numpy agrees).
        assert_eq!((q[0], q.len()), (800, 96));
        assert_eq!(*q.last().unwrap(), 0);
        assert!(q.windows(2).all(|w| w[0] > w[1]));
    }
}
