//! Nearest-neighbour 2× upsampling and its adjoint (sum over each 2×2 block).
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `upsample.cu` (the kernel source beside it);
//! - [`reference`]: the definition as plain loops, forward and backward,
//!   the oracle of the CPU kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;
