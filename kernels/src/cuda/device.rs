//! One [`CudaDevice`] per GPU: its context, the one stream all work is
//! queued on, a cuBLAS handle, the compiled-module cache and the memory pool.
//!
//! Why one stream: every op is ordered after the previous one without events,
//! a buffer returned to the pool can be handed to the next op at once (stream
//! order makes that safe), and the whole step stays capturable as a CUDA graph.
//! cudarc's per-buffer event tracking is switched off for the same reason:
//! buffers here are raw device pointers owned by the pool.

use super::alloc::{DeviceBuffer, Pool, PoolStats};
use super::compile::compile_module;
use super::signature::{ParamKind, mismatch, parse_entries};
use super::sources;
use super::{CudaError, Result, driver_err};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg, sys,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Whether a CUDA driver and at least one GPU are present. Cheap after the
/// first call; never panics (cudarc panics when libcuda is missing, so the
/// library is probed first).
pub fn is_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: only tries to dlopen the driver library.
        let present = unsafe { sys::is_culib_present() };
        present && CudaContext::device_count().map(|n| n > 0).unwrap_or(false)
    })
}

pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    arch: &'static str,
    sm_count: usize,
    name: String,
    /// Loaded modules with the parameter kinds of each of their kernels.
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
    functions: Mutex<HashMap<(&'static str, &'static str), Kernel>>,
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

type Signatures = HashMap<String, Vec<ParamKind>>;
/// A loaded module and the parameter kinds of its kernels.
type LoadedModule = (Arc<CudaModule>, Arc<Signatures>);
/// A kernel and the parameter kinds it takes.
type Kernel = (CudaFunction, Arc<[ParamKind]>);

static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();

impl CudaDevice {
    /// The device for `ordinal`, created on first use.
    pub fn get(ordinal: usize) -> Result<Arc<CudaDevice>> {
        let map = DEVICES.get_or_init(Default::default);
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = map.get(&ordinal) {
            return Ok(d.clone());
        }
        let dev = Arc::new(CudaDevice::open(ordinal)?);
        map.insert(ordinal, dev.clone());
        Ok(dev)
    }

    fn open(ordinal: usize) -> Result<CudaDevice> {
        // SAFETY: only tries to dlopen the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NotAvailable(
                "libcuda (the NVIDIA driver library) was not found".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(driver_err("device count"))? as usize;
        if ordinal >= count {
            return Err(CudaError::NotAvailable(format!(
                "cuda:{ordinal} requested but {count} CUDA device(s) found"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_err("create context"))?;
        // SAFETY: all work goes to one stream and buffers are raw pointers, so
        // cudarc's per-slice events would only add cost.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("create stream"))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| CudaError::Blas {
            op: "create handle",
            msg: format!("{e:?}"),
        })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("SM count"))? as usize;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let pool = Pool::new(ordinal, ctx.clone(), stream.clone());
        Ok(CudaDevice {
            ordinal,
            ctx,
            stream,
            blas,
            arch,
            sm_count,
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool,
            tf32: AtomicBool::new(false),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// NVRTC's `-arch` for this GPU, e.g. `sm_90`.
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn blas(&self) -> &CudaBlas {
        &self.blas
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
        self.stream.synchronize().map_err(driver_err("synchronize"))
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
        let buf = self.alloc(data.len())?;
        if !data.is_empty() {
            self.ctx.bind_to_thread().map_err(driver_err("bind"))?;
            // SAFETY: `buf` holds `data.len()` f32; the copy is queued on the
            // stream and then awaited, so `data` outlives it.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(buf.ptr(), data, self.stream.cu_stream())
                    .map_err(driver_err("copy to device"))?;
            }
            self.synchronize()?;
        }
        Ok(buf)
    }

    /// Copies integer data (indices) to a new device buffer, for kernels
    /// that take a `const unsigned*`. A [`DeviceBuffer`] counts 4-byte
    /// words, so its `len()` is the number of u32 and `ptr_at(i)` the
    /// address of the i-th one; such a buffer never holds f32 values.
    pub fn upload_u32(&self, data: &[u32]) -> Result<DeviceBuffer> {
        let buf = self.alloc(data.len())?;
        if !data.is_empty() {
            self.ctx.bind_to_thread().map_err(driver_err("bind"))?;
            // SAFETY: `buf` holds `data.len()` 4-byte words; the copy is
            // queued on the stream and then awaited, so `data` outlives it.
            unsafe {
                cudarc::driver::result::memcpy_htod_async(buf.ptr(), data, self.stream.cu_stream())
                    .map_err(driver_err("copy to device"))?;
            }
            self.synchronize()?;
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
            self.ctx.bind_to_thread().map_err(driver_err("bind"))?;
            // SAFETY: the range lies in `buf`; the stream is synchronized
            // before `out` is read.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(
                    &mut out,
                    buf.ptr() + (offset * 4) as u64,
                    self.stream.cu_stream(),
                )
                .map_err(driver_err("copy to host"))?;
            }
            self.synchronize()?;
        }
        Ok(out)
    }

    /// The compiled module `module` (see [`sources::SOURCES`]); compiled by
    /// NVRTC once per process and device.
    fn module(&self, module: &'static str) -> Result<LoadedModule> {
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(module) {
            return Ok(m.clone());
        }
        let src = sources::source(module).ok_or_else(|| CudaError::Driver {
            op: "load module",
            msg: format!("no CUDA source named `{module}`"),
        })?;
        let ptx = compile_module(module, &src, self.arch)?;
        let signatures = Arc::new(parse_entries(&ptx.to_src()));
        let m = self
            .ctx
            .load_module(ptx)
            .map_err(driver_err("load module"))?;
        cache.insert(module, (m.clone(), signatures.clone()));
        Ok((m, signatures))
    }

    /// The kernel `name` of `module` and its parameter kinds, cached.
    pub fn function(&self, module: &'static str, name: &'static str) -> Result<Kernel> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(module, name))
        {
            return Ok(f.clone());
        }
        let (m, signatures) = self.module(module)?;
        let not_found = |e: String| CudaError::Driver {
            op: "load function",
            msg: format!("kernel `{name}` of module `{module}`: {e}"),
        };
        let f = m
            .load_function(name)
            .map_err(|e| not_found(format!("{e:?}")))?;
        let params: Arc<[ParamKind]> = signatures
            .get(name)
            .ok_or_else(|| not_found("no such .entry in the PTX".into()))?
            .as_slice()
            .into();
        let entry = (f, params);
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((module, name), entry.clone());
        Ok(entry)
    }

    /// Queues kernel `module::name` with `args` on the stream.
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
        let (f, params) = self.function(module, name)?;
        if let Some(msg) = mismatch(&params, args) {
            return Err(CudaError::Driver {
                op: "launch",
                msg: format!("kernel `{module}::{name}`: {msg}"),
            });
        }
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::U32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::Strided(v) => b.arg(v),
            };
        }
        // SAFETY: each launcher passes the arguments its kernel declares, in
        // order, and sizes its grid to the buffers it passes.
        unsafe { b.launch(cfg) }.map_err(|e| CudaError::Driver {
            op: "launch",
            msg: format!("kernel `{module}::{name}`: {e:?}"),
        })?;
        Ok(())
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
