//! The reverse-process variance Σ_θ(x_t, t): fixed (β_t or β̃_t) or learned
//! as an interpolation between them (Nichol & Dhariwal 2021, §3.1, eq. 15),
//! and the model interface every sampler and the bound use.

use crate::parameterization::{Prediction, eps_from_prediction};
use crate::process::{ReverseVariance, extract, p_mean_variance};
use crate::schedule::Schedule;
use noisegrad_engine::{Error, Result, Tensor};

/// A denoising model as the reverse process sees it: for x_t and per-sample
/// steps t, ε̂ and — for learned variance — the raw variance output v
/// (the second half of the U-Net's channels), else None.
pub type ReverseModel<'a> = dyn FnMut(&Tensor, &[usize]) -> Result<(Tensor, Option<Tensor>)> + 'a;

/// How σ_t² is chosen by the reverse process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sigma {
    Fixed(ReverseVariance),
    /// From the model's variance output, [`learned_log_variance`].
    Learned,
}

/// Learned-range log-variance (Nichol & Dhariwal 2021, eq. 15):
/// log Σ_θ = f log β_t + (1 − f) log β̃_t, f = (v + 1)/2, with β̃_t's log
/// clipped at t = 0 (log β̃_1) as in improved-diffusion. v is not clamped
/// (neither is it there); for v ∈ [−1, 1], β̃_t ≤ Σ_θ ≤ β_t.
pub fn learned_log_variance(s: &Schedule, v: &Tensor, t: &[usize]) -> Result<Tensor> {
    let max_log = extract(&s.betas.iter().map(|b| b.ln()).collect::<Vec<_>>(), t, v)?;
    let min_log = extract(&s.posterior_log_variance_clipped, t, v)?;
    let frac = v.add_scalar(1.0)?.mul_scalar(0.5)?;
    frac.mul(&max_log)?
        .add(&frac.affine(-1.0, 1.0)?.mul(&min_log)?)
}

/// log σ_t² for `sigma`: a per-pixel tensor when learned (needs `v`), else
/// the fixed table broadcast as [N, 1, 1, 1].
pub fn log_variance(
    s: &Schedule,
    sigma: Sigma,
    v: Option<&Tensor>,
    t: &[usize],
    like: &Tensor,
) -> Result<Tensor> {
    match (sigma, v) {
        (Sigma::Fixed(var), _) => extract(&var.tables(s).1, t, like),
        (Sigma::Learned, Some(v)) => learned_log_variance(s, v, t),
        (Sigma::Learned, None) => Err(Error::Config(
            "learned variance needs a model with a variance output (2C channels)".into(),
        )),
    }
}

/// p_θ(x_{t−1} | x_t) = N(μ_θ, Σ_θ): μ_θ = μ̃_t(x̂₀(ε̂), x_t) (Ho et al.
/// eq. 11 via the posterior, x̂₀ clipped when `clip`) and log Σ_θ from
/// [`log_variance`]. Returns (μ_θ, log Σ_θ).
pub fn p_mean_log_variance(
    s: &Schedule,
    sigma: Sigma,
    xt: &Tensor,
    t: &[usize],
    eps: &Tensor,
    v: Option<&Tensor>,
    clip: bool,
) -> Result<(Tensor, Tensor)> {
    let (mean, _, _, _) = p_mean_variance(s, ReverseVariance::FixedLarge, xt, t, eps, clip)?;
    Ok((mean, log_variance(s, sigma, v, t, xt)?))
}

/// Splits a U-Net output [N, C·m, H, W] into the prediction (first C
/// channels) and, when m = 2, the variance output v (last C channels).
pub fn split_output(out: &Tensor, channels: usize) -> Result<(Tensor, Option<Tensor>)> {
    let total = out.dim(1)?;
    match total / channels {
        1 => Ok((out.clone(), None)),
        2 => Ok((
            out.narrow(1, 0, channels)?,
            Some(out.narrow(1, channels, channels)?),
        )),
        _ => Err(Error::Input(format!(
            "model output has {total} channels; expected {channels} or {}",
            2 * channels
        ))),
    }
}

/// Reads a raw network output as the reverse process needs it: ε̂ from the
/// prediction target, and the variance output.
pub fn reverse_output(
    s: &Schedule,
    pred: Prediction,
    xt: &Tensor,
    t: &[usize],
    out: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let (p, v) = split_output(out, xt.dim(1)?)?;
    Ok((eps_from_prediction(s, pred, xt, t, &p)?, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;
    use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
    use noisegrad_engine::{DType, Device};

    #[test]
    fn learned_variance_lies_between_posterior_and_beta() {
        for kind in [BetaSchedule::DDPM, BetaSchedule::Cosine { s: 0.008 }] {
            let s = Schedule::new(kind, 1000);
            let vs: Vec<f64> = (0..11).map(|i| -1.0 + 0.2 * i as f64).collect();
            let v = Tensor::from_vec(&vs, &[11, 1, 1, 1], DType::F64, Device::Cpu).unwrap();
            for t in [1usize, 10, 500, 999] {
                let ts = vec![t; 11];
                let got = learned_log_variance(&s, &v, &ts).unwrap().to_vec_f64();
                let (lo, hi) = (s.posterior_variance[t], s.betas[t]);
                assert!((got[0].exp() - lo).abs() <= 1e-12 * lo);
                assert!((got[10].exp() - hi).abs() <= 1e-12 * hi);
                for g in &got {
                    let var = g.exp();
                    assert!(var >= lo * (1.0 - 1e-12) && var <= hi * (1.0 + 1e-12));
                }
                assert!(got.windows(2).all(|w| w[1] >= w[0]));
            }
        }
    }

    /// The gradient of a KL through the learned variance (the only new
    /// differentiable composition) agrees with finite differences.
    #[test]
    fn kl_through_learned_variance_gradchecks() {
        let s = Schedule::new(BetaSchedule::Cosine { s: 0.008 }, 100);
        let t = [3usize, 50];
        let v = Tensor::from_vec(
            &[-0.7, 0.2, 0.9, -0.1],
            &[2, 2, 1, 1],
            DType::F64,
            Device::Cpu,
        )
        .unwrap();
        let m = Tensor::from_vec(
            &[0.1, -0.3, 0.5, 0.0],
            &[2, 2, 1, 1],
            DType::F64,
            Device::Cpu,
        )
        .unwrap();
        let f = |x: &[Tensor]| {
            let logv = learned_log_variance(&s, &x[0], &t)?;
            let true_logv = extract(&s.posterior_log_variance_clipped, &t, &x[0])?;
            crate::gaussian::normal_kl(&x[1].mul_scalar(0.5)?, &true_logv, &x[1], &logv)
        };
        gradcheck(f, &[v, m], GradcheckOptions::default()).unwrap();
    }
}
