//! 2-D convolution (NCHW), forward and backward.
//!
//! `y[n,o,oh,ow] = b[o] + Σ_{c,i,j} w[o,c,i,j] · x[n, c, oh·s + i − p, ow·s + j − p]`
//! (cross-correlation, zero padding p on every side, stride s).
//!
//! Two algorithms, chosen per call by [`Algorithm::for_geometry`]:
//!
//! - **Winograd F(2×2, 3×3)** ([`winograd`]) for 3×3 kernels with stride 1
//!   and padding ≤ 2: forward, input gradient and weight gradient;
//! - **GEMM** (the packed [`gemm`] fed from [`im2col`]) for everything else:
//!   per image `Y_n = W · col(X_n)`, `dX_n = col2im(Wᵀ · dY_n)`,
//!   `dW = Σ_n dY_n · col(X_n)ᵀ`. The forward pass never stores `col(X_n)`:
//!   each GEMM task packs its patches straight from the (phase-split) image,
//!   one k-slice at a time. A 1×1 kernel with stride 1 and no padding uses
//!   `X_n` itself as the column matrix.
//!
//! The bias gradient is `db[o] = Σ_{n,oh,ow} dy[n,o,oh,ow]` in every case.
//!
//! Work is split over rayon inside each call (channels, ξ positions,
//! images × column blocks, weight columns); the GEMMs themselves are
//! single-threaded. The batch is processed in chunks (Winograd: ~256 tiles;
//! GEMM gradients: images whose column buffer stays under `COL_BUDGET` elements),
//! so scratch memory does not grow with the batch.
//!
//! # Why these algorithms (measured)
//!
//! Single-thread CPU time (ms, min of several runs, batch 8, f32; this AMD
//! EPYC with AVX-512 shared with other jobs, so provisional) for the
//! U-Net's 3×3 stride-1 layers, forward / input gradient / weight gradient
//! (`cargo bench --bench conv -- conv_algorithm` times the same choice):
//!
//! | layer       | GEMM path          | Winograd           | PyTorch fwd / bwd |
//! |-------------|--------------------|--------------------|-------------------|
//! | 32×32×128   | 28.6 / 33.2 / 31.9 | 17.5 / 18.0 / 21.1 | 29.4 / 54.5       |
//! | 16×16×256   | 26.6 / 28.3 / 31.7 | 18.3 / 18.5 / 20.9 | 24.5 / 54.0       |
//! | 8×8×256     |  6.8 /  8.1 /  8.4 |  5.5 /  6.0 /  6.5 |  6.0 / 15.5       |
//! | 4×4×256     |  3.6 /  4.7 /  2.8 |  1.9 /  2.2 /  2.8 |  1.5 /  4.7       |
//!
//! - PyTorch (oneDNN, AVX-512) runs these convolutions at 80–118 GFLOP/s
//!   per core. A GEMM lowering cannot beat that: `matrixmultiply`'s sgemm
//!   reaches 62–78 GFLOP/s at the K = 9C shapes (1 thread), and the packed
//!   GEMM here ~95–105 before the cost of gathering patches. Winograd
//!   F(2×2, 3×3) does 16 multiplies per 4 outputs instead of 36 (2.25×
//!   fewer), as 16 independent GEMMs of depth C, which more than pays for
//!   its transforms at every U-Net size; F(4×4, 3×3) (4× fewer) was not
//!   needed and has larger transforms and rounding error. The F(2×2) error
//!   against float64 PyTorch is ≤ 4e-7 of the largest output here.
//! - Stride 2 and 1×1 stay on the GEMM path (Winograd does not apply);
//!   there the packed GEMM matches or beats PyTorch's single-thread time.
//! - Own GEMM instead of [`crate::gemm::cpu`]: matrixmultiply's `threading`
//!   feature forks each large product onto its own thread pool, which
//!   collides with the rayon split across images/ξ/tiles (two workers
//!   forking into the 2-thread pool at once queue behind each other), and
//!   the weights would be repacked inside every product. The packed GEMM
//!   packs the weights once per call, runs on the calling thread, and takes
//!   B either pre-packed (Winograd) or packed on demand (patches).
//! - Backward, not a transposed-convolution kernel: the input gradient of a
//!   stride-1 3×3 convolution is itself a stride-1 3×3 convolution (flipped,
//!   channel-transposed kernel, padding 2 − p), so it reuses the Winograd
//!   forward; the weight gradient is Winograd's own adjoint (16 GEMMs
//!   reducing over tiles). The GEMM path's weight gradient accumulates one
//!   image at a time into dW split by columns across threads (no per-thread
//!   copies, no batch-sized im2col buffer).
pub use super::Conv2dGeometry;

pub mod im2col;

pub mod winograd;

use crate::Float;

use crate::gemm::packed::{Buffer, GemmFloat, Mat, MatPtr, PackedA, SharedPtr};

use rayon::prelude::*;

/// Largest im2col buffer (elements) one group of images may use: 4 MiB of
/// f32, which keeps the buffer in the shared L3 while the GEMMs read it.
const COL_BUDGET: usize = 1 << 20;

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Winograd,
    Gemm,
}

impl Algorithm {
    /// The algorithm [`conv2d_forward`] and the gradients use: Winograd
    /// wherever it applies (see the module documentation for why).
    pub fn for_geometry(g: &Conv2dGeometry) -> Algorithm {
        if Algorithm::Winograd.supports(g) {
            Algorithm::Winograd
        } else {
            Algorithm::Gemm
        }
    }

    /// Whether this algorithm can compute `g` (GEMM always can; Winograd
    /// F(2×2, 3×3) needs a 3×3 kernel, stride 1, and padding ≤ 2 so that the
    /// input gradient is again such a convolution).
    pub fn supports(self, g: &Conv2dGeometry) -> bool {
        match self {
            Algorithm::Gemm => true,
            Algorithm::Winograd => {
                g.kernel_h == 3 && g.kernel_w == 3 && g.stride == 1 && g.padding <= 2
            }
        }
    }

    fn assert_supports(self, g: &Conv2dGeometry) {
        assert!(self.supports(g), "conv2d: {self:?} cannot compute {g:?}");
    }
}

/// Element types the convolution runs in (f32, f64).
pub trait ConvFloat: GemmFloat {}

impl<T: GemmFloat> ConvFloat for T {}

fn check_lengths(g: &Conv2dGeometry, pairs: &[(&str, usize, usize)]) {
    g.assert_valid();
    for &(what, got, want) in pairs {
        assert_eq!(got, want, "conv2d: {what} length does not match {g:?}");
    }
}

/// `y = conv(x, w) + bias` with x `[N,C,H,W]`, w `[O,C,kh,kw]`, bias `[O]`,
/// y `[N,O,Ho,Wo]` (written in full).
pub fn conv2d_forward<T: ConvFloat>(
    g: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    conv2d_forward_with(Algorithm::for_geometry(g), g, x, w, bias, y)
}

/// [`conv2d_forward`] with a given algorithm (benchmarks and tests compare
/// them); panics if the algorithm does not support `g`.
pub fn conv2d_forward_with<T: ConvFloat>(
    algorithm: Algorithm,
    g: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    algorithm.assert_supports(g);
    check_lengths(
        g,
        &[
            ("input", x.len(), g.input_len()),
            ("weight", w.len(), g.weight_len()),
            ("output", y.len(), g.output_len()),
        ],
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), g.out_channels, "conv2d: bias length");
    }
    if y.is_empty() {
        return;
    }
    match algorithm {
        Algorithm::Winograd => winograd::forward(g, x, w, bias, y),
        Algorithm::Gemm => gemm_forward(g, x, w, bias, y),
    }
}

/// dx = ∂L/∂x given dy = ∂L/∂y (dx written in full).
pub fn conv2d_backward_input<T: ConvFloat>(g: &Conv2dGeometry, dy: &[T], w: &[T], dx: &mut [T]) {
    conv2d_backward_input_with(Algorithm::for_geometry(g), g, dy, w, dx)
}

/// [`conv2d_backward_input`] with a given algorithm.
pub fn conv2d_backward_input_with<T: ConvFloat>(
    algorithm: Algorithm,
    g: &Conv2dGeometry,
    dy: &[T],
    w: &[T],
    dx: &mut [T],
) {
    algorithm.assert_supports(g);
    check_lengths(
        g,
        &[
            ("output grad", dy.len(), g.output_len()),
            ("weight", w.len(), g.weight_len()),
            ("input grad", dx.len(), g.input_len()),
        ],
    );
    if dx.is_empty() {
        return;
    }
    if dy.is_empty() || g.out_channels == 0 {
        dx.fill(T::ZERO);
        return;
    }
    match algorithm {
        Algorithm::Winograd => winograd::backward_input(g, dy, w, dx),
        Algorithm::Gemm => gemm_backward_input(g, dy, w, dx),
    }
}

/// dw = ∂L/∂w = Σ over the batch (dw written in full).
pub fn conv2d_backward_weight<T: ConvFloat>(g: &Conv2dGeometry, x: &[T], dy: &[T], dw: &mut [T]) {
    conv2d_backward_weight_with(Algorithm::for_geometry(g), g, x, dy, dw)
}

/// [`conv2d_backward_weight`] with a given algorithm.
pub fn conv2d_backward_weight_with<T: ConvFloat>(
    algorithm: Algorithm,
    g: &Conv2dGeometry,
    x: &[T],
    dy: &[T],
    dw: &mut [T],
) {
    algorithm.assert_supports(g);
    check_lengths(
        g,
        &[
            ("input", x.len(), g.input_len()),
            ("output grad", dy.len(), g.output_len()),
            ("weight grad", dw.len(), g.weight_len()),
        ],
    );
    if dw.is_empty() {
        return;
    }
    if dy.is_empty() {
        dw.fill(T::ZERO);
        return;
    }
    match algorithm {
        Algorithm::Winograd => winograd::backward_weight(g, x, dy, dw),
        Algorithm::Gemm => gemm_backward_weight(g, x, dy, dw),
    }
}

/// `db[o] = Σ_{n,oh,ow} dy[n,o,oh,ow]`.
pub fn conv2d_backward_bias<T: Float>(g: &Conv2dGeometry, dy: &[T], db: &mut [T]) {
    check_lengths(
        g,
        &[
            ("output grad", dy.len(), g.output_len()),
            ("bias grad", db.len(), g.out_channels),
        ],
    );
    let (o, p) = (g.out_channels, g.out_pixels());
    db.par_iter_mut().enumerate().for_each(|(oi, d)| {
        // Eight running sums: one chain of dependent adds would be bound by
        // the add latency; eight independent lanes vectorise.
        let mut acc = [T::ZERO; 8];
        let mut tail = T::ZERO;
        for n in 0..g.batch {
            let plane = &dy[(n * o + oi) * p..][..p];
            let mut chunks = plane.chunks_exact(8);
            for c in &mut chunks {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
            }
            for &v in chunks.remainder() {
                tail += v;
            }
        }
        *d = acc.iter().fold(tail, |s, &a| s + a);
    });
}

/// Images per group so the group's column buffer stays within the budget.
fn images_per_group(g: &Conv2dGeometry) -> usize {
    (COL_BUDGET / (g.col_rows() * g.out_pixels()).max(1)).clamp(1, g.batch.max(1))
}

/// Splits `len` columns into blocks (multiples of `align`) so that
/// `count · blocks` tasks keep every thread busy.
fn column_block(len: usize, count: usize, align: usize) -> usize {
    let tasks_wanted = 4 * rayon::current_num_threads();
    let per_item = tasks_wanted.div_ceil(count.max(1));
    len.div_ceil(per_item).next_multiple_of(align).max(align)
}

/// im2col of the images `[n0, n0 + count)` into `col` (`[count][K][P]`),
/// split over (image, channel); each task goes through the channel's
/// phases (a few KiB, reused per thread).
fn im2col_group<T: ConvFloat>(g: &Conv2dGeometry, x: &[T], n0: usize, count: usize, col: &mut [T]) {
    let (c, hw) = (g.in_channels, g.in_h * g.in_w);
    let rows_per_channel = g.kernel_h * g.kernel_w * g.out_pixels();
    let ph = im2col::Phases::new(g);
    col[..count * c * rows_per_channel]
        .par_chunks_mut(rows_per_channel)
        .enumerate()
        .for_each_init(Vec::new, |phases, (i, rows)| {
            let (n, ci) = (n0 + i / c, i % c);
            phases.resize(ph.channel_len(g), T::ZERO);
            ph.split_channel(g, &x[(n * c + ci) * hw..][..hw], phases);
            im2col::im2col_channel(g, &ph, phases, rows);
        });
}

/// The column matrix of image `i` of a group: `col` itself, or the input
/// for a pointwise convolution.
fn column_matrix<'a, T>(
    g: &Conv2dGeometry,
    col: &'a [T],
    x: &'a [T],
    n: usize,
    i: usize,
) -> &'a [T] {
    let len = g.col_rows() * g.out_pixels();
    if g.is_pointwise() {
        &x[n * len..][..len]
    } else {
        &col[i * len..][..len]
    }
}

/// Per image, `Y_n = W · col(X_n)` (+ bias), split over (image, column
/// block). Each task packs its patches straight from the image: for each
/// k-slice of the GEMM it splits the slice's input channels into
/// [`im2col::Phases`] (a small buffer that stays in cache) and copies the
/// patches from there, so no im2col matrix is ever stored.
fn gemm_forward<T: ConvFloat>(
    g: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    let (k, o, p) = (g.col_rows(), g.out_channels, g.out_pixels());
    let (chw, hw) = (g.in_channels * g.in_h * g.in_w, g.in_h * g.in_w);
    let taps = g.kernel_h * g.kernel_w;
    let wa = PackedA::new(Mat::row_major(w, k), o, k);
    if let Some(b) = bias {
        y.par_chunks_mut(p)
            .enumerate()
            .for_each(|(i, row)| row.fill(b[i % o]));
    }
    let ph = im2col::Phases::new(g);
    let y_ptr = SharedPtr(y.as_mut_ptr());
    let block = column_block(p, g.batch, wa.nr());
    let blocks = p.div_ceil(block);
    (0..g.batch * blocks).into_par_iter().for_each(|task| {
        let (n, j0) = (task / blocks, (task % blocks) * block);
        let cols = block.min(p - j0);
        let image = &x[n * chw..][..chw];
        let c = MatPtr {
            // SAFETY: columns [j0, j0 + cols) of image n.
            ptr: unsafe { y_ptr.at(n * o * p + j0) },
            rs: p,
            cs: 1,
        };
        let add = bias.is_some();
        if g.is_pointwise() {
            let b = Mat {
                data: &image[j0..],
                rs: p,
                cs: 1,
            };
            // SAFETY: each task writes its own column block of one image.
            unsafe { wa.gemm(b, cols, c, add) };
            return;
        }
        // Phases of the channels under the current k-slice, rebuilt when
        // the GEMM moves to the next slice.
        let mut phases: Vec<T> = Vec::new();
        let mut split = (usize::MAX, 0);
        let pack = |p0: usize, kc: usize, jb: usize, cols: usize, out: &mut [T]| {
            let channels = (p0 / taps, (p0 + kc).div_ceil(taps));
            if split != channels {
                let len = ph.channel_len(g);
                phases.resize((channels.1 - channels.0) * len, T::ZERO);
                for (ci, dst) in (channels.0..channels.1).zip(phases.chunks_exact_mut(len)) {
                    ph.split_channel(g, &image[ci * hw..][..hw], dst);
                }
                split = channels;
            }
            let row0 = p0 - channels.0 * taps;
            im2col::pack_patch_slice(g, &ph, &phases, (row0, j0 + jb, cols), wa.nr(), out);
        };
        // SAFETY: each task writes its own column block of one image.
        unsafe { wa.gemm_packing(cols, pack, c, add) };
    });
}

fn gemm_backward_input<T: ConvFloat>(g: &Conv2dGeometry, dy: &[T], w: &[T], dx: &mut [T]) {
    let (k, o, p) = (g.col_rows(), g.out_channels, g.out_pixels());
    let chw = g.in_channels * g.in_h * g.in_w;
    // Wᵀ: K×O, read in place from the O×K weights.
    let wt = PackedA::new(Mat::transposed(w, k), k, o);
    let group = images_per_group(g);
    let mut col = Buffer::new(if g.is_pointwise() { 0 } else { group * k * p });
    let block = column_block(p, group, 32);
    for n0 in (0..g.batch).step_by(group) {
        let count = group.min(g.batch - n0);
        // dcol_n = Wᵀ · dY_n (straight into dx for a pointwise kernel).
        let (out_ptr, out_stride) = if g.is_pointwise() {
            (SharedPtr(dx[n0 * chw..].as_mut_ptr()), chw)
        } else {
            (SharedPtr(col.as_mut_ptr()), k * p)
        };
        let blocks = p.div_ceil(block);
        (0..count * blocks).into_par_iter().for_each(|task| {
            let (i, j0) = (task / blocks, (task % blocks) * block);
            let cols = block.min(p - j0);
            let b = Mat {
                data: &dy[(n0 + i) * o * p + j0..],
                rs: p,
                cs: 1,
            };
            let c = MatPtr {
                // SAFETY: columns [j0, j0 + cols) of image i's K×P matrix.
                ptr: unsafe { out_ptr.at(i * out_stride + j0) },
                rs: p,
                cs: 1,
            };
            // SAFETY: each task writes its own column block of one image.
            unsafe { wt.gemm(b, cols, c, false) };
        });
        if !g.is_pointwise() {
            let (c, hw) = (g.in_channels, g.in_h * g.in_w);
            let rows = g.kernel_h * g.kernel_w * p;
            let ph = im2col::Phases::new(g);
            dx[n0 * chw..(n0 + count) * chw]
                .par_chunks_mut(hw)
                .enumerate()
                .for_each_init(Vec::new, |phases, (i, dx_plane)| {
                    let src = &col[(i / c) * k * p + (i % c) * rows..][..rows];
                    phases.clear();
                    phases.resize(ph.channel_len(g), T::ZERO);
                    im2col::col2im_channel(g, &ph, src, phases);
                    ph.merge_channel(g, phases, dx_plane);
                });
        }
    }
}

fn gemm_backward_weight<T: ConvFloat>(g: &Conv2dGeometry, x: &[T], dy: &[T], dw: &mut [T]) {
    let (k, o, p) = (g.col_rows(), g.out_channels, g.out_pixels());
    let group = images_per_group(g);
    let mut col = Buffer::new(if g.is_pointwise() { 0 } else { group * k * p });
    let dw_ptr = SharedPtr(dw.as_mut_ptr());
    let block = column_block(k, 1, 32);
    for n0 in (0..g.batch).step_by(group) {
        let count = group.min(g.batch - n0);
        if !g.is_pointwise() {
            im2col_group(g, x, n0, count, &mut col);
        }
        // dY_n (O×P) is the left operand for every weight-column block.
        let dys: Vec<PackedA<T>> = (0..count)
            .into_par_iter()
            .map(|i| PackedA::new(Mat::row_major(&dy[(n0 + i) * o * p..][..o * p], p), o, p))
            .collect();
        (0..k.div_ceil(block)).into_par_iter().for_each(|bi| {
            let j0 = bi * block;
            let cols = block.min(k - j0);
            let c = MatPtr {
                // SAFETY: columns [j0, j0 + cols) of dW.
                ptr: unsafe { dw_ptr.at(j0) },
                rs: k,
                cs: 1,
            };
            for (i, dya) in dys.iter().enumerate() {
                // B = col_nᵀ restricted to columns [j0, j0 + cols): P×cols.
                let colm = column_matrix(g, &col, x, n0 + i, i);
                let b = Mat {
                    data: &colm[j0 * p..],
                    rs: 1,
                    cs: p,
                };
                // SAFETY: this task alone writes dW's columns [j0, j0 + cols).
                unsafe { dya.gemm(b, cols, c, n0 + i > 0) };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::reference;

    fn values(n: usize, seed: u64) -> Vec<f64> {
        crate::test_data::uniform(n, seed)
    }

    fn geometries() -> Vec<Conv2dGeometry> {
        let g = |batch, in_channels, in_h, in_w, out_channels, k, stride, padding| Conv2dGeometry {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h: k,
            kernel_w: k,
            stride,
            padding,
        };
        vec![
            g(2, 3, 5, 7, 5, 3, 1, 1),
            g(2, 4, 6, 6, 3, 3, 1, 0),
            g(1, 3, 5, 4, 2, 3, 1, 2),
            g(2, 3, 7, 5, 4, 3, 2, 1),
            g(2, 5, 4, 6, 7, 1, 1, 0),
            g(1, 2, 6, 5, 3, 5, 1, 2),
            g(3, 2, 9, 8, 3, 2, 3, 1),
            g(1, 9, 3, 3, 40, 3, 1, 1),
        ]
    }

    /// Every element of y, dx, dw and db against the definition's loops
    /// ([`super::super::reference`]), for both algorithms.
    #[test]
    fn both_algorithms_match_the_reference_forward_and_backward() {
        let close = |what: &str, got: &[f64], want: &[f64]| {
            assert_eq!(got.len(), want.len(), "{what}");
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!((a - b).abs() < 1e-11, "{what}[{i}]: {a} vs {b}");
            }
        };
        for g in geometries() {
            let x = values(g.input_len(), 1);
            let w = values(g.weight_len(), 2);
            let b = values(g.out_channels, 4);
            let dy = values(g.output_len(), 3);
            let want_y = reference::forward(&g, &x, &w, Some(&b));
            let (want_dx, want_dw, want_db) = reference::backward(&g, &x, &w, &dy);
            for algo in [Algorithm::Gemm, Algorithm::Winograd] {
                if !algo.supports(&g) {
                    continue;
                }
                let mut y = vec![0.0; g.output_len()];
                let mut dx = vec![0.0; g.input_len()];
                let mut dw = vec![0.0; g.weight_len()];
                let mut db = vec![0.0; g.out_channels];
                conv2d_forward_with(algo, &g, &x, &w, Some(&b), &mut y);
                conv2d_backward_input_with(algo, &g, &dy, &w, &mut dx);
                conv2d_backward_weight_with(algo, &g, &x, &dy, &mut dw);
                conv2d_backward_bias(&g, &dy, &mut db);
                close(&format!("{algo:?} {g:?}: y"), &y, &want_y);
                close(&format!("{algo:?} {g:?}: dx"), &dx, &want_dx);
                close(&format!("{algo:?} {g:?}: dw"), &dw, &want_dw);
                close(&format!("{algo:?} {g:?}: db"), &db, &want_db);
            }
        }
    }

    /// The reference itself: its backward is the adjoint of its forward,
    /// ⟨conv(x, w), r⟩ = ⟨x, dx(r)⟩ = ⟨w, dw(r)⟩, and one coordinate of w
    /// moved by 1 changes ⟨y, r⟩ by that coordinate of dw (y is linear in w).
    #[test]
    fn the_reference_backward_is_the_adjoint_of_its_forward() {
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
        for g in geometries() {
            let (x, w, r) = (
                values(g.input_len(), 1),
                values(g.weight_len(), 2),
                values(g.output_len(), 3),
            );
            let yr = dot(&reference::forward(&g, &x, &w, None), &r);
            let (dx, dw, _) = reference::backward(&g, &x, &w, &r);
            assert!((dot(&x, &dx) - yr).abs() < 1e-10, "{g:?}: dx adjoint");
            assert!((dot(&w, &dw) - yr).abs() < 1e-10, "{g:?}: dw adjoint");
            for (idx, &d) in dw.iter().enumerate().step_by(7) {
                let mut w2 = w.clone();
                w2[idx] += 1.0;
                let diff = dot(&reference::forward(&g, &x, &w2, None), &r) - yr;
                assert!((diff - d).abs() < 1e-9, "{g:?}: dw[{idx}] {d} vs {diff}");
            }
        }
    }

    #[test]
    fn bias_is_added_and_summed() {
        let g = geometries()[0];
        let x = values(g.input_len(), 4);
        let w = values(g.weight_len(), 5);
        let b = values(g.out_channels, 6);
        let mut y0 = vec![0.0; g.output_len()];
        let mut y1 = vec![0.0; g.output_len()];
        conv2d_forward(&g, &x, &w, None, &mut y0);
        conv2d_forward(&g, &x, &w, Some(&b), &mut y1);
        let p = g.out_h() * g.out_w();
        for (i, (a, c)) in y0.iter().zip(&y1).enumerate() {
            assert!((c - a - b[(i / p) % g.out_channels]).abs() < 1e-12);
        }
        let mut db = vec![0.0; g.out_channels];
        conv2d_backward_bias(&g, &y0, &mut db);
        for (o, d) in db.iter().enumerate() {
            let s: f64 = (0..g.batch)
                .flat_map(|n| y0[(n * g.out_channels + o) * p..][..p].iter())
                .sum();
            assert!((d - s).abs() < 1e-12);
        }
    }
}
