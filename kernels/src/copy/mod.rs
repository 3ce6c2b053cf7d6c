//! Strided copies: `contiguous()`, concatenation and the backward of slicing (the CUDA side is the strided `copy` kernel of [`crate::elementwise`]).
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
