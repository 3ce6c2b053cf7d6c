//! Matrix products: `matrixmultiply` with arbitrary strides on the CPU, cuBLAS (row-major via the transposed problem) on CUDA.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
