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
//! runs it (cuBLAS on a GPU; in tests, the emulator's column-major GEMM).

use crate::cuda::abi::BlasCall;
use crate::cuda::{CudaDevice, CudaError, Result};

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

fn to_i32(what: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Blas {
        op: "gemm",
        msg: format!("{what} = {v} exceeds cuBLAS's 32-bit sizes"),
    })
}

/// `C[b] = alpha · A[b]·B[b] + beta · C[b]` for `batch` row-major matrices:
/// A is m×k, B is k×n, C is m×n (logical shapes, after `trans`).
pub fn gemm(
    dev: &CudaDevice,
    (m, n, k): (usize, usize, usize),
    a: MatOperand,
    b: MatOperand,
    c: MatOut,
    batch: usize,
    (alpha, beta): (f32, f32),
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
    dev.backend().gemm(&call).map_err(blas_err)
}
