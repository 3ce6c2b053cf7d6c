//! index_select along an axis and its adjoint index_add.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `index.cu` (the kernel source beside it);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
