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
    // Copies flat (row-major) elements [start, end): each innermost run is
    // one memcpy when both sides are contiguous in it, a strided loop
    // otherwise. Splitting by element ranges rather than whole rows keeps
    // both threads busy even when the copy collapses to one long row.
    let copy_range = |start: usize, end: usize| {
        let p = dst_ptr;
        let mut idx = start;
        while idx < end {
            let (r, col) = (idx / n, idx % n);
            let run = (n - col).min(end - idx);
            let so = src_offset + row_offset(&shape, &st[0], r) + col * ss;
            let d0 = dst_offset + row_offset(&shape, &st[1], r) + col * ds;
            let src_run = &src[so..=so + (run - 1) * ss];
            // SAFETY: d0 + (run-1)·ds is within bounds (the largest
            // destination index, checked above, belongs to the last row;
            // offsets grow monotonically with the index for non-negative
            // strides), and distinct indices are distinct elements (see the
            // contract above), so ranges copied in parallel are disjoint.
            unsafe {
                if ss == 1 && ds == 1 {
                    std::ptr::copy_nonoverlapping(src_run.as_ptr(), p.0.add(d0), run);
                } else {
                    for i in 0..run {
                        *p.0.add(d0 + i * ds) = src_run[i * ss];
                    }
                }
            }
            idx += run;
        }
    };
    if numel <= PAR_CHUNK {
        copy_range(0, numel);
    } else {
        (0..numel.div_ceil(PAR_CHUNK))
            .into_par_iter()
            .for_each(|t| copy_range(t * PAR_CHUNK, ((t + 1) * PAR_CHUNK).min(numel)));
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

    /// Copies bigger than one parallel chunk: one long contiguous row (split
    /// inside the row), a transpose, and a broadcast source.
    #[test]
    fn large_copies_match_index_arithmetic() {
        let (r, c) = (257, 300);
        let src: Vec<f32> = (0..r * c).map(|v| v as f32).collect();
        let mut dst = vec![0f32; r * c];
        copy_strided(&[r * c], &src, 0, &[1], &mut dst, 0, &[1]);
        assert_eq!(dst, src);
        // dst[j, i] = src[i, j]: read src column-wise.
        copy_strided(&[c, r], &src, 0, &[1, c], &mut dst, 0, &[r, 1]);
        for j in 0..c {
            for i in 0..r {
                assert_eq!(dst[j * r + i], src[i * c + j]);
            }
        }
        // A row of src repeated down the rows (stride 0), written from offset 5.
        let mut big = vec![-1f32; 5 + r * c];
        copy_strided(&[r, c], &src, c, &[0, 1], &mut big, 5, &[c, 1]);
        assert!(big[..5].iter().all(|&v| v == -1.0));
        for i in 0..r {
            assert_eq!(&big[5 + i * c..5 + (i + 1) * c], &src[c..2 * c]);
        }
    }
}
