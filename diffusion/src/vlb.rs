//! The variational bound in bits/dim (DDPM eq. 5 / Table 2):
//! L = L_T + Σ_{t≥2} L_{t−1} + L_0, with
//! L_T = KL(q(x_T|x_0) ‖ N(0, I)),
//! L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)),
//! L_0 = −log p_θ(x_0|x_1) under the discretized Gaussian decoder,
//! each averaged over dimensions and divided by ln 2.

use crate::gaussian::{discretized_gaussian_log_likelihood, mean_flat, normal_kl};
use crate::process::{ReverseVariance, extract, q_posterior_mean_variance, q_sample};
use crate::schedule::Schedule;
use crate::variance::{ReverseModel, Sigma, p_mean_log_variance};
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
    /// L_simple = E_t ‖ε − ε̂(x_t, t)‖²/dim over the same steps, noise and
    /// images (t uniform; a Riemann sum when partial).
    pub l_simple: f64,
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
    let mut fixed = |x: &Tensor, t: &[usize]| Ok((model(x, t)?, None));
    Ok(vb_term_bpd_with(s, Sigma::Fixed(var), &mut fixed, x0, t, noise, clip)?.0)
}

/// [`vb_term_bpd`] for any reverse model (fixed or learned Σ): returns the
/// term and the per-image ‖ε − ε̂‖²/dim at this step (L_simple's summand).
pub fn vb_term_bpd_with(
    s: &Schedule,
    sigma: Sigma,
    model: &mut ReverseModel,
    x0: &Tensor,
    t: usize,
    noise: &Tensor,
    clip: bool,
) -> Result<(Tensor, Tensor)> {
    let ts = vec![t; x0.dim(0)?];
    let xt = q_sample(s, x0, &ts, noise)?;
    let (eps, v) = model(&xt, &ts)?;
    let (mean, logvar) = p_mean_log_variance(s, sigma, &xt, &ts, &eps, v.as_ref(), clip)?;
    let mse = mean_flat(&eps.sub(noise)?.square()?)?;
    Ok((vb_terms_bpd(s, x0, &xt, &ts, &mean, &logvar)?, mse))
}

/// The bound's term at per-image steps `t`, in bits/dim, from the model's
/// mean and log-variance of p_θ(x_{t−1}|x_t) (Nichol & Dhariwal 2021,
/// eqs. 4–6): L_0 = −log p_θ(x_0|x_1) under the discretized decoder where
/// t = 0, L_{t−1} = KL(q(x_{t−1}|x_t, x_0) ‖ p_θ(x_{t−1}|x_t)) elsewhere.
pub fn vb_terms_bpd(
    s: &Schedule,
    x0: &Tensor,
    xt: &Tensor,
    t: &[usize],
    mean: &Tensor,
    logvar: &Tensor,
) -> Result<Tensor> {
    let to_bits = 1.0 / std::f64::consts::LN_2;
    let kl = || -> Result<Tensor> {
        let (true_mean, _, true_logvar) = q_posterior_mean_variance(s, x0, xt, t)?;
        mean_flat(&normal_kl(&true_mean, &true_logvar, mean, logvar)?)?.mul_scalar(to_bits)
    };
    let decoder = || -> Result<Tensor> {
        let ll = discretized_gaussian_log_likelihood(x0, mean, &logvar.mul_scalar(0.5)?)?;
        mean_flat(&ll.neg()?)?.mul_scalar(to_bits)
    };
    let zeros = t.iter().filter(|&&i| i == 0).count();
    if zeros == 0 {
        return kl();
    }
    if zeros == t.len() {
        return decoder();
    }
    // Mixed batch (training): select per image, kl + [t = 0]·(decoder − kl).
    let is_zero: Vec<f64> = t.iter().map(|&i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(&is_zero, &[t.len()], x0.dtype(), x0.device())?;
    let kl = kl()?;
    kl.add(&decoder()?.sub(&kl)?.mul(&mask)?)
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
    let mut fixed = |x: &Tensor, t: &[usize]| Ok((model(x, t)?, None));
    bits_per_dim_with(s, Sigma::Fixed(var), &mut fixed, x0, steps, clip, rng)
}

/// [`bits_per_dim`] for any reverse model: fixed or learned Σ_θ, any
/// prediction target (the model returns ε̂), any (respaced) schedule.
pub fn bits_per_dim_with(
    s: &Schedule,
    sigma: Sigma,
    model: &mut ReverseModel,
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
        let (mut kl_sum, mut mse_sum) = (0.0, 0.0);
        for (&t, &w) in chosen.iter().zip(&weights) {
            let noise = Tensor::randn(x0.shape(), x0.dtype(), x0.device(), rng)?;
            let (term, mse) = vb_term_bpd_with(s, sigma, model, x0, t, &noise, clip)?;
            let term = term.mean_all()?.item()?;
            mse_sum += w * mse.mean_all()?.item()?;
            out.per_step.push((t, term));
            if t == 0 {
                out.decoder = term;
            } else {
                kl_sum += w * term;
            }
        }
        out.kl_terms = kl_sum;
        out.l_simple = mse_sum / s.steps() as f64;
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

    /// The learned-variance L_{t−1} and L_0 against closed forms written
    /// independently in f64 scalars: Gaussian KL ln(σ/σ̃) + (σ̃² + (μ̃ − μ)²)/2σ² − ½
    /// with μ̃ and β̃ from Ho et al. eqs. 6–7, and the decoder's bin mass by
    /// Simpson integration of the exact normal density.
    #[test]
    fn learned_variance_terms_match_closed_forms() {
        use crate::variance::{Sigma, learned_log_variance, p_mean_log_variance};
        let s = Schedule::new(crate::schedule::BetaSchedule::COSINE, 1000);
        let f64s =
            |v: &[f64]| Tensor::from_vec(v, &[1, 1, 1, v.len()], DType::F64, Device::Cpu).unwrap();
        let (x0v, xtv, epsv, vv) = ([0.2, -1.0], [0.5, -0.3], [0.1, -0.7], [0.4, -0.6]);
        let (x0, v) = (f64s(&x0v), f64s(&vv));
        let normal_pdf = |x: f64, m: f64, sd: f64| {
            (-(x - m).powi(2) / (2.0 * sd * sd)).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt())
        };
        let simpson = |a: f64, b: f64, f: &dyn Fn(f64) -> f64| {
            let n = 2000;
            let h = (b - a) / n as f64;
            (0..=n)
                .map(|i| {
                    let w = if i == 0 || i == n {
                        1.0
                    } else if i % 2 == 1 {
                        4.0
                    } else {
                        2.0
                    };
                    w * f(a + i as f64 * h)
                })
                .sum::<f64>()
                * h
                / 3.0
        };
        for t in [0usize, 1, 250, 999] {
            // At t = 0 x_t must lie near x_0, or the decoder's mass is below f64's range.
            let xtv = if t == 0 { [0.203, -0.998] } else { xtv };
            let (ab, beta) = (s.alphas_cumprod[t], s.betas[t]);
            let ab_prev = if t == 0 { 1.0 } else { s.alphas_cumprod[t - 1] };
            let mut want = 0.0;
            for i in 0..2 {
                let x0hat = (xtv[i] - (1.0 - ab).sqrt() * epsv[i]) / ab.sqrt();
                let post_mean = |x0: f64| {
                    ab_prev.sqrt() * beta / (1.0 - ab) * x0
                        + (1.0 - beta).sqrt() * (1.0 - ab_prev) / (1.0 - ab) * xtv[i]
                };
                let beta_tilde = |t: usize| {
                    let prev = if t == 0 { 1.0 } else { s.alphas_cumprod[t - 1] };
                    s.betas[t] * (1.0 - prev) / (1.0 - s.alphas_cumprod[t])
                };
                let frac = (vv[i] + 1.0) / 2.0;
                let log_bt = beta_tilde(t.max(1)).ln();
                let var = (frac * beta.ln() + (1.0 - frac) * log_bt).exp();
                let mu = post_mean(x0hat);
                want += if t == 0 {
                    let sd = var.sqrt();
                    let (lo, hi) = if x0v[i] <= -0.999 {
                        (mu.min(x0v[i]) - 12.0 * sd, x0v[i] + 1.0 / 255.0)
                    } else {
                        (x0v[i] - 1.0 / 255.0, x0v[i] + 1.0 / 255.0)
                    };
                    -simpson(lo, hi, &|x| normal_pdf(x, mu, sd)).ln()
                } else {
                    let vt = log_bt.exp();
                    0.5 * (var / vt).ln() + (vt + (post_mean(x0v[i]) - mu).powi(2)) / (2.0 * var)
                        - 0.5
                };
            }
            want /= 2.0 * std::f64::consts::LN_2;
            let ts = [t];
            let xt = f64s(&xtv);
            let (mean, _) =
                p_mean_log_variance(&s, Sigma::Learned, &xt, &ts, &f64s(&epsv), Some(&v), false)
                    .unwrap();
            let logvar = learned_log_variance(&s, &v, &ts).unwrap();
            let got = vb_terms_bpd(&s, &x0, &xt, &ts, &mean, &logvar)
                .unwrap()
                .item()
                .unwrap();
            // The decoder uses the tanh approximation of Φ, as the DDPM
            // reference does; the exact integral differs from it by < 1%.
            let tol = if t == 0 {
                0.01 * want.abs()
            } else {
                1e-10 * want.abs().max(1.0)
            };
            assert!((got - want).abs() < tol, "t = {t}: {got} vs {want}");
        }
    }

    #[test]
    fn mixed_batches_pick_the_decoder_or_kl_per_image() {
        let s = Schedule::ddpm();
        let mut rng = Philox::new(3);
        let x0 = Tensor::rand(&[3, 1, 2, 2], DType::F64, Device::Cpu, &mut rng).unwrap();
        let xt = Tensor::randn(&[3, 1, 2, 2], DType::F64, Device::Cpu, &mut rng).unwrap();
        let mean = xt.mul_scalar(0.9).unwrap();
        let logv = mean.full_like(-4.0).unwrap();
        let mixed = vb_terms_bpd(&s, &x0, &xt, &[0, 7, 0], &mean, &logv)
            .unwrap()
            .to_vec_f64();
        for (i, t) in [0usize, 7, 0].into_iter().enumerate() {
            let one = |x: &Tensor| x.narrow(0, i, 1).unwrap();
            let alone = vb_terms_bpd(&s, &one(&x0), &one(&xt), &[t], &one(&mean), &one(&logv))
                .unwrap()
                .item()
                .unwrap();
            assert!((alone - mixed[i]).abs() < 1e-12);
        }
    }
}
