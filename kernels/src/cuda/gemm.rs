//! Row-major (batched) GEMM on cuBLAS.
//!
//! cuBLAS is column-major. A row-major matrix read column-major is its
//! transpose, so the row-major product C = A·B is computed as the
//! column-major product Cᵀ = Bᵀ·Aᵀ: swap the operands and the m/n sizes,
//! keep the leading dimensions. A row-major operand that is itself stored
//! transposed (a `.t()` view) becomes cuBLAS's `T` operation: no copy.
//!
//! TF32 ([`CudaDevice::set_tf32`]) picks the compute type per call:
//! `CUBLAS_COMPUTE_32F_FAST_TF32` (tensor cores, 10-bit mantissa products,
//! f32 accumulation) or plain `CUBLAS_COMPUTE_32F`.
//!
//! [`gemm`] builds the cuBLAS call ([`BlasCall`]) once; the device's backend
//! runs it on cuBLAS or on the emulator's column-major GEMM.

use super::device::Backend;
use super::driver::Driver;
use super::emu::{Emulator, gemm as emu_gemm};
use super::{CudaDevice, CudaError, Result};
use cudarc::cublas::result::gemm_strided_batched_ex;
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use std::ffi::c_void;

/// One operand of a row-major batched GEMM.
#[derive(Clone, Copy, Debug)]
pub struct MatOperand {
    /// Device address of the first matrix.
    pub ptr: u64,
    /// Row stride (elements) of the matrix as stored.
    pub ld: usize,
    /// The logical matrix is the transpose of the stored one.
    pub trans: bool,
    /// Elements between consecutive matrices of the batch (0 = broadcast).
    pub batch_stride: usize,
}

/// The output of a batched GEMM: contiguous rows of `ld` elements.
#[derive(Clone, Copy, Debug)]
pub struct MatOut {
    pub ptr: u64,
    pub ld: usize,
    pub batch_stride: usize,
}

/// The arguments of one `cublasGemmStridedBatchedEx` call (f32 operands,
/// column-major), exactly as [`gemm`] passes them: on a GPU they go to
/// cuBLAS, under the emulator to [`emu::gemm`](super::emu::gemm), which
/// implements cuBLAS's column-major contract on them, so the row-major →
/// column-major mapping below is tested there too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlasCall {
    pub transa: bool,
    pub transb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub alpha: f32,
    pub a: u64,
    pub lda: i32,
    pub stride_a: i64,
    pub b: u64,
    pub ldb: i32,
    pub stride_b: i64,
    pub beta: f32,
    pub c: u64,
    pub ldc: i32,
    pub stride_c: i64,
    pub batch: i32,
    /// `CUBLAS_COMPUTE_32F_FAST_TF32` instead of `CUBLAS_COMPUTE_32F`.
    pub tf32: bool,
}

fn to_i32(what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Blas {
        op: "gemm",
        msg: format!("{what} = {v} exceeds cuBLAS's 32-bit sizes"),
    })
}

/// `C[b] = alpha · A[b]·B[b] + beta · C[b]` for `batch` row-major matrices:
/// A is m×k, B is k×n, C is m×n (logical shapes, after `trans`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &CudaDevice,
    (m, n, k): (usize, usize, usize),
    a: MatOperand,
    b: MatOperand,
    c: MatOut,
    batch: usize,
    alpha: f32,
    beta: f32,
) -> Result<()> {
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    // Cᵀ = Bᵀ·Aᵀ column-major: B is cuBLAS's first operand, A its second.
    let call = BlasCall {
        transa: b.trans,
        transb: a.trans,
        m: to_i32("n", n)?,
        n: to_i32("m", m)?,
        k: to_i32("k", k)?,
        alpha,
        a: b.ptr,
        lda: to_i32("ldb", b.ld)?,
        stride_a: b.batch_stride as i64,
        b: a.ptr,
        ldb: to_i32("lda", a.ld)?,
        stride_b: a.batch_stride as i64,
        beta,
        c: c.ptr,
        ldc: to_i32("ldc", c.ld)?,
        stride_c: c.batch_stride as i64,
        batch: to_i32("batch", batch)?,
        tf32: dev.tf32(),
    };
    let blas_err = |msg: String| CudaError::Blas {
        op: "gemm",
        msg: format!("{msg} (m={m}, n={n}, k={k}, batch={batch})"),
    };
    match dev.backend() {
        Backend::Driver(d) => cublas(d, &call).map_err(blas_err),
        Backend::Emulated(e) => emulated(e, &call).map_err(blas_err),
    }
}

fn op(trans: bool) -> cublasOperation_t {
    if trans {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

/// The call on cuBLAS, queued on the device's stream.
fn cublas(d: &Driver, g: &BlasCall) -> std::result::Result<(), String> {
    let compute = if g.tf32 {
        cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let f32t = cudaDataType_t::CUDA_R_32F;
    d.bind().map_err(|e| e.to_string())?;
    // SAFETY: the pointers address live device buffers sized by the caller
    // for these shapes; the handle is bound to the device's one stream.
    unsafe {
        gemm_strided_batched_ex(
            *d.blas.handle(),
            op(g.transa),
            op(g.transb),
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

/// The call on the emulator: cuBLAS's checks, operand ranges checked
/// against their buffers, then the column-major product.
fn emulated(e: &Emulator, g: &BlasCall) -> std::result::Result<(), String> {
    emu_gemm::validate(g)?;
    for (name, ptr, bytes) in emu_gemm::extents(g) {
        let what = match name {
            "A" => "cuBLAS operand A (the row-major B)",
            "B" => "cuBLAS operand B (the row-major A)",
            _ => "cuBLAS operand C",
        };
        e.check(ptr, bytes, what)?;
    }
    // SAFETY: validated, and every operand lies in a live buffer.
    unsafe { emu_gemm::sgemm_strided_batched(g) };
    Ok(())
}
