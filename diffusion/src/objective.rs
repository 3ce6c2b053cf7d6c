//! The training objective beyond DDPM's L_simple (Nichol & Dhariwal 2021):
//! what the network predicts, whether it learns Σ_θ, and which loss —
//! L_simple, L_hybrid = L_simple + λ L_vlb, or L_vlb — with optional
//! min-SNR-γ weighting and importance-sampled timesteps.

use crate::gaussian::mean_flat;
use crate::parameterization::{Prediction, eps_from_prediction, min_snr_weight, prediction_target};
use crate::process::ReverseVariance;
use crate::schedule::Schedule;
use crate::variance::{Sigma, learned_log_variance, p_mean_log_variance, split_output};
use crate::vlb::vb_terms_bpd;
use noisegrad_engine::{Error, Result, Tensor};

/// Fixed σ_t² = β_t, or learned Σ_θ (eq. 15).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarianceKind {
    #[default]
    Fixed,
    Learned,
}

/// Which loss the trainer minimises.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// ‖target − prediction‖² (Ho et al. eq. 14).
    #[default]
    Simple,
    /// L_simple + λ L_vlb, λ = 0.001, L_vlb through Σ_θ only (eq. 16).
    Hybrid,
    /// L_vlb alone, through mean and variance, importance-sampled t (§3.3).
    Vlb,
}

/// λ of L_hybrid (Nichol & Dhariwal 2021, §3.1).
pub const HYBRID_LAMBDA: f64 = 0.001;

/// Everything about the objective; stored in checkpoints, every field
/// defaulting to DDPM's choice so older checkpoints load as ε / fixed / simple.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Objective {
    pub predict: Prediction,
    pub variance: VarianceKind,
    pub loss: LossKind,
    /// γ of min-SNR-γ weighting (Hang et al. 2023), None = unweighted.
    pub min_snr: Option<f64>,
}

impl Objective {
    /// Rejects combinations that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        match (self.loss, self.variance) {
            (LossKind::Vlb | LossKind::Hybrid, VarianceKind::Fixed) => {
                return bad(
                    "--loss vlb/hybrid trains Σ_θ through L_vlb: it needs --variance learned",
                );
            }
            (LossKind::Simple, VarianceKind::Learned) => {
                return bad(
                    "--variance learned needs --loss hybrid or vlb (L_simple does not train Σ_θ)",
                );
            }
            _ => {}
        }
        if let Some(g) = self.min_snr {
            if !(g.is_finite() && g > 0.0) {
                return Err(Error::Config(format!(
                    "--min-snr must be a positive number, got {g}"
                )));
            }
            if self.loss == LossKind::Vlb {
                return bad("--min-snr weights the MSE term; --loss vlb has none");
            }
        }
        Ok(())
    }

    /// Output channels per image channel: 2 with a learned variance.
    pub fn output_multiplier(&self) -> usize {
        match self.variance {
            VarianceKind::Fixed => 1,
            VarianceKind::Learned => 2,
        }
    }

    /// The reverse variance samplers and `eval` use (fixed: σ² = β_t).
    pub fn sigma(&self) -> Sigma {
        match self.variance {
            VarianceKind::Fixed => Sigma::Fixed(ReverseVariance::FixedLarge),
            VarianceKind::Learned => Sigma::Learned,
        }
    }

    /// DDPM's plain objective (the trainer's fused fast path).
    pub fn is_ddpm(&self) -> bool {
        *self == Objective::default()
    }

    /// Whether timesteps are importance-sampled (L_vlb only, as in §3.3).
    pub fn importance_sampled(&self) -> bool {
        self.loss == LossKind::Vlb
    }
}

/// The per-image loss of a batch before averaging, for the trainer and the
/// importance sampler's history.
pub struct BatchLoss {
    /// Mean over the batch of weight × per-image loss (what backward sees).
    pub loss: Tensor,
    /// Per-image unweighted losses (detached).
    pub per_image: Vec<f64>,
}

/// The loss of objective `o` for a batch: `out` is the raw U-Net output at
/// x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, `weights` the importance weights 1/(T p_t)
/// (None: uniform t).
pub fn batch_loss(
    s: &Schedule,
    o: &Objective,
    out: &Tensor,
    (x0, eps): (&Tensor, &Tensor),
    (xt, t): (&Tensor, &[usize]),
    weights: Option<&[f64]>,
) -> Result<BatchLoss> {
    let (pred, v) = split_output(out, x0.dim(1)?)?;
    let per_image = match o.loss {
        LossKind::Simple => weighted_mse(s, o, &pred, x0, eps, t)?,
        LossKind::Hybrid => {
            let vb = vb_bits(s, o, &pred.detach(), v.as_ref(), x0, xt, t)?;
            // improved-diffusion scales the vb term by T/1000, so λ = 0.001 at T = 1000
            // means the same thing at any T.
            let lambda = HYBRID_LAMBDA * s.steps() as f64;
            weighted_mse(s, o, &pred, x0, eps, t)?.add(&vb.mul_scalar(lambda)?)?
        }
        LossKind::Vlb => vb_bits(s, o, &pred, v.as_ref(), x0, xt, t)?,
    };
    let values = per_image.detach().to_vec_f64();
    let loss = match weights {
        Some(w) => {
            let w = Tensor::from_vec(w, &[w.len()], per_image.dtype(), per_image.device())?;
            per_image.mul(&w)?.mean_all()?
        }
        None => per_image.mean_all()?,
    };
    Ok(BatchLoss {
        loss,
        per_image: values,
    })
}

/// Per-image ‖target − prediction‖²/dim, times the min-SNR-γ weight when set.
fn weighted_mse(
    s: &Schedule,
    o: &Objective,
    pred: &Tensor,
    x0: &Tensor,
    eps: &Tensor,
    t: &[usize],
) -> Result<Tensor> {
    let target = prediction_target(s, o.predict, x0, eps, t)?;
    let mse = mean_flat(&pred.sub(&target)?.square()?)?;
    match o.min_snr {
        None => Ok(mse),
        Some(g) => {
            let w: Vec<f64> = t
                .iter()
                .map(|&i| min_snr_weight(s, o.predict, g, i))
                .collect();
            mse.mul(&Tensor::from_vec(
                &w,
                &[w.len()],
                mse.dtype(),
                mse.device(),
            )?)
        }
    }
}

/// The bound's term L_t in bits/dim per image from the prediction `pred`
/// (detach it for L_hybrid's stop-gradient) and the variance output `v`;
/// x̂₀ unclipped, as in training in improved-diffusion.
fn vb_bits(
    s: &Schedule,
    o: &Objective,
    pred: &Tensor,
    v: Option<&Tensor>,
    x0: &Tensor,
    xt: &Tensor,
    t: &[usize],
) -> Result<Tensor> {
    let v = v.ok_or_else(|| Error::Config("L_vlb needs the learned-variance output".into()))?;
    let eps = eps_from_prediction(s, o.predict, xt, t, pred)?;
    let (mean, _) = p_mean_log_variance(s, o.sigma(), xt, t, &eps, Some(v), false)?;
    vb_terms_bpd(s, x0, xt, t, &mean, &learned_log_variance(s, v, t)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_combinations_are_rejected_with_the_flag_named() {
        let o = |loss, variance| Objective {
            loss,
            variance,
            ..Default::default()
        };
        let msg = |o: Objective| o.validate().unwrap_err().to_string();
        assert!(msg(o(LossKind::Vlb, VarianceKind::Fixed)).contains("--variance learned"));
        assert!(msg(o(LossKind::Simple, VarianceKind::Learned)).contains("hybrid or vlb"));
        let neg = Objective {
            min_snr: Some(-1.0),
            ..Default::default()
        };
        assert!(msg(neg).contains("--min-snr"));
        assert!(
            o(LossKind::Hybrid, VarianceKind::Learned)
                .validate()
                .is_ok()
        );
        // An old checkpoint's missing fields read as DDPM's objective.
        let old: Objective = serde_json::from_str("{}").unwrap();
        assert!(old.is_ddpm());
        let v: Objective = serde_json::from_str(r#"{"predict":"v","loss":"hybrid"}"#).unwrap();
        assert_eq!((v.predict, v.loss), (Prediction::V, LossKind::Hybrid));
    }
}
