//! Single-head scaled dot-product attention, forward and backward:
//!
//! O = softmax(S) V,  S = s·Q Kᵀ  (softmax along each row, s usually 1/√C),
//!
//! for contiguous row-major q `[B, M, C]`, k `[B, N, C]`, v `[B, N, E]` and
//! out `[B, M, E]` (self-attention in the U-Net: M = N = H·W, E = C).
//!
//! The forward also writes the per-row log-sum-exp L_r = ln Σ_c e^{S_rc}
//! (`lse`, `[B, M]`): with it the backward rebuilds P = e^{S − L} exactly
//! from a recomputed S, so nothing of size M×N is kept between passes.
//! The backward, with dO = ∂loss/∂O and D_r = Σ_e dO_re·O_re:
//!
//! dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ⊙ (dP − D),  dQ = s·dS K,  dK = s·dSᵀ Q.
//!
//! # Two paths
//!
//! - **Flash** ([`AttnPath::Flash`]): the rows of Q are cut into tiles of
//!   `rows`, the keys into tiles of `cols`, and only one `rows × cols` score
//!   tile exists at a time. The forward keeps, per query row, a running max
//!   m and sum l of e^{S − m}; when a new key tile raises the max, the sum
//!   and the output accumulator are rescaled by e^{m_old − m_new} (online
//!   softmax), and the output is divided by l at the end. Rayon tasks are
//!   (batch item, query tile) pairs. The backward (FlashAttention-2 order)
//!   gives each task a run of key tiles of one batch item (it owns those
//!   rows of dK and dV) and loops over every query tile, recomputing S and
//!   P; dQ contributions go to a per-task partial summed at the end, or,
//!   with at least two batch items per thread (the training case), each
//!   task owns a whole batch item and writes its dQ directly.
//! - **Plain** ([`AttnPath::Plain`]): the full `[B, M, N]` score matrix is
//!   materialised with one batched GEMM (`gemm::batched_gemm`), softmax
//!   runs over its rows, and a second batched GEMM applies it; the backward
//!   does the same with five batched GEMMs. It is the straightforward
//!   composition of the existing kernels, kept as the reference the flash
//!   path is tested and measured against.
//!
//! The flash path's products are small tiles, each computed inside a rayon
//! task, so they go through the packed GEMM core the convolution uses
//! ([`crate::gemm::packed`], single-threaded per call, AVX-512 8×32 /
//! AVX2 6×16 / plain micro-kernels), not through `matrixmultiply`, whose
//! own threads would compete with the rayon tasks (measured 30–40% slower
//! at the U-Net shape). `tile_gemm` reads both operands in place with any
//! strides (so Kᵀ, Pᵀ and dSᵀ are never copied) and packs them per call;
//! the scale s is folded into the packed A. Moving from the flash path's
//! former own 6×16 AVX2 GEMM (B packed once per batch item) to the shared
//! core made the path 12–22% faster here (BENCHMARKS.md, issue 14), the
//! AVX-512 micro-kernel outweighing the repacking of B per tile.

//! # Which path, and the tile size (measured)
//!
//! [`AttnPath::Auto`] always takes the flash path with [`Tiles::DEFAULT`]
//! (64 × 64): it was faster at every shape measured. Process CPU time per
//! call in ms, f32, one thread, best of 5–7 runs (2-core AMD EPYC Zen 4
//! shared with other jobs, so provisional; `benches/attention.rs` measures
//! the 2-thread wall clock):
//!
//! | B × T × C            | fwd plain | fwd flash | bwd plain | bwd flash |
//! |----------------------|-----------|-----------|-----------|-----------|
//! | 8 × 256 × 256 (U-Net)| 7.6       | 6.4       | 18.3      | 15.9      |
//! | 32 × 256 × 128       | 18.1      | 13.7      | 49.7      | 31.8      |
//! | 8 × 64 × 256         | 0.69      | 0.45      | 1.57      | 1.32      |
//! | 8 × 16 × 256         | 0.09      | 0.06      | 0.24      | 0.16      |
//! | 4 × 1024 × 128       | 32.9      | 26.1      | 85.5      | 68.6      |
//! | 1 × 256 × 256        | 1.00      | 0.74      | 2.93      | 1.88      |
//!
//! At the U-Net's 16×16 maps a 256 × 256 score matrix is only 256 KB, so
//! the plain path is not memory-bound; it loses on the extra pass of its
//! softmax over the whole score matrix, on repacking inside every GEMM, and
//! (with two threads) on splitting each GEMM across threads where the
//! flash tasks are independent. The tile barely mattered (measured with the
//! former per-item packing): backward 64/128/256 query rows × 64 keys took
//! 16.0/16.4/16.0 ms, the forward ~6.8 ms for all; 64 × 64 keeps the score
//! tile in L1 and gives B·T/64 independent forward tasks.
//!
//! Numerics: scores are max-subtracted before `exp` (every exponent ≤ 0);
//! sums and products accumulate in the element type (f32 in training, f64
//! in gradient checks).

pub use super::AttnConfig;
use crate::Float;
use crate::cpu::simd::{self, Isa};
use crate::gemm::cpu::{Gemm, MatRef, batched_gemm};
use crate::gemm::packed::{GemmFloat, Mat, MatPtr, PackedA};
use rayon::prelude::*;

/// The score-tile size of the flash path: `rows` query rows × `cols` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub rows: usize,
    pub cols: usize,
}

impl Tiles {
    /// The tile [`AttnPath::Auto`] uses (see the module docs).
    pub const DEFAULT: Tiles = Tiles { rows: 64, cols: 64 };
}

/// Which algorithm computes the attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnPath {
    /// [`choose_path`] decides from the shape.
    Auto,
    /// One score tile at a time, online softmax.
    Flash(Tiles),
    /// Full `[B, M, N]` score matrix.
    Plain,
}

/// The path [`AttnPath::Auto`] takes for a shape: flash, which measured
/// faster at every shape tried (see the module docs).
pub fn choose_path(_c: &AttnConfig) -> AttnPath {
    AttnPath::Flash(Tiles::DEFAULT)
}

/// The three inputs, each contiguous row-major.
#[derive(Clone, Copy, Debug)]
pub struct Qkv<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
}

/// The three input gradients, written in full by [`attention_backward`].
#[derive(Debug)]
pub struct QkvGrads<'a, T> {
    pub dq: &'a mut [T],
    pub dk: &'a mut [T],
    pub dv: &'a mut [T],
}

fn check_inputs<T>(c: &AttnConfig, x: &Qkv<T>) {
    assert!(
        x.q.len() == c.q_size() && x.k.len() == c.k_size() && x.v.len() == c.v_size(),
        "attention: q/k/v lengths do not match {c:?}"
    );
    assert!(
        c.is_empty() || (c.kv_len > 0 && c.qk_dim > 0 && c.v_dim > 0),
        "attention: needs at least one key and one channel ({c:?})"
    );
}

/// O = softmax(s·Q Kᵀ) V into `out` `[B, M, E]`, and the row log-sum-exp
/// L_r = ln Σ_c e^{s·(Q Kᵀ)_rc} into `lse` `[B, M]`.
pub fn attention_forward<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    path: AttnPath,
    x: Qkv<T>,
    out: &mut [T],
    lse: &mut [T],
) {
    check_inputs(c, &x);
    assert!(
        out.len() == c.out_size() && lse.len() == c.rows(),
        "attention: out/lse lengths do not match {c:?}"
    );
    if c.is_empty() {
        return;
    }
    match resolve(c, path) {
        Some(t) => flash_forward(c, t, &x, out, lse),
        None => plain_forward(c, &x, out, lse),
    }
}

/// Gradients of Σ dO ⊙ O with respect to q, k and v, from the forward's
/// `out` and `lse` (see the module docs for the equations).
pub fn attention_backward<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    path: AttnPath,
    x: Qkv<T>,
    out: &[T],
    lse: &[T],
    d_out: &[T],
    g: QkvGrads<T>,
) {
    check_inputs(c, &x);
    assert!(
        out.len() == c.out_size() && d_out.len() == c.out_size() && lse.len() == c.rows(),
        "attention_backward: out/d_out/lse lengths do not match {c:?}"
    );
    assert!(
        g.dq.len() == c.q_size() && g.dk.len() == c.k_size() && g.dv.len() == c.v_size(),
        "attention_backward: gradient lengths do not match {c:?}"
    );
    if c.is_empty() {
        g.dq.fill(T::ZERO);
        g.dk.fill(T::ZERO);
        g.dv.fill(T::ZERO);
        return;
    }
    let delta = row_dots(d_out, out, c.v_dim);
    let saved = Saved {
        lse,
        d_out,
        delta: &delta,
    };
    match resolve(c, path) {
        Some(t) => flash_backward(c, t, &x, &saved, g),
        None => plain_backward(c, &x, &saved, g),
    }
}

/// The flash tiles to run with, or `None` for the plain path.
fn resolve(c: &AttnConfig, path: AttnPath) -> Option<Tiles> {
    match path {
        AttnPath::Auto => resolve(c, choose_path(c)),
        AttnPath::Plain => None,
        AttnPath::Flash(t) => {
            assert!(
                t.rows > 0 && t.cols > 0,
                "attention: tile {t:?} needs rows > 0 and cols > 0"
            );
            Some(t)
        }
    }
}

/// What the backward needs besides q, k, v: L, dO and D = rowsum(dO ⊙ O).
struct Saved<'a, T> {
    lse: &'a [T],
    d_out: &'a [T],
    delta: &'a [T],
}

/// D_r = Σ_e a_re·b_re for rows of `width` elements.
fn row_dots<T: Float>(a: &[T], b: &[T], width: usize) -> Vec<T> {
    let mut d = vec![T::ZERO; a.len() / width];
    d.par_iter_mut()
        .zip(a.par_chunks(width).zip(b.par_chunks(width)))
        .with_min_len(64)
        .for_each(|(d, (ar, br))| {
            *d = simd::with_avx2(|| ar.iter().zip(br).fold(T::ZERO, |s, (&x, &y)| s + x * y));
        });
    d
}

/// Row-major view (for the plain path's batched GEMMs) of a matrix with
/// `width` columns, and of its transpose.
fn mat_rows<T>(data: &[T], width: usize) -> MatRef<'_, T> {
    MatRef {
        data,
        rs: width,
        cs: 1,
    }
}

fn mat_transposed<T>(data: &[T], width: usize) -> MatRef<'_, T> {
    MatRef {
        data,
        rs: 1,
        cs: width,
    }
}

// ---- flash path ---------------------------------------------------------

/// One batch item's slice of a `[B, rows, width]` operand.
fn item<T>(x: &[T], b: usize, rows: usize, width: usize) -> &[T] {
    &x[b * rows * width..(b + 1) * rows * width]
}

fn flash_forward<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    t: Tiles,
    x: &Qkv<T>,
    out: &mut [T],
    lse: &mut [T],
) {
    let (m, n, d, e) = (c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    out.par_chunks_mut(m * e)
        .zip(lse.par_chunks_mut(m))
        .enumerate()
        .for_each(|(b, (out_b, lse_b))| {
            let ops = ForwardOperands {
                q: item(x.q, b, m, d),
                k_t: transposed(item(x.k, b, n, d), d),
                v: rows_of(item(x.v, b, n, e), 0, e),
            };
            out_b
                .par_chunks_mut(t.rows * e)
                .zip(lse_b.par_chunks_mut(t.rows))
                .enumerate()
                .for_each(|(i, (out_t, lse_t))| {
                    forward_query_tile(c, t, &ops, i * t.rows, out_t, lse_t)
                });
        });
}

/// One batch item's forward operands, read in place: q, Kᵀ and V.
struct ForwardOperands<'a, T> {
    q: &'a [T],
    k_t: Mat<'a, T>,
    v: Mat<'a, T>,
}

/// One query tile (rows r0..) against every key tile, with the online
/// softmax; `out` (the tile's rows) doubles as the accumulator.
fn forward_query_tile<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    t: Tiles,
    ops: &ForwardOperands<T>,
    r0: usize,
    out: &mut [T],
    lse: &mut [T],
) {
    let (n, d, e) = (c.kv_len, c.qk_dim, c.v_dim);
    let rows = lse.len();
    let scale = T::from_f64(c.scale);
    let q_tile = rows_of(ops.q, r0 * d, d);
    let mut s = vec![T::ZERO; rows * t.cols];
    let mut max = vec![T::NEG_INFINITY; rows];
    let mut sum = vec![T::ZERO; rows];
    out.fill(T::ZERO);
    for c0 in (0..n).step_by(t.cols) {
        let cols = t.cols.min(n - c0);
        let s = &mut s[..rows * cols];
        // S = s·Q_i K_jᵀ
        tile_gemm((rows, d, cols), scale, q_tile, ops.k_t.at(0, c0), false, s);
        simd::with_avx2(|| {
            for (r, (s_r, o_r)) in s.chunks_mut(cols).zip(out.chunks_mut(e)).enumerate() {
                online_softmax_step(s_r, &mut max[r], &mut sum[r], o_r);
            }
        });
        // O_i += P V_j
        let p = rows_of(s, 0, cols);
        tile_gemm((rows, cols, e), T::ONE, p, ops.v.at(c0, 0), true, out);
    }
    simd::with_avx2(|| {
        for (r, o_r) in out.chunks_mut(e).enumerate() {
            let inv = T::ONE / sum[r];
            o_r.iter_mut().for_each(|o| *o *= inv);
            lse[r] = max[r] + sum[r].ln();
        }
    });
}

/// Folds one tile of scores `s` of a row into its running max and sum:
/// m' = max(m, max s), l' = l·e^{m − m'} + Σ e^{s − m'}; the row's output
/// accumulator is rescaled by e^{m − m'} and `s` becomes e^{s − m'}, ready
/// for `acc += P V`.
#[inline(always)]
fn online_softmax_step<T: Float>(s: &mut [T], max: &mut T, sum: &mut T, acc: &mut [T]) {
    let new_max = row_max(s).max(*max);
    let tile_sum = exp_shifted(s, new_max);
    if *max != new_max {
        // e^{−∞} = 0 on the first tile, where the accumulator is still zero.
        let rescale = (*max - new_max).exp();
        *sum *= rescale;
        acc.iter_mut().for_each(|a| *a *= rescale);
    }
    *sum += tile_sum;
    *max = new_max;
}

/// max_j x_j, in 8 independent lanes so that it vectorises (a plain fold
/// is one long dependency chain). NaN inputs are not propagated; the exp
/// that follows turns them into NaN outputs anyway.
#[inline(always)]
fn row_max<T: Float>(x: &[T]) -> T {
    let mut lanes = [T::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(ch) {
            *l = if v > *l { v } else { *l };
        }
    }
    let tail = chunks.remainder().iter();
    lanes
        .iter()
        .chain(tail)
        .fold(T::NEG_INFINITY, |a, &v| a.max(v))
}

/// One batch item's backward operands, read in place as the B side of one
/// product (see [`backward_key_chunk`]).
struct BackwardOperands<'a, T> {
    q: &'a [T],
    d_out: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
    k_t: Mat<'a, T>,
    v_t: Mat<'a, T>,
    k: Mat<'a, T>,
    q_rows: Mat<'a, T>,
    d_out_rows: Mat<'a, T>,
}

impl<'a, T: Float> BackwardOperands<'a, T> {
    fn new(c: &AttnConfig, x: &Qkv<'a, T>, saved: &Saved<'a, T>, b: usize) -> Self {
        let (m, n, d, e) = (c.q_len, c.kv_len, c.qk_dim, c.v_dim);
        let (q, k, v) = (item(x.q, b, m, d), item(x.k, b, n, d), item(x.v, b, n, e));
        let d_out = item(saved.d_out, b, m, e);
        BackwardOperands {
            q,
            d_out,
            lse: item(saved.lse, b, m, 1),
            delta: item(saved.delta, b, m, 1),
            k_t: transposed(k, d),
            v_t: transposed(v, e),
            k: rows_of(k, 0, d),
            q_rows: rows_of(q, 0, d),
            d_out_rows: rows_of(d_out, 0, e),
        }
    }
}

fn flash_backward<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    t: Tiles,
    x: &Qkv<T>,
    saved: &Saved<T>,
    g: QkvGrads<T>,
) {
    let (bs, m, n, d, e) = (c.batch, c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    let chunk_keys = keys_per_task(c, t);
    let splits = n.div_ceil(chunk_keys);
    let mut partials = (splits > 1).then(|| vec![T::ZERO; bs * splits * m * d]);
    let dq_target: &mut [T] = match partials.as_mut() {
        Some(p) => p,
        None => &mut *g.dq,
    };
    dq_target
        .par_chunks_mut(splits * m * d)
        .zip(g.dk.par_chunks_mut(n * d))
        .zip(g.dv.par_chunks_mut(n * e))
        .enumerate()
        .for_each(|(b, ((dq_b, dk_b), dv_b))| {
            let ops = BackwardOperands::new(c, x, saved, b);
            dq_b.par_chunks_mut(m * d)
                .zip(dk_b.par_chunks_mut(chunk_keys * d))
                .zip(dv_b.par_chunks_mut(chunk_keys * e))
                .enumerate()
                .for_each(|(i, ((dq_part, dk_c), dv_c))| {
                    let grads = QkvGrads {
                        dq: dq_part,
                        dk: dk_c,
                        dv: dv_c,
                    };
                    backward_key_chunk(c, t, &ops, i * chunk_keys, grads)
                });
        });
    if let Some(p) = partials {
        g.dq.par_chunks_mut(m * d)
            .zip(p.par_chunks(splits * m * d))
            .for_each(|(dq_b, parts)| {
                dq_b.copy_from_slice(&parts[..m * d]);
                for part in parts.chunks(m * d).skip(1) {
                    simd::with_avx2(|| dq_b.iter_mut().zip(part).for_each(|(a, &p)| *a += p));
                }
            });
    }
}

/// Keys per backward task: whole batch items when there are enough of them
/// to keep every thread busy (about two tasks per thread), else the keys
/// are split into runs of whole tiles.
fn keys_per_task(c: &AttnConfig, t: Tiles) -> usize {
    let tasks_wanted = 2 * rayon::current_num_threads();
    let splits = tasks_wanted
        .div_ceil(c.batch)
        .min(c.kv_len.div_ceil(t.cols));
    c.kv_len.div_ceil(splits).div_ceil(t.cols) * t.cols
}

/// The backward for keys k0.. of one batch item (as many as `g.dk` holds)
/// against every query tile: writes those rows of dK and dV, and this
/// chunk's contribution to the item's dQ (`g.dq`, `[M, C]`).
fn backward_key_chunk<T: Gemm + GemmFloat>(
    c: &AttnConfig,
    t: Tiles,
    ops: &BackwardOperands<T>,
    k0: usize,
    g: QkvGrads<T>,
) {
    let (m, d, e) = (c.q_len, c.qk_dim, c.v_dim);
    let scale = T::from_f64(c.scale);
    let keys = g.dk.len() / d;
    let mut p = vec![T::ZERO; t.rows * t.cols];
    let mut ds = vec![T::ZERO; t.rows * t.cols];
    g.dq.fill(T::ZERO);
    g.dk.fill(T::ZERO);
    g.dv.fill(T::ZERO);
    for j0 in (0..keys).step_by(t.cols) {
        let cols = t.cols.min(keys - j0);
        let key = k0 + j0;
        let dk_j = &mut g.dk[j0 * d..(j0 + cols) * d];
        let dv_j = &mut g.dv[j0 * e..(j0 + cols) * e];
        for r0 in (0..m).step_by(t.rows) {
            let rows = t.rows.min(m - r0);
            let (p, ds) = (&mut p[..rows * cols], &mut ds[..rows * cols]);
            // P = e^{s·Q_i K_jᵀ − L}
            let q_i = rows_of(ops.q, r0 * d, d);
            tile_gemm((rows, d, cols), scale, q_i, ops.k_t.at(0, key), false, p);
            let lse = &ops.lse[r0..r0 + rows];
            simd::with_avx2(|| {
                for (p_r, &l) in p.chunks_mut(cols).zip(lse) {
                    exp_shifted(p_r, l);
                }
            });
            // dV_j += Pᵀ dO_i
            let do_i = ops.d_out_rows.at(r0, 0);
            tile_gemm(
                (cols, rows, e),
                T::ONE,
                transposed(p, cols),
                do_i,
                true,
                dv_j,
            );
            // dS = P ⊙ (dO_i V_jᵀ − D)
            let do_i = rows_of(ops.d_out, r0 * e, e);
            tile_gemm((rows, e, cols), T::ONE, do_i, ops.v_t.at(0, key), false, ds);
            let delta = &ops.delta[r0..r0 + rows];
            simd::with_avx2(|| softmax_grad_rows(p, ds, delta, cols));
            // dQ_i += s·dS K_j,  dK_j += s·dSᵀ Q_i
            let dq_i = &mut g.dq[r0 * d..(r0 + rows) * d];
            let k_j = ops.k.at(key, 0);
            tile_gemm(
                (rows, cols, d),
                scale,
                rows_of(ds, 0, cols),
                k_j,
                true,
                dq_i,
            );
            let q_i = ops.q_rows.at(r0, 0);
            tile_gemm(
                (cols, rows, d),
                scale,
                transposed(ds, cols),
                q_i,
                true,
                dk_j,
            );
        }
    }
}

/// dS_rc = P_rc·(dP_rc − D_r) in place of dP, rows of `width`.
#[inline(always)]
fn softmax_grad_rows<T: Float>(p: &[T], dp: &mut [T], delta: &[T], width: usize) {
    for ((p_r, dp_r), &dl) in p.chunks(width).zip(dp.chunks_mut(width)).zip(delta) {
        for (g, &pv) in dp_r.iter_mut().zip(p_r) {
            *g = pv * (*g - dl);
        }
    }
}

// ---- tile GEMM ----------------------------------------------------------
//
// C ← α·A·B (+ C) on strided tiles read in place, through the packed GEMM
// core shared with the convolution (`crate::gemm::packed`).

/// Row-major matrix of `width` columns starting at `off`.
fn rows_of<T>(data: &[T], off: usize, width: usize) -> Mat<'_, T> {
    Mat::row_major(&data[off..], width)
}

/// The transpose of a row-major matrix of `width` columns.
fn transposed<T>(data: &[T], width: usize) -> Mat<'_, T> {
    Mat::transposed(data, width)
}

/// C ← α·A·B, or C += α·A·B with `accumulate`, for an m×k A and a k×n B
/// (any strides) and a contiguous m×n C. Single-threaded on purpose: every
/// tile already runs on its own rayon task. α is folded into the packed A.
fn tile_gemm<T: GemmFloat>(
    (m, k, n): (usize, usize, usize),
    alpha: T,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    c: &mut [T],
) {
    assert_eq!(c.len(), m * n, "tile_gemm: C is not m×n");
    let mut packed = PackedA::new(a, m, k);
    if alpha != T::ONE {
        packed.scale(alpha);
    }
    // SAFETY: c is an exclusively borrowed contiguous m×n matrix.
    unsafe { packed.gemm(b, n, MatPtr::row_major(c, n), accumulate) };
}

// ---- plain path ---------------------------------------------------------

/// Batch offsets `i·stride` for the batched GEMMs.
fn offsets(batch: usize, stride: usize) -> Vec<usize> {
    (0..batch).map(|i| i * stride).collect()
}

/// The full scores s·Q Kᵀ, `[B, M, N]`.
fn all_scores<T: Gemm>(c: &AttnConfig, x: &Qkv<T>) -> Vec<T> {
    let (bs, m, n, d) = (c.batch, c.q_len, c.kv_len, c.qk_dim);
    let mut s = vec![T::ZERO; bs * m * n];
    batched_gemm(
        (m, d, n),
        T::from_f64(c.scale),
        (mat_rows(x.q, d), &offsets(bs, m * d)),
        (mat_transposed(x.k, d), &offsets(bs, n * d)),
        T::ZERO,
        &mut s,
    );
    s
}

fn plain_forward<T: Gemm>(c: &AttnConfig, x: &Qkv<T>, out: &mut [T], lse: &mut [T]) {
    let (bs, m, n, e) = (c.batch, c.q_len, c.kv_len, c.v_dim);
    let mut p = all_scores(c, x);
    p.par_chunks_mut(n)
        .zip(lse.par_iter_mut())
        .with_min_len(16)
        .for_each(|(row, l)| {
            simd::with_avx2(|| {
                let max = row.iter().fold(T::NEG_INFINITY, |a, &v| a.max(v));
                let sum = exp_shifted(row, max);
                let inv = T::ONE / sum;
                row.iter_mut().for_each(|v| *v *= inv);
                *l = max + sum.ln();
            })
        });
    batched_gemm(
        (m, n, e),
        T::ONE,
        (mat_rows(&p, n), &offsets(bs, m * n)),
        (mat_rows(x.v, e), &offsets(bs, n * e)),
        T::ZERO,
        out,
    );
}

fn plain_backward<T: Gemm>(c: &AttnConfig, x: &Qkv<T>, saved: &Saved<T>, g: QkvGrads<T>) {
    let (bs, m, n, d, e) = (c.batch, c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    let scale = T::from_f64(c.scale);
    let mut p = all_scores(c, x);
    p.par_chunks_mut(n)
        .zip(saved.lse.par_iter())
        .with_min_len(16)
        .for_each(|(row, &l)| {
            simd::with_avx2(|| exp_shifted(row, l));
        });
    let (mn, me) = (offsets(bs, m * n), offsets(bs, m * e));
    batched_gemm(
        (n, m, e),
        T::ONE,
        (mat_transposed(&p, n), &mn),
        (mat_rows(saved.d_out, e), &me),
        T::ZERO,
        g.dv,
    );
    let mut ds = vec![T::ZERO; bs * m * n];
    batched_gemm(
        (m, e, n),
        T::ONE,
        (mat_rows(saved.d_out, e), &me),
        (mat_transposed(x.v, e), &offsets(bs, n * e)),
        T::ZERO,
        &mut ds,
    );
    ds.par_chunks_mut(n * 16)
        .zip(p.par_chunks(n * 16))
        .zip(saved.delta.par_chunks(16))
        .for_each(|((ds, p), delta)| simd::with_avx2(|| softmax_grad_rows(p, ds, delta, n)));
    batched_gemm(
        (m, n, d),
        scale,
        (mat_rows(&ds, n), &mn),
        (mat_rows(x.k, d), &offsets(bs, n * d)),
        T::ZERO,
        g.dq,
    );
    batched_gemm(
        (n, m, d),
        scale,
        (mat_transposed(&ds, n), &mn),
        (mat_rows(x.q, d), &offsets(bs, m * d)),
        T::ZERO,
        g.dk,
    );
}

// ---- exp ----------------------------------------------------------------

/// x_j ← e^{x_j − shift}, returning Σ_j e^{x_j − shift}. f32 on AVX2 uses
/// the polynomial `exp_ps` (libm's `expf` is not vectorised).
#[inline(always)]
fn exp_shifted<T: Float>(x: &mut [T], shift: T) -> T {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && simd::isa() >= Isa::Avx2 {
        // SAFETY: T is f32 (same layout), checked just above.
        let xf = unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) };
        // SAFETY: AVX2 and FMA are available (checked above).
        let sum = unsafe { exp_shifted_avx2(xf, shift.to_f64() as f32) };
        return T::from_f64(sum as f64);
    }
    let mut sum = T::ZERO;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(x: &mut [f32], shift: f32) -> f32 {
    use simd::avx2::exp_ps;
    use std::arch::x86_64::*;
    let sh = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for ch in &mut chunks {
        // SAFETY: `ch` holds exactly 8 elements.
        unsafe {
            let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(ch.as_ptr()), sh));
            _mm256_storeu_ps(ch.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
    }
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 elements.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
    let mut sum: f32 = lanes.iter().sum();
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        // The tail goes through the same vector exp (padded), so every
        // element is computed the same way.
        let mut tmp = [shift; 8];
        tmp[..tail.len()].copy_from_slice(tail);
        // SAFETY: `tmp` holds 8 elements.
        unsafe {
            let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(tmp.as_ptr()), sh));
            _mm256_storeu_ps(tmp.as_mut_ptr(), e);
        }
        tail.copy_from_slice(&tmp[..tail.len()]);
        sum += tail.iter().sum::<f32>();
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        crate::test_data::uniform_f32(n, seed as u64)
    }

    fn check_tile_gemm() {
        for (m, k, n) in [
            (1, 1, 1),
            (6, 3, 16),
            (7, 5, 17),
            (13, 64, 40),
            (64, 256, 64),
        ] {
            for a_transposed in [false, true] {
                for beta in [0.0f32, 1.0] {
                    let (a, b) = (values(m * k, 1), values(k * n, 2));
                    let c0 = values(m * n, 3);
                    let a_at = |i: usize, kk: usize| {
                        if a_transposed {
                            a[kk * m + i]
                        } else {
                            a[i * k + kk]
                        }
                    };
                    let av = if a_transposed {
                        transposed(&a, m)
                    } else {
                        rows_of(&a, 0, k)
                    };
                    // Without accumulation C's old contents are ignored, even NaN.
                    let mut c = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        c0.clone()
                    };
                    let bv = rows_of(&b, 0, n);
                    tile_gemm((m, k, n), 0.5, av, bv, beta == 1.0, &mut c);
                    for i in 0..m {
                        for j in 0..n {
                            let dot: f64 = (0..k)
                                .map(|kk| a_at(i, kk) as f64 * b[kk * n + j] as f64)
                                .sum();
                            let want = 0.5 * dot + beta as f64 * c0[i * n + j] as f64;
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{m}x{k}x{n} at={a_transposed} β={beta} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tile_gemm_matches_naive_product() {
        check_tile_gemm();
        simd::with_isa(Isa::Scalar, check_tile_gemm);
    }

    #[test]
    fn row_max_covers_lanes_and_tail() {
        let mut x: Vec<f32> = (0..21).map(|i| -(i as f32)).collect();
        assert_eq!(row_max(&x), 0.0);
        x[20] = 5.0;
        assert_eq!(row_max(&x), 5.0);
        x[9] = 7.0;
        assert_eq!(row_max(&x), 7.0);
        assert_eq!(row_max::<f32>(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_shifted_matches_scalar() {
        let mut x: Vec<f32> = (0..21).map(|i| i as f32 * 0.37 - 4.0).collect();
        let want: Vec<f32> = x.iter().map(|v| (v - 1.5).exp()).collect();
        let sum = exp_shifted(&mut x, 1.5);
        for (a, b) in x.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.abs());
        }
        assert!((sum - want.iter().sum::<f32>()).abs() < 1e-4);
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;
    use crate::attention::reference;

    /// n values in (−2, 2).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        crate::test_data::uniform_within(n, seed, 2.0)
    }

    /// Both paths (and flash tiles that leave ragged edges) against the
    /// definition's loops, every element of O, L, dQ, dK and dV, in f64.
    #[test]
    fn every_path_matches_the_reference_forward_and_backward() {
        let c = AttnConfig {
            batch: 2,
            q_len: 37,
            kv_len: 29,
            qk_dim: 5,
            v_dim: 7,
            scale: 0.4,
        };
        let (q, k, v) = (
            values(c.q_size(), 1),
            values(c.k_size(), 2),
            values(c.v_size(), 3),
        );
        let d_out = values(c.out_size(), 4);
        let (want_o, want_l) = reference::forward(&c, &q, &k, &v);
        let (want_dq, want_dk, want_dv) = reference::backward(&c, &q, &k, &v, &d_out);
        let paths = [
            AttnPath::Plain,
            AttnPath::Flash(Tiles::DEFAULT),
            AttnPath::Flash(Tiles { rows: 8, cols: 16 }),
        ];
        for path in paths {
            let x = Qkv {
                q: &q,
                k: &k,
                v: &v,
            };
            let (mut o, mut l) = (vec![0.0; c.out_size()], vec![0.0; c.rows()]);
            attention_forward(&c, path, x, &mut o, &mut l);
            let (mut dq, mut dk, mut dv) = (
                vec![0.0; c.q_size()],
                vec![0.0; c.k_size()],
                vec![0.0; c.v_size()],
            );
            let g = QkvGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            attention_backward(&c, path, x, &o, &l, &d_out, g);
            for (what, got, want) in [
                ("O", &o, &want_o),
                ("L", &l, &want_l),
                ("dQ", &dq, &want_dq),
                ("dK", &dk, &want_dk),
                ("dV", &dv, &want_dv),
            ] {
                for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                    assert!((a - b).abs() < 1e-12, "{path:?} {what}[{i}]: {a} vs {b}");
                }
            }
        }
    }
}
