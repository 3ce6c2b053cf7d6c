//! # noisegrad-kernels
//!
//! The compute kernels of noisegrad, with no tensor type: every function takes
//! plain slices plus the shape/stride numbers it needs. The engine crate owns
//! tensors, layouts and autodiff and calls into these functions.
//!
//! One folder per op family ([`conv`], [`attention`], [`group_norm`], …):
//! its `mod.rs` says what the op computes, `cpu.rs` is the CPU kernel,
//! `cuda.rs` the CUDA launcher and `<family>.cu` the kernel source it
//! compiles, side by side. What the families share sits in two folders:
//!
//! - [`cpu`]: the CPU machinery (the ISA selector [`cpu::simd`], rayon
//!   chunking, stride collapsing, fresh output buffers).
//! - [`cuda`]: the CUDA machinery (device, stream, caching allocator, NVRTC
//!   compilation, the kernel ABI, and the emulator behind feature `emulator`).
//! - [`rng`]: the Philox4x32-10 counter-based random generator shared by all
//!   devices, so the same seed gives the same numbers everywhere.

pub mod cpu;
pub mod cuda;
pub mod float;
pub mod rng;
#[cfg(any(test, feature = "emulator"))]
pub mod test_data;

pub mod attention;
pub mod conv;
pub mod copy;
pub mod elementwise;
pub mod gemm;
pub mod group_norm;
pub mod index;
pub mod noise;
pub mod optim;
pub mod random;
pub mod reduce;
pub mod softmax;
pub mod upsample;

pub use float::Float;
