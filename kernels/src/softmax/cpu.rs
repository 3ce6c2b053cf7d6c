//! Softmax and log-softmax along one axis of a contiguous `[outer, dim, inner]` tensor.

use crate::Float;
use crate::cpu::PAR_CHUNK;
use rayon::prelude::*;

/// softmax(x)_j = e^{x_j − max x} / Σ_k e^{x_k − max x} along `dim`;
/// with `log = true`, log-softmax = x_j − max − ln Σ_k e^{x_k − max}.
/// Subtracting the max keeps every exponent ≤ 0, so nothing overflows.
pub fn softmax<T: Float>(
    x: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    log: bool,
    out: &mut [T],
) {
    assert_eq!(
        x.len(),
        outer * dim * inner,
        "softmax: input length does not match [outer, dim, inner]"
    );
    assert_eq!(
        out.len(),
        x.len(),
        "softmax: output length differs from input"
    );
    if x.is_empty() {
        return;
    }
    let slab = |(xs, os): (&[T], &mut [T])| {
        for i in 0..inner {
            let at = |j: usize| j * inner + i;
            let mut mx = T::NEG_INFINITY;
            for j in 0..dim {
                mx = mx.max(xs[at(j)]);
            }
            let mut sum = T::ZERO;
            for j in 0..dim {
                let e = (xs[at(j)] - mx).exp();
                os[at(j)] = e;
                sum += e;
            }
            if log {
                let lse = mx + sum.ln();
                for j in 0..dim {
                    os[at(j)] = xs[at(j)] - lse;
                }
            } else {
                let inv = T::ONE / sum;
                for j in 0..dim {
                    os[at(j)] *= inv;
                }
            }
        }
    };
    let step = dim * inner;
    if x.len() <= PAR_CHUNK {
        x.chunks(step).zip(out.chunks_mut(step)).for_each(slab);
    } else {
        x.par_chunks(step)
            .zip(out.par_chunks_mut(step))
            .for_each(slab);
    }
}

/// Backward of softmax along `dim`, given y = softmax(x) and g = ∂L/∂y:
/// ∂L/∂x_j = y_j (g_j − Σ_k g_k y_k). With `log = true`, y = log-softmax(x):
/// ∂L/∂x_j = g_j − e^{y_j} Σ_k g_k.
pub fn softmax_backward<T: Float>(
    y: &[T],
    g: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    log: bool,
    out: &mut [T],
) {
    assert_eq!(
        y.len(),
        outer * dim * inner,
        "softmax_backward: length does not match [outer, dim, inner]"
    );
    assert!(
        g.len() == y.len() && out.len() == y.len(),
        "softmax_backward: lengths differ"
    );
    if y.is_empty() {
        return;
    }
    let slab = |((ys, gs), os): ((&[T], &[T]), &mut [T])| {
        for i in 0..inner {
            let at = |j: usize| j * inner + i;
            let mut s = T::ZERO;
            for j in 0..dim {
                s += if log {
                    gs[at(j)]
                } else {
                    gs[at(j)] * ys[at(j)]
                };
            }
            for j in 0..dim {
                os[at(j)] = if log {
                    gs[at(j)] - ys[at(j)].exp() * s
                } else {
                    ys[at(j)] * (gs[at(j)] - s)
                };
            }
        }
    };
    let step = dim * inner;
    if y.len() <= PAR_CHUNK {
        y.chunks(step)
            .zip(g.chunks(step))
            .zip(out.chunks_mut(step))
            .for_each(slab);
    } else {
        y.par_chunks(step)
            .zip(g.par_chunks(step))
            .zip(out.par_chunks_mut(step))
            .for_each(slab);
    }
}
