//! Matrix products. On the CPU, two engines with one job each:
//! - [`packed`]: the one packed GEMM core of the CPU kernels (Goto/BLIS
//!   structure, AVX-512 / AVX2 / plain micro-kernels, single-threaded per
//!   call), used inside the convolution's and attention's own rayon tasks;
//! - [`cpu`]: `matrixmultiply` with arbitrary strides, for the engine's
//!   `matmul` op, whose large products use matrixmultiply's own threads.
//!
//! On CUDA, [`cuda`]: cuBLAS (row-major via the transposed problem).
//! Tests: unit tests inside each file; the PyTorch fixture tests are in the
//! root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod packed;
