//! GEMM through `matrixmultiply`, with arbitrary row/column strides so that
//! transposed operands are used in place (no copies).

use crate::Float;
use rayon::prelude::*;

/// One operand of a matrix product: element (i, j) lives at
/// `data[base + i·rs + j·cs]`, `base` given per batch.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// A raw strided operand of [`Gemm::gemm_raw`]: element (i, j) at
/// `ptr + i·rs + j·cs`.
#[derive(Clone, Copy, Debug)]
pub struct RawMat<P> {
    pub ptr: P,
    pub rs: isize,
    pub cs: isize,
}

/// Element types with a GEMM (sgemm / dgemm).
pub trait Gemm: Float {
    /// C ← α·A·B + β·C for an m×k A, k×n B and m×n C given as raw strided
    /// pointers, `(m, k, n)` the sizes.
    ///
    /// # Safety
    /// Every index the strides reach must be inside its allocation, and C
    /// must not alias A or B.
    unsafe fn gemm_raw(
        dims: (usize, usize, usize),
        alpha: Self,
        a: RawMat<*const Self>,
        b: RawMat<*const Self>,
        beta: Self,
        c: RawMat<*mut Self>,
    );
}

impl Gemm for f32 {
    unsafe fn gemm_raw(
        (m, k, n): (usize, usize, usize),
        alpha: f32,
        a: RawMat<*const f32>,
        b: RawMat<*const f32>,
        beta: f32,
        c: RawMat<*mut f32>,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            matrixmultiply::sgemm(
                m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs,
            )
        }
    }
}

impl Gemm for f64 {
    unsafe fn gemm_raw(
        (m, k, n): (usize, usize, usize),
        alpha: f64,
        a: RawMat<*const f64>,
        b: RawMat<*const f64>,
        beta: f64,
        c: RawMat<*mut f64>,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            matrixmultiply::dgemm(
                m, k, n, alpha, a.ptr, a.rs, a.cs, b.ptr, b.rs, b.cs, beta, c.ptr, c.rs, c.cs,
            )
        }
    }
}

fn max_index(m: usize, n: usize, rs: usize, cs: usize) -> usize {
    if m == 0 || n == 0 {
        0
    } else {
        (m - 1) * rs + (n - 1) * cs
    }
}

/// A batch of products `C[i] = α·A[i]·B[i] + β·C[i]`, C contiguous row-major
/// `[batch, m, n]`. `a_offsets[i]`/`b_offsets[i]` locate each batch's matrix
/// (broadcast batches simply repeat an offset).
///
/// Large products use `matrixmultiply`'s own threads; a batch of small
/// products (attention scores, per-head GEMMs) is spread over rayon instead,
/// one single-threaded product per task.
pub fn batched_gemm<T: Gemm>(
    (m, k, n): (usize, usize, usize),
    alpha: T,
    (a, a_offsets): (MatRef<T>, &[usize]),
    (b, b_offsets): (MatRef<T>, &[usize]),
    beta: T,
    c: &mut [T],
) {
    let batch = a_offsets.len();
    assert_eq!(b_offsets.len(), batch, "gemm: batch offset counts differ");
    assert_eq!(
        c.len(),
        batch * m * n,
        "gemm: output length does not match [batch, m, n]"
    );
    if m == 0 || n == 0 {
        return;
    }
    for i in 0..batch {
        assert!(
            a_offsets[i] + max_index(m, k, a.rs, a.cs) < a.data.len().max(1) || k == 0,
            "gemm: A out of bounds"
        );
        assert!(
            b_offsets[i] + max_index(k, n, b.rs, b.cs) < b.data.len().max(1) || k == 0,
            "gemm: B out of bounds"
        );
    }
    let raw = |x: MatRef<T>, offset: usize| RawMat {
        // SAFETY (of the add): the offset was asserted inside the data.
        ptr: unsafe { x.data.as_ptr().add(offset) },
        rs: x.rs as isize,
        cs: x.cs as isize,
    };
    let one = |i: usize, ci: &mut [T]| {
        // SAFETY: bounds asserted above; ci is this batch's own m×n block.
        unsafe {
            T::gemm_raw(
                (m, k, n),
                alpha,
                raw(a, a_offsets[i]),
                raw(b, b_offsets[i]),
                beta,
                RawMat {
                    ptr: ci.as_mut_ptr(),
                    rs: n as isize,
                    cs: 1,
                },
            )
        }
    };
    let small = m * n * k < 128 * 128 * 128;
    if batch > 1 && small {
        c.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, ci)| one(i, ci));
    } else {
        c.chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, ci)| one(i, ci));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposed_operand_without_copy() {
        // A = [[1,2],[3,4]] stored transposed (column-major), B = I.
        let at = [1f32, 3., 2., 4.];
        let id = [1f32, 0., 0., 1.];
        let mut c = [0f32; 4];
        batched_gemm(
            (2, 2, 2),
            1.0,
            (
                MatRef {
                    data: &at,
                    rs: 1,
                    cs: 2,
                },
                &[0],
            ),
            (
                MatRef {
                    data: &id,
                    rs: 2,
                    cs: 1,
                },
                &[0],
            ),
            0.0,
            &mut c,
        );
        assert_eq!(c, [1., 2., 3., 4.]);
    }
}
