//! What the network predicts and how every sampler reads it.
//!
//! The U-Net can be trained to predict the noise ε (Ho et al. 2020), the
//! clean image x₀, or the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho
//! 2022, §4 and App. D). The samplers and the bound only ever need ε̂ (and
//! x̂₀ from it), so each prediction is converted to ε̂ once, by
//! [`eps_from_prediction`]; then DDPM, DDIM, the corrector and `eval` work
//! on every target unchanged.

use crate::process::extract;
use crate::schedule::Schedule;
use noisegrad_engine::{Error, Result, Tensor};

/// The regression target of the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// ε (DDPM's choice; L_simple).
    #[default]
    Eps,
    /// x₀ directly.
    X0,
    /// v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022).
    V,
}

impl Prediction {
    pub fn parse(s: &str) -> Result<Prediction> {
        match s {
            "eps" => Ok(Prediction::Eps),
            "x0" => Ok(Prediction::X0),
            "v" => Ok(Prediction::V),
            other => Err(Error::Config(format!(
                "unknown prediction target '{other}' (expected eps, x0 or v)"
            ))),
        }
    }
}

/// The training target for `pred` given the data x₀ and the noise ε that
/// made x_t: ε, x₀, or v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4).
pub fn prediction_target(
    s: &Schedule,
    pred: Prediction,
    x0: &Tensor,
    eps: &Tensor,
    t: &[usize],
) -> Result<Tensor> {
    match pred {
        Prediction::Eps => Ok(eps.clone()),
        Prediction::X0 => Ok(x0.clone()),
        Prediction::V => v_from_eps_x0(s, x0, eps, t),
    }
}

/// v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022, §4).
pub fn v_from_eps_x0(s: &Schedule, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
    eps.mul(&extract(&s.sqrt_alphas_cumprod, t, eps)?)?
        .sub(&x0.mul(&extract(&s.sqrt_one_minus_alphas_cumprod, t, x0)?)?)
}

/// ε from an x₀ prediction: ε = (x_t − √ᾱ_t x₀)/√(1−ᾱ_t) (inverting
/// x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, Ho et al. eq. 4).
pub fn eps_from_x0(s: &Schedule, xt: &Tensor, t: &[usize], x0: &Tensor) -> Result<Tensor> {
    xt.sub(&x0.mul(&extract(&s.sqrt_alphas_cumprod, t, xt)?)?)?
        .div(&extract(&s.sqrt_one_minus_alphas_cumprod, t, xt)?)
}

/// ε from a v prediction: ε = √(1−ᾱ_t) x_t + √ᾱ_t v (Salimans & Ho 2022, App. D).
pub fn eps_from_v(s: &Schedule, xt: &Tensor, t: &[usize], v: &Tensor) -> Result<Tensor> {
    xt.mul(&extract(&s.sqrt_one_minus_alphas_cumprod, t, xt)?)?
        .add(&v.mul(&extract(&s.sqrt_alphas_cumprod, t, xt)?)?)
}

/// x₀ from a v prediction: x₀ = √ᾱ_t x_t − √(1−ᾱ_t) v (Salimans & Ho 2022, App. D).
pub fn x0_from_v(s: &Schedule, xt: &Tensor, t: &[usize], v: &Tensor) -> Result<Tensor> {
    xt.mul(&extract(&s.sqrt_alphas_cumprod, t, xt)?)?
        .sub(&v.mul(&extract(&s.sqrt_one_minus_alphas_cumprod, t, xt)?)?)
}

/// ε̂ from whatever the network predicts (the one conversion every sampler uses).
pub fn eps_from_prediction(
    s: &Schedule,
    pred: Prediction,
    xt: &Tensor,
    t: &[usize],
    out: &Tensor,
) -> Result<Tensor> {
    match pred {
        Prediction::Eps => Ok(out.clone()),
        Prediction::X0 => eps_from_x0(s, xt, t, out),
        Prediction::V => eps_from_v(s, xt, t, out),
    }
}

/// The score of the noised data, s_θ(x_t, t) = ∇ log q(x_t) ≈ −ε_θ/√(1−ᾱ_t):
/// ε-prediction is denoising score matching (Ho et al. 2020, §3.2; Song &
/// Ermon 2019), since ∇ log q(x_t|x₀) = −ε/√(1−ᾱ_t).
pub fn score_from_eps(s: &Schedule, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
    eps.div(&extract(&s.sqrt_one_minus_alphas_cumprod, t, eps)?)?
        .neg()
}

/// SNR(t) = ᾱ_t/(1 − ᾱ_t) (Kingma et al. 2021, eq. 2 for the VP process).
pub fn snr(s: &Schedule, t: usize) -> f64 {
    s.alphas_cumprod[t] / (1.0 - s.alphas_cumprod[t])
}

/// Min-SNR-γ loss weight (Hang et al. 2023, §3.4, eq. 8 and its ε/v forms):
/// min(SNR, γ) for x₀-, min(SNR, γ)/SNR for ε-, min(SNR, γ)/(SNR + 1) for
/// v-prediction — the x₀-space weight min(SNR, γ) carried to each target.
pub fn min_snr_weight(s: &Schedule, pred: Prediction, gamma: f64, t: usize) -> f64 {
    let r = snr(s, t);
    let clipped = r.min(gamma);
    match pred {
        Prediction::X0 => clipped,
        Prediction::Eps => clipped / r,
        Prediction::V => clipped / (r + 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{predict_x0_from_eps, q_sample};
    use crate::schedule::BetaSchedule;
    use noisegrad_engine::{DType, Device, Philox};

    fn rand(seed: u64) -> Tensor {
        Tensor::randn(
            &[3, 1, 2, 2],
            DType::F64,
            Device::Cpu,
            &mut Philox::new(seed),
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        a.to_vec_f64()
            .iter()
            .zip(b.to_vec_f64())
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Every target converts back to the ε and x₀ that produced x_t.
    #[test]
    fn conversions_round_trip_for_every_target() {
        let s = Schedule::new(BetaSchedule::Cosine { s: 0.008 }, 1000);
        let (x0, eps) = (rand(1), rand(2));
        let t = [0, 400, 998];
        let xt = q_sample(&s, &x0, &t, &eps).unwrap();
        for pred in [Prediction::Eps, Prediction::X0, Prediction::V] {
            let target = prediction_target(&s, pred, &x0, &eps, &t).unwrap();
            let e = eps_from_prediction(&s, pred, &xt, &t, &target).unwrap();
            assert!(max_diff(&e, &eps) < 1e-9, "{pred:?}: ε");
            let back = predict_x0_from_eps(&s, &xt, &t, &e).unwrap();
            // x̂₀ from ε divides by √ᾱ_t; at t = 998 of the cosine schedule
            // that amplifies rounding by ~1/√ᾱ ≈ 1e3.
            assert!(max_diff(&back, &x0) < 1e-6, "{pred:?}: x₀");
        }
        let v = v_from_eps_x0(&s, &x0, &eps, &t).unwrap();
        assert!(max_diff(&x0_from_v(&s, &xt, &t, &v).unwrap(), &x0) < 1e-12);
    }

    #[test]
    fn score_and_min_snr_weights() {
        let s = Schedule::ddpm();
        let eps = rand(3);
        let score = score_from_eps(&s, &eps, &[10, 10, 10]).unwrap();
        let k = -1.0 / (1.0 - s.alphas_cumprod[10]).sqrt();
        assert!(max_diff(&score, &eps.mul_scalar(k).unwrap()) < 1e-12);
        // Early steps (SNR ≫ γ) are down-weighted for ε; late ones keep weight 1.
        let (early, late) = (1usize, 900usize);
        assert!(snr(&s, early) > 5.0 && snr(&s, late) < 5.0);
        assert!((min_snr_weight(&s, Prediction::Eps, 5.0, late) - 1.0).abs() < 1e-15);
        let w = min_snr_weight(&s, Prediction::Eps, 5.0, early);
        assert!((w - 5.0 / snr(&s, early)).abs() < 1e-15);
        let r = snr(&s, late);
        assert!((min_snr_weight(&s, Prediction::V, 5.0, late) - r / (r + 1.0)).abs() < 1e-15);
        assert!(Prediction::parse("score").is_err());
    }
}
