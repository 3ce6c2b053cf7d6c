//! Composite ops used by models: dropout and the mean squared error.

use crate::Tensor;
use crate::error::{Result, bad_arg};
use crate::storage::UnaryOp;
use noisegrad_kernels::rng::Philox;

impl Tensor {
    /// Inverted dropout: zeroes each element with probability `p` and scales
    /// survivors by 1/(1−p), so the expectation is unchanged. The mask comes
    /// from `rng` (seeded, reproducible); the gradient is g·mask (the mask is
    /// an untracked constant of the `mul`). `train = false` is the identity.
    pub fn dropout(&self, p: f64, train: bool, rng: &mut Philox) -> Result<Tensor> {
        if !(0.0..1.0).contains(&p) {
            return Err(bad_arg(
                "dropout",
                format!("probability {p} must be in [0, 1)"),
            ));
        }
        if !train || p == 0.0 {
            return Ok(self.clone());
        }
        let u = Tensor::rand(self.shape(), self.dtype(), self.device(), rng)?;
        let mask = u
            .map_unary(UnaryOp::GeScalar(p))?
            .map_unary(UnaryOp::Affine {
                mul: 1.0 / (1.0 - p),
                add: 0.0,
            })?;
        self.mul(&mask)
    }

    /// mean((a − b)²) over all elements.
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(crate::error::shape_err(
                "mse_loss",
                self.shape(),
                target.shape(),
                "prediction and target must have the same shape",
            ));
        }
        self.sub(target)?.square()?.mean_all()
    }
}
