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

fn op(trans: bool) -> cublasOperation_t {
    if trans {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
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
    let compute = if dev.tf32() {
        cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let f32t = cudaDataType_t::CUDA_R_32F;
    dev.context()
        .bind_to_thread()
        .map_err(super::driver_err("bind"))?;
    // SAFETY: the pointers address live device buffers sized by the caller
    // for these shapes; the handle is bound to the device's one stream.
    unsafe {
        gemm_strided_batched_ex(
            *dev.blas().handle(),
            op(b.trans),
            op(a.trans),
            to_i32("n", n)?,
            to_i32("m", m)?,
            to_i32("k", k)?,
            (&alpha) as *const f32 as *const c_void,
            b.ptr as *const c_void,
            f32t,
            to_i32("ldb", b.ld)?,
            b.batch_stride as i64,
            a.ptr as *const c_void,
            f32t,
            to_i32("lda", a.ld)?,
            a.batch_stride as i64,
            (&beta) as *const f32 as *const c_void,
            c.ptr as *mut c_void,
            f32t,
            to_i32("ldc", c.ld)?,
            c.batch_stride as i64,
            to_i32("batch", batch)?,
            compute,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| CudaError::Blas {
        op: "gemm",
        msg: format!("{e:?} (m={m}, n={n}, k={k}, batch={batch})"),
    })
}
