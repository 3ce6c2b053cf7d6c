//! Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions.
//!
//! The output is cut into 2×2 tiles; tile t of output channel o is
//!
//! ```text
//! Y_t[o] = Aᵀ [ Σ_c U[o,c] ⊙ V_t[c] ] A,   U[o,c] = G g[o,c] Gᵀ,   V_t[c] = Bᵀ d_t[c] B
//! ```
//!
//! with d_t[c] the 4×4 input patch under the tile. For each of the 16
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
//! Tiles are processed in chunks of whole tile rows (about [`CHUNK_TILES`]
//! tiles) so the transformed buffers stay in cache; each chunk runs three
//! stages, each split over rayon: input transform (per channel), the 16
//! GEMMs (per ξ), output transform (per output channel).

use super::Conv2dGeometry;
use super::gemm::{Buffer, GemmFloat, Mat, MatPtr, PackedA};
use crate::cpu::SendPtr;
use crate::cpu::simd::{self, SimdLevel};
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

/// U[ξ][o][c] = (G g[o,c] Gᵀ)[ξ], written straight into one packed GEMM
/// operand per ξ (padding rows zero), split over panels of output channels.
fn transform_weights<T: GemmFloat>(o: usize, c: usize, w: &[T]) -> Vec<PackedA<T>> {
    let mut u: Vec<PackedA<T>> = (0..16).map(|_| PackedA::for_filling(o, c)).collect();
    let mr = u[0].mr();
    let bases: [SendPtr<T>; 16] = {
        let mut it = u.iter_mut();
        std::array::from_fn(|_| SendPtr(it.next().expect("16 operands").packed_mut().as_mut_ptr()))
    };
    (0..o.div_ceil(mr)).into_par_iter().for_each(|panel| {
        let bases = bases;
        for ci in 0..c {
            for lane in 0..mr {
                let oi = panel * mr + lane;
                let vals = if oi < o {
                    transform_kernel(w[(oi * c + ci) * 9..][..9].try_into().expect("3×3"))
                } else {
                    [T::ZERO; 16]
                };
                // The packed index of (oi, ci), the same in all 16 operands.
                let at = panel * c * mr + ci * mr + lane;
                for (base, v) in bases.iter().zip(vals) {
                    // SAFETY: `at` is inside every packed buffer (all are
                    // ceil(o/mr)·mr × c) and only this panel's task writes it.
                    unsafe { *base.0.add(at) = v };
                }
            }
        }
    });
    u
}

/// G g Gᵀ for one 3×3 kernel g (row-major), as 16 values ξ = 4a + b, with
/// G·v = (v0, (v0+v1+v2)/2, (v0−v1+v2)/2, v2).
#[inline(always)]
fn transform_kernel<T: GemmFloat>(k: &[T; 9]) -> [T; 16] {
    let half = T::from_f64(0.5);
    let g_mul = |v0: T, v1: T, v2: T| [v0, (v0 + v1 + v2) * half, (v0 - v1 + v2) * half, v2];
    // Columns first (G·g is 4×3), then rows ((G·g)·Gᵀ is 4×4).
    let cols = [
        g_mul(k[0], k[3], k[6]),
        g_mul(k[1], k[4], k[7]),
        g_mul(k[2], k[5], k[8]),
    ];
    let mut out = [T::ZERO; 16];
    for a in 0..4 {
        let row = g_mul(cols[0][a], cols[1][a], cols[2][a]);
        out[4 * a..4 * a + 4].copy_from_slice(&row);
    }
    out
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
    let (first, second, at0, at1) = if pad % 2 == 0 {
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

/// dM = A dY Aᵀ for one output channel (A = [[1,0],[1,1],[1,−1],[0,−1]]),
/// written as `dm[ξ·T + t]`; output pixels outside the image count as 0.
#[inline(always)]
fn output_grad_transform_body<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dm: &mut [T],
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
                for (i, pair) in row.chunks(2).enumerate() {
                    ev[i] = pair[0];
                    if let Some(&b) = pair.get(1) {
                        od[i] = b;
                    }
                }
            }
        }
    }
    let rows4: [&mut [T]; 16] = {
        let mut it = dm[..16 * t_len].chunks_exact_mut(t_len);
        std::array::from_fn(|_| it.next().expect("16 rows"))
    };
    let [
        m0,
        m1,
        m2,
        m3,
        m4,
        m5,
        m6,
        m7,
        m8,
        m9,
        m10,
        m11,
        m12,
        m13,
        m14,
        m15,
    ] = rows4;
    let out_rows = [
        [m0, m1, m2, m3],
        [m4, m5, m6, m7],
        [m8, m9, m10, m11],
        [m12, m13, m14, m15],
    ];
    for (a, [d0, d1, d2, d3]) in out_rows.into_iter().enumerate() {
        // Row a of A·dY: (y0, y0 + y1, y0 − y1, −y1), even and odd column ...
        let f: fn(T, T) -> T = match a {
            0 => |y0, _| y0,
            1 => |y0, y1| y0 + y1,
            2 => |y0, y1| y0 - y1,
            _ => |_, y1| -y1,
        };
        map2(ze, y00, y10, f);
        map2(zo, y01, y11, f);
        // ... times Aᵀ along the row, per tile: (e, e + o, e − o, −o).
        map2(d0, ze, zo, |e, _| e);
        map2(d1, ze, zo, |e, o| e + o);
        map2(d2, ze, zo, |e, o| e - o);
        map2(d3, ze, zo, |_, o| -o);
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
    pub(super) fn output_grad_transform<'a, T: GemmFloat>(
        g: &Conv2dGeometry,
        tl: &Tiling,
        chunk: (usize, usize),
        plane: impl Fn(usize) -> &'a [T],
        scratch: &mut Vec<T>,
        dm: &mut [T],
    ) {
        output_grad_transform_body(g, tl, chunk, plane, scratch, dm)
    }
}

fn use_avx2() -> bool {
    cfg!(target_arch = "x86_64") && simd::level() == SimdLevel::Avx2Fma
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
fn output_grad_transform<'a, T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    chunk: (usize, usize),
    plane: impl Fn(usize) -> &'a [T],
    scratch: &mut Vec<T>,
    dm: &mut [T],
) {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU has AVX2+FMA.
        return unsafe { avx2::output_grad_transform(g, tl, chunk, plane, scratch, dm) };
    }
    output_grad_transform_body(g, tl, chunk, plane, scratch, dm)
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
    let mut v = Buffer::<T>::new(16 * c * tl.max_tiles().next_multiple_of(nr));
    let mut m = Buffer::<T>::new(o * 16 * tl.max_tiles());
    let plane_len = g.out_h() * g.out_w();
    let y_ptr = SendPtr(y.as_mut_ptr());
    for chunk in tl.chunks(g.batch) {
        let t = chunk.1 * tl.tw;
        let tp = t.next_multiple_of(nr);
        // V_ξ goes straight into the GEMM's packed-B layout [t / nr][c][nr].
        let v_ptr = SendPtr(v.as_mut_ptr());
        (0..c)
            .into_par_iter()
            .for_each_init(Vec::new, |scratch, ci| {
                let v_ptr = v_ptr;
                let dest = VDest {
                    // SAFETY: channel ci's row within every panel.
                    ptr: unsafe { v_ptr.0.add(ci * nr) },
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
        let m_ptr = SendPtr(m.as_mut_ptr());
        (0..16).into_par_iter().for_each(|xi| {
            let m_ptr = m_ptr;
            let mx = MatPtr {
                // SAFETY: row block ξ of every output channel's [16][T] slab.
                ptr: unsafe { m_ptr.0.add(xi * t) },
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
                let y_ptr = y_ptr;
                let b = bias.map_or(T::ZERO, |b| b[oi]);
                // SAFETY: task oi alone writes the planes (n, oi).
                let plane = |n: usize| unsafe { y_ptr.0.add((n * o + oi) * plane_len) };
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
    let mut v = Buffer::new(c * 16 * tl.max_tiles());
    let mut dm = Buffer::new(o * 16 * tl.max_tiles());
    let mut du = Buffer::new(16 * o * c);
    for (ci, chunk) in tl.chunks(g.batch).enumerate() {
        let t = chunk.1 * tl.tw;
        v[..c * 16 * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (ch, vc)| {
                let plane = |n: usize| &x[(n * c + ch) * hw..][..hw];
                // V of channel ch as plain [16][T] rows: one run per row.
                let dest = VDest {
                    ptr: vc.as_mut_ptr(),
                    xi_stride: t,
                    run: t,
                    run_stride: 0,
                };
                // SAFETY: dest covers exactly this task's own slice vc.
                unsafe { input_transform(g, &tl, chunk, plane, scratch, dest) }
            });
        dm[..o * 16 * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each_init(Vec::new, |scratch, (oi, dmo)| {
                let plane = |n: usize| &dy[(n * o + oi) * ho_wo..][..ho_wo];
                output_grad_transform(g, &tl, chunk, plane, scratch, dmo)
            });
        du.par_chunks_mut(o * c).enumerate().for_each(|(xi, dux)| {
            let a = Mat {
                data: &dm[xi * t..o * 16 * t],
                rs: 16 * t,
                cs: 1,
            };
            // B = V_ξᵀ: element (t, c) at v[c·16T + ξ·T + t].
            let b = Mat {
                data: &v[xi * t..c * 16 * t],
                rs: 1,
                cs: 16 * t,
            };
            let pa = PackedA::new(a, o, t);
            // SAFETY: dux is this task's own O×C block.
            unsafe { pa.gemm(b, c, MatPtr::row_major(dux, c), ci > 0) };
        });
    }
    // dg = Gᵀ dU G, Gᵀ·u = (u0 + (u1+u2)/2, (u1−u2)/2, (u1+u2)/2 + u3).
    let half = T::from_f64(0.5);
    let gt_mul = |u: [T; 4]| {
        [
            u[0] + (u[1] + u[2]) * half,
            (u[1] - u[2]) * half,
            (u[1] + u[2]) * half + u[3],
        ]
    };
    dw.par_chunks_mut(9).enumerate().for_each(|(oc, k)| {
        let at = |xi: usize| du[xi * o * c + oc];
        let rows: [[T; 3]; 4] = std::array::from_fn(|a| {
            gt_mul([at(a * 4), at(a * 4 + 1), at(a * 4 + 2), at(a * 4 + 3)])
        });
        for j in 0..3 {
            let col = gt_mul([rows[0][j], rows[1][j], rows[2][j], rows[3][j]]);
            for i in 0..3 {
                k[i * 3 + j] = col[i];
            }
        }
    });
}
