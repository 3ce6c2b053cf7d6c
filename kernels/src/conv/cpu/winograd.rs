//! Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions.
//!
//! The output is cut into 2×2 tiles; tile t of output channel o is
//!
//! ```text
//! Y_t[o] = Aᵀ [ Σ_c U[o,c] ⊙ V_t[c] ] A,   U[o,c] = G g[o,c] Gᵀ,   V_t[c] = Bᵀ d_t[c] B
//! ```
//!
//! with `d_t[c]` the 4×4 input patch under the tile. For each of the 16
//! positions ξ of the 4×4 transformed domain the sum over c is one matrix
//! product `M_ξ[O×T] = U_ξ[O×C] · V_ξ[C×T]` over the T tiles of a chunk, so
//! the work is 16 GEMMs of depth C instead of one of depth 9C: 16 multiplies
//! per 4 outputs instead of 36 (2.25× fewer). The transforms only add and
//! subtract (G has halves), so rounding stays within a few ulps of direct
//! convolution.
//!
//! Backward:
//! - input: the gradient of a stride-1 convolution is the stride-1
//!   convolution of dY with the flipped, channel-transposed kernel and
//!   padding 2 − pad, run through the same forward path;
//! - weight: with `dM_t = A dY_t Aᵀ` (the adjoint of the output transform),
//!   `dU_ξ[O×C] = Σ_t dM_ξ[O×T] · V_ξ[C×T]ᵀ` (16 GEMMs of depth T) and
//!   `dg = Gᵀ dU G`.
//!
//! Tiles are processed in chunks of whole tile rows (about `CHUNK_TILES`
//! tiles) so the transformed buffers stay in cache; each chunk runs three
//! stages, each split over rayon: input transform (per channel), the 16
//! GEMMs (per ξ), output transform (per output channel).

use super::Conv2dGeometry;
use crate::cpu::simd::{self, Isa};
use crate::gemm::packed::{ALIGN, Buffer, GemmFloat, Mat, MatPtr, PackedA, SharedPtr, aligned};
use rayon::prelude::*;

/// Tiles per chunk: V (C·16·T) and M (O·16·T) stay within L3 and each
/// per-ξ product (C×T and O×T) within L2 for C, O ≤ 256.
const CHUNK_TILES: usize = 256;

/// The 2×2 output tiles of a convolution, counted over the whole batch:
/// tile row `r = n·th + ty`, tile `r·tw + tx`.
#[derive(Clone, Copy, Debug)]
struct Tiling {
    th: usize,
    tw: usize,
    rows_per_chunk: usize,
}

impl Tiling {
    fn new(g: &Conv2dGeometry) -> Self {
        let (th, tw) = (g.out_h().div_ceil(2), g.out_w().div_ceil(2));
        let rows_per_chunk = (CHUNK_TILES / tw.max(1)).clamp(1, (g.batch * th).max(1));
        Tiling {
            th,
            tw,
            rows_per_chunk,
        }
    }

    /// `(first tile row, tile rows)` of each chunk.
    fn chunks(&self, batch: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (total, step) = (batch * self.th, self.rows_per_chunk);
        (0..total)
            .step_by(step)
            .map(move |r0| (r0, step.min(total - r0)))
    }

    fn max_tiles(&self) -> usize {
        self.rows_per_chunk * self.tw
    }
}

/// Lanes processed together by the weight transforms: 8 (o, c) pairs at
/// once, so each step below is one 8-wide vector operation.
const LANES: usize = 8;

type Lanes<T> = [T; LANES];

/// G·v for 8 lanes at once, G = [[1,0,0],[½,½,½],[½,−½,½],[0,0,1]]:
/// `out[r][l] = (G·(v0[l], v1[l], v2[l]))[r]`.
#[inline(always)]
fn g_lanes<T: GemmFloat>(v0: &Lanes<T>, v1: &Lanes<T>, v2: &Lanes<T>, out: [&mut Lanes<T>; 4]) {
    let half = T::from_f64(0.5);
    let [o0, o1, o2, o3] = out;
    for l in 0..LANES {
        o0[l] = v0[l];
        o1[l] = (v0[l] + v1[l] + v2[l]) * half;
        o2[l] = (v0[l] - v1[l] + v2[l]) * half;
        o3[l] = v2[l];
    }
}

/// Gᵀ·u for 8 lanes at once: (u0 + (u1+u2)/2, (u1−u2)/2, (u1+u2)/2 + u3).
#[inline(always)]
fn gt_lanes<T: GemmFloat>(u: [&Lanes<T>; 4], out: [&mut Lanes<T>; 3]) {
    let half = T::from_f64(0.5);
    let [o0, o1, o2] = out;
    for l in 0..LANES {
        let (u0, u1, u2, u3) = (u[0][l], u[1][l], u[2][l], u[3][l]);
        o0[l] = u0 + (u1 + u2) * half;
        o1[l] = (u1 - u2) * half;
        o2[l] = (u1 + u2) * half + u3;
    }
}

/// Mutable references to four distinct rows of `rows` (increasing indices).
#[inline(always)]
fn rows4<T>(rows: &mut [Lanes<T>], at: [usize; 4]) -> [&mut Lanes<T>; 4] {
    let [a, b, c, d] = at;
    let (x, rest) = rows.split_at_mut(b);
    let (y, rest) = rest.split_at_mut(c - b);
    let (z, w) = rest.split_at_mut(d - c);
    [&mut x[a], &mut y[0], &mut z[0], &mut w[0]]
}

/// U = G g Gᵀ for 8 kernels at once: `k[tap][lane]` (taps row-major) to
/// `u[ξ][lane]`, ξ = 4a + b.
#[inline(always)]
fn transform_kernels<T: GemmFloat>(k: &[Lanes<T>; 9], u: &mut [Lanes<T>; 16]) {
    // G·g (4×3): column j of g → column j of gg, stored gg[3a + j].
    let mut gg = [[T::ZERO; LANES]; 12];
    for j in 0..3 {
        let out = rows4(&mut gg, [j, 3 + j, 6 + j, 9 + j]);
        g_lanes(&k[j], &k[3 + j], &k[6 + j], out);
    }
    // (G·g)·Gᵀ (4×4): row a of gg → row a of u.
    for a in 0..4 {
        let out = rows4(u, [4 * a, 4 * a + 1, 4 * a + 2, 4 * a + 3]);
        g_lanes(&gg[3 * a], &gg[3 * a + 1], &gg[3 * a + 2], out);
    }
}

/// dg = Gᵀ dU G for 8 kernels at once: `du[ξ][lane]` to `dg[tap][lane]`.
#[inline(always)]
fn inverse_transform_kernels<T: GemmFloat>(du: &[Lanes<T>; 16], dg: &mut [Lanes<T>; 9]) {
    // dU·G (4×3): row a of dU → row a of t, stored t[3a + j].
    let mut t = [[T::ZERO; LANES]; 12];
    for a in 0..4 {
        let (x, rest) = t.split_at_mut(3 * a + 1);
        let (y, z) = rest.split_at_mut(1);
        let r = [&du[4 * a], &du[4 * a + 1], &du[4 * a + 2], &du[4 * a + 3]];
        gt_lanes(r, [&mut x[3 * a], &mut y[0], &mut z[0]]);
    }
    // Gᵀ·(dU·G) (3×3): column j of t → column j of dg.
    for j in 0..3 {
        let (x, rest) = dg.split_at_mut(3 + j);
        let (y, z) = rest.split_at_mut(3);
        let c = [&t[j], &t[3 + j], &t[6 + j], &t[9 + j]];
        gt_lanes(c, [&mut x[j], &mut y[0], &mut z[0]]);
    }
}

/// The 8-lane weight transforms for f32 with explicit AVX2 (the compiler
/// does not vectorise the generic versions well: 8 lanes are exactly one
/// register, and these run for every (o, c) pair of every 3×3 layer, in
/// the forward pass and in both gradients).
#[cfg(target_arch = "x86_64")]
mod lanes_avx2 {
    use super::Lanes;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn g(v0: __m256, v1: __m256, v2: __m256, half: __m256) -> [__m256; 4] {
        // SAFETY: only reached from the AVX2 functions below.
        unsafe {
            let s = _mm256_add_ps(v0, v2);
            [
                v0,
                _mm256_mul_ps(_mm256_add_ps(s, v1), half),
                _mm256_mul_ps(_mm256_sub_ps(s, v1), half),
                v2,
            ]
        }
    }

    #[inline(always)]
    fn gt(u: [__m256; 4], half: __m256) -> [__m256; 3] {
        // SAFETY: only reached from the AVX2 functions below.
        unsafe {
            let s = _mm256_mul_ps(_mm256_add_ps(u[1], u[2]), half);
            [
                _mm256_add_ps(u[0], s),
                _mm256_mul_ps(_mm256_sub_ps(u[1], u[2]), half),
                _mm256_add_ps(s, u[3]),
            ]
        }
    }

    /// See [`super::transform_kernels`].
    #[target_feature(enable = "avx2,fma")]
    pub fn transform_kernels(k: &[Lanes<f32>; 9], u: &mut [Lanes<f32>; 16]) {
        let half = _mm256_set1_ps(0.5);
        // SAFETY: every array is 8 f32 long.
        unsafe {
            let ld = |i: usize| _mm256_loadu_ps(k[i].as_ptr());
            let cols = [
                g(ld(0), ld(3), ld(6), half),
                g(ld(1), ld(4), ld(7), half),
                g(ld(2), ld(5), ld(8), half),
            ];
            for a in 0..4 {
                let row = g(cols[0][a], cols[1][a], cols[2][a], half);
                for (b, v) in row.into_iter().enumerate() {
                    _mm256_storeu_ps(u[4 * a + b].as_mut_ptr(), v);
                }
            }
        }
    }

    /// The forward transform of 8 output channels at once for every input
    /// channel: `rows[l]` holds the c·9 taps of output channel l, and
    /// `out[ξ] + ci·step` receives U[ξ] for the 8 channels (8 contiguous
    /// values: one packed A panel row). Per input channel: 8 row loads, one
    /// 8×8 register transpose (taps 0..8) and a gather of tap 8.
    ///
    /// # Safety
    /// `out[ξ] + ci·step .. + 8` must be writable for every ci < c, and
    /// only by this call.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn transform_group(rows: [&[f32]; 8], c: usize, out: &[*mut f32; 16], step: usize) {
        let half = _mm256_set1_ps(0.5);
        for row in &rows {
            assert!(row.len() >= c * 9, "transform_group: short row");
        }
        for ci in 0..c {
            let at = ci * 9;
            // SAFETY: at + 9 ≤ c·9 ≤ each row's length; out as promised.
            unsafe {
                let r: [__m256; 8] =
                    std::array::from_fn(|l| _mm256_loadu_ps(rows[l].as_ptr().add(at)));
                let k = crate::gemm::packed::x86::transpose8x8(r);
                let k8 = _mm256_setr_ps(
                    rows[0][at + 8],
                    rows[1][at + 8],
                    rows[2][at + 8],
                    rows[3][at + 8],
                    rows[4][at + 8],
                    rows[5][at + 8],
                    rows[6][at + 8],
                    rows[7][at + 8],
                );
                let cols = [
                    g(k[0], k[3], k[6], half),
                    g(k[1], k[4], k[7], half),
                    g(k[2], k[5], k8, half),
                ];
                for a in 0..4 {
                    let row = g(cols[0][a], cols[1][a], cols[2][a], half);
                    for (b, v) in row.into_iter().enumerate() {
                        _mm256_storeu_ps(out[4 * a + b].add(ci * step), v);
                    }
                }
            }
        }
    }

    /// The weight-gradient transform of one output channel for 8 input
    /// channels at a time: `du[ξ]` holds dU[ξ][o][0..c]; `dw` (c·9) gets
    /// Gᵀ dU G per input channel. Returns how many channels it did (a
    /// multiple of 8; the caller finishes the rest).
    #[target_feature(enable = "avx2,fma")]
    pub fn inverse_group(du: [&[f32]; 16], c: usize, dw: &mut [f32]) -> usize {
        let half = _mm256_set1_ps(0.5);
        let done = c / 8 * 8;
        assert!(
            dw.len() >= c * 9 && du.iter().all(|r| r.len() >= c),
            "inverse_group: short rows"
        );
        for c0 in (0..done).step_by(8) {
            // SAFETY: c0 + 8 ≤ c; dw holds c·9 elements.
            unsafe {
                let ld = |xi: usize| _mm256_loadu_ps(du[xi].as_ptr().add(c0));
                let rows: [[__m256; 3]; 4] = std::array::from_fn(|a| {
                    gt(
                        [ld(4 * a), ld(4 * a + 1), ld(4 * a + 2), ld(4 * a + 3)],
                        half,
                    )
                });
                let cols: [[__m256; 3]; 3] = std::array::from_fn(|j| {
                    gt([rows[0][j], rows[1][j], rows[2][j], rows[3][j]], half)
                });
                // taps[tap] for the 8 channels, tap = 3i + j.
                let taps: [__m256; 9] = std::array::from_fn(|tap| cols[tap % 3][tap / 3]);
                let first8 =
                    crate::gemm::packed::x86::transpose8x8(std::array::from_fn(|t| taps[t]));
                let mut last = [0f32; 8];
                _mm256_storeu_ps(last.as_mut_ptr(), taps[8]);
                for l in 0..8 {
                    let k = dw.as_mut_ptr().add((c0 + l) * 9);
                    _mm256_storeu_ps(k, first8[l]);
                    *k.add(8) = last[l];
                }
            }
        }
        done
    }

    /// See [`super::inverse_transform_kernels`].
    #[target_feature(enable = "avx2,fma")]
    pub fn inverse_transform_kernels(du: &[Lanes<f32>; 16], dg: &mut [Lanes<f32>; 9]) {
        let half = _mm256_set1_ps(0.5);
        // SAFETY: every array is 8 f32 long.
        unsafe {
            let ld = |i: usize| _mm256_loadu_ps(du[i].as_ptr());
            let rows: [[__m256; 3]; 4] = std::array::from_fn(|a| {
                gt(
                    [ld(4 * a), ld(4 * a + 1), ld(4 * a + 2), ld(4 * a + 3)],
                    half,
                )
            });
            for j in 0..3 {
                let col = gt([rows[0][j], rows[1][j], rows[2][j], rows[3][j]], half);
                for (i, v) in col.into_iter().enumerate() {
                    _mm256_storeu_ps(dg[3 * i + j].as_mut_ptr(), v);
                }
            }
        }
    }
}

/// `x` as f32 lanes when T is f32 (for the AVX2 paths above).
fn f32_lanes<T: 'static, const N: usize>(x: &[Lanes<T>; N]) -> Option<&[Lanes<f32>; N]> {
    // SAFETY: T is f32, so the types are identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &*(x as *const [Lanes<T>; N] as *const [Lanes<f32>; N]) })
}

fn f32_lanes_mut<T: 'static, const N: usize>(
    x: &mut [Lanes<T>; N],
) -> Option<&mut [Lanes<f32>; N]> {
    // SAFETY: T is f32, so the types are identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { &mut *(x as *mut [Lanes<T>; N] as *mut [Lanes<f32>; N]) })
}

/// `x` as f32 when T is f32.
fn f32_slice<T: 'static>(x: &[T]) -> Option<&[f32]> {
    // SAFETY: T is f32, so the types are identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

fn f32_slice_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    // SAFETY: T is f32, so the types are identical.
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// [`transform_kernels`], with the AVX2 version for f32 when the CPU has it.
#[inline(always)]
fn transform_kernels_fast<T: GemmFloat>(avx2: bool, k: &[Lanes<T>; 9], u: &mut [Lanes<T>; 16]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && let (Some(k), Some(u)) = (f32_lanes(k), f32_lanes_mut(u)) {
        // SAFETY: `avx2` is only true when the CPU has AVX2 and FMA.
        return unsafe { lanes_avx2::transform_kernels(k, u) };
    }
    let _ = avx2;
    transform_kernels(k, u)
}

/// [`inverse_transform_kernels`], with the AVX2 version for f32 when the CPU has it.
#[inline(always)]
fn inverse_transform_kernels_fast<T: GemmFloat>(
    avx2: bool,
    du: &[Lanes<T>; 16],
    dg: &mut [Lanes<T>; 9],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 && let (Some(du), Some(dg)) = (f32_lanes(du), f32_lanes_mut(dg)) {
        // SAFETY: `avx2` is only true when the CPU has AVX2 and FMA.
        return unsafe { lanes_avx2::inverse_transform_kernels(du, dg) };
    }
    let _ = avx2;
    inverse_transform_kernels(du, dg)
}

/// U[ξ][o][c] = (G g[o,c] Gᵀ)[ξ], written straight into one packed GEMM
/// operand per ξ (padding rows zero), split over groups of 8 output
/// channels (the 8 lanes).
fn transform_weights<T: GemmFloat>(o: usize, c: usize, w: &[T]) -> Vec<PackedA<T>> {
    let mut u: Vec<PackedA<T>> = (0..16).map(|_| PackedA::for_filling(o, c)).collect();
    let padded_rows = o.next_multiple_of(u[0].mr());
    let bases: [SharedPtr<T>; 16] = {
        let mut it = u.iter_mut();
        std::array::from_fn(|_| {
            SharedPtr(it.next().expect("16 operands").packed_mut().as_mut_ptr())
        })
    };
    let u0 = &u[0];
    (0..padded_rows.div_ceil(LANES))
        .into_par_iter()
        .for_each(|group| {
            let o0 = group * LANES;
            let rows = LANES.min(padded_rows - o0);
            let real = LANES.min(o.saturating_sub(o0));
            // With 8-row panels a group's 8 rows are one contiguous run per ξ.
            let contiguous = rows == LANES
                && u0.packed_index(o0 + LANES - 1, 0) == u0.packed_index(o0, 0) + LANES - 1;
            let avx2 = use_avx2();
            #[cfg(target_arch = "x86_64")]
            if avx2
                && contiguous
                && real == LANES
                && let Some(w32) = f32_slice(w)
            {
                let rows: [&[f32]; 8] = std::array::from_fn(|l| &w32[(o0 + l) * c * 9..][..c * 9]);
                let first = u0.packed_index(o0, 0);
                let out: [*mut f32; 16] = std::array::from_fn(|xi| {
                    // SAFETY: `first` is inside every packed buffer.
                    unsafe { bases[xi].at(first) as *mut f32 }
                });
                // SAFETY: AVX2 is available; rows o0..o0+8 of every
                // packed buffer (mr apart per input channel) belong to
                // this task.
                return unsafe { lanes_avx2::transform_group(rows, c, &out, u0.mr()) };
            }
            {
                let mut k = [[T::ZERO; LANES]; 9];
                let mut vals = [[T::ZERO; LANES]; 16];
                for ci in 0..c {
                    for l in 0..real {
                        let src = &w[((o0 + l) * c + ci) * 9..][..9];
                        for (tap, &v) in src.iter().enumerate() {
                            k[tap][l] = v;
                        }
                    }
                    transform_kernels_fast(avx2, &k, &mut vals);
                    let first = u0.packed_index(o0, ci);
                    for (base, v) in bases.iter().zip(&vals) {
                        // SAFETY: every index written is inside every packed
                        // buffer (all are padded_rows × c) and only this group's
                        // task writes rows o0 .. o0 + rows.
                        unsafe {
                            if contiguous {
                                std::ptr::copy_nonoverlapping(v.as_ptr(), base.at(first), LANES);
                            } else {
                                for (l, &x) in v.iter().enumerate().take(rows) {
                                    *base.at(u0.packed_index(o0 + l, ci)) = x;
                                }
                            }
                        }
                    }
                }
            }
        });
    u
}

/// dw[o][c] = Gᵀ dU[·][o][c] G for `du` laid out `[16][O][C]`, split over
/// output channels, 8 input channels (lanes) at a time.
fn inverse_transform_weights<T: GemmFloat>(o: usize, c: usize, du: &[T], dw: &mut [T]) {
    let avx2 = use_avx2();
    dw.par_chunks_mut(c * 9)
        .enumerate()
        .for_each(|(oi, dw_row)| {
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if avx2 && let (Some(du32), Some(dw32)) = (f32_slice(du), f32_slice_mut(dw_row)) {
                let rows: [&[f32]; 16] =
                    std::array::from_fn(|xi| &du32[xi * o * c + oi * c..][..c]);
                // SAFETY: AVX2 is available.
                done = unsafe { lanes_avx2::inverse_group(rows, c, dw32) };
            }
            let mut u = [[T::ZERO; LANES]; 16];
            let mut g = [[T::ZERO; LANES]; 9];
            for c0 in (done..c).step_by(LANES) {
                let n = LANES.min(c - c0);
                for (xi, lanes) in u.iter_mut().enumerate() {
                    let src = &du[xi * o * c + oi * c + c0..][..n];
                    match <&Lanes<T>>::try_from(src) {
                        Ok(full) => *lanes = *full,
                        Err(_) => lanes[..n].copy_from_slice(src),
                    }
                }
                inverse_transform_kernels_fast(avx2, &u, &mut g);
                for (l, k) in dw_row[c0 * 9..(c0 + n) * 9].chunks_exact_mut(9).enumerate() {
                    for (tap, v) in k.iter_mut().enumerate() {
                        *v = g[tap][l];
                    }
                }
            }
        });
}

/// Splits `buf` into `N` consecutive slices of `len`.
#[inline(always)]
fn split_n<T, const N: usize>(buf: &mut [T], len: usize) -> [&mut [T]; N] {
    let mut it = buf.chunks_exact_mut(len);
    std::array::from_fn(|_| it.next().expect("buffer holds N slices"))
}

// Elementwise loops over equal-length slices. Passing the output and the
// inputs as separate slice arguments tells the compiler they do not
// overlap, which is what lets these loops vectorise.
#[inline(always)]
fn map2<T: Copy>(out: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

#[inline(always)]
fn map3<T: Copy>(out: &mut [T], a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) {
    for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = f(x, y, z);
    }
}

/// Where the input transform writes position ξ of tile t:
/// `ptr + ξ·xi_stride + (t / run)·run_stride + t % run`, i.e. runs of `run`
/// consecutive tiles (the GEMM's packed-B panels, or one run per row).
#[derive(Clone, Copy)]
struct VDest<T> {
    ptr: *mut T,
    xi_stride: usize,
    run: usize,
    run_stride: usize,
}

/// Splits one input row into the even and odd columns of its zero-padded
/// version: padded column j = iw + pad goes to `even[j/2]` (j even) or
/// `odd[j/2]` (j odd). The loop reads interleaved pairs, which compiles to
/// vector shuffles; every later step then runs on unit-stride vectors.
/// Only the positions of input columns are written: the padding positions
/// are the same for every row and stay zero.
#[inline(always)]
fn split_padded_row<T: GemmFloat>(row: &[T], pad: usize, even: &mut [T], odd: &mut [T]) {
    // Input columns 2m and 2m + 1 land in padded columns 2m + pad and
    // 2m + 1 + pad: the same parity as pad, then the other.
    let (first, second, at0, at1) = if pad.is_multiple_of(2) {
        (even, odd, pad / 2, pad / 2)
    } else {
        (odd, even, pad / 2, pad / 2 + 1)
    };
    let pairs = row.len() / 2;
    let (a, b) = (&mut first[at0..at0 + pairs], &mut second[at1..at1 + pairs]);
    for ((x, y), pair) in a.iter_mut().zip(b.iter_mut()).zip(row.chunks_exact(2)) {
        *x = pair[0];
        *y = pair[1];
    }
    if row.len() % 2 == 1 {
        first[at0 + pairs] = row[row.len() - 1];
    }
}

/// V = Bᵀ d B for one input channel over the tiles of a chunk, with
/// Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]].
///
/// Per tile row: the 4 input rows under it are split into even and odd
/// padded columns; Bᵀ combines the 4 rows (vectors over columns); then tile
/// tx needs columns 2tx .. 2tx + 4 = even[tx], odd[tx], even[tx+1],
/// odd[tx+1], so B on the right is 16 vector operations over the row's
/// tiles, written straight to `dest`. `scratch` is reused across calls.
///
/// # Safety
/// `dest` must address, for every tile of the chunk and every ξ, an element
/// that only this call writes.
#[inline(always)]
unsafe fn input_transform_body<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dest: VDest<T>,
) {
    let (h, w, p, tw) = (g.in_h, g.in_w, g.padding, tl.tw);
    // Padded columns 0 .. 2tw + 2: k even and k odd ones (≥ W + 2p in all).
    let k = tw + 1;
    scratch.clear();
    scratch.resize(16 * k, T::ZERO);
    let (split, d) = scratch.split_at_mut(8 * k);
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let x = plane(n);
        // split[2q], split[2q + 1]: even and odd columns of input row q.
        for (q, eo) in split.chunks_exact_mut(2 * k).enumerate() {
            let (even, odd) = eo.split_at_mut(k);
            match (2 * ty + q).checked_sub(p).filter(|&ih| ih < h) {
                Some(ih) => split_padded_row(&x[ih * w..][..w], p, even, odd),
                // A row of padding: zero everything (input rows overwrite
                // only their own positions afterwards).
                None => {
                    even.fill(T::ZERO);
                    odd.fill(T::ZERO);
                }
            }
        }
        // Bᵀ on the left: d[2a + parity] = row a of Bᵀ·(rows 0..4).
        let rows4 = |parity: usize| -> [&[T]; 4] {
            std::array::from_fn(|q| &split[(2 * q + parity) * k..][..k])
        };
        for parity in 0..2 {
            let [x0, x1, x2, x3] = rows4(parity);
            let [d0, d1, d2, d3]: [&mut [T]; 4] = {
                let mut it = d.chunks_exact_mut(k).skip(parity).step_by(2);
                std::array::from_fn(|_| it.next().expect("4 rows"))
            };
            map2(d0, x0, x2, |a, b| a - b);
            map2(d1, x1, x2, |a, b| a + b);
            map2(d2, x2, x1, |a, b| a - b);
            map2(d3, x1, x3, |a, b| a - b);
        }
        // B on the right, per tile: (e0 − e1, o0 + e1, e1 − o0, o0 − o1).
        let mut t0 = r * tw;
        let mut tx0 = 0;
        while tx0 < tw {
            let run = (dest.run - t0 % dest.run).min(tw - tx0);
            let out = |xi: usize| {
                let off = xi * dest.xi_stride + (t0 / dest.run) * dest.run_stride + t0 % dest.run;
                // SAFETY: the caller's contract: a run of this call's tiles.
                unsafe { std::slice::from_raw_parts_mut(dest.ptr.add(off), run) }
            };
            for a in 0..4 {
                let (ev, od) = (&d[2 * a * k..][..k], &d[(2 * a + 1) * k..][..k]);
                let (e0, e1) = (&ev[tx0..tx0 + run], &ev[tx0 + 1..tx0 + 1 + run]);
                let (o0, o1) = (&od[tx0..tx0 + run], &od[tx0 + 1..tx0 + 1 + run]);
                map2(out(4 * a), e0, e1, |a, b| a - b);
                map2(out(4 * a + 1), o0, e1, |a, b| a + b);
                map2(out(4 * a + 2), e1, o0, |a, b| a - b);
                map2(out(4 * a + 3), o0, o1, |a, b| a - b);
            }
            t0 += run;
            tx0 += run;
        }
    }
}

/// Y = Aᵀ M A (+ bias) for one output channel, with Aᵀ = [[1,1,1,0],[0,1,−1,−1]];
/// `m` holds position ξ of tile t at `m[ξ·T + t]`. Writes the output pixels
/// of the chunk's tiles that lie inside the image into `y_plane(n)`.
#[inline(always)]
fn output_transform_body<T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    m: &[T],
    bias: T,
    scratch: &mut Vec<T>,
    y_plane: impl Fn(usize) -> *mut T,
) {
    let (ho, wo, tw) = (g.out_h(), g.out_w(), tl.tw);
    let t_len = rows * tw;
    scratch.resize(12 * t_len, T::ZERO);
    let (s, ys) = scratch.split_at_mut(8 * t_len);
    let ms: [&[T]; 16] = std::array::from_fn(|xi| &m[xi * t_len..][..t_len]);
    // Aᵀ on the left over tile rows: s0_b = m_b + m_{4+b} + m_{8+b},
    // s1_b = m_{4+b} − m_{8+b} − m_{12+b} (b = column), all tiles at once ...
    for b in 0..4 {
        let [s0, s1] = split_n(&mut s[2 * b * t_len..(2 * b + 2) * t_len], t_len);
        map3(s0, ms[b], ms[4 + b], ms[8 + b], |x, y, z| x + y + z);
        map3(s1, ms[4 + b], ms[8 + b], ms[12 + b], |x, y, z| x - y - z);
    }
    // ... then A on the right: even and odd output columns of both rows.
    let sb: [&[T]; 8] = std::array::from_fn(|i| &s[i * t_len..][..t_len]);
    let [e0, o0, e1, o1] = split_n(ys, t_len);
    map3(e0, sb[0], sb[2], sb[4], |x, y, z| x + y + z + bias);
    map3(o0, sb[2], sb[4], sb[6], |x, y, z| x - y - z + bias);
    map3(e1, sb[1], sb[3], sb[5], |x, y, z| x + y + z + bias);
    map3(o1, sb[3], sb[5], sb[7], |x, y, z| x - y - z + bias);
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let plane = y_plane(n);
        for (dy, (ev, od)) in [(&*e0, &*o0), (&*e1, &*o1)].into_iter().enumerate() {
            let oh = 2 * ty + dy;
            if oh >= ho {
                continue;
            }
            // SAFETY: row oh of the plane has wo elements; the caller gives
            // this task exclusive use of the plane.
            let dst = unsafe { std::slice::from_raw_parts_mut(plane.add(oh * wo), wo) };
            let (ev, od) = (&ev[r * tw..][..tw], &od[r * tw..][..tw]);
            for (pair, (&a, &b)) in dst.chunks_mut(2).zip(ev.iter().zip(od)) {
                pair[0] = a;
                if let Some(second) = pair.get_mut(1) {
                    *second = b;
                }
            }
        }
    }
}

/// dM = A dY Aᵀ for one output channel (A = [[1,0],[1,1],[1,−1],[0,−1]]):
/// position ξ of tile t goes to `dm.ptr + ξ·dm.xi_stride + t`; output pixels
/// outside the image count as 0.
///
/// # Safety
/// `dm` must address 16 rows of T elements that only this call writes.
#[inline(always)]
unsafe fn output_grad_transform_body<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dm: VDest<T>,
) {
    let (ho, wo, tw) = (g.out_h(), g.out_w(), tl.tw);
    let t_len = rows * tw;
    scratch.resize(8 * t_len, T::ZERO);
    // The 2×2 gradient of each tile as four compact vectors (row q, column s).
    let [y00, y01, y10, y11, ze, zo, _, _] = split_n(scratch, t_len);
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let dy = plane(n);
        for (q, (ev, od)) in [(&mut *y00, &mut *y01), (&mut *y10, &mut *y11)]
            .into_iter()
            .enumerate()
        {
            let (ev, od) = (&mut ev[r * tw..][..tw], &mut od[r * tw..][..tw]);
            ev.fill(T::ZERO);
            od.fill(T::ZERO);
            if 2 * ty + q < ho {
                let row = &dy[(2 * ty + q) * wo..][..wo];
                let pairs = wo / 2;
                for ((e, o), pair) in ev.iter_mut().zip(od.iter_mut()).zip(row.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if wo % 2 == 1 {
                    ev[pairs] = row[wo - 1];
                }
            }
        }
    }
    // SAFETY: the caller's contract: 16 rows of t_len this call owns.
    let row =
        |xi: usize| unsafe { std::slice::from_raw_parts_mut(dm.ptr.add(xi * dm.xi_stride), t_len) };
    for a in 0..4 {
        // Row a of A·dY: (y0, y0 + y1, y0 − y1, −y1), even and odd column ...
        match a {
            0 => {
                ze.copy_from_slice(y00);
                zo.copy_from_slice(y01);
            }
            1 => {
                map2(ze, y00, y10, |y0, y1| y0 + y1);
                map2(zo, y01, y11, |y0, y1| y0 + y1);
            }
            2 => {
                map2(ze, y00, y10, |y0, y1| y0 - y1);
                map2(zo, y01, y11, |y0, y1| y0 - y1);
            }
            _ => {
                map2(ze, y10, y10, |_, y1| -y1);
                map2(zo, y11, y11, |_, y1| -y1);
            }
        }
        // ... times Aᵀ along the row, per tile: (e, e + o, e − o, −o).
        row(4 * a).copy_from_slice(ze);
        map2(row(4 * a + 1), ze, zo, |e, o| e + o);
        map2(row(4 * a + 2), ze, zo, |e, o| e - o);
        map2(row(4 * a + 3), zo, zo, |_, o| -o);
    }
}

// Each transform is compiled twice: as written (baseline SSE2) and inside a
// `#[target_feature(enable = "avx2,fma")]` function, where its inlined
// loops get 8-wide vectors; the dispatchers pick one at run time.
// (`simd::with_avx2` does the same for small closures, but a closure this
// large is not inlined into it.)
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input_transform<'a, T: GemmFloat>(
        g: &Conv2dGeometry,
        tl: &Tiling,
        chunk: (usize, usize),
        plane: impl Fn(usize) -> &'a [T],
        scratch: &mut Vec<T>,
        dest: VDest<T>,
    ) {
        // SAFETY: forwarded contract.
        unsafe { input_transform_body(g, tl, chunk, plane, scratch, dest) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn output_transform<T: GemmFloat>(
        g: &Conv2dGeometry,
        tl: &Tiling,
        chunk: (usize, usize),
        m: &[T],
        bias: T,
        scratch: &mut Vec<T>,
        y_plane: impl Fn(usize) -> *mut T,
    ) {
        output_transform_body(g, tl, chunk, m, bias, scratch, y_plane)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_grad_transform<'a, T: GemmFloat>(
        g: &Conv2dGeometry,
        tl: &Tiling,
        chunk: (usize, usize),
        plane: impl Fn(usize) -> &'a [T],
        scratch: &mut Vec<T>,
        dm: VDest<T>,
    ) {
        // SAFETY: forwarded contract.
        unsafe { output_grad_transform_body(g, tl, chunk, plane, scratch, dm) }
    }
}

fn use_avx2() -> bool {
    cfg!(target_arch = "x86_64") && simd::isa() >= Isa::Avx2
}

/// See [`input_transform_body`].
///
/// # Safety
/// As [`input_transform_body`].
unsafe fn input_transform<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    chunk: (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dest: VDest<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has AVX2+FMA; the rest is the caller's contract.
        return unsafe { avx2::input_transform(g, tl, chunk, plane, scratch, dest) };
    }
    // SAFETY: the caller's contract.
    unsafe { input_transform_body(g, tl, chunk, plane, scratch, dest) }
}

/// See [`output_transform_body`].
fn output_transform<T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    chunk: (usize, usize),
    m: &[T],
    bias: T,
    scratch: &mut Vec<T>,
    y_plane: impl Fn(usize) -> *mut T,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has AVX2+FMA.
        return unsafe { avx2::output_transform(g, tl, chunk, m, bias, scratch, y_plane) };
    }
    output_transform_body(g, tl, chunk, m, bias, scratch, y_plane)
}

/// See [`output_grad_transform_body`].
///
/// # Safety
/// As [`output_grad_transform_body`].
unsafe fn output_grad_transform<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    chunk: (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dm: VDest<T>,
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has AVX2+FMA; the rest is the caller's contract.
        return unsafe { avx2::output_grad_transform(g, tl, chunk, plane, scratch, dm) };
    }
    // SAFETY: the caller's contract.
    unsafe { output_grad_transform_body(g, tl, chunk, plane, scratch, dm) }
}

/// Forward: `y = conv(x, w) + bias` for 3×3, stride 1.
pub fn forward<T: GemmFloat>(
    g: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    let (c, o, hw) = (g.in_channels, g.out_channels, g.in_h * g.in_w);
    let tl = Tiling::new(g);
    let u = transform_weights(o, c, w);
    let nr = u[0].nr();
    let v_len = 16 * c * tl.max_tiles().next_multiple_of(nr);
    let mut v_buf = Buffer::<T>::new(v_len + ALIGN);
    let v = aligned(&mut v_buf, v_len);
    let mut m = Buffer::<T>::new(o * 16 * tl.max_tiles());
    let plane_len = g.out_h() * g.out_w();
    let y_ptr = SharedPtr(y.as_mut_ptr());
    for chunk in tl.chunks(g.batch) {
        let t = chunk.1 * tl.tw;
        let tp = t.next_multiple_of(nr);
        // V_ξ goes straight into the GEMM's packed-B layout [t / nr][c][nr].
        let v_ptr = SharedPtr(v.as_mut_ptr());
        (0..c)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, ci| {
                let dest = VDest {
                    // SAFETY: channel ci's row within every panel.
                    ptr: unsafe { v_ptr.at(ci * nr) },
                    xi_stride: c * tp,
                    run: nr,
                    run_stride: c * nr,
                };
                let plane = |n: usize| &x[(n * c + ci) * hw..][..hw];
                // SAFETY: task ci alone writes channel ci's rows of the panels.
                unsafe { input_transform(g, &tl, chunk, plane, scratch, dest) };
                for xi in 0..16 {
                    for tile in t..tp {
                        let at = xi * c * tp + (tile / nr) * c * nr + tile % nr;
                        // SAFETY: as above, the zero padding of the last panel.
                        unsafe { *dest.ptr.add(at) = T::ZERO };
                    }
                }
            });
        let m_ptr = SharedPtr(m.as_mut_ptr());
        (0..16).into_par_iter().for_each(|xi| {
            let mx = MatPtr {
                // SAFETY: row block ξ of every output channel's [16][T] slab.
                ptr: unsafe { m_ptr.at(xi * t) },
                rs: 16 * t,
                cs: 1,
            };
            // SAFETY: task ξ alone writes elements (o, ξ, ·) of m.
            unsafe { u[xi].gemm_packed(&v[xi * c * tp..][..c * tp], t, mx, false) };
        });
        m[..o * 16 * t]
            .par_chunks(16 * t)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (oi, mo)| {
                let b = bias.map_or(T::ZERO, |b| b[oi]);
                // SAFETY: task oi alone writes the planes (n, oi).
                let plane = |n: usize| unsafe { y_ptr.at((n * o + oi) * plane_len) };
                output_transform(g, &tl, chunk, mo, b, scratch, plane);
            });
    }
}

/// Input gradient: the forward convolution of dY with the kernel flipped
/// in space and transposed in channels, padding 2 − pad (needs pad ≤ 2).
pub fn backward_input<T: GemmFloat>(g: &Conv2dGeometry, dy: &[T], w: &[T], dx: &mut [T]) {
    let (c, o) = (g.in_channels, g.out_channels);
    let mut flipped = Buffer::new(w.len());
    for oi in 0..o {
        for ci in 0..c {
            let src = &w[(oi * c + ci) * 9..][..9];
            let dst = &mut flipped[(ci * o + oi) * 9..][..9];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    let transposed = Conv2dGeometry {
        in_channels: o,
        out_channels: c,
        in_h: g.out_h(),
        in_w: g.out_w(),
        padding: 2 - g.padding,
        ..*g
    };
    forward(&transposed, dy, &flipped, None, dx);
}

/// Weight gradient: dU_ξ = Σ_t dM_ξ · V_ξᵀ over all tiles, then dg = Gᵀ dU G.
pub fn backward_weight<T: GemmFloat>(g: &Conv2dGeometry, x: &[T], dy: &[T], dw: &mut [T]) {
    let (c, o) = (g.in_channels, g.out_channels);
    let (hw, ho_wo) = (g.in_h * g.in_w, g.out_h() * g.out_w());
    let tl = Tiling::new(g);
    let mut v = Buffer::<T>::new(c * 16 * tl.max_tiles());
    let mut dm = Buffer::<T>::new(o * 16 * tl.max_tiles());
    let mut du = Buffer::<T>::new(16 * o * c);
    for (ci, chunk) in tl.chunks(g.batch).enumerate() {
        let t = chunk.1 * tl.tw;
        // V as [ξ][c][t] and dM as [ξ][o][t]: each ξ's operands are
        // contiguous for its GEMM.
        let v_ptr = SharedPtr(v.as_mut_ptr());
        (0..c)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, ch| {
                let plane = |n: usize| &x[(n * c + ch) * hw..][..hw];
                let dest = VDest {
                    // SAFETY: row ch of every ξ block.
                    ptr: unsafe { v_ptr.at(ch * t) },
                    xi_stride: c * t,
                    run: t,
                    run_stride: 0,
                };
                // SAFETY: task ch alone writes rows ch of the 16 blocks.
                unsafe { input_transform(g, &tl, chunk, plane, scratch, dest) }
            });
        let dm_ptr = SharedPtr(dm.as_mut_ptr());
        (0..o)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, oi| {
                let plane = |n: usize| &dy[(n * o + oi) * ho_wo..][..ho_wo];
                let dest = VDest {
                    // SAFETY: row oi of every ξ block.
                    ptr: unsafe { dm_ptr.at(oi * t) },
                    xi_stride: o * t,
                    run: t,
                    run_stride: 0,
                };
                // SAFETY: task oi alone writes rows oi of the 16 blocks.
                unsafe { output_grad_transform(g, &tl, chunk, plane, scratch, dest) }
            });
        du.par_chunks_mut(o * c).enumerate().for_each(|(xi, dux)| {
            let a = Mat::row_major(&dm[xi * o * t..][..o * t], t);
            // B = V_ξᵀ (T×C): V_ξ is C×T row-major.
            let b = Mat::transposed(&v[xi * c * t..][..c * t], t);
            let pa = PackedA::new(a, o, t);
            // SAFETY: dux is this task's own O×C block.
            unsafe { pa.gemm(b, c, MatPtr::row_major(dux, c), ci > 0) };
        });
    }
    inverse_transform_weights(o, c, &du, dw);
}
