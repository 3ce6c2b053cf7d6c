//! Reductions over one contiguous block of axes.
//!
//! A contiguous tensor reduced over axes `a..b` is viewed as
//! `[outer, r, inner]` (r = product of the reduced sizes). Any set of axes is
//! a sequence of such blocks, which the engine reduces one after another; so
//! this single kernel covers row sums (`inner = 1`), column sums
//! (`outer = 1`) and everything between.

pub use super::ReduceOp;
use crate::Float;
use crate::cpu::PAR_CHUNK;
use rayon::prelude::*;

/// Runs `$body` with `$combine` bound to `op`'s combine function, once per
/// op: each closure names its op as a literal, so the `match` in
/// [`ReduceOp::combine`] folds away and the loops in `$body` vectorise
/// (a loop over a runtime op would branch on it for every element).
macro_rules! with_combine {
    ($op:expr, $combine:ident => $body:expr) => {
        match $op {
            ReduceOp::Sum => {
                let $combine = |a, b| ReduceOp::Sum.combine(a, b);
                $body
            }
            ReduceOp::Max => {
                let $combine = |a, b| ReduceOp::Max.combine(a, b);
                $body
            }
            ReduceOp::Min => {
                let $combine = |a, b| ReduceOp::Min.combine(a, b);
                $body
            }
        }
    };
}

/// `out[o, i] = op_{k<r} x[o, k, i]` for contiguous `x` of `[outer, r, inner]`.
pub fn reduce<T: Float>(
    op: ReduceOp,
    x: &[T],
    outer: usize,
    r: usize,
    inner: usize,
    out: &mut [T],
) {
    assert_eq!(
        x.len(),
        outer * r * inner,
        "reduce: input length does not match [outer, r, inner]"
    );
    assert_eq!(
        out.len(),
        outer * inner,
        "reduce: output length does not match [outer, inner]"
    );
    if inner == 1 {
        let rows = |(row, o): (&[T], &mut T)| *o = reduce_row(op, row);
        if x.len() <= PAR_CHUNK || outer == 1 {
            if outer == 1 && x.len() > PAR_CHUNK {
                // One long row: reduce chunks in parallel, then combine.
                let parts: Vec<T> = x.par_chunks(PAR_CHUNK).map(|c| reduce_row(op, c)).collect();
                out[0] = reduce_row(op, &parts);
            } else {
                x.chunks(r.max(1)).zip(out.iter_mut()).for_each(rows);
            }
        } else {
            x.par_chunks(r.max(1))
                .zip(out.par_iter_mut())
                .for_each(rows);
        }
        return;
    }
    // inner > 1: accumulate whole rows of length `inner`, which vectorises.
    let block = inner.min(PAR_CHUNK);
    let columns = |o: usize, start: usize, dst: &mut [T]| {
        dst.fill(op.init());
        with_combine!(op, combine => crate::cpu::simd::with_avx2(|| {
            for k in 0..r {
                let src = &x[(o * r + k) * inner + start..][..dst.len()];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = combine(*d, s);
                }
            }
        }))
    };
    if x.len() <= PAR_CHUNK {
        for o in 0..outer {
            columns(o, 0, &mut out[o * inner..(o + 1) * inner]);
        }
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
            row.par_chunks_mut(block)
                .enumerate()
                .for_each(|(b, dst)| columns(o, b * block, dst));
        });
    }
}

/// Independent partial results per row: enough vector accumulators
/// (4 × 8 f32 lanes) that the adds' latency is hidden, so a row reduces at
/// load speed; splitting the sum also lowers rounding error versus one
/// running total.
const LANES: usize = 32;

/// Reduces one contiguous row with [`LANES`] independent accumulators.
#[inline]
fn reduce_row<T: Float>(op: ReduceOp, row: &[T]) -> T {
    let init = op.init::<T>();
    with_combine!(op, combine => crate::cpu::simd::with_avx2(|| {
        let mut acc = [init; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                acc[j] = combine(acc[j], c[j]);
            }
        }
        let mut total = init;
        for &v in chunks.remainder() {
            total = combine(total, v);
        }
        for a in acc {
            total = combine(total, a);
        }
        total
    }))
}

/// Σ x² over a slice, accumulated in f64 (global gradient norms must not
/// lose the small gradients of a 35 M-parameter model to rounding).
pub fn sum_squares_f64<T: Float>(x: &[T]) -> f64 {
    let part = |c: &[T]| c.iter().map(|&v| v.to_f64() * v.to_f64()).sum::<f64>();
    if x.len() <= PAR_CHUNK {
        part(x)
    } else {
        x.par_chunks(PAR_CHUNK).map(part).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_middle_axis() {
        // x: [2, 3, 2]
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut out = vec![0f32; 4];
        reduce(ReduceOp::Sum, &x, 2, 3, 2, &mut out);
        assert_eq!(
            out,
            vec![0. + 2. + 4., 1. + 3. + 5., 6. + 8. + 10., 7. + 9. + 11.]
        );
        reduce(ReduceOp::Max, &x, 2, 3, 2, &mut out);
        assert_eq!(out, vec![4., 5., 10., 11.]);
    }

    #[test]
    fn max_propagates_nan() {
        let x = [1f32, f32::NAN, 3.0];
        let mut out = [0f32];
        reduce(ReduceOp::Max, &x, 1, 3, 1, &mut out);
        assert!(out[0].is_nan());
    }

    /// Long rows (parallel path, ragged against the accumulator width) and
    /// wide columns, for every op, against a sequential f64 reference.
    #[test]
    fn long_rows_and_columns_match_sequential_reference() {
        let x: Vec<f32> = (0..3 * 40_003)
            .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
            let reference = |vals: &mut dyn Iterator<Item = f32>| {
                vals.map(f64::from)
                    .fold(op.init::<f64>(), |a, b| op.combine(a, b))
            };
            for (outer, r, inner) in [
                (1, x.len(), 1),
                (3, 40_003, 1),
                (3, 1, 40_003),
                (1, 3, 40_003),
            ] {
                let mut out = vec![0f32; outer * inner];
                reduce(op, &x, outer, r, inner, &mut out);
                for o in 0..outer {
                    for i in 0..inner {
                        let want = reference(&mut (0..r).map(|k| x[(o * r + k) * inner + i]));
                        let got = f64::from(out[o * inner + i]);
                        assert!(
                            (got - want).abs() <= 1e-5 * r as f64,
                            "{op:?} [{outer},{r},{inner}] at ({o},{i}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
