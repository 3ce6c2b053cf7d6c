//! Training machinery: the Adam/AdamW optimizer, global gradient-norm
//! clipping, the EMA of parameters and the learning-rate warmup — all that
//! the DDPM reference's training step uses. Optimizers write parameters in
//! place, so every handle a model holds sees the update.

pub mod adam;
pub mod clip;
pub mod ema;
mod inplace;
pub mod schedule;

pub use adam::{Adam, AdamConfig, WeightDecay};
pub use clip::{GradNorm, GradScale, clip_coefficient, clip_grad_norm, grad_norm};
pub use ema::Ema;
pub use schedule::WarmupSchedule;
