//! Gather along an axis (embedding tables, per-sample schedule lookups) and
//! its adjoint, scatter-add.

use crate::Float;
use rayon::prelude::*;

/// `out[o, j, i] = x[o, ids[j], i]` for contiguous `x` of `[outer, dim, inner]`.
/// Every id must be `< dim` (the engine checks and reports bad ids).
pub fn index_select<T: Float>(
    x: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    ids: &[usize],
    out: &mut [T],
) {
    assert_eq!(
        x.len(),
        outer * dim * inner,
        "index_select: input length does not match [outer, dim, inner]"
    );
    assert_eq!(
        out.len(),
        outer * ids.len() * inner,
        "index_select: output length mismatch"
    );
    if out.is_empty() {
        return;
    }
    out.par_chunks_mut(ids.len() * inner)
        .enumerate()
        .for_each(|(o, slab)| {
            for (j, &id) in ids.iter().enumerate() {
                let src = &x[(o * dim + id) * inner..][..inner];
                slab[j * inner..(j + 1) * inner].copy_from_slice(src);
            }
        });
}

/// `acc[o, ids[j], i] += src[o, j, i]`: the adjoint of [`index_select`].
/// Repeated ids accumulate. Parallel over `outer` only, since two `j` with
/// the same id write the same row.
pub fn index_add<T: Float>(
    acc: &mut [T],
    outer: usize,
    dim: usize,
    inner: usize,
    ids: &[usize],
    src: &[T],
) {
    assert_eq!(
        acc.len(),
        outer * dim * inner,
        "index_add: accumulator length mismatch"
    );
    assert_eq!(
        src.len(),
        outer * ids.len() * inner,
        "index_add: source length mismatch"
    );
    if acc.is_empty() || src.is_empty() {
        return;
    }
    acc.par_chunks_mut(dim * inner)
        .zip(src.par_chunks(ids.len() * inner))
        .for_each(|(dst, s)| {
            for (j, &id) in ids.iter().enumerate() {
                for (d, &v) in dst[id * inner..(id + 1) * inner]
                    .iter_mut()
                    .zip(&s[j * inner..(j + 1) * inner])
                {
                    *d += v;
                }
            }
        });
}
