//! Finite-difference gradient checking in f64.
//!
//! For a function f of several tensors, the analytic gradients from
//! `backward` are compared with central differences
//! (L(x + h·eⱼ) − L(x − h·eⱼ)) / 2h, element by element, where
//! L = Σ f(x) ⊙ w for a fixed random `w` (so every output element matters
//! with a different weight, and a wrong transpose cannot hide behind a sum).
//! Everything runs in f64, where the O(h²) truncation and rounding errors
//! are ~1e-9, far below any real bug.

use crate::error::{Error, Result};
use crate::{DType, Device, Tensor, no_grad};
use noisegrad_kernels::rng::Philox;

/// Tolerances and step of a gradient check.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    pub step: f64,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        Self {
            step: 1e-6,
            atol: 1e-7,
            rtol: 1e-5,
        }
    }
}

/// The worst disagreement found (for reporting).
#[derive(Clone, Debug, Default)]
pub struct GradcheckReport {
    pub max_abs_err: f64,
    pub checked: usize,
}

/// Checks `f`'s gradients w.r.t. every input at the given point. Inputs are
/// converted to f64 CPU leaves. Returns an error naming the input and
/// element where analytic and numeric gradients disagree.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            Ok(t.detach()
                .to_dtype(DType::F64)?
                .contiguous()?
                .set_requires_grad(true))
        })
        .collect::<Result<_>>()?;
    let out = f(&leaves)?;
    let mut rng = Philox::new(0x6772_6164);
    let w = Tensor::randn(out.shape(), DType::F64, Device::Cpu, &mut rng)?;
    out.mul(&w)?.sum_all()?.backward()?;

    let values: Vec<Vec<f64>> = leaves.iter().map(|t| t.to_vec_f64()).collect();
    let loss_at = |which: usize, data: &[f64]| -> Result<f64> {
        no_grad(|| {
            let args: Vec<Tensor> = leaves
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if i == which {
                        Tensor::from_vec(data, t.shape(), DType::F64, Device::Cpu)
                    } else {
                        Ok(t.detach())
                    }
                })
                .collect::<Result<_>>()?;
            f(&args)?.mul(&w)?.sum_all()?.item()
        })
    };

    let mut report = GradcheckReport::default();
    for (i, leaf) in leaves.iter().enumerate() {
        let analytic = match leaf.grad() {
            Some(g) => g.to_vec_f64(),
            None => vec![0.0; leaf.numel()],
        };
        let mut x = values[i].clone();
        for j in 0..x.len() {
            let orig = x[j];
            x[j] = orig + opts.step;
            let up = loss_at(i, &x)?;
            x[j] = orig - opts.step;
            let down = loss_at(i, &x)?;
            x[j] = orig;
            let numeric = (up - down) / (2.0 * opts.step);
            let err = (analytic[j] - numeric).abs();
            report.max_abs_err = report.max_abs_err.max(err);
            report.checked += 1;
            if err > opts.atol + opts.rtol * numeric.abs() {
                return Err(Error::CheckFailed(format!(
                    "gradcheck: input {i} (shape {:?}) element {j}: analytic {} vs numeric {numeric} (|diff| {err:e})",
                    leaf.shape(),
                    analytic[j]
                )));
            }
        }
    }
    Ok(report)
}
