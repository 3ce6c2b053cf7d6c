//! # noisegrad-kernels
//!
//! The compute kernels of noisegrad, with no tensor type: every function takes
//! plain slices plus the shape/stride numbers it needs. The engine crate owns
//! tensors, layouts and autodiff and calls into these functions.
//!
//! - [`cpu`]: CPU kernels (explicit SIMD with runtime feature detection and a
//!   scalar fallback, rayon across rows/batches, `matrixmultiply` for GEMM).
//! - [`rng`]: the Philox4x32-10 counter-based random generator shared by all
//!   devices, so the same seed gives the same numbers everywhere.

pub mod cpu;
pub mod cuda;
pub mod float;
pub mod rng;

pub use float::Float;
