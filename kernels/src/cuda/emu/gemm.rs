//! cuBLAS's `cublasGemmStridedBatchedEx` (f32, column-major) on the CPU.
//!
//! The emulator runs the exact call `gemm.rs` would make ([`BlasCall`]:
//! operands already swapped for the row-major → column-major mapping), with
//! cuBLAS's own column-major semantics, so a mistake in that mapping (an
//! operand, a transpose flag, a leading dimension) gives wrong results here
//! just as on a GPU. Argument checks are cuBLAS's `INVALID_VALUE` ones.
//!
//! Per batch entry p: C_p = α·op(A_p)·op(B_p) + β·C_p, with X_p at
//! `X + p·stride_X`, op(A) m×k, op(B) k×n, C m×n; element (r, c) of a stored
//! column-major matrix is at `r + c·ld`. With β = 0, C is not read (as in
//! cuBLAS). With TF32 on, every element of A and B is rounded to TF32
//! (10 explicit mantissa bits, round to nearest even) before the products,
//! which accumulate in f32.

use crate::cuda::abi::BlasCall;

/// `x` rounded to TF32 (the f32 bit pattern with its 13 low mantissa bits
/// cleared, round to nearest, ties to even). Inf and NaN are unchanged.
pub fn round_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 13) & 1;
    f32::from_bits(bits.wrapping_add(0x0fff + lsb) & !0x1fff)
}

/// One operand as cuBLAS reads it: op(X) is `rows × cols`.
#[derive(Clone, Copy, Debug)]
struct Operand {
    ptr: u64,
    ld: i32,
    stride: i64,
    trans: bool,
    rows: i32,
    cols: i32,
}

impl Operand {
    /// Rows of the matrix as stored (op(X) transposed back).
    fn stored_rows(&self) -> i32 {
        if self.trans { self.cols } else { self.rows }
    }

    fn stored_cols(&self) -> i32 {
        if self.trans { self.rows } else { self.cols }
    }

    /// (row stride, column stride) of op(X) in elements.
    fn strides(&self) -> (isize, isize) {
        if self.trans {
            (self.ld as isize, 1)
        } else {
            (1, self.ld as isize)
        }
    }

    /// Bytes from the first element of batch 0 to past the last one read.
    fn extent(&self, batch: i32) -> usize {
        if self.rows == 0 || self.cols == 0 || batch == 0 {
            return 0;
        }
        let last = (batch as i64 - 1) * self.stride
            + (self.stored_cols() as i64 - 1) * self.ld as i64
            + self.stored_rows() as i64;
        last.max(0) as usize * 4
    }
}

fn operands(g: &BlasCall) -> [Operand; 3] {
    [
        Operand {
            ptr: g.a,
            ld: g.lda,
            stride: g.stride_a,
            trans: g.transa,
            rows: g.m,
            cols: g.k,
        },
        Operand {
            ptr: g.b,
            ld: g.ldb,
            stride: g.stride_b,
            trans: g.transb,
            rows: g.k,
            cols: g.n,
        },
        Operand {
            ptr: g.c,
            ld: g.ldc,
            stride: g.stride_c,
            trans: false,
            rows: g.m,
            cols: g.n,
        },
    ]
}

/// cuBLAS's argument checks (`CUBLAS_STATUS_INVALID_VALUE`).
pub fn validate(g: &BlasCall) -> Result<(), String> {
    if g.m < 0 || g.n < 0 || g.k < 0 || g.batch < 0 {
        return Err(format!(
            "negative size (m={}, n={}, k={}, batch={})",
            g.m, g.n, g.k, g.batch
        ));
    }
    for (name, op) in ["A", "B", "C"].into_iter().zip(operands(g)) {
        let need = op.stored_rows().max(1);
        if op.ld < need {
            return Err(format!(
                "ld{} = {} is below the {} rows of {name} as stored (cuBLAS: INVALID_VALUE)",
                name.to_lowercase(),
                op.ld,
                need
            ));
        }
    }
    Ok(())
}

/// The bytes each operand's batch spans: `(name, first address, bytes)`,
/// for checking that they lie in their buffers. A and B are not read when
/// k = 0, C not when m·n = 0.
pub fn extents(g: &BlasCall) -> Vec<(&'static str, u64, usize)> {
    let [a, b, c] = operands(g);
    let mut out = vec![("C", c.ptr, c.extent(g.batch))];
    if g.k > 0 {
        out.push(("A", a.ptr, a.extent(g.batch)));
        out.push(("B", b.ptr, b.extent(g.batch)));
    }
    out
}

/// op(X) of batch entry `p` copied to a row-major `rows × cols` buffer,
/// rounded to TF32.
///
/// # Safety
/// The operand's batch lies in readable memory.
unsafe fn packed_tf32(x: &Operand, p: i64) -> Vec<f32> {
    let base = x.ptr as *const f32;
    let (rs, cs) = x.strides();
    let mut out = Vec::with_capacity(x.rows as usize * x.cols as usize);
    for r in 0..x.rows as isize {
        for c in 0..x.cols as isize {
            // SAFETY: inside the operand, as the caller promises.
            let v = unsafe { *base.offset(p as isize * x.stride as isize + r * rs + c * cs) };
            out.push(round_tf32(v));
        }
    }
    out
}

/// Runs the call on host memory.
///
/// # Safety
/// Every operand's [`extents`] lie in live host memory (C writable), and
/// the call passed [`validate`].
pub unsafe fn sgemm_strided_batched(g: &BlasCall) {
    let [a, b, c] = operands(g);
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    for p in 0..g.batch as i64 {
        let cp = (c.ptr as *mut f32).wrapping_offset((p * c.stride) as isize);
        let rounded; // the TF32 copies of A_p and B_p, alive through the call
        let (ap, rsa, csa, bp, rsb, csb) = if g.tf32 && k > 0 {
            // SAFETY: the operands lie in memory, as the caller promises.
            rounded = unsafe { (packed_tf32(&a, p), packed_tf32(&b, p)) };
            let (pa, pb): &(Vec<f32>, Vec<f32>) = &rounded;
            (pa.as_ptr(), k as isize, 1, pb.as_ptr(), n as isize, 1)
        } else {
            let ((rsa, csa), (rsb, csb)) = (a.strides(), b.strides());
            let ap = (a.ptr as *const f32).wrapping_offset((p * a.stride) as isize);
            let bp = (b.ptr as *const f32).wrapping_offset((p * b.stride) as isize);
            (ap, rsa, csa, bp, rsb, csb)
        };
        // SAFETY: strides and extents describe memory the caller vouched
        // for; with k = 0 matrixmultiply only scales C by β, and with β = 0
        // it does not read C.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                g.alpha,
                ap,
                rsa,
                csa,
                bp,
                rsb,
                csb,
                g.beta,
                cp,
                1,
                c.ld as isize,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_keeps_ten_mantissa_bits_rounding_to_nearest_even() {
        let ulp = 2f32.powi(-10);
        assert_eq!(round_tf32(1.0), 1.0);
        assert_eq!(round_tf32(1.0 + ulp), 1.0 + ulp);
        // Below half an ulp: down; above: up.
        assert_eq!(round_tf32(1.0 + 0.49 * ulp), 1.0);
        assert_eq!(round_tf32(1.0 + 0.51 * ulp), 1.0 + ulp);
        // Ties go to the even neighbour.
        assert_eq!(round_tf32(1.0 + 0.5 * ulp), 1.0);
        assert_eq!(round_tf32(1.0 + 1.5 * ulp), 1.0 + 2.0 * ulp);
        assert_eq!(round_tf32(-(1.0 + 0.51 * ulp)), -(1.0 + ulp));
        // A carry into the exponent.
        assert_eq!(round_tf32(2.0 - 0.4 * ulp), 2.0);
        assert_eq!(round_tf32(f32::INFINITY), f32::INFINITY);
        assert!(round_tf32(f32::NAN).is_nan());
        assert_eq!(round_tf32(f32::MAX), f32::INFINITY);
        for x in [0.1f32, 3.7, -1234.567, 1e-30] {
            let r = round_tf32(x);
            assert_eq!(r.to_bits() & 0x1fff, 0, "{x}");
            assert!((r - x).abs() <= x.abs() * 2f32.powi(-11), "{x} -> {r}");
        }
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data::uniform_f32(n, seed as u64)
    }

    /// The definition, in f64, element by element.
    fn naive(g: &BlasCall, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f32> {
        let mut c = c0.to_vec();
        let round = |v: f32| if g.tf32 { round_tf32(v) } else { v };
        let at = |x: &[f32], ld: i32, s: i64, t: bool, p: i64, r: i32, col: i32| {
            let (r, col) = if t { (col, r) } else { (r, col) };
            x[(p * s + r as i64 + col as i64 * ld as i64) as usize]
        };
        for p in 0..g.batch as i64 {
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut acc = 0f64;
                    for l in 0..g.k {
                        let x = round(at(a, g.lda, g.stride_a, g.transa, p, i, l));
                        let y = round(at(b, g.ldb, g.stride_b, g.transb, p, l, j));
                        acc += x as f64 * y as f64;
                    }
                    let ci = (p * g.stride_c + i as i64 + j as i64 * g.ldc as i64) as usize;
                    let old = if g.beta == 0.0 {
                        0.0
                    } else {
                        g.beta as f64 * c[ci] as f64
                    };
                    c[ci] = (g.alpha as f64 * acc + old) as f32;
                }
            }
        }
        c
    }

    fn call(transa: bool, transb: bool, (m, n, k): (i32, i32, i32)) -> BlasCall {
        let lda = if transa { k } else { m } + 2;
        let ldb = if transb { n } else { k } + 1;
        let ldc = m + 3;
        BlasCall {
            transa,
            transb,
            m,
            n,
            k,
            alpha: 0.75,
            a: 0,
            lda,
            stride_a: (lda * m.max(k) + 5) as i64,
            b: 0,
            ldb,
            stride_b: (ldb * n.max(k) + 7) as i64,
            beta: 0.5,
            c: 0,
            ldc,
            stride_c: (ldc * n + 1) as i64,
            batch: 3,
            tf32: false,
        }
    }

    /// Runs `g` on fresh buffers against [`naive`].
    fn check(mut g: BlasCall, tol: f32) {
        validate(&g).unwrap();
        let len = |s: i64, ld: i32, cols: i32| (s * g.batch as i64 + (ld * cols) as i64) as usize;
        let a = values(len(g.stride_a, g.lda, g.m.max(g.k)), 1);
        let b = values(len(g.stride_b, g.ldb, g.n.max(g.k)), 2);
        let mut c = values(len(g.stride_c, g.ldc, g.n), 3);
        if g.beta == 0.0 {
            c.iter_mut().for_each(|v| *v = f32::NAN);
        }
        let want = naive(&g, &a, &b, &c);
        (g.a, g.b, g.c) = (a.as_ptr() as u64, b.as_ptr() as u64, c.as_mut_ptr() as u64);
        // SAFETY: the buffers above hold every batch of every operand.
        unsafe { sgemm_strided_batched(&g) };
        for (i, (x, y)) in c.iter().zip(&want).enumerate() {
            let ok = (x - y).abs() <= tol || (x.is_nan() && y.is_nan());
            assert!(ok, "{g:?}: c[{i}] = {x}, want {y}");
        }
    }

    #[test]
    fn matches_the_definition_for_every_transpose_and_stride() {
        for transa in [false, true] {
            for transb in [false, true] {
                check(call(transa, transb, (5, 7, 4)), 1e-5);
                check(call(transa, transb, (1, 9, 13)), 1e-5);
            }
        }
    }

    #[test]
    fn broadcast_operands_beta_zero_and_empty_k() {
        let mut g = call(false, true, (6, 3, 5));
        g.stride_b = 0;
        g.beta = 0.0;
        check(g, 1e-5);
        let mut g = call(true, false, (4, 4, 0));
        g.beta = 0.0;
        check(g, 0.0);
        let mut g = call(true, false, (4, 4, 0));
        g.beta = 2.0;
        check(g, 0.0);
    }

    #[test]
    fn tf32_rounds_both_operands() {
        let mut g = call(true, false, (8, 6, 33));
        g.tf32 = true;
        // The reference rounds both operands too (f64 sums of the rounded
        // products); f32 accumulation stays within 1e-5 of it.
        check(g, 1e-5);
    }

    #[test]
    fn invalid_leading_dimensions_are_refused_as_cublas_does() {
        let mut g = call(false, false, (5, 7, 4));
        g.lda = 4;
        assert!(validate(&g).unwrap_err().contains("lda = 4"));
        let mut g = call(true, false, (5, 7, 4));
        g.lda = 3;
        assert!(validate(&g).is_err());
        let mut g = call(false, false, (5, 7, 4));
        g.ldc = 4;
        assert!(validate(&g).unwrap_err().contains("ldc"));
    }

    #[test]
    fn extents_cover_the_last_element_of_the_last_batch() {
        let g = call(false, true, (5, 7, 4));
        let e = extents(&g);
        let c = e.iter().find(|x| x.0 == "C").unwrap().2;
        let last_c = 2 * g.stride_c + 6 * g.ldc as i64 + 4;
        assert_eq!(c, (last_c as usize + 1) * 4);
        // B is transposed: stored n×k, so its last element is (n−1) + (k−1)·ldb.
        let bext = e.iter().find(|x| x.0 == "B").unwrap().2;
        let last_b = 2 * g.stride_b + 3 * g.ldb as i64 + 6;
        assert_eq!(bext, (last_b as usize + 1) * 4);
    }
}
