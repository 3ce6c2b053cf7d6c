//! Gaussian quantities of the variational bound (all in nats, elementwise).

use noisegrad_engine::{Result, Tensor};

/// KL(N(μ₁, e^{ℓ₁}) ‖ N(μ₂, e^{ℓ₂})) = ½(−1 + ℓ₂ − ℓ₁ + e^{ℓ₁−ℓ₂} + (μ₁ − μ₂)² e^{−ℓ₂}),
/// with log-variances ℓ (broadcasting).
pub fn normal_kl(
    mean1: &Tensor,
    logvar1: &Tensor,
    mean2: &Tensor,
    logvar2: &Tensor,
) -> Result<Tensor> {
    let diff_sq = mean1.sub(mean2)?.square()?;
    logvar2
        .sub(logvar1)?
        .add(&logvar1.sub(logvar2)?.exp()?)?
        .add(&diff_sq.mul(&logvar2.neg()?.exp()?)?)?
        .add_scalar(-1.0)?
        .mul_scalar(0.5)
}

/// Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))): the fast approximation of
/// the standard normal CDF that the DDPM reference uses.
pub fn approx_standard_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    x.add(&x.powf(3.0)?.mul_scalar(0.044715)?)?
        .mul_scalar(c)?
        .tanh()?
        .add_scalar(1.0)?
        .mul_scalar(0.5)
}

/// log p(x | μ, σ) of the discretized Gaussian decoder L₀ (DDPM eq. 13):
/// the Gaussian mass of the bin [x − 1/255, x + 1/255] for data in [−1, 1]
/// on 256 levels, with the edge bins open-ended (x = −1 takes all mass
/// below, x = 1 all mass above). `log_scales` = log σ.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    means: &Tensor,
    log_scales: &Tensor,
) -> Result<Tensor> {
    let centered = x.sub(means)?;
    let inv_stdv = log_scales.neg()?.exp()?;
    let cdf_plus = approx_standard_normal_cdf(&centered.add_scalar(1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let cdf_min = approx_standard_normal_cdf(&centered.add_scalar(-1.0 / 255.0)?.mul(&inv_stdv)?)?;
    let tiny = 1e-12;
    let log_cdf_plus = cdf_plus.clamp(tiny, f64::INFINITY)?.log()?;
    let log_one_minus_cdf_min = cdf_min
        .affine(-1.0, 1.0)?
        .clamp(tiny, f64::INFINITY)?
        .log()?;
    let log_cdf_delta = cdf_plus.sub(&cdf_min)?.clamp(tiny, f64::INFINITY)?.log()?;
    // x < −0.999 → left edge bin; x > 0.999 → right edge bin; else interior.
    let low = x.map_lt_scalar(-0.999)?;
    let high = x.map_gt_scalar(0.999)?;
    Tensor::where_cond(
        &low,
        &log_cdf_plus,
        &Tensor::where_cond(&high, &log_one_minus_cdf_min, &log_cdf_delta)?,
    )
}

/// Mean over all axes but the batch axis: [N, ...] → [N].
pub fn mean_flat(x: &Tensor) -> Result<Tensor> {
    let axes: Vec<usize> = (1..x.rank()).collect();
    x.mean(&axes, false)
}

/// Comparison helpers on a scalar threshold (0/1 tensors, untracked).
trait ScalarCompare {
    fn map_lt_scalar(&self, c: f64) -> Result<Tensor>;
    fn map_gt_scalar(&self, c: f64) -> Result<Tensor>;
}

impl ScalarCompare for Tensor {
    fn map_lt_scalar(&self, c: f64) -> Result<Tensor> {
        self.lt(&self.full_like(c)?)
    }
    fn map_gt_scalar(&self, c: f64) -> Result<Tensor> {
        self.gt(&self.full_like(c)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::{DType, Device};

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_vec(v, &[v.len()], DType::F64, Device::Cpu).unwrap()
    }

    #[test]
    fn kl_of_identical_gaussians_is_zero_and_known_value() {
        let kl = normal_kl(&t(&[0.3]), &t(&[-1.0]), &t(&[0.3]), &t(&[-1.0]))
            .unwrap()
            .item()
            .unwrap();
        assert!(kl.abs() < 1e-12);
        // KL(N(1,1) ‖ N(0,1)) = ½.
        let kl = normal_kl(&t(&[1.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]))
            .unwrap()
            .item()
            .unwrap();
        assert!((kl - 0.5).abs() < 1e-12);
    }

    #[test]
    fn decoder_bins_sum_to_one() {
        // Σ over all 256 levels of the bin probabilities must be 1.
        let levels: Vec<f64> = (0..256).map(|i| i as f64 / 127.5 - 1.0).collect();
        let x = t(&levels);
        let ll = discretized_gaussian_log_likelihood(
            &x,
            &x.full_like(0.1).unwrap(),
            &x.full_like((0.3f64).ln()).unwrap(),
        )
        .unwrap();
        let total: f64 = ll.to_vec_f64().iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-3, "{total}");
    }
}
