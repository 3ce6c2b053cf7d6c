//! The noise-schedule kernels as plain f64 loops: the oracle of the CPU
//! kernel's tests. Each is the equation its kernel states (see
//! [`QSampleCoef`] and [`StepCoef`]), one element at a time; `per` is the
//! number of elements of one sample.

use super::{QSampleCoef, StepCoef};

/// x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε (Ho et al. 2020, eq. 4).
pub fn q_sample(x0: &[f64], eps: &[f64], coefs: &[QSampleCoef], per: usize) -> Vec<f64> {
    (0..x0.len())
        .map(|i| {
            let c = coefs[i / per];
            c.sqrt_alpha_bar * x0[i] + c.sqrt_one_minus_alpha_bar * eps[i]
        })
        .collect()
}

/// L_simple = mean (ε_θ − ε)² and its gradient 2(ε_θ − ε)/numel (the
/// backward side by side).
pub fn l_simple(pred: &[f64], eps: &[f64]) -> (f64, Vec<f64>) {
    let n = pred.len() as f64;
    let loss = pred
        .iter()
        .zip(eps)
        .map(|(p, e)| (p - e) * (p - e))
        .sum::<f64>()
        / n;
    let grad = pred
        .iter()
        .zip(eps)
        .map(|(p, e)| 2.0 * (p - e) / n)
        .collect();
    (loss, grad)
}

/// x̂_0 = clamp(x0_from_xt·x_t − x0_from_eps·ε_θ, ±x0_clip), then
/// x_prev = x0_weight·x̂_0 + xt_weight·x_t + eps_weight·ε_θ + σ·z.
pub fn denoise_step(
    x_t: &[f64],
    eps: &[f64],
    z: Option<&[f64]>,
    coefs: &[StepCoef],
    per: usize,
) -> Vec<f64> {
    (0..x_t.len())
        .map(|i| {
            let c = coefs[i / per];
            let x0 = (c.x0_from_xt * x_t[i] - c.x0_from_eps * eps[i]).clamp(-c.x0_clip, c.x0_clip);
            let noise = z.map_or(0.0, |z| c.sigma * z[i]);
            c.x0_weight * x0 + c.xt_weight * x_t[i] + c.eps_weight * eps[i] + noise
        })
        .collect()
}
