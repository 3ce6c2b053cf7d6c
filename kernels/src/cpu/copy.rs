//! Strided copies: the one kernel behind `contiguous()`, concatenation and
//! the backward of slicing.

use super::{PAR_CHUNK, SendPtr, collapse_dims, row_offset};
use crate::Float;
use rayon::prelude::*;

/// Copies every element of `shape` from `src` (strided) to `dst` (strided).
/// `dst`'s strides must not map two indices to one element (true for every
/// layout the engine creates as a destination: contiguous tensors and
/// slices of them), which is what makes the parallel rows disjoint.
pub fn copy_strided<T: Float>(
    shape: &[usize],
    src: &[T],
    src_offset: usize,
    src_strides: &[usize],
    dst: &mut [T],
    dst_offset: usize,
    dst_strides: &[usize],
) {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return;
    }
    let (shape, st) = collapse_dims(shape, &[src_strides, dst_strides]);
    let last = shape.len() - 1;
    let (n, ss, ds) = (shape[last], st[0][last], st[1][last]);
    let rows = numel / n;
    let max_dst = dst_offset + row_offset(&shape, &st[1], rows - 1) + (n - 1) * ds;
    assert!(
        max_dst < dst.len(),
        "copy_strided: destination out of bounds"
    );
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    let row = |r: usize| {
        let so = src_offset + row_offset(&shape, &st[0], r);
        let d0 = dst_offset + row_offset(&shape, &st[1], r);
        let p = dst_ptr;
        // SAFETY: d0 + (n-1)·ds is within bounds (max checked above for the
        // last row; row offsets grow monotonically with r for
        // non-negative strides), and rows write disjoint elements.
        unsafe {
            if ss == 1 && ds == 1 {
                std::ptr::copy_nonoverlapping(src[so..so + n].as_ptr(), p.0.add(d0), n);
            } else {
                for i in 0..n {
                    *p.0.add(d0 + i * ds) = src[so + i * ss];
                }
            }
        }
    };
    if numel <= PAR_CHUNK {
        (0..rows).for_each(row);
    } else {
        let rows_per_task = (PAR_CHUNK / n).max(1);
        (0..rows.div_ceil(rows_per_task))
            .into_par_iter()
            .for_each(|t| {
                (t * rows_per_task..((t + 1) * rows_per_task).min(rows)).for_each(row);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_copy() {
        let src = [1f32, 2., 3., 4., 5., 6.]; // [2,3]
        let mut dst = [0f32; 6]; // [3,2]
        copy_strided(&[3, 2], &src, 0, &[1, 3], &mut dst, 0, &[2, 1]);
        assert_eq!(dst, [1., 4., 2., 5., 3., 6.]);
    }
}
