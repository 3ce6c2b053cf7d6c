//! Exponential moving average of parameters (Polyak averaging), which the
//! DDPM reference samples from (decay 0.9999).

use crate::Tensor;
use crate::error::{Result, bad_arg};
use crate::nn::params::check_names_and_shapes;

/// Shadow copies θ̄ of a set of parameters θ, updated after each optimizer
/// step as θ̄ ← d·θ̄ + (1 − d)·θ. The shadows start equal to the parameters
/// (as TF's `ExponentialMovingAverage` without `num_updates`).
pub struct Ema {
    decay: f64,
    params: Vec<(String, Tensor)>,
    shadows: Vec<Tensor>,
}

impl std::fmt::Debug for Ema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ema")
            .field("decay", &self.decay)
            .field("params", &self.params.len())
            .finish()
    }
}

const PREFIX: &str = "ema.";

impl Ema {
    /// The DDPM reference's decay.
    pub const DEFAULT_DECAY: f64 = 0.9999;

    /// Tracks `params` (e.g. `ParamStore::params()`) with `decay` d ∈ [0, 1].
    /// Each parameter must own its whole buffer (not be a view).
    pub fn new(params: Vec<(String, Tensor)>, decay: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(bad_arg("Ema", format!("decay {decay} must be in [0, 1]")));
        }
        for (name, p) in &params {
            if !p.is_whole_buffer() {
                return Err(bad_arg(
                    "Ema",
                    format!("parameter '{name}' is a view; track the tensor that owns the buffer"),
                ));
            }
        }
        let shadows = params
            .iter()
            .map(|(_, p)| p.deep_copy())
            .collect::<Result<_>>()?;
        Ok(Self {
            decay,
            params,
            shadows,
        })
    }

    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// θ̄ ← d·θ̄ + (1 − d)·θ for every tracked parameter (one fused pass each).
    pub fn update(&mut self) -> Result<()> {
        for ((_, p), s) in self.params.iter().zip(&self.shadows) {
            let p = p.whole_buffer_apart_from(s)?;
            let src = p.storage();
            s.storage_mut().ema_update(&src, self.decay)?;
        }
        Ok(())
    }

    /// Exchanges parameters and shadows in place (O(1) per tensor, no copy):
    /// call once to sample with the averaged weights, again to resume
    /// training. Every handle on a parameter sees the swap.
    pub fn swap(&mut self) -> Result<()> {
        for ((_, p), s) in self.params.iter().zip(&self.shadows) {
            p.swap_buffers(s)?;
        }
        Ok(())
    }

    /// θ ← θ̄: overwrites the parameters with the averages (for a model used
    /// only for sampling from here on).
    pub fn copy_to_params(&self) -> Result<()> {
        for ((_, p), s) in self.params.iter().zip(&self.shadows) {
            p.assign(s)?;
        }
        Ok(())
    }

    /// The averages as named tensors `ema.<param>` (views of the live
    /// shadows: save them before the next update).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.shadows)
            .map(|((n, _), s)| (format!("{PREFIX}{n}"), s.detach()))
            .collect()
    }

    /// Restores averages saved by [`Ema::state_dict`]: exactly the
    /// `ema.<param>` names of the tracked parameters, with their shapes
    /// (other entries of `tensors` not starting with `ema.` are ignored).
    /// On error nothing is changed.
    pub fn load_state_dict(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let expected: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, p)| (format!("{PREFIX}{n}"), p.clone()))
            .collect();
        let given: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .cloned()
            .collect();
        check_names_and_shapes("Ema::load_state_dict", &expected, &given)?;
        let by_name: std::collections::HashMap<&str, &Tensor> =
            given.iter().map(|(k, t)| (k.as_str(), t)).collect();
        for ((name, _), s) in expected.iter().zip(&self.shadows) {
            s.assign(by_name[name.as_str()])?;
        }
        Ok(())
    }
}
