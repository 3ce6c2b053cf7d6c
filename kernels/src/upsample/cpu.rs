//! Nearest-neighbour ×2 upsampling of `[planes, H, W]` maps (planes = N·C)
//! and its adjoint.
//!
//! Both are pure data movement, so they are written as one pass over whole
//! input rows: each rayon job takes a run of rows (whole planes or not, a
//! row is independent) and walks them inside one AVX2-compiled function,
//! with the f32 row bodies in explicit AVX2 (the interleaving shuffles are
//! not something the compiler finds on its own).

use crate::Float;
use crate::cpu::PAR_CHUNK;
use crate::cpu::simd::{self, Isa};
use crate::cpu::{as_f32, as_f32_mut};
use rayon::prelude::*;

/// Input rows per rayon job, so a job moves at least ~PAR_CHUNK elements.
fn rows_per_job(w: usize) -> usize {
    (PAR_CHUNK / (4 * w).max(1)).max(1)
}

/// y[p, 2i + a, 2j + b] = x[p, i, j] for a, b ∈ {0, 1}: `x` is
/// `[planes, h, w]`, `y` is `[planes, 2h, 2w]`, both contiguous.
pub fn upsample_nearest2x<T: Float>(x: &[T], planes: usize, h: usize, w: usize, y: &mut [T]) {
    assert_eq!(x.len(), planes * h * w, "upsample: input length");
    assert_eq!(y.len(), 4 * x.len(), "upsample: output length");
    if x.is_empty() {
        return;
    }
    let rows = rows_per_job(w);
    let avx2 = simd::isa() >= Isa::Avx2;
    x.par_chunks(rows * w)
        .zip(y.par_chunks_mut(rows * 4 * w))
        .for_each(|(xs, ys)| {
            if avx2 {
                // SAFETY: the CPU has AVX2+FMA (checked above).
                unsafe { forward_rows_avx2(xs, w, ys) }
            } else {
                forward_rows(xs, w, ys, false)
            }
        });
}

/// The adjoint of [`upsample_nearest2x`]: each input gradient is the sum of
/// its 2×2 output block, dx[p, i, j] = Σ_{a,b ∈ {0,1}} dy[p, 2i + a, 2j + b].
pub fn upsample_nearest2x_backward<T: Float>(
    dy: &[T],
    planes: usize,
    h: usize,
    w: usize,
    dx: &mut [T],
) {
    assert_eq!(dx.len(), planes * h * w, "upsample backward: output length");
    assert_eq!(dy.len(), 4 * dx.len(), "upsample backward: input length");
    if dx.is_empty() {
        return;
    }
    let rows = rows_per_job(w);
    let avx2 = simd::isa() >= Isa::Avx2;
    dy.par_chunks(rows * 4 * w)
        .zip(dx.par_chunks_mut(rows * w))
        .for_each(|(dys, dxs)| {
            if avx2 {
                // SAFETY: the CPU has AVX2+FMA (checked above).
                unsafe { backward_rows_avx2(dys, w, dxs) }
            } else {
                backward_rows(dys, w, dxs, false)
            }
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_rows_avx2<T: Float>(x: &[T], w: usize, y: &mut [T]) {
    forward_rows(x, w, y, true)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_rows_avx2<T: Float>(x: &[T], w: usize, y: &mut [T]) {
    forward_rows(x, w, y, true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_rows_avx2<T: Float>(dy: &[T], w: usize, dx: &mut [T]) {
    backward_rows(dy, w, dx, true)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn backward_rows_avx2<T: Float>(dy: &[T], w: usize, dx: &mut [T]) {
    backward_rows(dy, w, dx, true)
}

/// Each input row of `w` becomes two identical output rows of `2w`.
/// `avx2`: the caller runs with AVX2 enabled, so the f32 body may use it.
#[inline(always)]
fn forward_rows<T: Float>(x: &[T], w: usize, y: &mut [T], avx2: bool) {
    for (row, out) in x.chunks_exact(w).zip(y.chunks_exact_mut(4 * w)) {
        let (top, bottom) = out.split_at_mut(2 * w);
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(r), Some(t), Some(b)) =
            (avx2, as_f32(row), as_f32_mut(top), as_f32_mut(bottom))
        {
            j = f32x::widen_rows(r, t, b);
        }
        let _ = avx2;
        for (k, &v) in row.iter().enumerate().skip(j) {
            top[2 * k] = v;
            top[2 * k + 1] = v;
            bottom[2 * k] = v;
            bottom[2 * k + 1] = v;
        }
    }
}

/// Each output gradient row of `w` sums a 2×2 block from two rows of `2w`
/// (in the order the vector code adds: columns first, then the pair).
#[inline(always)]
fn backward_rows<T: Float>(dy: &[T], w: usize, dx: &mut [T], avx2: bool) {
    for (rows, out) in dy.chunks_exact(4 * w).zip(dx.chunks_exact_mut(w)) {
        let (top, bottom) = rows.split_at(2 * w);
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(t), Some(b), Some(o)) =
            (avx2, as_f32(top), as_f32(bottom), as_f32_mut(out))
        {
            j = f32x::sum_blocks(t, b, o);
        }
        let _ = avx2;
        for (k, o) in out.iter_mut().enumerate().skip(j) {
            *o = (top[2 * k] + bottom[2 * k]) + (top[2 * k + 1] + bottom[2 * k + 1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod f32x {
    //! 8-wide f32 row bodies. They are `#[inline(always)]` and only called
    //! with `avx2 = true`, i.e. from the `*_rows_avx2` wrappers, which carry
    //! the AVX2 target feature; each returns how many elements it handled
    //! (the rest is scalar).
    use std::arch::x86_64::*;

    /// top[2j] = top[2j+1] = bottom[2j] = bottom[2j+1] = row[j], 8 at a
    /// time, then 4 at a time (4×4 maps have rows of 4).
    #[inline(always)]
    pub fn widen_rows(row: &[f32], top: &mut [f32], bottom: &mut [f32]) -> usize {
        let n = row.len() / 8 * 8;
        assert!(top.len() >= 2 * row.len() && bottom.len() >= 2 * row.len());
        for j in (0..n).step_by(8) {
            // SAFETY: j + 8 <= row.len(); 2j + 16 <= top/bottom lengths.
            // Only reached with AVX2 enabled (see the module doc).
            unsafe {
                let v = _mm256_loadu_ps(row.as_ptr().add(j));
                let lo = _mm256_unpacklo_ps(v, v); // v0 v0 v1 v1 | v4 v4 v5 v5
                let hi = _mm256_unpackhi_ps(v, v); // v2 v2 v3 v3 | v6 v6 v7 v7
                let a = _mm256_permute2f128_ps::<0x20>(lo, hi); // v0..v3 doubled
                let b = _mm256_permute2f128_ps::<0x31>(lo, hi); // v4..v7 doubled
                _mm256_storeu_ps(top.as_mut_ptr().add(2 * j), a);
                _mm256_storeu_ps(top.as_mut_ptr().add(2 * j + 8), b);
                _mm256_storeu_ps(bottom.as_mut_ptr().add(2 * j), a);
                _mm256_storeu_ps(bottom.as_mut_ptr().add(2 * j + 8), b);
            }
        }
        if n + 4 > row.len() {
            return n;
        }
        // SAFETY: n + 4 <= row.len(); 2n + 8 <= top/bottom lengths.
        unsafe {
            let v = _mm_loadu_ps(row.as_ptr().add(n));
            let (lo, hi) = (_mm_unpacklo_ps(v, v), _mm_unpackhi_ps(v, v));
            for out in [top.as_mut_ptr(), bottom.as_mut_ptr()] {
                _mm_storeu_ps(out.add(2 * n), lo);
                _mm_storeu_ps(out.add(2 * n + 4), hi);
            }
        }
        n + 4
    }

    /// out[j] = (top[2j] + bottom[2j]) + (top[2j+1] + bottom[2j+1]), 8 at a
    /// time, then 4 at a time.
    #[inline(always)]
    pub fn sum_blocks(top: &[f32], bottom: &[f32], out: &mut [f32]) -> usize {
        let n = out.len() / 8 * 8;
        assert!(top.len() >= 2 * out.len() && bottom.len() >= 2 * out.len());
        for j in (0..n).step_by(8) {
            // SAFETY: 2j + 16 <= top/bottom lengths; j + 8 <= out.len().
            // Only reached with AVX2 enabled (see the module doc).
            unsafe {
                let s0 = _mm256_add_ps(
                    _mm256_loadu_ps(top.as_ptr().add(2 * j)),
                    _mm256_loadu_ps(bottom.as_ptr().add(2 * j)),
                );
                let s1 = _mm256_add_ps(
                    _mm256_loadu_ps(top.as_ptr().add(2 * j + 8)),
                    _mm256_loadu_ps(bottom.as_ptr().add(2 * j + 8)),
                );
                // Pairwise sums per 128-bit half: [s0 01 23, s1 01 23 | s0 45 67, s1 45 67].
                let h = _mm256_hadd_ps(s0, s1);
                // Reorder the 64-bit pairs to s0 01 23 45 67, s1 01 23 45 67.
                let v = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(h)));
                _mm256_storeu_ps(out.as_mut_ptr().add(j), v);
            }
        }
        if n + 4 > out.len() {
            return n;
        }
        // SAFETY: n + 4 <= out.len(); 2n + 8 <= top/bottom lengths.
        unsafe {
            let t = top.as_ptr().add(2 * n);
            let b = bottom.as_ptr().add(2 * n);
            let s0 = _mm_add_ps(_mm_loadu_ps(t), _mm_loadu_ps(b));
            let s1 = _mm_add_ps(_mm_loadu_ps(t.add(4)), _mm_loadu_ps(b.add(4)));
            _mm_storeu_ps(out.as_mut_ptr().add(n), _mm_hadd_ps(s0, s1));
        }
        n + 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upsample::reference;

    #[test]
    fn forward_and_backward_on_a_2x3_map() {
        let x = [1f32, 2., 3., 4., 5., 6.];
        let mut y = [0f32; 24];
        upsample_nearest2x(&x, 1, 2, 3, &mut y);
        assert_eq!(&y[..6], &[1., 1., 2., 2., 3., 3.]);
        assert_eq!(&y[6..12], &[1., 1., 2., 2., 3., 3.]);
        assert_eq!(&y[18..], &[4., 4., 5., 5., 6., 6.]);
        let dy: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let mut dx = [0f32; 6];
        upsample_nearest2x_backward(&dy, 1, 2, 3, &mut dx);
        // dx[0,0] = dy[0,0] + dy[0,1] + dy[1,0] + dy[1,1] = 0 + 1 + 6 + 7.
        assert_eq!(dx, [14., 22., 30., 62., 70., 78.]);
    }

    #[test]
    fn simd_rows_match_generic_rows() {
        // w = 23: two 8-wide blocks, one 4-wide block and a scalar tail.
        let (planes, h, w) = (3, 5, 23);
        let x: Vec<f32> = (0..planes * h * w).map(|i| i as f32 * 0.5).collect();
        let dy: Vec<f32> = (0..4 * x.len()).map(|i| (i % 97) as f32 - 40.0).collect();
        let run = |isa| {
            simd::with_isa(isa, || {
                let (mut y, mut dx) = (vec![0f32; 4 * x.len()], vec![0f32; x.len()]);
                upsample_nearest2x(&x, planes, h, w, &mut y);
                upsample_nearest2x_backward(&dy, planes, h, w, &mut dx);
                (y, dx)
            })
        };
        let (y, dx) = run(Isa::Scalar);
        assert_eq!((y.clone(), dx.clone()), run(Isa::Avx512));
        // Both against the definition (exact: copies and sums of small integers).
        let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        assert_eq!(f64s(&y), reference::forward(&f64s(&x), planes, h, w));
        assert_eq!(f64s(&dx), reference::backward(&f64s(&dy), planes, h, w));
    }
}
