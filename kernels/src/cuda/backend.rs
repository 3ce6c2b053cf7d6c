//! The one interface behind a [`CudaDevice`](super::CudaDevice): what a
//! device must do for the pool, the copies, the launchers and GEMM.
//!
//! The GPU implements it through the CUDA driver ([`super::driver`]). With
//! the `emulator` cargo feature (enabled only by the dev-dependencies of
//! the crates whose tests use it) the CPU emulator implements it too, so
//! the CUDA tests run without a GPU; a release build has only the driver.

use super::Result;
use super::abi::{Arg, BlasCall};
use cudarc::driver::LaunchConfig;

pub(crate) trait Backend: Send + Sync {
    /// `bytes` of device memory; `Ok(None)` when the device is out of memory.
    fn malloc(&self, bytes: usize) -> Result<Option<u64>>;

    /// Returns `bytes` at `ptr` (from [`Self::malloc`]) to the device.
    ///
    /// # Safety
    /// Nothing uses `ptr` afterwards, queued work included.
    unsafe fn free(&self, ptr: u64, bytes: usize) -> Result<()>;

    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// (free, total) device memory for out-of-memory reports.
    fn mem_info(&self) -> (usize, usize);

    /// The pool hands out a buffer of `len` bytes at `ptr`, from a block of
    /// `block` bytes (a checking backend tracks live buffers).
    fn handed_out(&self, _ptr: u64, _len: usize, _block: usize) {}

    /// The pool took the buffer at `ptr` back.
    fn taken_back(&self, _ptr: u64) {}

    /// Copies `data` to `dst` and returns once copied.
    fn upload(&self, data: &[u8], dst: u64) -> Result<()>;

    /// Copies from `src` into `out` after all queued work.
    fn download(&self, src: u64, out: &mut [u8]) -> Result<()>;

    /// Queues a zero fill of `bytes` at `ptr` (inside a live buffer).
    fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()>;

    /// Queues a copy of `bytes` from `src` to `dst` (inside live buffers).
    fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;

    /// Queues kernel `module::name` with `args`, after checking them
    /// against the kernel's signature.
    fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()>;

    /// The stream all work is queued on, with the device's context made
    /// current on this thread: NCCL queues its collectives on it, so they
    /// are ordered after the backward pass without events. `None` where
    /// there is no stream (the emulator: NCCL needs a real GPU).
    #[cfg(feature = "nccl")]
    fn nccl_stream(&self) -> Result<Option<cudarc::driver::sys::CUstream>> {
        Ok(None)
    }

    /// Queues one cuBLAS strided batched GEMM; the error says what the
    /// library (or the emulator's check of its contract) refused.
    fn gemm(&self, call: &BlasCall) -> std::result::Result<(), String>;
}
