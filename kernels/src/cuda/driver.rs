//! The GPU backend of a [`CudaDevice`](super::CudaDevice): everything that
//! calls the CUDA driver and cuBLAS (through `cudarc`), behind the
//! [`Backend`] interface.
//!
//! Why one stream: every op is ordered after the previous one without events,
//! a buffer returned to the pool can be handed to the next op at once (stream
//! order makes that safe), and the whole step stays capturable as a CUDA graph.
//! cudarc's per-buffer event tracking is switched off for the same reason:
//! buffers here are raw device pointers owned by the pool.

use super::abi::{Arg, BlasCall};
use super::backend::Backend;
use super::compile::compile_module;
use super::signature::{ParamKind, mismatch, parse_entries};
use super::sources;
use super::{CudaError, Result, driver_err};
use cudarc::cublas::CudaBlas;
use cudarc::cublas::result::gemm_strided_batched_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg, result, sys,
};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

type Signatures = HashMap<String, Vec<ParamKind>>;
/// A loaded module with the parameter kinds of each of its kernels.
type LoadedModule = (Arc<CudaModule>, Arc<Signatures>);
/// A kernel with its parameter kinds.
type Function = (CudaFunction, Arc<[ParamKind]>);

/// A GPU's context, the one stream all work is queued on, a cuBLAS handle
/// and the loaded modules.
pub struct Driver {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    /// NVRTC's `-arch`, e.g. `sm_90`.
    pub(crate) arch: &'static str,
    pub(crate) sm_count: usize,
    pub(crate) name: String,
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
    functions: Mutex<HashMap<(&'static str, &'static str), Function>>,
}

impl Driver {
    /// Opens GPU `ordinal`: context, stream, cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Driver> {
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
        Ok(Driver {
            ctx,
            stream,
            blas,
            arch,
            sm_count,
            name,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the context current on the calling thread (driver calls need it).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_err("bind"))
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
    pub fn function(&self, module: &'static str, name: &'static str) -> Result<Function> {
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
}

impl Backend for Driver {
    #[cfg(feature = "nccl")]
    fn nccl_stream(&self) -> Result<Option<sys::CUstream>> {
        self.bind()?;
        Ok(Some(self.stream.cu_stream()))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_err("synchronize"))
    }

    /// `cuMemAlloc`; `Ok(None)` when the GPU is out of memory.
    fn malloc(&self, bytes: usize) -> Result<Option<u64>> {
        self.bind()?;
        // SAFETY: plain allocation; the pointer is owned by the pool.
        match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => Ok(None),
            Err(e) => Err(driver_err("allocate")(e)),
        }
    }

    /// `cuMemFree`.
    unsafe fn free(&self, ptr: u64, _bytes: usize) -> Result<()> {
        // SAFETY: as the caller promises.
        unsafe { result::free_sync(ptr) }.map_err(driver_err("free"))
    }

    /// (free, total) bytes of GPU memory, or zeros if the driver won't say.
    fn mem_info(&self) -> (usize, usize) {
        self.ctx.mem_get_info().unwrap_or((0, 0))
    }

    /// Queues a zero fill of `bytes` at `ptr`.
    fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's buffer holds the range; stream-ordered.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("memset"))
    }

    /// Queues a device-to-device copy of `bytes`.
    fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: callers pass ranges inside live buffers; stream-ordered.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(driver_err("copy device to device"))
    }

    /// Copies `data` to `dst` and waits, so `data` may go afterwards.
    fn upload(&self, data: &[u8], dst: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: the destination buffer holds `data`; the copy is awaited
        // before returning, so `data` outlives it.
        unsafe { result::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .map_err(driver_err("copy to device"))?;
        self.synchronize()
    }

    /// Copies from `src` into `out` after all queued work.
    fn download(&self, src: u64, out: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the range lies in the caller's buffer; the stream is
        // synchronized before `out` is read.
        unsafe { result::memcpy_dtoh_async(out, src, self.stream.cu_stream()) }
            .map_err(driver_err("copy to host"))?;
        self.synchronize()
    }

    /// Queues kernel `module::name` with `args` on the stream.
    fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
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

    /// The call on cuBLAS, queued on the device's stream.
    fn gemm(&self, g: &BlasCall) -> std::result::Result<(), String> {
        let compute = if g.tf32 {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let f32t = cudaDataType_t::CUDA_R_32F;
        self.bind().map_err(|e| e.to_string())?;
        // SAFETY: the pointers address live device buffers sized by the caller
        // for these shapes; the handle is bound to the device's one stream.
        unsafe {
            gemm_strided_batched_ex(
                *self.blas.handle(),
                blas_op(g.transa),
                blas_op(g.transb),
                g.m,
                g.n,
                g.k,
                (&g.alpha) as *const f32 as *const c_void,
                g.a as *const c_void,
                f32t,
                g.lda,
                g.stride_a,
                g.b as *const c_void,
                f32t,
                g.ldb,
                g.stride_b,
                (&g.beta) as *const f32 as *const c_void,
                g.c as *mut c_void,
                f32t,
                g.ldc,
                g.stride_c,
                g.batch,
                compute,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| format!("{e:?}"))
    }
}

fn blas_op(trans: bool) -> cublasOperation_t {
    if trans {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}
