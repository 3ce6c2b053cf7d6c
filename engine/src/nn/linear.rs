//! The fully connected layer.

use super::init::{Init, default_init};
use super::params::ParamScope;
use crate::Tensor;
use crate::error::{Result, shape_err};

/// y = x·Wᵀ + b, with W: `[out, in]` (named `weight`) and b: `[out]`
/// (named `bias`), applied over the last axis of x: `[..., in] → [..., out]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    /// A layer initialised as the DDPM reference's `nn.dense`:
    /// W ~ `default_init(1.0)`, b = 0.
    pub fn new(scope: &ParamScope, in_features: usize, out_features: usize) -> Result<Self> {
        Self::with_init(scope, in_features, out_features, default_init(1.0))
    }

    /// A layer whose weight is drawn from `weight_init` (b = 0), e.g.
    /// `default_init(0.0)` for a near-zero output projection.
    pub fn with_init(
        scope: &ParamScope,
        in_features: usize,
        out_features: usize,
        weight_init: Init,
    ) -> Result<Self> {
        Ok(Self {
            weight: scope.param("weight", &[out_features, in_features], weight_init)?,
            bias: scope.param("bias", &[out_features], Init::Zeros)?,
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// y = x·Wᵀ + b for x of shape `[..., in]` (rank ≥ 2).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 || x.shape()[x.rank() - 1] != self.in_features() {
            return Err(shape_err(
                "linear",
                x.shape(),
                self.weight.shape(),
                format!(
                    "input must be [..., {}] (rank ≥ 2) for weight [out, in]",
                    self.in_features()
                ),
            ));
        }
        x.matmul(&self.weight.transpose(0, 1)?)?.add(&self.bias)
    }
}
