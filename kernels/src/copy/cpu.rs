//! Strided copies: the one kernel behind `contiguous()`, concatenation and
//! the backward of slicing.

use crate::Float;
use crate::cpu::{PAR_CHUNK, SendPtr, collapse_dims, row_offset};
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
    if let Some(d) = transposed_axis(&shape, &st[0]) {
        return copy_tiled(&shape, &st, d, src, src_offset, dst_ptr, dst_offset);
    }
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

/// Edge of the square tiles a transposing copy moves at a time (through a
/// 4 KiB buffer for f32, which stays in L1).
const TILE: usize = 32;

/// The axis along which the source is contiguous, when its innermost axis
/// is not (a transpose or permute): walking the innermost axis element by
/// element would then read one element per cache line. Both axes must be
/// long enough for tiles to pay off.
fn transposed_axis(shape: &[usize], src_strides: &[usize]) -> Option<usize> {
    let last = shape.len() - 1;
    if src_strides[last] == 1 || shape[last] < TILE / 4 {
        return None;
    }
    (0..last).find(|&d| src_strides[d] == 1 && shape[d] >= TILE / 4)
}

/// Copies in `TILE`×`TILE` tiles of the plane spanned by axis `d` (along
/// which the source is contiguous) and the innermost axis, for every index
/// of the remaining ("outer") axes. Parallel over (outer index, band of
/// `TILE` indices along `d`): the bands write disjoint destination elements.
fn copy_tiled<T: Float>(
    shape: &[usize],
    st: &[Vec<usize>],
    d: usize,
    src: &[T],
    src_offset: usize,
    dst: SendPtr<T>,
    dst_offset: usize,
) {
    let last = shape.len() - 1;
    let (rows, cols) = (shape[d], shape[last]);
    let ((src_row, src_col), (dst_row, dst_col)) =
        ((st[0][d], st[0][last]), (st[1][d], st[1][last]));
    let outer: Vec<usize> = (0..last).filter(|&a| a != d).collect();
    let outer_offset = |mut o: usize, strides: &[usize]| {
        let mut off = 0;
        for &a in outer.iter().rev() {
            off += (o % shape[a]) * strides[a];
            o /= shape[a];
        }
        off
    };
    let bands = rows.div_ceil(TILE);
    let band = |task: usize| {
        let p = dst; // the whole `SendPtr`, not its field: it must cross threads
        // Local copies: values captured by reference would be reloaded after
        // every store through the raw pointer (it might alias them).
        let (sr, sc, dr, dc) = (src_row, src_col, dst_row, dst_col);
        let (o, b) = (task / bands, task % bands);
        let s0 = src_offset + outer_offset(o, &st[0]);
        let d0 = dst_offset + outer_offset(o, &st[1]);
        let (r0, r1) = (b * TILE, ((b + 1) * TILE).min(rows));
        let mut tile = [[T::ZERO; TILE]; TILE]; // tile[c - c0][r - r0]
        for c0 in (0..cols).step_by(TILE) {
            let c1 = (c0 + TILE).min(cols);
            // Read along `d`, where the source is contiguous...
            for c in c0..c1 {
                let line = &mut tile[c - c0][..r1 - r0];
                let at = s0 + r0 * sr + c * sc;
                if sr == 1 {
                    line.copy_from_slice(&src[at..at + line.len()]);
                } else {
                    for (k, v) in line.iter_mut().enumerate() {
                        *v = src[at + k * sr];
                    }
                }
            }
            // ...and write along the innermost axis. Each cache line on
            // either side is then used in one go, so lines a power-of-two
            // stride apart (which share an L1 set) never evict each other.
            for r in r0..r1 {
                let at = d0 + r * dr + c0 * dc;
                for (c, line) in tile[..c1 - c0].iter().enumerate() {
                    // SAFETY: as in `copy_strided`: this index is at most the
                    // largest destination index (checked there), and bands
                    // write disjoint elements.
                    unsafe { *p.0.add(at + c * dc) = line[r - r0] };
                }
            }
        }
    };
    let numel: usize = shape.iter().product();
    let tasks = numel / (rows * cols) * bands;
    if numel <= PAR_CHUNK {
        (0..tasks).for_each(band);
    } else {
        (0..tasks).into_par_iter().for_each(band);
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

    /// A batched permute that takes the tiled path: dst[b, i, j] = src[b, j, i]
    /// with ragged tile edges, an outer axis and offsets on both sides.
    #[test]
    fn tiled_permute_matches_index_arithmetic() {
        let (nb, ni, nj) = (3, 45, 70);
        let src: Vec<f64> = (0..7 + nb * nj * ni).map(|v| v as f64).collect();
        let mut dst = vec![-1f64; 2 + nb * ni * nj];
        // src is [nb, nj, ni] contiguous from offset 7, viewed as [nb, ni, nj].
        let src_strides = [nj * ni, 1, ni];
        assert_eq!(transposed_axis(&[nb, ni, nj], &src_strides), Some(1));
        copy_strided(
            &[nb, ni, nj],
            &src,
            7,
            &src_strides,
            &mut dst,
            2,
            &[ni * nj, nj, 1],
        );
        assert_eq!(&dst[..2], &[-1.0, -1.0]);
        for b in 0..nb {
            for i in 0..ni {
                for j in 0..nj {
                    let want = src[7 + b * nj * ni + j * ni + i];
                    assert_eq!(dst[2 + (b * ni + i) * nj + j], want, "at ({b},{i},{j})");
                }
            }
        }
    }
}
