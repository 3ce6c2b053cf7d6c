//! CPU kernels on slices.
//!
//! Conventions shared by every kernel here:
//! - inputs are `&[T]` plus the numbers that describe how to walk them
//!   (shape, strides, offsets); outputs are `&mut [T]`, written in full;
//! - work is split across rayon threads in chunks big enough
//!   ([`PAR_CHUNK`] elements) that the split costs less than it gains;
//! - explicit SIMD lives in [`simd`], chosen at run time; the scalar path is
//!   always there and tests run both (see [`simd::force_scalar`]).

pub mod copy;
pub mod elementwise;
pub mod gemm;
pub mod group_norm;
pub mod index;
pub mod noise;
pub mod optim;
pub mod reduce;
pub mod simd;
pub mod simd_avx512;
pub mod softmax;
pub mod upsample;

/// Elements per rayon task for memory-bound kernels: large enough that task
/// overhead (~1 µs) is small against the ~10 µs the chunk takes.
pub const PAR_CHUNK: usize = 1 << 15;

/// A raw pointer that may cross threads. Used only where the tasks provably
/// write disjoint elements (each documents why).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Merges adjacent dimensions that every operand walks contiguously with
/// respect to each other, and drops size-1 dimensions. Fewer, longer
/// dimensions mean longer inner loops. `strides[j]` is operand j's strides.
pub fn collapse_dims(shape: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = match out_shape.last() {
            Some(_) => out_strides
                .iter()
                .zip(strides)
                .all(|(o, s)| *o.last().unwrap() == s[d] * size),
            None => false,
        };
        if mergeable {
            *out_shape.last_mut().unwrap() *= size;
            for (o, s) in out_strides.iter_mut().zip(strides) {
                *o.last_mut().unwrap() = s[d];
            }
        } else {
            out_shape.push(size);
            for (o, s) in out_strides.iter_mut().zip(strides) {
                o.push(s[d]);
            }
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_shape, out_strides)
}

/// Offset of row `row` (a flat index over all dims but the last) for an
/// operand with `strides`, in a tensor of `shape`.
#[inline]
pub(crate) fn row_offset(shape: &[usize], strides: &[usize], mut row: usize) -> usize {
    let mut off = 0;
    for d in (0..shape.len() - 1).rev() {
        let i = row % shape[d];
        row /= shape[d];
        off += i * strides[d];
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_merges_contiguous_and_drops_ones() {
        let (s, st) = collapse_dims(&[2, 1, 3, 4], &[&[12, 12, 4, 1], &[0, 0, 4, 1]]);
        assert_eq!(s, vec![2, 12]);
        assert_eq!(st, vec![vec![12, 1], vec![0, 1]]);
    }
}
