//! Uniform and normal fills from the Philox stream; the CPU fills are in [`crate::rng`], the CUDA launcher here draws the same numbers.
//!
//! The whole family in this folder:
//! - [`cuda`]: the CUDA launcher for `random.cu` (the kernel source beside it);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cuda;
