//! The values that cross from Rust into a kernel or into cuBLAS: kernel
//! arguments ([`Arg`], [`Strided`], named: [`Param`]) and the arguments of one cuBLAS GEMM
//! ([`BlasCall`]). A leaf module: launchers build these, and every backend
//! (the driver, the test-only emulator) consumes them, without either side
//! importing the other.

use cudarc::driver::DeviceRepr;

/// A kernel argument. Launches take a slice of these so that every value
/// outlives the launch call (the driver reads them through pointers).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// A device pointer (from `DeviceBuffer::ptr`).
    Ptr(u64),
    I32(i32),
    I64(i64),
    U32(u32),
    F32(f32),
    /// Shape and strides of a strided operand (see `common.cuh`).
    Strided(Strided),
}

/// A kernel argument with the name of its parameter in the `.cu`
/// signature. Launchers build their arguments as named parameters so that
/// a CPU test can compare names, order and kinds against the source
/// ([`super::signature`]); a mismatch would otherwise only show on a GPU.
#[derive(Clone, Copy, Debug)]
pub struct Param(pub &'static str, pub Arg);

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

/// The arguments of one `cublasGemmStridedBatchedEx` call (f32 operands,
/// column-major), exactly as `gemm::gemm` builds them. The driver passes
/// them to cuBLAS; the test emulator implements cuBLAS's column-major
/// contract on them, so the row-major → column-major mapping is tested too.
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
