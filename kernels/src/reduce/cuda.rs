//! Launchers for `reduce.cu`: sum/max/min over the middle axis of a
//! contiguous `[outer, r, inner]` tensor, and softmax / log-softmax (and
//! their backward) along the middle axis of `[outer, dim, inner]`.
//!
//! The engine reduces any axis set as a sequence of such blocks, exactly as
//! the CPU does (`CpuStorage::reduce`), so both devices reduce the same runs
//! of axes in the same order.
//!
//! Which kernel runs is decided by the planners [`plan_reduce`] and
//! [`plan_softmax`], plain functions of the sizes that the unit tests below
//! check on the CPU (nothing else here can be run without a GPU).

use super::ReduceOp;
use crate::cuda::abi::{Arg, Strided};
use crate::cuda::{CudaDevice, DeviceBuffer, Result, grid_1d};
use crate::elementwise::cuda::{self as ew, View};
use cudarc::driver::LaunchConfig;

const MODULE: &str = "reduce";

/// The op code of `red_combine` in reduce.cu.
pub fn reduce_code(op: ReduceOp) -> i32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
    }
}

/// Rows of at most this many elements are reduced by one thread each (the
/// `_cols` kernels with `inner = 1`): a block per row would leave most of
/// its threads idle.
pub const SHORT_ROW: usize = 16;

/// Most blocks a row kernel is launched with; the kernels loop over the
/// rest (grid-stride), so this only bounds the grid.
const MAX_ROW_BLOCKS: usize = 1 << 20;

/// Threads for a block that reduces rows of `len`: about 4 elements per
/// thread, a power of two in 32..=256 (a multiple of the warp size, as
/// `block_reduce` requires).
pub fn row_threads(len: usize) -> u32 {
    len.div_ceil(4).next_power_of_two().clamp(32, 256) as u32
}

/// Which kernel one reduction pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    /// `reduce_rows` with blocks of this many threads (`inner` is 1).
    Rows { threads: u32 },
    /// `reduce_cols`: a thread per output element.
    Cols,
}

/// One launch: reduces `x: [outer, r, inner]` to `[outer, chunks, inner]`,
/// output element `(o, p, i)` covering `k ∈ [p·chunk, min(r, (p+1)·chunk))`.
/// A pass with `chunks > 1` leaves partial results that the next pass
/// reduces (its `r` is this pass's `chunks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    pub kind: PassKind,
    pub outer: usize,
    pub r: usize,
    pub inner: usize,
    pub chunk: usize,
    pub chunks: usize,
}

/// Splits `r` into about `wanted` chunks (at least 1), none empty.
fn split(r: usize, wanted: usize) -> (usize, usize) {
    let chunk = r.div_ceil(wanted.max(1)).max(1);
    (chunk, r.div_ceil(chunk).max(1))
}

/// The passes that reduce `[outer, r, inner]` over `r` on a GPU with
/// `sm_count` SMs. A single pass when there are enough outputs to fill the
/// GPU; otherwise the reduced axis is split into chunks reduced in parallel
/// (each at least 16 elements per thread, so the partial results are far
/// fewer than the inputs) and the partials are reduced by further passes.
pub fn plan_reduce(outer: usize, r: usize, inner: usize, sm_count: usize) -> Vec<Pass> {
    let sm = sm_count.max(1);
    let mut passes = Vec::new();
    let mut r = r;
    loop {
        let pass = if inner == 1 && r > SHORT_ROW {
            let threads = row_threads(r);
            // ~8 blocks of 256 threads fill an SM.
            let target_blocks = sm * 8;
            let wanted = if outer >= target_blocks {
                1
            } else {
                target_blocks
                    .div_ceil(outer.max(1))
                    .min(r.div_ceil(threads as usize * 16))
            };
            let (chunk, chunks) = split(r, wanted);
            Pass {
                kind: PassKind::Rows { threads },
                outer,
                r,
                inner,
                chunk,
                chunks,
            }
        } else {
            // 2048 resident threads per SM.
            let target_threads = sm * 2048;
            let columns = outer * inner;
            let wanted = if columns >= target_threads || r <= 64 {
                1
            } else {
                target_threads.div_ceil(columns.max(1)).min(r.div_ceil(32))
            };
            let (chunk, chunks) = split(r, wanted);
            Pass {
                kind: PassKind::Cols,
                outer,
                r,
                inner,
                chunk,
                chunks,
            }
        };
        passes.push(pass);
        if pass.chunks == 1 {
            return passes;
        }
        r = pass.chunks;
    }
}

/// `y[o, i] = op_{k<r} x[o, k, i]` for the contiguous `[outer, r, inner]`
/// tensor at device address `x`; a new `[outer, inner]` buffer. Sums are
/// f32, like the CPU's (a tree within blocks, sequential per thread).
pub fn reduce(
    dev: &CudaDevice,
    op: ReduceOp,
    x: u64,
    outer: usize,
    r: usize,
    inner: usize,
) -> Result<DeviceBuffer> {
    if outer * inner == 0 {
        return dev.alloc(0);
    }
    let code = Arg::I32(reduce_code(op));
    let mut cur: Option<DeviceBuffer> = None;
    for p in plan_reduce(outer, r, inner, dev.sm_count()) {
        let src = cur.as_ref().map_or(x, |b| b.ptr());
        let n = p.outer * p.chunks * p.inner;
        let y = dev.alloc(n)?;
        match p.kind {
            PassKind::Rows { threads } => dev.launch(
                MODULE,
                "reduce_rows",
                row_grid(n, threads),
                &[
                    code,
                    Arg::Ptr(src),
                    Arg::Ptr(y.ptr()),
                    Arg::I64(p.r as i64),
                    Arg::I64(p.chunk as i64),
                    Arg::I64(p.chunks as i64),
                    Arg::I64(n as i64),
                ],
            )?,
            PassKind::Cols => dev.launch(
                MODULE,
                "reduce_cols",
                grid_1d(dev, n),
                &[
                    code,
                    Arg::Ptr(src),
                    Arg::Ptr(y.ptr()),
                    Arg::I64(p.r as i64),
                    Arg::I64(p.inner as i64),
                    Arg::I64(p.chunk as i64),
                    Arg::I64(p.chunks as i64),
                    Arg::I64(n as i64),
                ],
            )?,
        }
        // The previous partial buffer goes back to the pool here; the
        // launch that reads it is already queued on the one stream, so the
        // next user of that memory runs after it.
        cur = Some(y);
    }
    Ok(cur.expect("plan_reduce returns at least one pass"))
}

/// `blocks` blocks (at most [`MAX_ROW_BLOCKS`]; the kernels loop over the
/// rest) of `threads`.
fn row_grid(blocks: usize, threads: u32) -> LaunchConfig {
    crate::cuda::grid_rows(blocks.min(MAX_ROW_BLOCKS), threads, 0)
}

/// How softmax along the middle axis of `[outer, dim, inner]` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxPlan {
    /// `inner == 1`: a block of `threads` per row.
    Rows { threads: u32 },
    /// A thread per (outer, inner) column, sequential over `dim`: used for
    /// short rows, and for `inner > 1` when there are enough columns to
    /// fill the GPU or the axis is short.
    Cols,
    /// `inner > 1` with few, long columns: the axis is moved innermost (a
    /// strided copy to `[outer, inner, dim]`), rows are done by blocks of
    /// `threads`, and the result is copied back.
    Transposed { threads: u32 },
}

/// The softmax kernel choice for `[outer, dim, inner]` (see [`SoftmaxPlan`]).
pub fn plan_softmax(outer: usize, dim: usize, inner: usize, sm_count: usize) -> SoftmaxPlan {
    let columns = outer * inner;
    if dim <= SHORT_ROW {
        SoftmaxPlan::Cols
    } else if inner == 1 {
        SoftmaxPlan::Rows {
            threads: row_threads(dim),
        }
    } else if dim <= 64 || columns >= sm_count.max(1) * 256 {
        SoftmaxPlan::Cols
    } else {
        SoftmaxPlan::Transposed {
            threads: row_threads(dim),
        }
    }
}

/// The view of a contiguous `[outer, a, b]` block starting at element
/// `offset` as `[outer, b, a]` (its last two axes swapped), for a strided
/// copy that moves the middle axis innermost or back.
pub fn swap_last_two(outer: usize, a: usize, b: usize, offset: usize) -> Strided {
    Strided::new(&[outer, b, a], &[a * b, 1, b], offset).expect("rank 3 fits MAX_RANK")
}

/// A contiguous copy of the `[outer, a, b]` block at element `offset` of
/// `buf` with its last two axes swapped: `[outer, b, a]`.
fn transposed(
    dev: &CudaDevice,
    buf: &DeviceBuffer,
    offset: usize,
    (outer, a, b): (usize, usize, usize),
) -> Result<DeviceBuffer> {
    let view = View {
        buf,
        strided: swap_last_two(outer, a, b, offset),
        contiguous: false,
    };
    ew::contiguous(dev, view, outer * a * b)
}

/// Softmax (`log`: log-softmax) along the middle axis of the contiguous
/// `[outer, dim, inner]` tensor at element `offset` of `x`; a new buffer of
/// the same shape.
pub fn softmax(
    dev: &CudaDevice,
    x: &DeviceBuffer,
    offset: usize,
    (outer, dim, inner): (usize, usize, usize),
    log: bool,
) -> Result<DeviceBuffer> {
    let n = outer * dim * inner;
    if n == 0 {
        return dev.alloc(0);
    }
    let log = Arg::I32(log as i32);
    match plan_softmax(outer, dim, inner, dev.sm_count()) {
        SoftmaxPlan::Rows { threads } => {
            let y = dev.alloc(n)?;
            softmax_rows(dev, x.ptr_at(offset), &y, outer * inner, dim, threads, log)?;
            Ok(y)
        }
        SoftmaxPlan::Cols => {
            let y = dev.alloc(n)?;
            dev.launch(
                MODULE,
                "softmax_cols",
                grid_1d(dev, outer * inner),
                &[
                    Arg::Ptr(x.ptr_at(offset)),
                    Arg::Ptr(y.ptr()),
                    Arg::I64(dim as i64),
                    Arg::I64(inner as i64),
                    Arg::I64((outer * inner) as i64),
                    log,
                ],
            )?;
            Ok(y)
        }
        SoftmaxPlan::Transposed { threads } => {
            // [outer, dim, inner] -> rows [outer, inner, dim] -> back.
            let xt = transposed(dev, x, offset, (outer, dim, inner))?;
            let yt = dev.alloc(n)?;
            softmax_rows(dev, xt.ptr(), &yt, outer * inner, dim, threads, log)?;
            transposed(dev, &yt, 0, (outer, inner, dim))
        }
    }
}

fn softmax_rows(
    dev: &CudaDevice,
    x: u64,
    y: &DeviceBuffer,
    rows: usize,
    dim: usize,
    threads: u32,
    log: Arg,
) -> Result<()> {
    dev.launch(
        MODULE,
        "softmax_rows",
        row_grid(rows, threads),
        &[
            Arg::Ptr(x),
            Arg::Ptr(y.ptr()),
            Arg::I64(rows as i64),
            Arg::I64(dim as i64),
            log,
        ],
    )
}

/// ∂L/∂x of softmax (`log`: log-softmax) along the middle axis of
/// `[outer, dim, inner]`, from the output `y` and `g` = ∂L/∂y, both
/// contiguous at element offsets `yo` and `go` of their buffers.
pub fn softmax_backward(
    dev: &CudaDevice,
    (y, yo): (&DeviceBuffer, usize),
    (g, go): (&DeviceBuffer, usize),
    (outer, dim, inner): (usize, usize, usize),
    log: bool,
) -> Result<DeviceBuffer> {
    let n = outer * dim * inner;
    if n == 0 {
        return dev.alloc(0);
    }
    let log = Arg::I32(log as i32);
    match plan_softmax(outer, dim, inner, dev.sm_count()) {
        SoftmaxPlan::Rows { threads } => {
            let dx = dev.alloc(n)?;
            softmax_backward_rows(
                dev,
                (y.ptr_at(yo), g.ptr_at(go)),
                &dx,
                (outer * inner, dim),
                threads,
                log,
            )?;
            Ok(dx)
        }
        SoftmaxPlan::Cols => {
            let dx = dev.alloc(n)?;
            dev.launch(
                MODULE,
                "softmax_backward_cols",
                grid_1d(dev, outer * inner),
                &[
                    Arg::Ptr(y.ptr_at(yo)),
                    Arg::Ptr(g.ptr_at(go)),
                    Arg::Ptr(dx.ptr()),
                    Arg::I64(dim as i64),
                    Arg::I64(inner as i64),
                    Arg::I64((outer * inner) as i64),
                    log,
                ],
            )?;
            Ok(dx)
        }
        SoftmaxPlan::Transposed { threads } => {
            let yt = transposed(dev, y, yo, (outer, dim, inner))?;
            let gt = transposed(dev, g, go, (outer, dim, inner))?;
            let dxt = dev.alloc(n)?;
            softmax_backward_rows(
                dev,
                (yt.ptr(), gt.ptr()),
                &dxt,
                (outer * inner, dim),
                threads,
                log,
            )?;
            transposed(dev, &dxt, 0, (outer, inner, dim))
        }
    }
}

/// dx of softmax over `rows` contiguous rows of `dim` (`(rows, dim)`),
/// from y and g (device addresses).
fn softmax_backward_rows(
    dev: &CudaDevice,
    (y, g): (u64, u64),
    dx: &DeviceBuffer,
    (rows, dim): (usize, usize),
    threads: u32,
    log: Arg,
) -> Result<()> {
    dev.launch(
        MODULE,
        "softmax_backward_rows",
        row_grid(rows, threads),
        &[
            Arg::Ptr(y),
            Arg::Ptr(g),
            Arg::Ptr(dx.ptr()),
            Arg::I64(rows as i64),
            Arg::I64(dim as i64),
            log,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one pass computes, written from the kernels' doc comments
    /// (`reduce_rows` and `reduce_cols` compute the same function; they
    /// differ only in how threads share the work).
    fn run_pass(op: ReduceOp, p: &Pass, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), p.outer * p.r * p.inner, "pass input length");
        let init = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        };
        let mut y = Vec::with_capacity(p.outer * p.chunks * p.inner);
        for o in 0..p.outer {
            for c in 0..p.chunks {
                for i in 0..p.inner {
                    let (k0, k1) = (c * p.chunk, ((c + 1) * p.chunk).min(p.r));
                    assert!(k0 < k1 || p.r == 0, "empty chunk {c} in {p:?}");
                    let mut acc = init;
                    for k in k0..k1 {
                        let v = x[(o * p.r + k) * p.inner + i];
                        acc = match op {
                            ReduceOp::Sum => acc + v,
                            ReduceOp::Max => acc.max(v),
                            ReduceOp::Min => acc.min(v),
                        };
                    }
                    y.push(acc);
                }
            }
        }
        y
    }

    /// Every plan chains (each pass reads what the last one wrote), ends
    /// in one value per output, uses row kernels only for `inner = 1`, and
    /// reduces to the same values as a direct reduction.
    #[test]
    fn reduce_plans_chain_and_cover_every_element() {
        let shapes = [
            (1, 0, 1),
            (3, 0, 4),
            (1, 1, 1),
            (5, 7, 1),
            (4, 16, 1),
            (4, 17, 1),
            (2, 1000, 1),
            (1, 1_000_003, 1),
            (3, 70_001, 2),
            (1, 300_000, 3),
            (1000, 50, 1),
            (2, 1_000_000, 1),
            (7, 33, 5),
            (1, 100_000, 64),
            (100_000, 3, 1),
        ];
        for sm in [1, 132] {
            for &(outer, r, inner) in &shapes {
                let x: Vec<f64> = (0..outer * r * inner)
                    .map(|v| ((v * 7919) % 1013) as f64 - 500.0)
                    .collect();
                let plan = plan_reduce(outer, r, inner, sm);
                assert!(plan.len() <= 4, "{:?}: {plan:?}", (outer, r, inner));
                for op in [ReduceOp::Sum, ReduceOp::Max] {
                    let mut cur = x.clone();
                    let mut want_r = r;
                    for p in &plan {
                        assert_eq!((p.outer, p.r, p.inner), (outer, want_r, inner), "{plan:?}");
                        if let PassKind::Rows { threads } = p.kind {
                            assert_eq!(p.inner, 1);
                            assert!(threads % 32 == 0 && (32..=256).contains(&threads));
                        }
                        cur = run_pass(op, p, &cur);
                        want_r = p.chunks;
                    }
                    assert_eq!(plan.last().unwrap().chunks, 1);
                    assert_eq!(cur, run_pass(op, &single(outer, r, inner), &x));
                }
            }
        }
    }

    fn single(outer: usize, r: usize, inner: usize) -> Pass {
        Pass {
            kind: PassKind::Cols,
            outer,
            r,
            inner,
            chunk: r.max(1),
            chunks: 1,
        }
    }

    #[test]
    fn long_rows_are_split_over_many_blocks_and_many_rows_are_not() {
        let plan = plan_reduce(1, 10_000_000, 1, 132);
        assert!(plan[0].chunks >= 132 * 4, "{plan:?}");
        assert!(plan.len() == 2 || plan.len() == 3, "{plan:?}");
        let plan = plan_reduce(100_000, 512, 1, 132);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].kind, PassKind::Rows { threads: 128 });
        // Few long columns are split too.
        let plan = plan_reduce(1, 1_000_000, 4, 132);
        assert!(plan[0].chunks > 1000, "{plan:?}");
        // Short rows: a thread per row.
        assert_eq!(plan_reduce(1_000_000, 8, 1, 132)[0].kind, PassKind::Cols);
    }

    #[test]
    fn softmax_plans() {
        assert_eq!(plan_softmax(64, 4, 1, 132), SoftmaxPlan::Cols);
        assert_eq!(
            plan_softmax(64, 1000, 1, 132),
            SoftmaxPlan::Rows { threads: 256 }
        );
        assert_eq!(plan_softmax(8, 32, 1000, 132), SoftmaxPlan::Cols);
        assert_eq!(plan_softmax(64, 10, 1_000_000, 132), SoftmaxPlan::Cols);
        assert_eq!(
            plan_softmax(2, 5000, 3, 132),
            SoftmaxPlan::Transposed { threads: 256 }
        );
    }

    /// Row-major index of `strided`'s element `i`, as `strided_offset` in
    /// common.cuh computes it.
    fn strided_offset(s: &Strided, mut i: i64) -> i64 {
        let mut off = s.offset;
        for d in (0..s.rank as usize).rev() {
            let q = i / s.shape[d];
            off += (i - q * s.shape[d]) * s.strides[d];
            i = q;
        }
        off
    }

    #[test]
    fn swap_last_two_transposes_each_outer_block_and_round_trips() {
        let (outer, a, b, offset) = (3usize, 4usize, 5usize, 7usize);
        let buf: Vec<usize> = (0..offset + outer * a * b).collect();
        let fwd = swap_last_two(outer, a, b, offset);
        let t: Vec<usize> = (0..outer * a * b)
            .map(|i| buf[strided_offset(&fwd, i as i64) as usize])
            .collect();
        for o in 0..outer {
            for j in 0..b {
                for k in 0..a {
                    // t[o, j, k] = x[o, k, j]
                    assert_eq!(t[(o * b + j) * a + k], offset + (o * a + k) * b + j);
                }
            }
        }
        let back = swap_last_two(outer, b, a, 0);
        let round: Vec<usize> = (0..outer * a * b)
            .map(|i| t[strided_offset(&back, i as i64) as usize])
            .collect();
        assert_eq!(round, buf[offset..]);
    }

    #[test]
    fn row_threads_are_warp_multiples() {
        assert_eq!(row_threads(17), 32);
        assert_eq!(row_threads(200), 64);
        assert_eq!(row_threads(1000), 256);
        assert_eq!(row_threads(1 << 30), 256);
    }
}
