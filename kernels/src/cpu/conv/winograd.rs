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
use super::gemm::{GemmFloat, Mat, MatPtr, PackedA};
use crate::cpu::SendPtr;
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

/// U[ξ][o][c] = (G g[o,c] Gᵀ)[ξ], returned as one packed GEMM operand per ξ.
fn transform_weights<T: GemmFloat>(o: usize, c: usize, w: &[T]) -> Vec<PackedA<T>> {
    let mut u = vec![T::ZERO; 16 * o * c];
    let half = T::from_f64(0.5);
    // G·v for a 3-vector: (v0, (v0+v1+v2)/2, (v0−v1+v2)/2, v2).
    let g_mul = |v: [T; 3]| {
        [
            v[0],
            (v[0] + v[1] + v[2]) * half,
            (v[0] - v[1] + v[2]) * half,
            v[2],
        ]
    };
    for (oc, k) in w.chunks_exact(9).enumerate() {
        // Columns first (G·g is 4×3), then rows ((G·g)·Gᵀ is 4×4).
        let cols: [[T; 4]; 3] = std::array::from_fn(|j| g_mul([k[j], k[3 + j], k[6 + j]]));
        for a in 0..4 {
            let row = g_mul([cols[0][a], cols[1][a], cols[2][a]]);
            for (b, &v) in row.iter().enumerate() {
                u[(a * 4 + b) * o * c + oc] = v;
            }
        }
    }
    u.chunks_exact(o * c)
        .map(|ux| PackedA::new(Mat::row_major(ux, c), o, c))
        .collect()
}

/// V for channel `c` of the tiles in rows `[r0, r0 + rows)`, written as
/// `v[ξ·T + t]` (T = rows·tw): V_t = Bᵀ d_t B with
/// Bᵀ = [[1,0,−1,0],[0,1,1,0],[0,−1,1,0],[0,1,0,−1]].
fn input_transform<T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    x_channel: impl Fn(usize) -> usize,
    x: &[T],
    v: &mut [T],
) {
    let (h, w, p, tw) = (g.in_h, g.in_w, g.padding, tl.tw);
    let t_len = rows * tl.tw;
    // Padded input rows cover columns −p .. 2·tw + 2 − p.
    let wp = 2 * tw + 2;
    let mut d = vec![[T::ZERO; 4]; wp];
    let (mut even, mut odd) = (vec![[T::ZERO; 4]; tw + 1], vec![[T::ZERO; 4]; tw + 1]);
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let plane = &x[x_channel(n) * h * w..][..h * w];
        // Column transform over the 4 input rows, for every column at once.
        let row = |q: usize| -> Option<&[T]> {
            let ih = (2 * ty + q).checked_sub(p).filter(|&ih| ih < h)?;
            Some(&plane[ih * w..][..w])
        };
        let rr: [Option<&[T]>; 4] = std::array::from_fn(row);
        for (col, dq) in d.iter_mut().enumerate() {
            let at = |q: usize| -> T {
                match (rr[q], col.checked_sub(p)) {
                    (Some(rw), Some(iw)) if iw < w => rw[iw],
                    _ => T::ZERO,
                }
            };
            let (x0, x1, x2, x3) = (at(0), at(1), at(2), at(3));
            *dq = [x0 - x2, x1 + x2, x2 - x1, x1 - x3];
        }
        for q in 0..=tw {
            even[q] = d[2 * q];
            odd[q] = d[2 * q + 1];
        }
        // Row transform on each of the 4 transformed rows.
        let base = r * tw;
        for a in 0..4 {
            for tx in 0..tw {
                let (e0, o0, e1, o1) = (even[tx][a], odd[tx][a], even[tx + 1][a], odd[tx + 1][a]);
                let t = base + tx;
                v[(a * 4) * t_len + t] = e0 - e1;
                v[(a * 4 + 1) * t_len + t] = o0 + e1;
                v[(a * 4 + 2) * t_len + t] = e1 - o0;
                v[(a * 4 + 3) * t_len + t] = o0 - o1;
            }
        }
    }
}

/// Y_t = Aᵀ M_t A (+ bias) for one output channel, with
/// Aᵀ = [[1,1,1,0],[0,1,−1,−1]]; `m[ξ·T + t]`. Writes the output pixels of
/// the chunk's tiles that lie inside the image into plane `y_plane(n)`.
fn output_transform<T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    m: &[T],
    bias: T,
    mut y_plane: impl FnMut(usize) -> *mut T,
) {
    let (ho, wo, tw) = (g.out_h(), g.out_w(), tl.tw);
    let t_len = rows * tw;
    let mut top = vec![T::ZERO; 2 * tw];
    let mut bottom = vec![T::ZERO; 2 * tw];
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let at = |xi: usize, tx: usize| m[xi * t_len + r * tw + tx];
        for tx in 0..tw {
            // Over tile rows a: s0 = m0 + m1 + m2, s1 = m1 − m2 − m3.
            let s0: [T; 4] = std::array::from_fn(|b| at(b, tx) + at(4 + b, tx) + at(8 + b, tx));
            let s1: [T; 4] = std::array::from_fn(|b| at(4 + b, tx) - at(8 + b, tx) - at(12 + b, tx));
            top[2 * tx] = s0[0] + s0[1] + s0[2] + bias;
            top[2 * tx + 1] = s0[1] - s0[2] - s0[3] + bias;
            bottom[2 * tx] = s1[0] + s1[1] + s1[2] + bias;
            bottom[2 * tx + 1] = s1[1] - s1[2] - s1[3] + bias;
        }
        let plane = y_plane(n);
        for (dy, src) in [(0, &top), (1, &bottom)] {
            let oh = 2 * ty + dy;
            if oh < ho {
                // SAFETY: row oh of the plane has wo elements; the caller
                // gives this task exclusive use of the plane.
                let dst = unsafe { std::slice::from_raw_parts_mut(plane.add(oh * wo), wo) };
                dst.copy_from_slice(&src[..wo]);
            }
        }
    }
}

/// dM_t = A dY_t Aᵀ for one output channel (A = [[1,0],[1,1],[1,−1],[0,−1]]),
/// written as `dm[ξ·T + t]`; output pixels outside the image count as 0.
fn output_grad_transform<T: GemmFloat>(
    g: &Conv2dGeometry,
    tl: &Tiling,
    (r0, rows): (usize, usize),
    dy_plane: impl Fn(usize) -> usize,
    dy: &[T],
    dm: &mut [T],
) {
    let (ho, wo, tw) = (g.out_h(), g.out_w(), tl.tw);
    let t_len = rows * tw;
    let mut z = vec![[T::ZERO; 4]; 2 * tw];
    for r in 0..rows {
        let (n, ty) = ((r0 + r) / tl.th, (r0 + r) % tl.th);
        let plane = &dy[dy_plane(n) * ho * wo..][..ho * wo];
        let row = |q: usize| (2 * ty + q < ho).then(|| &plane[(2 * ty + q) * wo..][..wo]);
        let (y0, y1) = (row(0), row(1));
        for (col, zc) in z.iter_mut().enumerate() {
            let at = |rw: Option<&[T]>| rw.filter(|_| col < wo).map_or(T::ZERO, |rw| rw[col]);
            let (a, b) = (at(y0), at(y1));
            *zc = [a, a + b, a - b, -b];
        }
        for a in 0..4 {
            for tx in 0..tw {
                let (e, o) = (z[2 * tx][a], z[2 * tx + 1][a]);
                let t = r * tw + tx;
                dm[(a * 4) * t_len + t] = e;
                dm[(a * 4 + 1) * t_len + t] = e + o;
                dm[(a * 4 + 2) * t_len + t] = e - o;
                dm[(a * 4 + 3) * t_len + t] = -o;
            }
        }
    }
}

/// Forward: `y = conv(x, w) + bias` for 3×3, stride 1.
pub fn forward<T: GemmFloat>(
    g: &Conv2dGeometry,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) {
    let (c, o) = (g.in_channels, g.out_channels);
    let tl = Tiling::new(g);
    let u = transform_weights(o, c, w);
    let mut v = vec![T::ZERO; c * 16 * tl.max_tiles()];
    let mut m = vec![T::ZERO; o * 16 * tl.max_tiles()];
    let plane_len = g.out_h() * g.out_w();
    let y_ptr = SendPtr(y.as_mut_ptr());
    for chunk in tl.chunks(g.batch) {
        let t = chunk.1 * tl.tw;
        v[..c * 16 * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each(|(ci, vc)| input_transform(g, &tl, chunk, |n| n * c + ci, x, vc));
        let m_ptr = SendPtr(m.as_mut_ptr());
        (0..16).into_par_iter().for_each(|xi| {
            let m_ptr = m_ptr;
            let vx = Mat {
                data: &v[xi * t..c * 16 * t],
                rs: 16 * t,
                cs: 1,
            };
            let mx = MatPtr {
                // SAFETY: row block ξ of every output channel's [16][T] slab.
                ptr: unsafe { m_ptr.0.add(xi * t) },
                rs: 16 * t,
                cs: 1,
            };
            // SAFETY: task ξ alone writes elements (o, ξ, ·) of m.
            unsafe { u[xi].gemm(vx, t, mx, false) };
        });
        m[..o * 16 * t]
            .par_chunks(16 * t)
            .enumerate()
            .for_each(|(oi, mo)| {
                let y_ptr = y_ptr;
                let b = bias.map_or(T::ZERO, |b| b[oi]);
                // SAFETY: task oi alone writes the planes (n, oi).
                let plane = |n: usize| unsafe { y_ptr.0.add((n * o + oi) * plane_len) };
                output_transform(g, &tl, chunk, mo, b, plane);
            });
    }
}

/// Input gradient: the forward convolution of dY with the kernel flipped
/// in space and transposed in channels, padding 2 − pad (needs pad ≤ 2).
pub fn backward_input<T: GemmFloat>(g: &Conv2dGeometry, dy: &[T], w: &[T], dx: &mut [T]) {
    let (c, o) = (g.in_channels, g.out_channels);
    let mut flipped = vec![T::ZERO; w.len()];
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
    let tl = Tiling::new(g);
    let mut v = vec![T::ZERO; c * 16 * tl.max_tiles()];
    let mut dm = vec![T::ZERO; o * 16 * tl.max_tiles()];
    let mut du = vec![T::ZERO; 16 * o * c];
    for (ci, chunk) in tl.chunks(g.batch).enumerate() {
        let t = chunk.1 * tl.tw;
        v[..c * 16 * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each(|(ch, vc)| input_transform(g, &tl, chunk, |n| n * c + ch, x, vc));
        dm[..o * 16 * t]
            .par_chunks_mut(16 * t)
            .enumerate()
            .for_each(|(oi, dmo)| output_grad_transform(g, &tl, chunk, |n| n * o + oi, dy, dmo));
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
