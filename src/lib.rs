//! # noisegrad
//!
//! A from-scratch tensor and reverse-mode autodiff engine for diffusion
//! models, with a DDPM trainer and samplers. This crate is the command-line
//! program and re-exports the three library crates:
//!
//! - [`kernels`]: compute kernels on slices (CPU SIMD + rayon).
//! - [`engine`]: `Tensor`, devices, autodiff, ops, optimizers, checkpoints.
//! - [`diffusion`]: schedules, U-Net, training, sampling, bits/dim, data.

pub use noisegrad_diffusion as diffusion;
pub use noisegrad_engine as engine;
pub use noisegrad_kernels as kernels;
