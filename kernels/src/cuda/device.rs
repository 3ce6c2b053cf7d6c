//! One [`CudaDevice`] per GPU: its backend, the memory pool in front of it,
//! and the TF32 switch.
//!
//! The backend is the CUDA driver ([`Driver`]: context, the one stream all
//! work is queued on, cuBLAS handle, module cache) or, on machines without
//! a GPU, the CPU emulator ([`Emulator`], see [`super::emu`]) that runs the
//! same `.cu` kernels and launchers. Launchers only see this type's methods
//! (`alloc`, `upload`, `launch`, ...) and work unchanged on either.

use super::alloc::{DeviceBuffer, Pool, PoolStats};
use super::driver::Driver;
use super::emu::{self, Emulator};
use super::signature::ParamKind;
use super::{CudaError, Result};
use cudarc::driver::{CudaContext, CudaFunction, DeviceRepr, LaunchConfig, sys};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether a CUDA driver and at least one GPU are present (the emulator
/// does not count). Cheap after the first call; never panics (cudarc
/// panics when libcuda is missing, so the library is probed first).
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: only tries to dlopen the driver library.
        let present = unsafe { sys::is_culib_present() };
        present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
    })
}

/// Set by [`use_emulator_if_no_gpu`].
static EMULATE: AtomicBool = AtomicBool::new(false);

fn env_is(var: &str, pred: impl Fn(&str) -> bool) -> bool {
    std::env::var(var).is_ok_and(|v| pred(&v))
}

/// Whether devices opened from now on are emulated: after
/// [`use_emulator_if_no_gpu`] turned the emulator on, or with
/// `NOISEGRAD_CUDA_EMULATOR=1` (which also emulates on a GPU machine).
pub fn emulation_requested() -> bool {
    EMULATE.load(Ordering::Relaxed) || env_is("NOISEGRAD_CUDA_EMULATOR", |v| v == "1")
}

/// On a machine without a GPU, makes `cuda:0` the CPU emulator (call it
/// before the first [`CudaDevice::get`]; tests do, through
/// `device_check::gpu_or_skip`). Returns whether `cuda:0` is emulated:
/// false when a GPU is present, when `NOISEGRAD_NO_EMULATOR` is set (to
/// anything but `0`), or when g++ (which compiles the kernels for the
/// emulator) cannot be run.
pub fn use_emulator_if_no_gpu() -> bool {
    if emulation_requested() {
        return true;
    }
    if is_available()
        || env_is("NOISEGRAD_NO_EMULATOR", |v| !v.is_empty() && v != "0")
        || !emu::compiler_available()
    {
        return false;
    }
    EMULATE.store(true, Ordering::Relaxed);
    true
}

/// SMs the emulated device reports: few, so grid-stride launches (sized
/// from the SM count) run few blocks, and every block runs in turn anyway.
/// `NOISEGRAD_EMU_SM_COUNT=N` overrides it, to exercise the launch plans a
/// GPU with N SMs gets (132 on an H100).
pub const EMULATED_SM_COUNT: usize = 4;

fn emulated_sm_count() -> usize {
    std::env::var("NOISEGRAD_EMU_SM_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(EMULATED_SM_COUNT)
}

/// Where a device's work runs.
pub enum Backend {
    /// A GPU, through the CUDA driver.
    Driver(Driver),
    /// The CPU emulator.
    Emulated(Emulator),
}

impl Backend {
    /// `bytes` of device memory; `Ok(None)` when the device is out of memory.
    pub(crate) fn malloc(&self, bytes: usize) -> Result<Option<u64>> {
        match self {
            Backend::Driver(d) => d.malloc(bytes),
            Backend::Emulated(e) => Ok(e.malloc(bytes)),
        }
    }

    /// Returns `bytes` at `ptr` (from [`Self::malloc`]) to the device.
    ///
    /// # Safety
    /// Nothing uses `ptr` afterwards, queued work included.
    pub(crate) unsafe fn free(&self, ptr: u64, bytes: usize) -> Result<()> {
        match self {
            // SAFETY: as the caller promises.
            Backend::Driver(d) => unsafe { d.free(ptr) },
            Backend::Emulated(e) => {
                // SAFETY: as the caller promises.
                unsafe { e.free(ptr, bytes) };
                Ok(())
            }
        }
    }

    /// Waits for all queued work (the emulator never queues).
    pub(crate) fn synchronize(&self) -> Result<()> {
        match self {
            Backend::Driver(d) => d.synchronize(),
            Backend::Emulated(_) => Ok(()),
        }
    }

    /// (free, total) device memory for out-of-memory reports.
    pub(crate) fn mem_info(&self) -> (usize, usize) {
        match self {
            Backend::Driver(d) => d.mem_info(),
            Backend::Emulated(_) => (0, 0),
        }
    }

    /// The pool hands out a buffer of `len` bytes at `ptr`, from a block of
    /// `block` bytes (the emulator tracks live buffers, see
    /// [`Emulator::handed_out`]).
    pub(crate) fn handed_out(&self, ptr: u64, len: usize, block: usize) {
        if let Backend::Emulated(e) = self {
            e.handed_out(ptr, len, block)
        }
    }

    /// The pool took the buffer at `ptr` back.
    pub(crate) fn taken_back(&self, ptr: u64) {
        if let Backend::Emulated(e) = self {
            e.taken_back(ptr)
        }
    }
}

pub struct CudaDevice {
    ordinal: usize,
    backend: Arc<Backend>,
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

/// A kernel argument. Launches take a slice of these so that every value
/// outlives the launch call (the driver reads them through pointers).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (from [`DeviceBuffer::ptr`]).
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    /// Shape and strides of a strided operand (see `common.cuh`).
    Strided(Strided),
}

/// Mirror of `struct Strided` in `common.cuh`: a view of up to
/// [`MAX_RANK`] dims into a buffer, passed to kernels by value.
pub const MAX_RANK: usize = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Strided {
    pub rank: i32,
    pub offset: i64,
    pub shape: [i64; MAX_RANK],
    pub strides: [i64; MAX_RANK],
}

// SAFETY: plain `#[repr(C)]` data with the same layout as the C struct.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// A view with `shape`, `strides` (in elements) and `offset`; `None` when
    /// the rank exceeds [`MAX_RANK`] (callers collapse dims first).
    pub fn new(shape: &[usize], strides: &[usize], offset: usize) -> Option<Strided> {
        if shape.len() > MAX_RANK {
            return None;
        }
        let mut s = Strided {
            rank: shape.len() as i32,
            offset: offset as i64,
            ..Default::default()
        };
        for d in 0..shape.len() {
            s.shape[d] = shape[d] as i64;
            s.strides[d] = strides[d] as i64;
        }
        Some(s)
    }
}

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

impl CudaDevice {
    /// The device for `ordinal`, created on first use: the GPU, or the
    /// emulator when [`emulation_requested`] (which provides `cuda:0` only).
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let map = DEVICES.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let dev = Arc::new(if emulation_requested() {
            CudaDevice::open_emulated(ordinal)?
        } else {
            CudaDevice::open(ordinal)?
        });
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        let driver = Driver::open(ordinal)?;
        let (arch, sm_count, name) = (driver.arch, driver.sm_count, driver.name.clone());
        Ok(CudaDevice::with_backend(
            ordinal,
            Backend::Driver(driver),
            arch,
            sm_count,
            name,
        ))
    }

    fn open_emulated(ordinal: usize) -> Result<CudaDevice> {
        if ordinal != 0 {
            return Err(CudaError::NotAvailable(format!(
                "cuda:{ordinal} requested but the CUDA emulator provides cuda:0 only"
            )));
        }
        Ok(CudaDevice::with_backend(
            ordinal,
            Backend::Emulated(Emulator::new()),
            "emulated",
            emulated_sm_count(),
            "CUDA emulator (CPU)".into(),
        ))
    }

    fn with_backend(
        ordinal: usize,
        backend: Backend,
        arch: &'static str,
        sm_count: usize,
        name: String,
    ) -> CudaDevice {
        let backend = Arc::new(backend);
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

    /// Whether this device is the CPU emulator rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        matches!(*self.backend, Backend::Emulated(_))
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
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
            match self.backend() {
                Backend::Driver(d) => d.upload(data, buf.ptr())?,
                Backend::Emulated(e) => e.upload(data, buf.ptr())?,
            }
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
            match self.backend() {
                Backend::Driver(d) => d.download(src, &mut out)?,
                Backend::Emulated(e) => e.download(src, &mut out)?,
            }
        }
        Ok(out)
    }

    /// Queues a zero fill of `bytes` at `ptr` (inside a live buffer).
    pub(crate) fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        match self.backend() {
            Backend::Driver(d) => d.memset_zero(ptr, bytes),
            Backend::Emulated(e) => e.memset_zero(ptr, bytes),
        }
    }

    /// Queues a copy of `bytes` from `src` to `dst` (inside live buffers).
    pub(crate) fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        match self.backend() {
            Backend::Driver(d) => d.copy_d2d(src, dst, bytes),
            Backend::Emulated(e) => e.copy_d2d(src, dst, bytes),
        }
    }

    /// The kernel `name` of `module` and its parameter kinds (GPU only:
    /// the emulator has no driver functions).
    pub fn function(
        &self,
        module: &'static str,
        name: &'static str,
    ) -> Result<(CudaFunction, Arc<[ParamKind]>)> {
        match self.backend() {
            Backend::Driver(d) => d.function(module, name),
            Backend::Emulated(_) => Err(CudaError::NotAvailable(format!(
                "`{module}::{name}`: the CUDA emulator has no driver functions"
            ))),
        }
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
        match self.backend() {
            Backend::Driver(d) => d.launch(module, name, cfg, args),
            Backend::Emulated(e) => e.launch(module, name, cfg, args),
        }
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
