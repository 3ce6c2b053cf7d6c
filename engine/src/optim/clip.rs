//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
//!
//! The norm is one number over all parameters, ‖g‖ = √(Σ_p Σ_i g_pi²),
//! accumulated in f64. Clipping multiplies every gradient by
//! c = max_norm / (‖g‖ + 1e-6) when c < 1. [`Adam::step_clipped`] folds c
//! into its fused update instead of rewriting the gradients first, which
//! saves a read and a write of every gradient.
//!
//! [`Adam::step_clipped`]: super::Adam::step_clipped

use crate::error::{Result, bad_arg};
use crate::{Tensor, no_grad};

/// The ε of torch's clip coefficient max_norm / (‖g‖ + ε).
pub const CLIP_EPS: f64 = 1e-6;

/// ‖g‖ = √(Σ_p Σ_i g_pi²) over the gradients of `params` (params without a
/// gradient count as 0), summed in f64.
pub fn grad_norm<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<f64> {
    let mut sum = 0.0;
    for p in params {
        if let Some(g) = p.grad() {
            sum += g.storage().sum_squares(g.layout())?;
        }
    }
    Ok(sum.sqrt())
}

/// The factor clipping multiplies gradients by: min(1, max_norm / (‖g‖ + 1e-6)).
/// A non-finite norm gives 1 (nothing to rescale meaningfully; the caller
/// should check the returned norm and skip the step).
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    let c = max_norm / (total_norm + CLIP_EPS);
    if c < 1.0 { c } else { 1.0 }
}

/// Scales the gradients of `params` so their global norm is at most
/// `max_norm` (g ← g·c with c = [`clip_coefficient`]); returns the norm
/// before clipping. Same result as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    check_max_norm(max_norm)?;
    let norm = grad_norm(params)?;
    let c = clip_coefficient(norm, max_norm);
    if c < 1.0 {
        no_grad(|| -> Result<()> {
            for p in params {
                if let Some(g) = p.grad() {
                    p.set_grad(Some(g.mul_scalar(c)?));
                }
            }
            Ok(())
        })?;
    }
    Ok(norm)
}

pub(crate) fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm > 0.0 && max_norm.is_finite() {
        Ok(())
    } else {
        Err(bad_arg(
            "clip_grad_norm",
            format!("max_norm must be positive and finite, got {max_norm}"),
        ))
    }
}
