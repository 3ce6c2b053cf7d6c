//! Softmax and log-softmax along one axis (the CUDA side lives in [`crate::reduce`]'s row kernels).
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
