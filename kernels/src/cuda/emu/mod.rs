//! The CUDA emulator: the real `.cu` kernels and the real launchers, run
//! on the CPU, so the CUDA-vs-CPU tests execute on machines without a GPU.
//!
//! Compiled only with the `emulator` cargo feature, which only the
//! dev-dependencies of the crates whose tests use it enable: a release
//! build contains none of it. After [`use_emulator_if_no_gpu`] (called by
//! the tests' `gpu_or_skip`), `cuda:0` on a machine without a GPU has this
//! [`Backend`] instead of the driver; launchers cannot tell:
//! - **memory**: a device pointer is a host address (256-byte aligned
//!   allocations), copies and fills are `memcpy`/`memset`, all synchronous;
//!   the caching pool sits in front as on a GPU. The emulator also keeps the
//!   extent of every buffer the pool hands out, so copies, GEMM operands and
//!   kernel pointer arguments that leave their buffer (or point into a freed
//!   one) are errors; fresh buffers are filled with NaN, so a kernel that
//!   reads memory nobody wrote shows up in the results; and the bytes around
//!   each buffer (the pool block's slack plus a red zone on both sides) are
//!   checked after every launch, so a kernel that writes out of bounds is an
//!   error naming it;
//! - **kernels**: each module is compiled by g++ against `shim.h` (CUDA's
//!   builtins, and a fiber scheduler that runs a block's threads and their
//!   barriers deterministically on one OS thread), see [`build`];
//! - **GEMM**: cuBLAS's column-major `gemm_strided_batched` applied to the
//!   exact arguments `gemm.rs` passes, see [`gemm`].
//!
//! What it does not model: concurrency between threads outside barriers
//! (a data race runs in one fixed order), FMA contraction (NVRTC fuses
//! a·b + c by default, g++ here does not), the GPU's libm (`expf` & co. may
//! differ in the last ulp), and timing. Knobs to probe the first two, and
//! the launch plans of a bigger GPU (each a separate run of the tests):
//! - `NOISEGRAD_EMU_ORDER=reverse`: blocks and threads run in reverse order;
//!   a result that changes depends on an order CUDA does not promise;
//! - `NOISEGRAD_EMU_FMA=1`: g++ contracts a·b + c into FMAs, roughly as
//!   NVRTC does (`__fmul_rn` & co. still round each step);
//! - `NOISEGRAD_EMU_SM_COUNT=N`: the device reports N SMs (default 4, so
//!   grid-stride launches run few blocks); 132 gives an H100's launch plans.
//!
//! [`use_emulator_if_no_gpu`]: super::use_emulator_if_no_gpu

mod build;
pub mod gemm;
pub mod source;

pub use build::{SHIM, compiler_available};

use super::abi::{Arg, BlasCall};
use super::backend::Backend;
use super::signature::{ParamKind, mismatch};
use super::{CudaError, Result, sources};
use cudarc::driver::LaunchConfig;
use std::alloc::Layout;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

/// Alignment of emulated allocations (cudaMalloc gives at least 256).
pub const ALIGN: usize = 256;

/// Bytes before and after every block, filled with a pattern that a kernel
/// writing out of bounds overwrites. A multiple of [`ALIGN`].
pub const RED_ZONE: usize = 256;

/// The pattern fresh memory and red zones hold (as f32: a NaN).
const POISON: u8 = 0xff;

/// A buffer the pool has handed out.
#[derive(Clone, Copy, Debug)]
struct Live {
    /// Bytes the buffer holds.
    len: usize,
    /// Bytes of its pool block (at least `len`).
    block: usize,
}

/// `emu_launch(name, grid xyz, block xyz, shared bytes, args)`.
type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut *mut c_void,
) -> c_int;
type LastErrorFn = unsafe extern "C" fn() -> *const c_char;

/// One compiled module: its entry points and its kernels' parameter kinds.
pub struct Module {
    name: &'static str,
    launch: LaunchFn,
    last_error: LastErrorFn,
    kernels: HashMap<String, Vec<ParamKind>>,
}

impl Module {
    /// Compiles (or finds in the cache) and loads `src` as module `name`.
    pub fn load(name: &'static str, src: &str) -> Result<Module> {
        let built = build::load(name, src)?;
        let missing = |e: libloading::Error| CudaError::Driver {
            op: "load module (emulator)",
            msg: format!("{}: {e}", built.path.display()),
        };
        // SAFETY: the symbols are the generated trampolines' entry points,
        // with exactly these C signatures.
        let (launch, last_error) = unsafe {
            (
                *built
                    .lib
                    .get::<LaunchFn>(b"emu_launch\0")
                    .map_err(missing)?,
                *built
                    .lib
                    .get::<LastErrorFn>(b"emu_last_error\0")
                    .map_err(missing)?,
            )
        };
        let mut kernels = HashMap::new();
        for k in &built.kernels {
            let kinds = k
                .param_kinds()
                .map_err(|log| CudaError::EmuCompile { module: name, log })?;
            kernels.insert(k.name.clone(), kinds);
        }
        // Never unloaded: fibers and thread-local state live in the library,
        // and the function pointers above must stay valid.
        std::mem::forget(built.lib);
        Ok(Module {
            name,
            launch,
            last_error,
            kernels,
        })
    }

    /// The parameter kinds of kernel `name`, if the module defines it.
    pub fn params(&self, name: &str) -> Option<&[ParamKind]> {
        self.kernels.get(name).map(Vec::as_slice)
    }

    /// Runs kernel `name` over the grid of `cfg` with `args`, to completion.
    pub fn launch(&self, name: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let module = self.name;
        let err = |msg: String| CudaError::Driver {
            op: "launch (emulator)",
            msg: format!("kernel `{module}::{name}`: {msg}"),
        };
        let params = self
            .params(name)
            .ok_or_else(|| err("no such kernel in the module".into()))?;
        if let Some(msg) = mismatch(params, args) {
            return Err(err(msg));
        }
        let mut ptrs = arg_pointers(args);
        let cname = CString::new(name).map_err(|e| err(e.to_string()))?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        // SAFETY: `ptrs[i]` points at argument i inside `args`, which
        // outlives the call, and its kind was checked against the kernel's
        // parameter i above; the kernel runs to completion before returning.
        let rc = unsafe {
            (self.launch)(
                cname.as_ptr(),
                g.0,
                g.1,
                g.2,
                b.0,
                b.1,
                b.2,
                cfg.shared_mem_bytes,
                ptrs.as_mut_ptr(),
            )
        };
        match rc {
            0 => Ok(()),
            1 => Err(err("no such kernel in the module".into())),
            // SAFETY: the library's error buffer is a NUL-terminated,
            // thread-local string, read on the thread that launched.
            _ => Err(CudaError::Driver {
                op: "launch (emulator)",
                msg: unsafe { CStr::from_ptr((self.last_error)()) }
                    .to_string_lossy()
                    .into_owned(),
            }),
        }
    }
}

/// What `cuLaunchKernel` takes: one pointer per argument, at its value.
fn arg_pointers(args: &[Arg]) -> Vec<*mut c_void> {
    args.iter()
        .map(|a| match a {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::I32(v) => v as *const i32 as *mut c_void,
            Arg::I64(v) => v as *const i64 as *mut c_void,
            Arg::U32(v) => v as *const u32 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
            Arg::Strided(v) => v as *const _ as *mut c_void,
        })
        .collect()
}

/// The emulated device's state: loaded modules and live buffers.
#[derive(Default)]
pub struct Emulator {
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
    /// Every buffer the pool has handed out and not taken back, by start.
    live: Mutex<BTreeMap<u64, Live>>,
}

impl Emulator {
    pub fn new() -> Emulator {
        Emulator::default()
    }

    /// Module `name` of [`sources::SOURCES`], compiled on first use.
    pub fn module(&self, name: &'static str) -> Result<Arc<Module>> {
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.get(name) {
            return Ok(m.clone());
        }
        let src = sources::source(name).ok_or_else(|| CudaError::Driver {
            op: "load module",
            msg: format!("no CUDA source named `{name}`"),
        })?;
        let m = Arc::new(Module::load(name, &src)?);
        cache.insert(name, m.clone());
        Ok(m)
    }

    /// Launches `module::name` after checking that its pointer arguments
    /// point into live buffers, and checks afterwards that it wrote nothing
    /// around them.
    pub fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        let err = |i: usize, e: String| CudaError::Driver {
            op: "launch (emulator)",
            msg: format!("kernel `{module}::{name}`, argument {i}: {e}"),
        };
        let ptrs = args.iter().enumerate().filter_map(|(i, a)| match *a {
            Arg::Ptr(p) if p != 0 => Some((i, p)),
            _ => None,
        });
        for (i, p) in ptrs.clone() {
            self.check(p, 0, "launch").map_err(|e| err(i, e))?;
        }
        self.module(module)?.launch(name, cfg, args)?;
        for (i, p) in ptrs {
            self.check_red_zones(p).map_err(|e| err(i, e))?;
        }
        Ok(())
    }

    fn layout(bytes: usize) -> Option<Layout> {
        Layout::from_size_align(bytes + 2 * RED_ZONE, ALIGN).ok()
    }

    /// `bytes` of fresh memory (between two red zones), or `None` when the
    /// host has none.
    pub fn malloc(&self, bytes: usize) -> Option<u64> {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(Self::layout(bytes)?) };
        (!p.is_null()).then(|| p as u64 + RED_ZONE as u64)
    }

    /// Frees memory from [`Self::malloc`].
    ///
    /// # Safety
    /// `ptr` came from `malloc(bytes)` and is not used afterwards.
    pub unsafe fn free(&self, ptr: u64, bytes: usize) {
        let layout = Self::layout(bytes).expect("the layout malloc used");
        // SAFETY: as the caller promises; malloc returned the allocation
        // plus RED_ZONE.
        unsafe { std::alloc::dealloc((ptr - RED_ZONE as u64) as *mut u8, layout) }
    }

    /// The pool hands out `len` bytes at `ptr` from a block of `block`
    /// bytes: remember the extent, and poison the block and its red zones
    /// (NaN as a stand-in for stale data, and a pattern for
    /// [`Self::check_red_zones`]).
    pub fn handed_out(&self, ptr: u64, len: usize, block: usize) {
        // SAFETY: malloc(block) made these bytes, red zones included.
        unsafe {
            std::ptr::write_bytes(
                (ptr - RED_ZONE as u64) as *mut u8,
                POISON,
                block + 2 * RED_ZONE,
            )
        };
        self.live_map().insert(ptr, Live { len, block });
    }

    /// Ok unless the bytes before or after the live buffer holding `ptr`
    /// (red zones and block slack) lost their poison: an out-of-bounds write.
    fn check_red_zones(&self, ptr: u64) -> std::result::Result<(), String> {
        let live = self.live_map();
        let Some((&start, l)) = live.range(..=ptr).next_back() else {
            return Ok(());
        };
        // SAFETY: the bytes around a live buffer belong to its allocation.
        let (before, after) = unsafe {
            (
                std::slice::from_raw_parts((start - RED_ZONE as u64) as *const u8, RED_ZONE),
                std::slice::from_raw_parts(
                    (start + l.len as u64) as *const u8,
                    l.block - l.len + RED_ZONE,
                ),
            )
        };
        if let Some(i) = before.iter().position(|&b| b != POISON) {
            return Err(format!(
                "the kernel wrote {} bytes before the start of the {}-byte buffer at 0x{start:x}",
                RED_ZONE - i,
                l.len
            ));
        }
        if let Some(i) = after.iter().rposition(|&b| b != POISON) {
            return Err(format!(
                "the kernel wrote past the end of the {}-byte buffer at 0x{start:x} (up to {} \
                 bytes past it)",
                l.len,
                i + 1
            ));
        }
        Ok(())
    }

    /// The pool took the buffer at `ptr` back.
    pub fn taken_back(&self, ptr: u64) {
        self.live_map().remove(&ptr);
    }

    fn live_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ok when `[ptr, ptr + bytes)` lies in one live buffer (a pointer one
    /// past a buffer's end is fine when `bytes` is 0).
    pub fn check(&self, ptr: u64, bytes: usize, op: &str) -> std::result::Result<(), String> {
        let live = self.live_map();
        let hit = live.range(..=ptr).next_back();
        match hit {
            Some((&start, &Live { len, .. })) if ptr + bytes as u64 <= start + len as u64 => Ok(()),
            Some((&start, &Live { len, .. })) if ptr <= start + len as u64 => Err(format!(
                "{op}: {bytes} bytes at 0x{ptr:x} run past the end of the {len}-byte buffer at \
                 0x{start:x} (by {} bytes)",
                ptr + bytes as u64 - start - len as u64
            )),
            _ => Err(format!(
                "{op}: 0x{ptr:x} is not in any live buffer (freed, or never allocated)"
            )),
        }
    }

    /// Zero-fills `bytes` at `ptr` (cuMemsetD8).
    pub fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        self.check(ptr, bytes, "memset")
            .map_err(emu_err("memset"))?;
        // SAFETY: checked to lie in a live buffer.
        unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, bytes) };
        Ok(())
    }

    /// Copies `bytes` from `src` to `dst` (cuMemcpyDtoD).
    pub fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.check(src, bytes, "copy source")
            .map_err(emu_err("copy device to device"))?;
        self.check(dst, bytes, "copy destination")
            .map_err(emu_err("copy device to device"))?;
        // SAFETY: both ranges lie in live buffers (`copy` allows overlap).
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    /// Copies host data to `dst` (cuMemcpyHtoD).
    pub fn upload<T: Copy>(&self, data: &[T], dst: u64) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        self.check(dst, bytes, "copy to device")
            .map_err(emu_err("copy to device"))?;
        // SAFETY: the destination lies in a live buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr() as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    /// Copies from `src` to host memory (cuMemcpyDtoH).
    pub fn download<T: Copy>(&self, src: u64, out: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(out);
        self.check(src, bytes, "copy to host")
            .map_err(emu_err("copy to host"))?;
        // SAFETY: the source lies in a live buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr() as *mut u8, bytes)
        };
        Ok(())
    }
}

impl Backend for Emulator {
    fn malloc(&self, bytes: usize) -> Result<Option<u64>> {
        Ok(Emulator::malloc(self, bytes))
    }

    unsafe fn free(&self, ptr: u64, bytes: usize) -> Result<()> {
        // SAFETY: as the caller promises.
        unsafe { Emulator::free(self, ptr, bytes) };
        Ok(())
    }

    /// The emulator never queues: every call has finished when it returns.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn mem_info(&self) -> (usize, usize) {
        (0, 0)
    }

    fn handed_out(&self, ptr: u64, len: usize, block: usize) {
        Emulator::handed_out(self, ptr, len, block)
    }

    fn taken_back(&self, ptr: u64) {
        Emulator::taken_back(self, ptr)
    }

    fn upload(&self, data: &[u8], dst: u64) -> Result<()> {
        Emulator::upload(self, data, dst)
    }

    fn download(&self, src: u64, out: &mut [u8]) -> Result<()> {
        Emulator::download(self, src, out)
    }

    fn memset_zero(&self, ptr: u64, bytes: usize) -> Result<()> {
        Emulator::memset_zero(self, ptr, bytes)
    }

    fn copy_d2d(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        Emulator::copy_d2d(self, src, dst, bytes)
    }

    fn launch(
        &self,
        module: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[Arg],
    ) -> Result<()> {
        Emulator::launch(self, module, name, cfg, args)
    }

    /// cuBLAS's checks, operand ranges checked against their buffers, then
    /// the column-major product.
    fn gemm(&self, g: &BlasCall) -> std::result::Result<(), String> {
        gemm::validate(g)?;
        for (name, ptr, bytes) in gemm::extents(g) {
            let what = match name {
                "A" => "cuBLAS operand A (the row-major B)",
                "B" => "cuBLAS operand B (the row-major A)",
                _ => "cuBLAS operand C",
            };
            self.check(ptr, bytes, what)?;
        }
        // SAFETY: validated, and every operand lies in a live buffer.
        unsafe { gemm::sgemm_strided_batched(g) };
        Ok(())
    }
}

fn emu_err(op: &'static str) -> impl Fn(String) -> CudaError {
    move |msg| CudaError::Driver {
        op,
        msg: format!("(emulator) {msg}"),
    }
}

#[cfg(test)]
mod tests;
