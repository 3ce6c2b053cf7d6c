//! CUDA kernels: `.cu` sources compiled at run time by NVRTC, launched
//! through `cudarc`, with cuBLAS for GEMM.
//!
//! Nothing here links against CUDA: `cudarc` loads libcuda, libnvrtc and
//! libcublas when first used, so the crate builds and its CPU half runs on
//! machines without them. [`is_available`] says whether a GPU can be used.
//! In tests without one, the CPU emulator (`emu`, compiled only with the
//! `emulator` cargo feature, which only dev-dependencies enable) runs the
//! same kernels and launchers (see `use_emulator_if_no_gpu`).
//!
//! Layout of this module:
//! - [`device`]: one [`CudaDevice`] per GPU (its backend, memory pool, TF32
//!   switch); `backend`: the interface a device's backend implements;
//!   `driver`: the GPU backend (context, the single stream all work goes
//!   to, cuBLAS handle, compiled-module cache); `emu`: the test emulator.
//! - [`abi`]: the values passed to kernels and cuBLAS ([`Arg`], [`Strided`],
//!   [`abi::BlasCall`]), a leaf every other module may use.
//! - [`alloc`]: the caching allocator behind every [`DeviceBuffer`].
//! - [`compile`]: NVRTC compilation of the sources listed in [`sources`].
//! - one launcher file per kernel family (`elementwise.rs`, ...) next to its
//!   `.cu` source; launchers take device buffers plus the shape numbers they
//!   need, never a tensor.
//!
//! CUDA tensors are f32: f64 exists on the CPU for gradient checks only.

pub mod abi;
pub mod alloc;
mod backend;
pub mod compile;
pub mod device;
mod driver;
#[cfg(feature = "emulator")]
pub mod emu;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod signature;
pub mod sources;

pub use abi::{Arg, MAX_RANK, Param, Strided};
pub use alloc::{DeviceBuffer, PoolStats};
pub use device::{CudaDevice, is_available};
#[cfg(feature = "emulator")]
pub use device::{emulation_requested, use_emulator_if_no_gpu};

/// What can go wrong on the GPU. Each message names the operation.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA is not available: {0}")]
    NotAvailable(String),

    #[error(
        "CUDA out of memory on cuda:{device} while allocating {requested} bytes \
         ({in_use} bytes in use by tensors, {cached} cached and released, {free} free of {total})"
    )]
    OutOfMemory {
        device: usize,
        requested: usize,
        in_use: usize,
        cached: usize,
        free: usize,
        total: usize,
    },

    #[error("NVRTC could not compile CUDA module `{module}`:\n{log}")]
    Compile { module: &'static str, log: String },

    #[cfg(feature = "emulator")]
    #[error("the CUDA emulator could not build module `{module}`:\n{log}")]
    EmuCompile { module: &'static str, log: String },

    #[error("CUDA {op}: {msg}")]
    Driver { op: &'static str, msg: String },

    #[error("cuBLAS {op}: {msg}")]
    Blas { op: &'static str, msg: String },

    #[error("NCCL {op}: {msg}")]
    Nccl { op: &'static str, msg: String },
}

pub type Result<T> = std::result::Result<T, CudaError>;

/// Wraps a driver error with the operation it came from.
pub(crate) fn driver_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        op,
        msg: format!("{e:?}"),
    }
}

/// Threads per block for the grid-stride kernels: 256 beat 1024 on the H100
/// (more resident blocks per SM, see DESIGN-NOTES).
pub const BLOCK: u32 = 256;

/// A 1-D launch of `n` work items with grid-stride loops: enough blocks to
/// fill the GPU, not one thread per item.
pub fn grid_1d(dev: &CudaDevice, n: usize) -> cudarc::driver::LaunchConfig {
    let wanted = n.div_ceil(BLOCK as usize).max(1);
    let cap = dev.sm_count() * 16;
    cudarc::driver::LaunchConfig {
        grid_dim: (wanted.min(cap) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (`rows` blocks of `threads`), for row-wise reductions.
pub fn grid_rows(rows: usize, threads: u32, shared_mem_bytes: u32) -> cudarc::driver::LaunchConfig {
    cudarc::driver::LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes,
    }
}
