//! Langevin correction for predictor–corrector sampling (Song et al. 2021,
//! "Score-Based Generative Modeling through SDEs", §4.2 and Alg. 5): after
//! each reverse step, M steps of Langevin dynamics at the new noise level
//! using the score s_θ = −ε_θ/√(1−ᾱ_t).

use crate::parameterization::score_from_eps;
use crate::schedule::Schedule;
use noisegrad_engine::{Error, Philox, Result, Tensor};

/// M corrector steps with target signal-to-noise ratio r.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LangevinCorrector {
    pub steps: usize,
    pub snr: f64,
}

impl LangevinCorrector {
    /// `steps` Langevin steps per level at SNR `snr` (> 0; Song et al. use
    /// 0.16 on CIFAR-10), or None for `steps` = 0.
    pub fn new(steps: usize, snr: f64) -> Result<Option<LangevinCorrector>> {
        if !(snr.is_finite() && snr > 0.0) {
            return Err(Error::Config(format!(
                "--snr must be a positive number for the Langevin corrector, got {snr}"
            )));
        }
        Ok((steps > 0).then_some(LangevinCorrector { steps, snr }))
    }

    /// M Langevin steps at level `level` of schedule `s` (the model is
    /// conditioned on step `model_t`, which differs from `level` on a
    /// respaced schedule). `eps_model` returns ε̂.
    pub fn correct(
        &self,
        s: &Schedule,
        level: usize,
        model_t: usize,
        eps_model: &mut dyn FnMut(&Tensor, &[usize]) -> Result<Tensor>,
        mut x: Tensor,
        rng: &mut Philox,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (levels, model_ts) = (vec![level; n], vec![model_t; n]);
        for _ in 0..self.steps {
            let score = score_from_eps(s, &eps_model(&x, &model_ts)?, &levels)?;
            let z = Tensor::randn(x.shape(), x.dtype(), x.device(), rng)?;
            let (gn, zn) = (per_image_norms(&score)?, per_image_norms(&z)?);
            let sizes: Vec<f64> = gn
                .iter()
                .zip(&zn)
                .map(|(&g, &z)| langevin_step_size(s.alphas[level], self.snr, z, g))
                .collect();
            x = langevin_step(&x, &score, &z, &sizes)?;
        }
        Ok(x)
    }
}

/// The step size that makes the update's signal-to-noise ratio r
/// (Song et al. 2021, Alg. 5): ε = 2 α_t (r ‖z‖ / ‖s_θ‖)², per image.
pub fn langevin_step_size(alpha: f64, snr: f64, noise_norm: f64, score_norm: f64) -> f64 {
    2.0 * alpha * (snr * noise_norm / score_norm.max(1e-12)).powi(2)
}

/// One Langevin step x ← x + ε s_θ + √(2ε) z with per-image step sizes ε
/// (Song et al. 2021, Alg. 5; Welling & Teh 2011).
pub fn langevin_step(x: &Tensor, score: &Tensor, z: &Tensor, sizes: &[f64]) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[0] = sizes.len();
    let noise_scale: Vec<f64> = sizes.iter().map(|e| (2.0 * e).sqrt()).collect();
    let eps = Tensor::from_vec(sizes, &shape, x.dtype(), x.device())?;
    let noise = Tensor::from_vec(&noise_scale, &shape, x.dtype(), x.device())?;
    x.add(&score.mul(&eps)?)?.add(&z.mul(&noise)?)
}

/// ‖x_i‖₂ of each image of a batch.
fn per_image_norms(x: &Tensor) -> Result<Vec<f64>> {
    let axes: Vec<usize> = (1..x.rank()).collect();
    Ok(x.square()?
        .sum(&axes, false)?
        .to_vec_f64()
        .into_iter()
        .map(f64::sqrt)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_size_sets_the_snr_and_bad_snr_is_rejected() {
        // The drift-to-noise ratio ‖ε s‖/‖√(2ε) z‖ = √(α) r: r at α = 1.
        let (snr, zn, gn) = (0.16, 3.0, 7.0);
        let e = langevin_step_size(1.0, snr, zn, gn);
        let ratio = e * gn / ((2.0 * e).sqrt() * zn);
        assert!((ratio - snr).abs() < 1e-12, "{ratio}");
        assert!(LangevinCorrector::new(2, -0.1).is_err());
        assert!(LangevinCorrector::new(0, 0.1).unwrap().is_none());
    }
}
