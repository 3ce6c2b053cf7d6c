//! Single-head attention on the GPU: O = softmax(s·Q Kᵀ) V with the row
//! log-sum-exp L, and its backward (the equations of
//! [`crate::attention::cpu`]), for q `[B, M, C]`, k `[B, N, C]`,
//! v `[B, N, E]`.
//!
//! # How
//!
//! The products run on cuBLAS ([`crate::gemm::cuda`]), batched over the batch
//! items; `attention.cu` does the rest:
//!
//! - forward, per chunk of batch items: S = s·Q Kᵀ (GEMM, K through the
//!   transpose flag), `softmax_rows` turns S into P in place and writes
//!   L_r = max_r + ln Σ_j e^{S_rj − max_r}, then O = P V (GEMM);
//! - backward: D_r = Σ_e dO_re·O_re (`row_dot`), then per chunk S is
//!   recomputed (GEMM), P = e^{S − L} (`exp_minus_lse`), dV = Pᵀ dO,
//!   dP = dO Vᵀ (GEMMs), dS = P ⊙ (dP − D) (`softmax_grad`, in place over
//!   dP), dQ = s·dS K and dK = s·dSᵀ Q (GEMMs).
//!
//! This is flash-*style* in what it keeps between the passes: only O and
//! the O(M) per-row L are saved, and the backward rebuilds P from a
//! recomputed S, exactly like the CPU kernel. It is not flash attention in
//! execution: each chunk materialises its `[chunk, M, N]` score matrix in
//! global memory (one buffer forward, two backward), bounded by
//! [`SCRATCH_FLOATS`] by cutting the batch into chunks. At the U-Net's
//! 16×16 maps (M = N = 256, C = 256) a batch item's scores are 256 KiB, so a
//! whole batch of 128 is one chunk (32 MiB per buffer) and the GEMMs are
//! large enough for cuBLAS to run near peak. A fused tile kernel (scores in
//! shared memory, online softmax, FlashAttention-2's backward) is the next
//! step: it would save the score matrix's round trips through memory.
//!
//! Operands are read in place through [`MatOperand`]'s leading dimension
//! and transpose flag when a view allows it ([`gemm_view`]): the U-Net's
//! token views `[B, H·W, C]` of `[B, C, H·W]` maps are transposed matrices,
//! which cuBLAS reads without a copy.
//!
//! The sequence of launches is written once, generic over [`Exec`], so a
//! CPU unit test can run the same plan (the same GEMM descriptors, offsets
//! and chunking) on host memory against the CPU kernel; no GPU is needed to
//! check the plan, only the `.cu` kernels themselves.

use super::AttnConfig;
use crate::cuda::abi::{Arg, Param};
use crate::cuda::{BLOCK, CudaDevice, CudaError, DeviceBuffer, Result, grid_1d, grid_rows};
use crate::gemm::cuda::{self as gemm, MatOperand, MatOut};

const MODULE: &str = "attention";

/// Score-matrix scratch bound, in f32 (256 MiB): the batch is processed in
/// chunks of items whose score buffers fit (at least one item per chunk,
/// so a single item with M·N above this bound still runs).
pub const SCRATCH_FLOATS: usize = 64 << 20;

/// Most blocks a one-block-per-row launch asks for; its kernel strides
/// over the remaining rows.
const MAX_ROW_BLOCKS: usize = 1 << 20;

/// `v` as a kernel's `int`, or an error naming it.
pub(crate) fn to_i32(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| CudaError::Driver {
        op: "launch",
        msg: format!("{what} = {v} does not fit a 32-bit kernel argument"),
    })
}

/// How a `[batch, rows, cols]` view with element `strides` reads as a
/// batched GEMM operand: `(ld, trans, batch_stride)` such that element
/// (b, r, c) lies at `b·batch_stride + r·ld + c` (`trans` false) or
/// `b·batch_stride + c·ld + r` (`trans` true) past the view's offset, with
/// `ld` at least the stored row length cuBLAS requires. `None` when neither
/// the columns nor the rows are unit-stride: the view must be packed.
pub fn gemm_view(shape: [usize; 3], strides: [usize; 3]) -> Option<(usize, bool, usize)> {
    let [b, r, c] = shape;
    let [sb, sr, sc] = strides;
    // Size-1 dims may carry any stride; their index is always 0.
    let batch_stride = if b <= 1 { 0 } else { sb };
    // Row-major rows: unit column stride, rows at least `c` apart.
    if c <= 1 || sc == 1 {
        let ld = if r <= 1 { c.max(1) } else { sr };
        if ld >= c.max(1) {
            return Some((ld, false, batch_stride));
        }
    }
    // A transposed matrix (stored `[c, r]`): unit row stride, columns at
    // least `r` apart.
    if r <= 1 || sr == 1 {
        let ld = if c <= 1 { r.max(1) } else { sc };
        if ld >= r.max(1) {
            return Some((ld, true, batch_stride));
        }
    }
    None
}

/// Batch items per chunk when each needs `buffers` score matrices of
/// `m × n` floats: as many as fit in [`SCRATCH_FLOATS`], at least 1, at
/// most `batch`.
pub fn chunk_items(batch: usize, m: usize, n: usize, buffers: usize) -> usize {
    let per_item = (buffers * m * n).max(1);
    (SCRATCH_FLOATS / per_item).clamp(1, batch.max(1))
}

/// `op` read as its transpose (no data moves).
fn transposed(op: MatOperand) -> MatOperand {
    MatOperand {
        trans: !op.trans,
        ..op
    }
}

/// `op` from batch item `b0` on.
fn from_item(op: MatOperand, b0: usize) -> MatOperand {
    MatOperand {
        ptr: addr(op.ptr, b0 * op.batch_stride),
        ..op
    }
}

/// The address `i` floats past `ptr`.
fn addr(ptr: u64, i: usize) -> u64 {
    ptr + 4 * i as u64
}

/// A chunk's score matrices (`[chunk, m, n]`, contiguous) as an operand.
fn scores(ptr: u64, m: usize, n: usize, trans: bool) -> MatOperand {
    MatOperand {
        ptr,
        ld: n,
        trans,
        batch_stride: m * n,
    }
}

/// Contiguous `[items, rows, cols]` output from batch item `b0` on.
fn out_from(ptr: u64, b0: usize, rows: usize, cols: usize) -> MatOut {
    MatOut {
        ptr: addr(ptr, b0 * rows * cols),
        ld: cols,
        batch_stride: rows * cols,
    }
}

/// What the attention plan runs on: the GPU, or host memory in tests.
/// Addresses are byte addresses of f32 data, as on the device.
trait Exec {
    /// Keeps a scratch allocation alive.
    type Buf;
    /// Uninitialised scratch of `len` f32 and its address.
    fn scratch(&self, len: usize) -> Result<(Self::Buf, u64)>;
    /// `C = alpha·A·B + beta·C` per batch item (see [`gemm::gemm`]).
    fn gemm(
        &self,
        mnk: (usize, usize, usize),
        a: MatOperand,
        b: MatOperand,
        c: MatOut,
        batch: usize,
        alpha_beta: (f32, f32),
    ) -> Result<()>;
    /// Row softmax in place over `rows × n` scores, writing each row's lse.
    fn softmax_rows(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()>;
    /// s ← e^{s − lse_row} over `rows × n` scores.
    fn exp_minus_lse(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()>;
    /// ds ← p ⊙ (ds − delta_row) over `rows × n`.
    fn softmax_grad(&self, p: u64, ds: u64, delta: u64, rows: usize, n: usize) -> Result<()>;
    /// d_r = Σ_e A(r)_e·o_re, A's row r being item r / rows_per_item, row
    /// r % rows_per_item; `o` is contiguous `[rows, width]`.
    fn row_dot(
        &self,
        a: MatOperand,
        o: u64,
        d: u64,
        rows_per_item: usize,
        rows: usize,
        width: usize,
    ) -> Result<()>;
}

/// The forward plan: `out` (`[B, M, E]`) and `lse` (`[B, M]`) are written,
/// `chunk` batch items at a time.
fn run_forward<X: Exec>(
    x: &X,
    c: &AttnConfig,
    chunk: usize,
    [q, k, v]: [MatOperand; 3],
    (out, lse): (u64, u64),
) -> Result<()> {
    let (bs, m, n, d, e) = (c.batch, c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    if bs == 0 || m == 0 {
        return Ok(());
    }
    assert!(n > 0 && d > 0 && e > 0, "attention: empty keys or channels");
    let (_s_buf, s) = x.scratch(chunk * m * n)?;
    let scale = c.scale as f32;
    let mut b0 = 0;
    while b0 < bs {
        let nb = chunk.min(bs - b0);
        // S = s·Q Kᵀ: [M, C]·[C, N].
        let s_out = out_from(s, 0, m, n);
        let kt = transposed(from_item(k, b0));
        x.gemm((m, n, d), from_item(q, b0), kt, s_out, nb, (scale, 0.0))?;
        x.softmax_rows(s, addr(lse, b0 * m), nb * m, n)?;
        // O = P V: [M, N]·[N, E].
        let o_out = out_from(out, b0, m, e);
        x.gemm(
            (m, e, n),
            scores(s, m, n, false),
            from_item(v, b0),
            o_out,
            nb,
            (1.0, 0.0),
        )?;
        b0 += nb;
    }
    Ok(())
}

/// The backward plan: `dq`, `dk`, `dv` (contiguous, shaped like q, k, v)
/// are written in full, `chunk` batch items at a time. `out` and `lse` are
/// the forward's, contiguous; `d_out` any operand view.
fn run_backward<X: Exec>(
    x: &X,
    c: &AttnConfig,
    chunk: usize,
    [q, k, v]: [MatOperand; 3],
    (out, lse): (u64, u64),
    d_out: MatOperand,
    [dq, dk, dv]: [u64; 3],
) -> Result<()> {
    let (bs, m, n, d, e) = (c.batch, c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    assert!(
        bs > 0 && m > 0 && n > 0 && d > 0 && e > 0,
        "attention_backward: empty shapes are handled by the caller"
    );
    let scale = c.scale as f32;
    // D for every row at once (B·M floats).
    let (_d_buf, delta) = x.scratch(bs * m)?;
    x.row_dot(d_out, out, delta, m, bs * m, e)?;
    let (_p_buf, p) = x.scratch(chunk * m * n)?;
    let (_g_buf, ds) = x.scratch(chunk * m * n)?;
    let mut b0 = 0;
    while b0 < bs {
        let nb = chunk.min(bs - b0);
        let (q_b, k_b, v_b, do_b) = (
            from_item(q, b0),
            from_item(k, b0),
            from_item(v, b0),
            from_item(d_out, b0),
        );
        // P = e^{s·Q Kᵀ − L}.
        x.gemm(
            (m, n, d),
            q_b,
            transposed(k_b),
            out_from(p, 0, m, n),
            nb,
            (scale, 0.0),
        )?;
        x.exp_minus_lse(p, addr(lse, b0 * m), nb * m, n)?;
        // dV = Pᵀ dO: [N, M]·[M, E].
        let dv_out = out_from(dv, b0, n, e);
        x.gemm(
            (n, e, m),
            scores(p, m, n, true),
            do_b,
            dv_out,
            nb,
            (1.0, 0.0),
        )?;
        // dP = dO Vᵀ: [M, E]·[E, N], then dS = P ⊙ (dP − D) in place.
        x.gemm(
            (m, n, e),
            do_b,
            transposed(v_b),
            out_from(ds, 0, m, n),
            nb,
            (1.0, 0.0),
        )?;
        x.softmax_grad(p, ds, addr(delta, b0 * m), nb * m, n)?;
        // dQ = s·dS K: [M, N]·[N, C].
        let dq_out = out_from(dq, b0, m, d);
        x.gemm(
            (m, d, n),
            scores(ds, m, n, false),
            k_b,
            dq_out,
            nb,
            (scale, 0.0),
        )?;
        // dK = s·dSᵀ Q: [N, M]·[M, C].
        let dk_out = out_from(dk, b0, n, d);
        x.gemm(
            (n, d, m),
            scores(ds, m, n, true),
            q_b,
            dk_out,
            nb,
            (scale, 0.0),
        )?;
        b0 += nb;
    }
    Ok(())
}

/// Threads for a one-block-per-row kernel over rows of `n`: enough to
/// cover a short row once (a multiple of 32, as the block reductions
/// need), at most [`BLOCK`].
fn row_threads(n: usize) -> u32 {
    n.clamp(1, BLOCK as usize).next_multiple_of(32) as u32
}

fn softmax_rows_params(s: u64, lse: u64, rows: usize, n: usize) -> Result<[Param; 4]> {
    Ok([
        Param("s", Arg::Ptr(s)),
        Param("lse", Arg::Ptr(lse)),
        Param("rows", Arg::I64(rows as i64)),
        Param("n", Arg::I32(to_i32("attention keys", n)?)),
    ])
}

fn exp_minus_lse_params(s: u64, lse: u64, rows: usize, n: usize) -> Result<[Param; 4]> {
    Ok([
        Param("s", Arg::Ptr(s)),
        Param("lse", Arg::Ptr(lse)),
        Param("rows", Arg::I64(rows as i64)),
        Param("n", Arg::I32(to_i32("attention keys", n)?)),
    ])
}

fn softmax_grad_params(p: u64, ds: u64, delta: u64, rows: usize, n: usize) -> Result<[Param; 5]> {
    Ok([
        Param("p", Arg::Ptr(p)),
        Param("ds", Arg::Ptr(ds)),
        Param("delta", Arg::Ptr(delta)),
        Param("rows", Arg::I64(rows as i64)),
        Param("n", Arg::I32(to_i32("attention keys", n)?)),
    ])
}

fn row_dot_params(
    a: MatOperand,
    o: u64,
    d: u64,
    rows_per_item: usize,
    rows: usize,
    width: usize,
) -> Result<[Param; 9]> {
    Ok([
        Param("a", Arg::Ptr(a.ptr)),
        Param("a_ld", Arg::I64(a.ld as i64)),
        Param("a_trans", Arg::I32(a.trans as i32)),
        Param("a_bs", Arg::I64(a.batch_stride as i64)),
        Param("o", Arg::Ptr(o)),
        Param("d", Arg::Ptr(d)),
        Param("rows_per_item", Arg::I64(rows_per_item as i64)),
        Param("rows", Arg::I64(rows as i64)),
        Param(
            "width",
            Arg::I32(to_i32("attention value channels", width)?),
        ),
    ])
}

/// The plan on the GPU: cuBLAS and `attention.cu`, all on the device's
/// stream; scratch comes from the pool and returns to it when the plan
/// has queued its last launch (stream order keeps that safe).
struct Gpu<'a>(&'a CudaDevice);

impl Exec for Gpu<'_> {
    type Buf = DeviceBuffer;

    fn scratch(&self, len: usize) -> Result<(DeviceBuffer, u64)> {
        let buf = self.0.alloc(len)?;
        let ptr = buf.ptr();
        Ok((buf, ptr))
    }

    fn gemm(
        &self,
        mnk: (usize, usize, usize),
        a: MatOperand,
        b: MatOperand,
        c: MatOut,
        batch: usize,
        (alpha, beta): (f32, f32),
    ) -> Result<()> {
        gemm::gemm(self.0, mnk, a, b, c, batch, (alpha, beta))
    }

    fn softmax_rows(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()> {
        let cfg = grid_rows(rows.min(MAX_ROW_BLOCKS), row_threads(n), 0);
        let params = softmax_rows_params(s, lse, rows, n)?;
        self.0.launch_params(MODULE, "softmax_rows", cfg, &params)
    }

    fn exp_minus_lse(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()> {
        let cfg = grid_1d(self.0, rows * n);
        let params = exp_minus_lse_params(s, lse, rows, n)?;
        self.0.launch_params(MODULE, "exp_minus_lse", cfg, &params)
    }

    fn softmax_grad(&self, p: u64, ds: u64, delta: u64, rows: usize, n: usize) -> Result<()> {
        let cfg = grid_1d(self.0, rows * n);
        let params = softmax_grad_params(p, ds, delta, rows, n)?;
        self.0.launch_params(MODULE, "softmax_grad", cfg, &params)
    }

    fn row_dot(
        &self,
        a: MatOperand,
        o: u64,
        d: u64,
        rows_per_item: usize,
        rows: usize,
        width: usize,
    ) -> Result<()> {
        let cfg = grid_rows(rows.min(MAX_ROW_BLOCKS), row_threads(width), 0);
        let params = row_dot_params(a, o, d, rows_per_item, rows, width)?;
        self.0.launch_params(MODULE, "row_dot", cfg, &params)
    }
}

/// Attention forward: returns `(out [B, M, E], lse [B, M])`, contiguous.
/// `q`, `k`, `v` are the `[B, M, C]`, `[B, N, C]`, `[B, N, E]` operands
/// (see [`gemm_view`]); `cfg.scale` is s.
pub fn forward(
    dev: &CudaDevice,
    cfg: &AttnConfig,
    q: MatOperand,
    k: MatOperand,
    v: MatOperand,
) -> Result<(DeviceBuffer, DeviceBuffer)> {
    let out = dev.alloc(cfg.batch * cfg.q_len * cfg.v_dim)?;
    let lse = dev.alloc(cfg.batch * cfg.q_len)?;
    let chunk = chunk_items(cfg.batch, cfg.q_len, cfg.kv_len, 1);
    run_forward(&Gpu(dev), cfg, chunk, [q, k, v], (out.ptr(), lse.ptr()))?;
    Ok((out, lse))
}

/// Attention backward: returns `[dq, dk, dv]`, contiguous and shaped like
/// q, k, v, from the forward's contiguous `out` and `lse` (addresses) and
/// the output gradient `d_out` (`[B, M, E]`, any operand view).
pub fn backward(
    dev: &CudaDevice,
    cfg: &AttnConfig,
    [q, k, v]: [MatOperand; 3],
    out: u64,
    lse: u64,
    d_out: MatOperand,
) -> Result<[DeviceBuffer; 3]> {
    let (bs, m, n, d, e) = (cfg.batch, cfg.q_len, cfg.kv_len, cfg.qk_dim, cfg.v_dim);
    if bs == 0 || m == 0 || n == 0 {
        // No scores: every gradient is zero (dk, dv may still have rows).
        return Ok([
            dev.zeros(bs * m * d)?,
            dev.zeros(bs * n * d)?,
            dev.zeros(bs * n * e)?,
        ]);
    }
    let grads = [
        dev.alloc(bs * m * d)?,
        dev.alloc(bs * n * d)?,
        dev.alloc(bs * n * e)?,
    ];
    let chunk = chunk_items(bs, m, n, 2);
    let ptrs = [grads[0].ptr(), grads[1].ptr(), grads[2].ptr()];
    run_backward(&Gpu(dev), cfg, chunk, [q, k, v], (out, lse), d_out, ptrs)?;
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::cpu::{self as cpu, AttnPath, Qkv, QkvGrads};
    use crate::cuda::emu::source::assert_launcher_matches;
    use std::cell::RefCell;

    const SRC: &str = include_str!("attention.cu");

    #[test]
    fn launcher_arguments_match_the_kernel_signatures() {
        let op = MatOperand {
            ptr: 8,
            ld: 3,
            trans: true,
            batch_stride: 9,
        };
        let check = assert_launcher_matches;
        check(
            SRC,
            "softmax_rows",
            &softmax_rows_params(1, 2, 3, 4).unwrap(),
        );
        check(
            SRC,
            "exp_minus_lse",
            &exp_minus_lse_params(1, 2, 3, 4).unwrap(),
        );
        check(
            SRC,
            "softmax_grad",
            &softmax_grad_params(1, 2, 3, 4, 5).unwrap(),
        );
        check(SRC, "row_dot", &row_dot_params(op, 1, 2, 3, 4, 5).unwrap());
    }

    /// Address of element (b, r, c) of a view with `strides`.
    fn strided_at(strides: [usize; 3], [b, r, c]: [usize; 3]) -> usize {
        b * strides[0] + r * strides[1] + c * strides[2]
    }

    /// Address of element (b, r, c) of a GEMM operand (the semantics of
    /// `gemm::MatOperand`).
    fn operand_at((ld, trans, bs): (usize, bool, usize), [b, r, c]: [usize; 3]) -> usize {
        b * bs + if trans { c * ld + r } else { r * ld + c }
    }

    #[test]
    fn gemm_view_addresses_every_element_of_the_view() {
        let mut cases = Vec::new();
        for shape in [
            [2, 3, 4],
            [1, 3, 4],
            [2, 1, 4],
            [2, 3, 1],
            [1, 1, 1],
            [3, 5, 2],
        ] {
            let [b, r, c] = shape;
            // Contiguous, padded rows, transposed (stored [b, c, r]),
            // transposed with padding, and a batch-broadcast operand.
            cases.push((shape, [r * c, c, 1]));
            cases.push((shape, [r * (c + 3), c + 3, 1]));
            cases.push((shape, [r * c, 1, r]));
            cases.push((shape, [(r + 2) * c, 1, r + 2]));
            cases.push((shape, [0, c, 1]));
            // Strides a size-1 dim may carry (anything).
            cases.push((
                shape,
                [
                    if b == 1 { 7 } else { r * c },
                    if r == 1 { 0 } else { c },
                    1,
                ],
            ));
            cases.push((
                shape,
                [
                    r * c,
                    if r == 1 { 5 } else { 1 },
                    if c == 1 { 0 } else { r },
                ],
            ));
        }
        for (shape, strides) in cases {
            let desc = gemm_view(shape, strides)
                .unwrap_or_else(|| panic!("{shape:?} {strides:?} should be readable in place"));
            let (ld, trans, _) = desc;
            let stored_row = if trans { shape[1] } else { shape[2] };
            assert!(ld >= stored_row.max(1), "{shape:?} {strides:?}: ld {ld}");
            for b in 0..shape[0] {
                for r in 0..shape[1] {
                    for c in 0..shape[2] {
                        assert_eq!(
                            operand_at(desc, [b, r, c]),
                            strided_at(strides, [b, r, c]),
                            "{shape:?} {strides:?} at {:?}",
                            [b, r, c]
                        );
                    }
                }
            }
        }
        // Neither rows nor columns unit-stride, or overlapping rows: pack.
        assert_eq!(gemm_view([2, 3, 4], [24, 8, 2]), None);
        assert_eq!(gemm_view([2, 3, 4], [12, 2, 1]), None);
    }

    #[test]
    fn chunks_bound_the_scratch() {
        assert_eq!(chunk_items(128, 256, 256, 1), 128);
        assert_eq!(chunk_items(4096, 256, 256, 2), SCRATCH_FLOATS / (2 * 65536));
        assert_eq!(chunk_items(3, 1 << 14, 1 << 14, 2), 1);
        assert_eq!(chunk_items(0, 4, 4, 1), 1);
    }

    /// The plan run on host memory: byte addresses index one arena of f32
    /// (from `BASE`, so a zero pointer is never valid). Scratch starts as
    /// NaN, so reading anything the plan did not write shows in the result.
    struct Host {
        mem: RefCell<Vec<f32>>,
    }

    const BASE: u64 = 1 << 20;

    impl Host {
        fn new() -> Self {
            Host {
                mem: RefCell::new(Vec::new()),
            }
        }
        fn put(&self, data: &[f32]) -> u64 {
            let mut mem = self.mem.borrow_mut();
            let at = mem.len();
            mem.extend_from_slice(data);
            BASE + 4 * at as u64
        }
        fn index(ptr: u64) -> usize {
            assert!(
                ptr >= BASE && (ptr - BASE).is_multiple_of(4),
                "bad address {ptr}"
            );
            ((ptr - BASE) / 4) as usize
        }
        fn get(&self, ptr: u64, len: usize) -> Vec<f32> {
            let i = Self::index(ptr);
            self.mem.borrow()[i..i + len].to_vec()
        }
        fn at(mem: &[f32], op: MatOperand, b: usize, r: usize, c: usize) -> f32 {
            let desc = (op.ld, op.trans, op.batch_stride);
            mem[Self::index(op.ptr) + operand_at(desc, [b, r, c])]
        }
    }

    impl Exec for Host {
        type Buf = ();

        fn scratch(&self, len: usize) -> Result<((), u64)> {
            Ok(((), self.put(&vec![f32::NAN; len])))
        }

        fn gemm(
            &self,
            (m, n, k): (usize, usize, usize),
            a: MatOperand,
            b: MatOperand,
            c: MatOut,
            batch: usize,
            (alpha, beta): (f32, f32),
        ) -> Result<()> {
            let src = self.mem.borrow().clone();
            let mut mem = self.mem.borrow_mut();
            let c0 = Self::index(c.ptr);
            // cuBLAS's leading-dimension rules, in row-major terms.
            assert!(c.ld >= n, "ldc {} < n {n}", c.ld);
            assert!(a.ld >= if a.trans { m } else { k }, "lda {a:?}");
            assert!(b.ld >= if b.trans { k } else { n }, "ldb {b:?}");
            for bi in 0..batch {
                for i in 0..m {
                    for j in 0..n {
                        let dot: f64 = (0..k)
                            .map(|l| {
                                Self::at(&src, a, bi, i, l) as f64
                                    * Self::at(&src, b, bi, l, j) as f64
                            })
                            .sum();
                        let slot = &mut mem[c0 + bi * c.batch_stride + i * c.ld + j];
                        // cuBLAS does not read C when beta is 0.
                        let old = if beta == 0.0 { 0.0 } else { beta * *slot };
                        *slot = alpha * dot as f32 + old;
                    }
                }
            }
            Ok(())
        }

        fn softmax_rows(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()> {
            let mut mem = self.mem.borrow_mut();
            let (s0, l0) = (Self::index(s), Self::index(lse));
            for r in 0..rows {
                let row = &mut mem[s0 + r * n..s0 + (r + 1) * n];
                let mx = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let sum: f32 = row.iter().map(|v| (v - mx).exp()).sum();
                row.iter_mut().for_each(|v| *v = (*v - mx).exp() / sum);
                mem[l0 + r] = mx + sum.ln();
            }
            Ok(())
        }

        fn exp_minus_lse(&self, s: u64, lse: u64, rows: usize, n: usize) -> Result<()> {
            let mut mem = self.mem.borrow_mut();
            let (s0, l0) = (Self::index(s), Self::index(lse));
            for i in 0..rows * n {
                mem[s0 + i] = (mem[s0 + i] - mem[l0 + i / n]).exp();
            }
            Ok(())
        }

        fn softmax_grad(&self, p: u64, ds: u64, delta: u64, rows: usize, n: usize) -> Result<()> {
            let mut mem = self.mem.borrow_mut();
            let (p0, g0, d0) = (Self::index(p), Self::index(ds), Self::index(delta));
            for i in 0..rows * n {
                mem[g0 + i] = mem[p0 + i] * (mem[g0 + i] - mem[d0 + i / n]);
            }
            Ok(())
        }

        fn row_dot(
            &self,
            a: MatOperand,
            o: u64,
            d: u64,
            rows_per_item: usize,
            rows: usize,
            width: usize,
        ) -> Result<()> {
            let src = self.mem.borrow().clone();
            let mut mem = self.mem.borrow_mut();
            let (o0, d0) = (Self::index(o), Self::index(d));
            for r in 0..rows {
                let (b, i) = (r / rows_per_item, r % rows_per_item);
                mem[d0 + r] = (0..width)
                    .map(|e| Self::at(&src, a, b, i, e) * src[o0 + r * width + e])
                    .sum();
            }
            Ok(())
        }
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        crate::test_data::uniform_f32(len, seed as u64)
    }

    /// `[b, r, c]` data stored transposed (`[b, c, r]` contiguous) and its
    /// operand.
    fn put_transposed(h: &Host, data: &[f32], [b, r, c]: [usize; 3]) -> MatOperand {
        let mut t = vec![0.0; data.len()];
        for bi in 0..b {
            for ri in 0..r {
                for ci in 0..c {
                    t[bi * r * c + ci * r + ri] = data[bi * r * c + ri * c + ci];
                }
            }
        }
        MatOperand {
            ptr: h.put(&t),
            ld: r,
            trans: true,
            batch_stride: r * c,
        }
    }

    /// `[b, r, c]` data with `pad` unused floats after each row.
    fn put_padded(h: &Host, data: &[f32], [b, r, c]: [usize; 3], pad: usize) -> MatOperand {
        let mut t = vec![f32::NAN; b * r * (c + pad)];
        for row in 0..b * r {
            t[row * (c + pad)..row * (c + pad) + c].copy_from_slice(&data[row * c..(row + 1) * c]);
        }
        MatOperand {
            ptr: h.put(&t),
            ld: c + pad,
            trans: false,
            batch_stride: r * (c + pad),
        }
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-5 * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    /// The GPU plan (GEMM descriptors, chunk offsets, kernels' roles) run
    /// on the host agrees with the CPU kernel, with transposed and padded
    /// operands and a batch cut into uneven chunks.
    #[test]
    fn the_plan_computes_attention_and_its_gradients() {
        let cfg = AttnConfig {
            batch: 3,
            q_len: 7,
            kv_len: 5,
            qk_dim: 4,
            v_dim: 6,
            scale: 0.7,
        };
        let (b, m, n, d, e) = (3, 7, 5, 4, 6);
        let (q, k, v) = (
            values(b * m * d, 1),
            values(b * n * d, 2),
            values(b * n * e, 3),
        );
        let d_out = values(b * m * e, 4);
        let mut want_out = vec![0f32; b * m * e];
        let mut want_lse = vec![0f32; b * m];
        let x = Qkv {
            q: &q,
            k: &k,
            v: &v,
        };
        cpu::attention_forward(&cfg, AttnPath::Plain, x, &mut want_out, &mut want_lse);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.len()],
            vec![0f32; k.len()],
            vec![0f32; v.len()],
        );
        let grads = QkvGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        cpu::attention_backward(
            &cfg,
            AttnPath::Plain,
            x,
            &want_out,
            &want_lse,
            &d_out,
            grads,
        );

        for chunk in [1, 2, 3] {
            let h = Host::new();
            let qo = put_transposed(&h, &q, [b, m, d]);
            let ko = put_padded(&h, &k, [b, n, d], 3);
            let vo = put_padded(&h, &v, [b, n, e], 0);
            let out = h.put(&vec![f32::NAN; b * m * e]);
            let lse = h.put(&vec![f32::NAN; b * m]);
            run_forward(&h, &cfg, chunk, [qo, ko, vo], (out, lse)).unwrap();
            assert_close("out", &h.get(out, b * m * e), &want_out);
            assert_close("lse", &h.get(lse, b * m), &want_lse);

            let doo = put_transposed(&h, &d_out, [b, m, e]);
            let g = [q.len(), k.len(), v.len()].map(|len| h.put(&vec![f32::NAN; len]));
            run_backward(&h, &cfg, chunk, [qo, ko, vo], (out, lse), doo, g).unwrap();
            assert_close("dq", &h.get(g[0], q.len()), &dq);
            assert_close("dk", &h.get(g[1], k.len()), &dk);
            assert_close("dv", &h.get(g[2], v.len()), &dv);
        }
    }
}
