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
//!   softmax), and the output is divided by l at the end. Work is spread
//!   over rayon as (batch, query tile) tasks, each running single-threaded
//!   GEMMs on cache-resident tiles. The backward (FlashAttention-2 order)
//!   gives each task a run of key tiles (it owns those rows of dK and dV)
//!   and loops over every query tile, recomputing S and P; its dQ
//!   contributions go to a private partial that is summed at the end. With
//!   at least as many batch items as threads every task owns a whole batch
//!   item and writes dQ directly.
//! - **Plain** ([`AttnPath::Plain`]): the full `[B, M, N]` score matrix is
//!   materialised with one batched GEMM, softmax runs over its rows, and a
//!   second batched GEMM applies it; the backward does the same with five
//!   batched GEMMs. Big GEMMs, but each one is threaded inside
//!   `matrixmultiply`, and the score matrices make a round trip to memory.
//!
//! Tiles are chosen ([`Tiles::for_config`]) so that every GEMM operand of a
//! tile product stays below 2¹⁵ elements: that keeps the operands in L2, and
//! it is the size under which `matrixmultiply` runs a product on the calling
//! thread (larger products start its own threads, which would compete with
//! the rayon tasks already using every core).
//!
//! [`AttnPath::Auto`] picks the path per shape; see [`choose_path`] for the
//! measurements behind the choice.
//!
//! Numerics: scores are max-subtracted before `exp` (every exponent ≤ 0),
//! sums and products accumulate in the element type (f32 in training,
//! f64 in gradient checks).

use super::gemm::{Gemm, MatRef, batched_gemm};
use super::simd::{self, SimdLevel};
use crate::Float;
use rayon::prelude::*;

/// Sizes and scale of one attention call (see the module docs for layouts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnConfig {
    pub batch: usize,
    /// M: query rows per batch item.
    pub q_len: usize,
    /// N: key/value rows per batch item.
    pub kv_len: usize,
    /// C: channels of q and k.
    pub qk_dim: usize,
    /// E: channels of v and of the output.
    pub v_dim: usize,
    /// s in softmax(s·Q Kᵀ), usually 1/√C.
    pub scale: f64,
}

impl AttnConfig {
    fn q_size(&self) -> usize {
        self.batch * self.q_len * self.qk_dim
    }
    fn k_size(&self) -> usize {
        self.batch * self.kv_len * self.qk_dim
    }
    fn v_size(&self) -> usize {
        self.batch * self.kv_len * self.v_dim
    }
    fn out_size(&self) -> usize {
        self.batch * self.q_len * self.v_dim
    }
    fn rows(&self) -> usize {
        self.batch * self.q_len
    }
    fn is_empty(&self) -> bool {
        self.batch == 0 || self.q_len == 0
    }
}

/// The score-tile size of the flash path: `rows` query rows × `cols` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub rows: usize,
    pub cols: usize,
}

/// Upper bound (elements) for each GEMM operand of a tile product: 128 KB
/// in f32, so operands stay in L2, and `matrixmultiply` stays on the
/// calling thread (it threads products with m·k + k·n ≥ 2¹⁵).
const OPERAND_BUDGET: usize = 1 << 15;

impl Tiles {
    /// The largest tile (at most 64 × 64, halving the larger side first)
    /// whose products keep every operand under [`OPERAND_BUDGET`]. The
    /// biggest operand pair is a query tile and a key tile, both `width`
    /// channels wide: width·(rows + cols) elements.
    pub fn for_config(c: &AttnConfig) -> Tiles {
        let width = c.qk_dim.max(c.v_dim).max(1);
        let mut t = Tiles { rows: 64, cols: 64 };
        while width * (t.rows + t.cols) >= OPERAND_BUDGET && t.rows.max(t.cols) > 8 {
            if t.cols >= t.rows {
                t.cols /= 2;
            } else {
                t.rows /= 2;
            }
        }
        t
    }
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

/// The path [`AttnPath::Auto`] takes for a shape.
pub fn choose_path(c: &AttnConfig) -> AttnPath {
    AttnPath::Flash(Tiles::for_config(c))
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
pub fn attention_forward<T: Gemm>(
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
pub fn attention_backward<T: Gemm>(
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
            assert!(t.rows > 0 && t.cols > 0, "attention: empty tile {t:?}");
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

/// C ← α·A·B + β·C for one m×k A and k×n B read at the given offsets, C a
/// contiguous m×n block. Sized by the callers to run on this thread.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Gemm>(
    (m, k, n): (usize, usize, usize),
    alpha: T,
    a: MatRef<T>,
    a_off: usize,
    b: MatRef<T>,
    b_off: usize,
    beta: T,
    c: &mut [T],
) {
    batched_gemm(m, k, n, alpha, a, &[a_off], b, &[b_off], beta, c);
}

/// Row-major view of a matrix with `width` columns, and its transpose.
fn rows_of<T>(data: &[T], width: usize) -> MatRef<'_, T> {
    MatRef {
        data,
        rs: width,
        cs: 1,
    }
}
fn transposed<T>(data: &[T], width: usize) -> MatRef<'_, T> {
    MatRef {
        data,
        rs: 1,
        cs: width,
    }
}

// ---- flash path ---------------------------------------------------------

fn flash_forward<T: Gemm>(c: &AttnConfig, t: Tiles, x: &Qkv<T>, out: &mut [T], lse: &mut [T]) {
    let (m, e) = (c.q_len, c.v_dim);
    out.par_chunks_mut(m * e)
        .zip(lse.par_chunks_mut(m))
        .enumerate()
        .for_each(|(b, (out_b, lse_b))| {
            out_b
                .par_chunks_mut(t.rows * e)
                .zip(lse_b.par_chunks_mut(t.rows))
                .enumerate()
                .for_each(|(i, (out_t, lse_t))| {
                    forward_query_tile(c, t, x, b, i * t.rows, out_t, lse_t)
                });
        });
}

/// One query tile (rows r0.. of batch item b) against every key tile, with
/// the online softmax; `out` (the tile's rows) doubles as the accumulator.
fn forward_query_tile<T: Gemm>(
    c: &AttnConfig,
    t: Tiles,
    x: &Qkv<T>,
    b: usize,
    r0: usize,
    out: &mut [T],
    lse: &mut [T],
) {
    let (n, d, e) = (c.kv_len, c.qk_dim, c.v_dim);
    let rows = lse.len();
    let q_off = (b * c.q_len + r0) * d;
    let mut s = vec![T::ZERO; rows * t.cols];
    let mut max = vec![T::NEG_INFINITY; rows];
    let mut sum = vec![T::ZERO; rows];
    out.fill(T::ZERO);
    for c0 in (0..n).step_by(t.cols) {
        let cols = t.cols.min(n - c0);
        let s = &mut s[..rows * cols];
        let kv_row = b * n + c0;
        gemm(
            (rows, d, cols),
            T::from_f64(c.scale),
            rows_of(x.q, d),
            q_off,
            transposed(x.k, d),
            kv_row * d,
            T::ZERO,
            s,
        );
        simd::with_avx2(|| {
            for (r, (s_r, o_r)) in s.chunks_mut(cols).zip(out.chunks_mut(e)).enumerate() {
                online_softmax_step(s_r, &mut max[r], &mut sum[r], o_r);
            }
        });
        gemm(
            (rows, cols, e),
            T::ONE,
            rows_of(s, cols),
            0,
            rows_of(x.v, e),
            kv_row * e,
            T::ONE,
            out,
        );
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
    let new_max = s.iter().fold(*max, |a, &v| a.max(v));
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

fn flash_backward<T: Gemm>(c: &AttnConfig, t: Tiles, x: &Qkv<T>, saved: &Saved<T>, g: QkvGrads<T>) {
    let (m, n, d, e) = (c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    let chunk_keys = keys_per_task(c, t);
    let splits = n.div_ceil(chunk_keys);
    let mut partials = (splits > 1).then(|| vec![T::ZERO; c.batch * splits * m * d]);
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
                    backward_key_chunk(c, t, x, saved, b, i * chunk_keys, grads)
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

/// The backward for keys k0.. of batch item b (as many as `g.dk` holds)
/// against every query tile: writes those rows of dK and dV, and this
/// chunk's contribution to dQ of the batch item (`g.dq`, `[M, C]`).
fn backward_key_chunk<T: Gemm>(
    c: &AttnConfig,
    t: Tiles,
    x: &Qkv<T>,
    saved: &Saved<T>,
    b: usize,
    k0: usize,
    g: QkvGrads<T>,
) {
    let (m, n, d, e) = (c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    let scale = T::from_f64(c.scale);
    let keys = g.dk.len() / d;
    let mut p = vec![T::ZERO; t.rows * t.cols];
    let mut ds = vec![T::ZERO; t.rows * t.cols];
    g.dq.fill(T::ZERO);
    g.dk.fill(T::ZERO);
    g.dv.fill(T::ZERO);
    for j0 in (0..keys).step_by(t.cols) {
        let cols = t.cols.min(keys - j0);
        let kv_row = b * n + k0 + j0;
        let dk_j = &mut g.dk[j0 * d..(j0 + cols) * d];
        let dv_j = &mut g.dv[j0 * e..(j0 + cols) * e];
        for r0 in (0..m).step_by(t.rows) {
            let rows = t.rows.min(m - r0);
            let q_row = b * m + r0;
            let (p, ds) = (&mut p[..rows * cols], &mut ds[..rows * cols]);
            // P = e^{s·Q Kᵀ − L}
            gemm(
                (rows, d, cols),
                scale,
                rows_of(x.q, d),
                q_row * d,
                transposed(x.k, d),
                kv_row * d,
                T::ZERO,
                p,
            );
            let lse = &saved.lse[q_row..q_row + rows];
            simd::with_avx2(|| {
                for (p_r, &l) in p.chunks_mut(cols).zip(lse) {
                    exp_shifted(p_r, l);
                }
            });
            // dV_j += Pᵀ dO_i
            gemm(
                (cols, rows, e),
                T::ONE,
                transposed(p, cols),
                0,
                rows_of(saved.d_out, e),
                q_row * e,
                T::ONE,
                dv_j,
            );
            // dS = P ⊙ (dO_i V_jᵀ − D)
            gemm(
                (rows, e, cols),
                T::ONE,
                rows_of(saved.d_out, e),
                q_row * e,
                transposed(x.v, e),
                kv_row * e,
                T::ZERO,
                ds,
            );
            let delta = &saved.delta[q_row..q_row + rows];
            simd::with_avx2(|| softmax_grad_rows(p, ds, delta, cols));
            // dQ_i += s·dS K_j,  dK_j += s·dSᵀ Q_i
            gemm(
                (rows, cols, d),
                scale,
                rows_of(ds, cols),
                0,
                rows_of(x.k, d),
                kv_row * d,
                T::ONE,
                &mut g.dq[r0 * d..(r0 + rows) * d],
            );
            gemm(
                (cols, rows, d),
                scale,
                transposed(ds, cols),
                0,
                rows_of(x.q, d),
                q_row * d,
                T::ONE,
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
        m,
        d,
        n,
        T::from_f64(c.scale),
        rows_of(x.q, d),
        &offsets(bs, m * d),
        transposed(x.k, d),
        &offsets(bs, n * d),
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
        m,
        n,
        e,
        T::ONE,
        rows_of(&p, n),
        &offsets(bs, m * n),
        rows_of(x.v, e),
        &offsets(bs, n * e),
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
        n,
        m,
        e,
        T::ONE,
        transposed(&p, n),
        &mn,
        rows_of(saved.d_out, e),
        &me,
        T::ZERO,
        g.dv,
    );
    let mut ds = vec![T::ZERO; bs * m * n];
    batched_gemm(
        m,
        e,
        n,
        T::ONE,
        rows_of(saved.d_out, e),
        &me,
        transposed(x.v, e),
        &offsets(bs, n * e),
        T::ZERO,
        &mut ds,
    );
    ds.par_chunks_mut(n * 16)
        .zip(p.par_chunks(n * 16))
        .zip(saved.delta.par_chunks(16))
        .for_each(|((ds, p), delta)| simd::with_avx2(|| softmax_grad_rows(p, ds, delta, n)));
    batched_gemm(
        m,
        n,
        d,
        scale,
        rows_of(&ds, n),
        &mn,
        rows_of(x.k, d),
        &offsets(bs, n * d),
        T::ZERO,
        g.dq,
    );
    batched_gemm(
        n,
        m,
        d,
        scale,
        transposed(&ds, n),
        &mn,
        rows_of(x.q, d),
        &offsets(bs, m * d),
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
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && simd::level() == SimdLevel::Avx2Fma
    {
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

    #[test]
    fn tiles_respect_the_operand_budget() {
        for width in [1, 12, 32, 64, 128, 256, 512, 1024] {
            let c = AttnConfig {
                batch: 1,
                q_len: 1,
                kv_len: 1,
                qk_dim: width,
                v_dim: width,
                scale: 1.0,
            };
            let t = Tiles::for_config(&c);
            assert!(width * (t.rows + t.cols) < OPERAND_BUDGET || t.rows.max(t.cols) == 8);
        }
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
