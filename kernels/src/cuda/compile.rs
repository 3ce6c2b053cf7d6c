//! NVRTC compilation of the `.cu` sources.
//!
//! Each module is compiled once per process (the device caches the loaded
//! module) for the `-arch` of the GPU present. A compile error names the
//! module and carries NVRTC's log, so a broken kernel reads like a compiler
//! error, not a crash.

use super::{CudaError, Result};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx, compile_ptx_with_opts};
use std::sync::OnceLock;

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise).
/// On a machine without a GPU it comes from the PyPI package
/// `nvidia-cuda-nvrtc` with its `lib` folder on `LD_LIBRARY_PATH`.
pub fn nvrtc_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        cudarc::get_lib_name_candidates("nvrtc")
            .into_iter()
            .any(|name| {
                // SAFETY: loading NVRTC runs no user code; the handle is dropped.
                unsafe { libloading::Library::new(name) }.is_ok()
            })
    })
}

/// Compiles `src` (module `module`) to PTX for `arch` (e.g. `sm_90`).
pub fn compile_module(module: &'static str, src: &str, arch: &'static str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(CudaError::NotAvailable(
            "libnvrtc (the CUDA runtime compiler) was not found".into(),
        ));
    }
    let opts = CompileOptions {
        arch: Some(arch),
        // Exact division and square root, as the CPU kernels compute them;
        // fast math would break the 1e-5 agreement the tests ask for.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        name: Some(format!("{module}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| CudaError::Compile {
        module,
        log: match e {
            CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => format!("{other:?}"),
        },
    })
}
