//! The variational bound in bits/dim (DDPM eq. 5 / Table 2):
//! L = L_T + Σ_{t≥2} L_{t−1} + L_0, with
//! L_T = KL(q(x_T|x_0) ‖ N(0, I)),
//! L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)),
//! L_0 = −log p_θ(x_0|x_1) under the discretized Gaussian decoder,
//! each averaged over dimensions and divided by ln 2.

use crate::gaussian::{discretized_gaussian_log_likelihood, mean_flat, normal_kl};
use crate::process::{
    ReverseVariance, extract, p_mean_variance, q_posterior_mean_variance, q_sample,
};
use crate::schedule::Schedule;
use noisegrad_engine::{Philox, Result, Tensor, no_grad};

/// A noise-prediction model: ε_θ(x_t, t) for a batch with per-sample steps.
pub type EpsModel<'a> = dyn FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a;

/// The bound and its parts, in bits/dim, averaged over the images.
#[derive(Clone, Debug, Default)]
pub struct BitsPerDim {
    pub total: f64,
    /// L_T
    pub prior: f64,
    /// L_0
    pub decoder: f64,
    /// Σ_{t≥1} L_t (steps indexed from 0), extrapolated when partial.
    pub kl_terms: f64,
    /// (step, mean term) for every step evaluated.
    pub per_step: Vec<(usize, f64)>,
    pub images: usize,
    /// False when only a subset of the T terms was evaluated: the KL sum is
    /// then a Riemann sum, each evaluated L_t standing for the steps closest
    /// to it (see [`stratum_weights`]) — an estimate, not the exact bound.
    pub exact: bool,
}

/// How many of the steps 1..T−1 each evaluated step stands for: the steps
/// nearer to it than to any other evaluated step (ties to the earlier one).
/// The weights of the steps ≥ 1 add up to T − 1; step 0 (the decoder term)
/// always stands for itself. With every step evaluated all weights are 1.
pub fn stratum_weights(sorted_steps: &[usize], total: usize) -> Vec<f64> {
    let kl: Vec<usize> = sorted_steps.iter().copied().filter(|&t| t >= 1).collect();
    let mut bounds = vec![1.0];
    for pair in kl.windows(2) {
        bounds.push(((pair[0] + pair[1]) as f64 / 2.0).floor() + 1.0);
    }
    bounds.push(total as f64);
    let mut kl_w = bounds.windows(2).map(|b| b[1] - b[0]);
    sorted_steps
        .iter()
        .map(|&t| {
            if t == 0 {
                1.0
            } else {
                kl_w.next().unwrap_or(0.0)
            }
        })
        .collect()
}

/// L_T in bits/dim per image: KL(N(√ᾱ_T x_0, 1 − ᾱ_T) ‖ N(0, 1)).
pub fn prior_bpd(s: &Schedule, x0: &Tensor) -> Result<Tensor> {
    let t = vec![s.steps() - 1; x0.dim(0)?];
    let mean = x0.mul(&extract(&s.sqrt_alphas_cumprod, &t, x0)?)?;
    let logvar = extract(&s.alphas_cumprod, &t, x0)?
        .affine(-1.0, 1.0)?
        .log()?;
    let zero = mean.zeros_like()?;
    mean_flat(&normal_kl(&mean, &logvar, &zero, &zero)?)?.mul_scalar(1.0 / std::f64::consts::LN_2)
}

/// The term of step `t` (same t for the whole batch) in bits/dim per image:
/// the decoder NLL at t = 0, the KL between true and model posterior otherwise.
pub fn vb_term_bpd(
    s: &Schedule,
    var: ReverseVariance,
    model: &mut EpsModel,
    x0: &Tensor,
    t: usize,
    noise: &Tensor,
    clip: bool,
) -> Result<Tensor> {
    let ts = vec![t; x0.dim(0)?];
    let xt = q_sample(s, x0, &ts, noise)?;
    let eps = model(&xt, &ts)?;
    let (true_mean, _, true_logvar) = q_posterior_mean_variance(s, x0, &xt, &ts)?;
    let (mean, _, logvar, _) = p_mean_variance(s, var, &xt, &ts, &eps, clip)?;
    let nats = if t == 0 {
        discretized_gaussian_log_likelihood(x0, &mean, &logvar.mul_scalar(0.5)?)?.neg()?
    } else {
        normal_kl(&true_mean, &true_logvar, &mean, &logvar)?
    };
    mean_flat(&nats)?.mul_scalar(1.0 / std::f64::consts::LN_2)
}

/// The bound for a batch `x0` in [−1, 1]. `steps` = None evaluates all T
/// terms (the exact bound); Some(list) evaluates those steps only (0 is
/// always added) and extrapolates the KL sum. Noise comes from `rng`.
pub fn bits_per_dim(
    s: &Schedule,
    var: ReverseVariance,
    model: &mut EpsModel,
    x0: &Tensor,
    steps: Option<&[usize]>,
    clip: bool,
    rng: &mut Philox,
) -> Result<BitsPerDim> {
    no_grad(|| {
        let all: Vec<usize> = (0..s.steps()).collect();
        let mut chosen: Vec<usize> = steps.map_or(all.clone(), |v| v.to_vec());
        if !chosen.contains(&0) {
            chosen.push(0);
        }
        chosen.sort_unstable();
        chosen.dedup();
        let exact = chosen.len() == s.steps();
        let mut out = BitsPerDim {
            images: x0.dim(0)?,
            exact,
            ..Default::default()
        };
        let weights = stratum_weights(&chosen, s.steps());
        let mut kl_sum = 0.0;
        for (&t, &w) in chosen.iter().zip(&weights) {
            let noise = Tensor::randn(x0.shape(), x0.dtype(), x0.device(), rng)?;
            let term = vb_term_bpd(s, var, model, x0, t, &noise, clip)?
                .mean_all()?
                .item()?;
            out.per_step.push((t, term));
            if t == 0 {
                out.decoder = term;
            } else {
                kl_sum += w * term;
            }
        }
        out.kl_terms = kl_sum;
        out.prior = prior_bpd(s, x0)?.mean_all()?.item()?;
        out.total = out.prior + out.decoder + out.kl_terms;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::{DType, Device};

    #[test]
    fn stratum_weights_cover_every_step_once() {
        assert_eq!(stratum_weights(&[0, 1, 2, 3], 4), vec![1.0, 1.0, 1.0, 1.0]);
        // Steps 1..9 split between 2 (1..=5) and 9 (6..=9).
        assert_eq!(stratum_weights(&[0, 2, 9], 10), vec![1.0, 5.0, 4.0]);
        let w = stratum_weights(&[0, 1, 5, 40, 300, 999], 1000);
        assert_eq!(w.iter().sum::<f64>(), 1000.0);
    }

    #[test]
    fn prior_is_tiny_and_partial_bound_is_finite() {
        // ᾱ_T ≈ 4e-5 for the DDPM schedule, so q(x_T|x_0) ≈ N(0, I).
        let s = Schedule::new(crate::schedule::BetaSchedule::DDPM, 1000);
        let mut rng = Philox::new(5);
        let levels: Vec<f64> = (0..16).map(|i| (i * 16) as f64 / 127.5 - 1.0).collect();
        let x0 = Tensor::from_vec(&levels, &[2, 1, 2, 4], DType::F64, Device::Cpu).unwrap();
        let prior = prior_bpd(&s, &x0)
            .unwrap()
            .mean_all()
            .unwrap()
            .item()
            .unwrap();
        assert!(prior < 1e-4, "L_T = {prior}");
        // A model that always predicts ε = 0 still gives a finite, positive bound.
        let mut zero_model = |x: &Tensor, _: &[usize]| x.zeros_like();
        let b = bits_per_dim(
            &s,
            ReverseVariance::FixedLarge,
            &mut zero_model,
            &x0,
            Some(&[0, 10, 500]),
            true,
            &mut rng,
        )
        .unwrap();
        assert!(!b.exact && b.total.is_finite() && b.total > 0.0, "{b:?}");
        assert_eq!(b.per_step.len(), 3);
    }
}
