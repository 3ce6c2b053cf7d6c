//! Fused optimizer updates: each reads and writes every buffer once.

use super::PAR_CHUNK;
use crate::Float;
use rayon::prelude::*;

/// Hyper-parameters of one Adam/AdamW step, bias corrections precomputed.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam) ...
    pub weight_decay: f64,
    /// ... or, when true, decoupled decay θ ← θ − lr·λ·θ (AdamW).
    pub decoupled: bool,
    /// 1 − β1^t
    pub bias1: f64,
    /// 1 − β2^t
    pub bias2: f64,
}

/// m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
/// θ ← θ − lr · (m / (1−β1^t)) / (√(v / (1−β2^t)) + ε)   (Kingma & Ba, Alg. 1).
/// `grad_scale` multiplies g first (global-norm clipping without an extra pass).
pub fn adam<T: Float>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    s: AdamStep,
    grad_scale: f64,
) {
    let n = param.len();
    assert!(
        grad.len() == n && m.len() == n && v.len() == n,
        "adam: buffer lengths differ"
    );
    let c = |x: f64| T::from_f64(x);
    let (b1, b2, eps, lr, wd, gs) = (
        c(s.beta1),
        c(s.beta2),
        c(s.eps),
        c(s.lr),
        c(s.weight_decay),
        c(grad_scale),
    );
    let (ib1, ib2) = (c(1.0 / s.bias1), c(1.0 / s.bias2));
    let (one_b1, one_b2) = (c(1.0 - s.beta1), c(1.0 - s.beta2));
    #[allow(clippy::type_complexity)]
    let step = |(((p, g), m), v): (((&mut [T], &[T]), &mut [T]), &mut [T])| {
        super::simd::with_avx2(|| {
            for i in 0..p.len() {
                let mut gi = g[i] * gs;
                if !s.decoupled {
                    gi += wd * p[i];
                } else {
                    p[i] -= lr * wd * p[i];
                }
                m[i] = b1 * m[i] + one_b1 * gi;
                v[i] = b2 * v[i] + one_b2 * gi * gi;
                let mhat = m[i] * ib1;
                let vhat = v[i] * ib2;
                p[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        })
    };
    param
        .par_chunks_mut(PAR_CHUNK)
        .zip(grad.par_chunks(PAR_CHUNK))
        .zip(m.par_chunks_mut(PAR_CHUNK))
        .zip(v.par_chunks_mut(PAR_CHUNK))
        .for_each(step);
}

/// Exponential moving average: ema ← decay·ema + (1 − decay)·θ.
pub fn ema<T: Float>(ema: &mut [T], param: &[T], decay: f64) {
    assert_eq!(ema.len(), param.len(), "ema: buffer lengths differ");
    let (d, one_d) = (T::from_f64(decay), T::from_f64(1.0 - decay));
    ema.par_chunks_mut(PAR_CHUNK)
        .zip(param.par_chunks(PAR_CHUNK))
        .for_each(|(e, p)| {
            super::simd::with_avx2(|| {
                for (e, &p) in e.iter_mut().zip(p) {
                    *e = d * *e + one_d * p;
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_first_step_moves_by_lr() {
        // On step 1, m̂ = g and v̂ = g², so the update is lr·g/(|g|+ε) ≈ lr·sign(g).
        let (mut p, g, mut m, mut v) = (
            vec![1.0f64, -1.0],
            vec![0.5, -2.0],
            vec![0.0; 2],
            vec![0.0; 2],
        );
        let s = AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            bias1: 0.1,
            bias2: 0.001,
        };
        adam(&mut p, &g, &mut m, &mut v, s, 1.0);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }
}
