//! # noisegrad
//!
//! A from-scratch tensor and reverse-mode autodiff engine for diffusion
//! models, with a DDPM trainer and samplers. This crate is the command-line
//! program and re-exports the three library crates:
//!
//! - [`kernels`]: compute kernels on slices (CPU SIMD + rayon).
//! - [`engine`]: `Tensor`, devices, autodiff, ops, optimizers, checkpoints.
//! - [`diffusion`]: schedules, U-Net, training, sampling, bits/dim, data.
//!
//! The README's example, compiled and run as a doctest
//! (`tests/readme_sample.rs` checks the README still shows this text):
//!
//! ```rust
//! # fn main() -> noisegrad::engine::Result<()> {
//! use noisegrad::engine::{DType, Device, Philox, Tensor};
//!
//! let mut rng = Philox::new(0);
//! let w = Tensor::randn(&[4, 3], DType::F32, Device::Cpu, &mut rng)?.set_requires_grad(true);
//! let x = Tensor::randn(&[8, 4], DType::F32, Device::Cpu, &mut rng)?;
//! let loss = x.matmul(&w)?.silu()?.square()?.mean_all()?;
//! loss.backward()?;
//! println!("{:?}", w.grad());
//! # assert!(w.grad().is_some());
//! # Ok(())
//! # }
//! ```

pub use noisegrad_diffusion as diffusion;
pub use noisegrad_engine as engine;
pub use noisegrad_kernels as kernels;
