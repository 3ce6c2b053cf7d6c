//! One [`CudaDevice`] per GPU: its backend, the memory pool in front of it,
//! and the TF32 switch.
//!
//! The backend is one [`Backend`]: the CUDA driver ([`Driver`]: context,
//! the one stream all work is queued on, cuBLAS handle, module cache) or,
//! in tests only (the `emulator` feature) on machines without a GPU, the
//! CPU emulator that runs the same `.cu` kernels and launchers. Launchers
//! only see this type's methods (`alloc`, `upload`, `launch`, ...) and work
//! unchanged on either.

use super::Result;
use super::abi::{Arg, Param};
use super::alloc::{DeviceBuffer, Pool, PoolStats};
use super::backend::Backend;
use super::driver::Driver;
use cudarc::driver::{CudaContext, LaunchConfig, sys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether a CUDA driver and at least one GPU are present. Cheap after the first call; never panics (cudarc
/// panics when libcuda is missing, so the library is probed first).
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: only tries to dlopen the driver library.
        let present = unsafe { sys::is_culib_present() };
        present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
    })
}

/// Set by [`use_emulator_if_no_gpu`]: devices opened from now on are
/// emulated.
#[cfg(feature = "emulator")]
static EMULATE: AtomicBool = AtomicBool::new(false);

/// Tests only (the `emulator` feature): on a machine without a GPU, makes
/// `cuda:0` the CPU emulator (call it before the first [`CudaDevice::get`];
/// the tests do, through `testing::gpu_or_skip`). Returns whether
/// `cuda:0` is emulated: false when a GPU is present, when
/// `NOISEGRAD_NO_EMULATOR` is set (to anything but `0`), or when g++ (which
/// compiles the kernels for the emulator) cannot be run.
#[cfg(feature = "emulator")]
pub fn use_emulator_if_no_gpu() -> bool {
    if EMULATE.load(Ordering::Relaxed) {
        return true;
    }
    let opted_out = std::env::var("NOISEGRAD_NO_EMULATOR").is_ok_and(|v| !v.is_empty() && v != "0");
    if is_available() || opted_out || !super::emu::compiler_available() {
        return false;
    }
    EMULATE.store(true, Ordering::Relaxed);
    true
}

/// Tests only: whether `cuda:0` is (or will be, once opened) the emulator.
#[cfg(feature = "emulator")]
pub fn emulation_requested() -> bool {
    EMULATE.load(Ordering::Relaxed)
}

/// SMs the emulated device reports: few, so grid-stride launches (sized
/// from the SM count) run few blocks, and every block runs in turn anyway.
/// `NOISEGRAD_EMU_SM_COUNT=N` overrides it, to exercise the launch plans a
/// GPU with N SMs gets (132 on an H100).
#[cfg(feature = "emulator")]
pub const EMULATED_SM_COUNT: usize = 4;

#[cfg(feature = "emulator")]
fn emulated_sm_count() -> usize {
    std::env::var("NOISEGRAD_EMU_SM_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(EMULATED_SM_COUNT)
}

pub struct CudaDevice {
    ordinal: usize,
    backend: Arc<dyn Backend>,
    arch: &'static str,
    sm_count: usize,
    name: String,
    pub(crate) pool: Pool,
    tf32: AtomicBool,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice(cuda:{} {} {})",
            self.ordinal, self.name, self.arch
        )
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

impl CudaDevice {
    /// The device for `ordinal`, created on first use: the GPU (in tests
    /// without one, the emulator after [`use_emulator_if_no_gpu`]).
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let map = DEVICES.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        #[cfg(feature = "emulator")]
        let dev = if emulation_requested() {
            CudaDevice::open_emulated(ordinal)?
        } else {
            CudaDevice::open(ordinal)?
        };
        #[cfg(not(feature = "emulator"))]
        let dev = CudaDevice::open(ordinal)?;
        let dev = Arc::new(dev);
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        let driver = Driver::open(ordinal)?;
        let (arch, sm_count, name) = (driver.arch, driver.sm_count, driver.name.clone());
        Ok(CudaDevice::with_backend(
            ordinal,
            Arc::new(driver),
            arch,
            sm_count,
            name,
        ))
    }

    #[cfg(feature = "emulator")]
    fn open_emulated(ordinal: usize) -> Result<CudaDevice> {
        if ordinal != 0 {
            return Err(super::CudaError::NotAvailable(format!(
                "cuda:{ordinal} requested but the CUDA emulator provides cuda:0 only"
            )));
        }
        Ok(CudaDevice::with_backend(
            ordinal,
            Arc::new(super::emu::Emulator::new()),
            "emulated",
            emulated_sm_count(),
            "CUDA emulator (CPU)".into(),
        ))
    }

    fn with_backend(
        ordinal: usize,
        backend: Arc<dyn Backend>,
        arch: &'static str,
        sm_count: usize,
        name: String,
    ) -> CudaDevice {
        CudaDevice {
            ordinal,
            pool: Pool::new(ordinal, backend.clone()),
            backend,
            arch,
            sm_count,
            name,
            tf32: AtomicBool::new(false),
        }
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// NVRTC's `-arch` for this GPU, e.g. `sm_90` (`emulated` for the
    /// emulator).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Tests only: whether this device is the CPU emulator, not a GPU.
    #[cfg(feature = "emulator")]
    pub fn is_emulated(&self) -> bool {
        self.arch == "emulated"
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Whether cuBLAS may use TF32 tensor cores for f32 GEMMs (PyTorch's
    /// `allow_tf32`): ~10-bit mantissa products, f32 accumulation.
    pub fn set_tf32(&self, on: bool) {
        self.tf32.store(on, Ordering::Relaxed);
    }

    pub fn tf32(&self) -> bool {
        self.tf32.load(Ordering::Relaxed)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    /// An uninitialised buffer of `len` f32 from the pool.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        self.pool.alloc(len)
    }

    /// A zero-filled buffer of `len` f32.
    pub fn zeros(&self, len: usize) -> Result<DeviceBuffer> {
        let buf = self.alloc(len)?;
        buf.memset_zero(self)?;
        Ok(buf)
    }

    /// Copies host data to a new device buffer.
    pub fn upload(&self, data: &[f32]) -> Result<DeviceBuffer> {
        self.upload_words(data)
    }

    /// Copies integer data (indices) to a new device buffer, for kernels
    /// that take a `const unsigned*`. A [`DeviceBuffer`] counts 4-byte
    /// words, so its `len()` is the number of u32 and `ptr_at(i)` the
    /// address of the i-th one; such a buffer never holds f32 values.
    pub fn upload_u32(&self, data: &[u32]) -> Result<DeviceBuffer> {
        self.upload_words(data)
    }

    /// A new buffer holding `data` (4-byte values); returns once copied.
    fn upload_words<T: Copy>(&self, data: &[T]) -> Result<DeviceBuffer> {
        debug_assert_eq!(std::mem::size_of::<T>(), 4);
        let buf = self.alloc(data.len())?;
        if !data.is_empty() {
            // SAFETY: 4-byte plain values (f32 or u32) seen as their bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
            };
            self.backend.upload(bytes, buf.ptr())?;
        }
        Ok(buf)
    }

    /// Copies `len` f32 starting at element `offset` of `buf` to the host
    /// (waits for all queued work first, as it must).
    pub fn download(&self, buf: &DeviceBuffer, offset: usize, len: usize) -> Result<Vec<f32>> {
        assert!(
            offset + len <= buf.len(),
            "download past the end of a buffer"
        );
        let mut out = vec![0f32; len];
        if len > 0 {
            let src = buf.ptr_at(offset);
            // SAFETY: any bytes are a valid f32; `out` is exactly `len` f32.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, len * 4) };
            self.backend.download(src, bytes)?;
        }
        Ok(out)
    }

    /// Queues a zero fill of `bytes` at `ptr` (inside a live buffer).
    pub(crate) fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        self.backend.memset_zero(ptr, bytes)
    }

    /// Queues a copy of `bytes` from `src` to `dst` (inside live buffers).
    pub(crate) fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.backend.copy_d2d(src, dst, bytes)
    }

    /// Queues kernel `module::name` with `args` on the stream (the emulator
    /// runs it to completion). The arguments are checked against the
    /// kernel's signature first: a wrong list is an error naming both.
    pub fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        if cfg.grid_dim.0 == 0 || cfg.block_dim.0 == 0 {
            return Ok(());
        }
        self.backend.launch(module, name, cfg, args)
    }

    /// [`CudaDevice::launch`] with named arguments (see [`Param`]).
    pub fn launch_params(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        params: &[Param],
    ) -> Result<()> {
        let args: Vec<Arg> = params.iter().map(|p| p.1).collect();
        self.launch(module, name, cfg, &args)
    }

    /// Bytes reserved from and in use in this device's memory pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Sets the pool's peak to what is in use now, to measure one region.
    pub fn reset_peak(&self) {
        self.pool.reset_peak()
    }

    /// Returns every cached (unused) block to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.pool.empty_cache()
    }
}
