//! Inpainting with an unconditionally trained model: the replacement
//! method (Song et al. 2021, app. I; Lugmayr et al. 2022 §4) and RePaint's
//! resampling (Lugmayr et al. 2022, Alg. 1). At every DDPM step the known
//! region of x_{t−1} is replaced by a sample of q(x_{t−1} | x_0) of the
//! known pixels; with `resample` R > 1 each step is repeated R times, going
//! back one step with q(x_t | x_{t−1}) in between, so the generated region
//! can harmonise with the known one.

use crate::process::{ReverseVariance, ddpm_step_coefs, q_sample_coefs};
use crate::schedule::Schedule;
use crate::vlb::EpsModel;
use noisegrad_engine::{DType, Error, Philox, Result, Tensor, no_grad};

/// x = m ⊙ x_known + (1 − m) ⊙ x_unknown (m = 1 where pixels are known).
pub fn replace_known(x_unknown: &Tensor, x_known: &Tensor, mask: &Tensor) -> Result<Tensor> {
    x_unknown.add(&x_known.sub(x_unknown)?.mul(mask)?)
}

/// One forward step q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I) (DDPM eq. 2).
pub fn renoise_one_step(s: &Schedule, x_prev: &Tensor, t: usize, z: &Tensor) -> Result<Tensor> {
    let b = s.betas[t];
    x_prev
        .mul_scalar((1.0 - b).sqrt())?
        .add(&z.mul_scalar(b.sqrt())?)
}

/// The known pixels at noise level t − 1: x_0 itself after the last step.
fn known_at(s: &Schedule, x0: &Tensor, t: usize, rng: &mut Philox) -> Result<Tensor> {
    if t == 0 {
        return Ok(x0.clone());
    }
    let eps = Tensor::randn(x0.shape(), x0.dtype(), x0.device(), rng)?;
    x0.q_sample(&eps, &q_sample_coefs(s, &vec![t - 1; x0.dim(0)?]))
}

/// Completes `x0` [N, C, H, W] outside `mask` (same shape, 1 = keep) by
/// DDPM ancestral sampling with replacement and `resample` R ≥ 1 passes
/// per step (R = 1: the plain replacement method).
pub fn inpaint(
    s: &Schedule,
    var: ReverseVariance,
    model: &mut EpsModel,
    (x0, mask): (&Tensor, &Tensor),
    resample: usize,
    rng: &mut Philox,
    mut on_step: impl FnMut(usize),
) -> Result<Tensor> {
    if x0.shape() != mask.shape() || resample == 0 {
        return Err(Error::Input(format!(
            "inpaint: image {:?} and mask {:?} must have one shape, and --resample ≥ 1 (got {resample})",
            x0.shape(),
            mask.shape()
        )));
    }
    no_grad(|| {
        let (shape, device) = (x0.shape().to_vec(), x0.device());
        let mut x = Tensor::randn(&shape, DType::F32, device, rng)?;
        for t in (0..s.steps()).rev() {
            let ts = vec![t; shape[0]];
            for r in 0..resample {
                let eps = model(&x, &ts)?;
                let z = Tensor::randn(&shape, DType::F32, device, rng)?;
                let unknown =
                    x.denoise_step(&eps, Some(&z), &ddpm_step_coefs(s, var, &ts, true))?;
                let prev = replace_known(&unknown, &known_at(s, x0, t, rng)?, mask)?;
                x = if r + 1 < resample && t > 0 {
                    let z = Tensor::randn(&shape, DType::F32, device, rng)?;
                    renoise_one_step(s, &prev, t, &z)?
                } else {
                    prev
                };
            }
            on_step(t);
        }
        x.clamp(-1.0, 1.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::Device;

    /// Whatever the model predicts, the known pixels of the result are x_0
    /// (the last replacement uses x_0 itself) and the others are not.
    #[test]
    fn inpainting_keeps_the_known_pixels() {
        let s = Schedule::new(crate::schedule::BetaSchedule::DDPM, 20);
        let v: Vec<f64> = (0..2 * 16)
            .map(|i| ((i as f64) * 0.41).sin() * 0.8)
            .collect();
        let x0 = Tensor::from_vec(&v, &[2, 1, 4, 4], DType::F32, Device::Cpu).unwrap();
        let m: Vec<f64> = (0..32).map(|i| f64::from(i % 4 < 2)).collect();
        let mask = Tensor::from_vec(&m, &[2, 1, 4, 4], DType::F32, Device::Cpu).unwrap();
        let mut zero = |x: &Tensor, _t: &[usize]| x.zeros_like();
        for resample in [1, 3] {
            let out = inpaint(
                &s,
                ReverseVariance::FixedLarge,
                &mut zero,
                (&x0, &mask),
                resample,
                &mut Philox::new(4),
                |_| {},
            )
            .unwrap()
            .to_vec_f64();
            for i in 0..32 {
                if m[i] == 1.0 {
                    assert!((out[i] - v[i]).abs() < 1e-6, "known pixel {i} changed");
                }
            }
            assert!((0..32).any(|i| m[i] == 0.0 && (out[i] - v[i]).abs() > 1e-3));
        }
    }

    #[test]
    fn renoising_is_the_forward_step() {
        let s = Schedule::ddpm();
        let x = Tensor::from_vec(&[1.0, -0.5], &[1, 2], DType::F64, Device::Cpu).unwrap();
        let z = Tensor::from_vec(&[0.3, 0.7], &[1, 2], DType::F64, Device::Cpu).unwrap();
        let got = renoise_one_step(&s, &x, 500, &z).unwrap().to_vec_f64();
        let b = s.betas[500];
        assert!((got[0] - ((1.0 - b).sqrt() + 0.3 * b.sqrt())).abs() < 1e-12);
    }
}
