//! Nearest-neighbour ×2 upsampling of `[planes, H, W]` maps (planes = N·C)
//! and its adjoint.

use super::PAR_CHUNK;
use super::simd;
use crate::Float;
use rayon::prelude::*;

/// Planes handed to one rayon job, so a job moves at least ~PAR_CHUNK elements.
fn planes_per_job(plane_len: usize) -> usize {
    (PAR_CHUNK / plane_len.max(1)).max(1)
}

/// y[p, 2i + a, 2j + b] = x[p, i, j] for a, b ∈ {0, 1}: `x` is
/// `[planes, h, w]`, `y` is `[planes, 2h, 2w]`, both contiguous.
pub fn upsample_nearest2x<T: Float>(x: &[T], planes: usize, h: usize, w: usize, y: &mut [T]) {
    assert_eq!(x.len(), planes * h * w, "upsample: input length");
    assert_eq!(y.len(), 4 * x.len(), "upsample: output length");
    if x.is_empty() {
        return;
    }
    x.par_chunks(w)
        .zip(y.par_chunks_mut(4 * w))
        .with_min_len(planes_per_job(h * w) * h)
        .for_each(|(row, out)| {
            // One input row becomes two identical output rows of 2w.
            let (top, bottom) = out.split_at_mut(2 * w);
            simd::with_avx2(|| {
                for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = v;
                    pair[1] = v;
                }
            });
            bottom.copy_from_slice(top);
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
    dy.par_chunks(4 * w)
        .zip(dx.par_chunks_mut(w))
        .with_min_len(planes_per_job(h * w) * h)
        .for_each(|(rows, out)| {
            let (top, bottom) = rows.split_at(2 * w);
            simd::with_avx2(|| {
                for ((o, t), b) in out
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    *o = (t[0] + t[1]) + (b[0] + b[1]);
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
