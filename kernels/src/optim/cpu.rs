//! Fused optimizer updates: each reads and writes every buffer once.

pub use super::AdamStep;
use crate::Float;
use crate::cpu::PAR_CHUNK;
use rayon::prelude::*;

/// One rayon task's slices of θ, g, m, v.
type AdamChunk<'a, T> = (((&'a mut [T], &'a [T]), &'a mut [T]), &'a mut [T]);

/// One Adam step (Kingma & Ba, Alg. 1; operation order of `torch.optim.Adam`):
///
/// g ← grad_scale·g + λ_L2·θ;  θ ← θ·(1 − lr·λ_decoupled);
/// m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
/// θ ← θ − (lr/(1−β1^t)) · m / (√v / √(1−β2^t) + ε).
///
/// Exactly one of λ_L2 (Adam) and λ_decoupled (AdamW) is `s.weight_decay`,
/// the other is 0, so the loop has no branch and vectorises.
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
    let (l2, keep) = if s.decoupled {
        (0.0, 1.0 - s.lr * s.weight_decay)
    } else {
        (s.weight_decay, 1.0)
    };
    let (l2, keep, gs) = (c(l2), c(keep), c(grad_scale));
    let (b1, b2, one_b1, one_b2) = (c(s.beta1), c(s.beta2), c(1.0 - s.beta1), c(1.0 - s.beta2));
    let (step_size, sqrt_bias2, eps) = (c(s.lr / s.bias1), c(s.bias2.sqrt()), c(s.eps));
    let step = |(((p, g), m), v): AdamChunk<'_, T>| {
        crate::cpu::simd::with_avx2(|| {
            for i in 0..p.len() {
                let gi = g[i] * gs + l2 * p[i];
                m[i] = b1 * m[i] + one_b1 * gi;
                v[i] = b2 * v[i] + one_b2 * gi * gi;
                let denom = v[i].sqrt() / sqrt_bias2 + eps;
                p[i] = p[i] * keep - step_size * m[i] / denom;
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
            crate::cpu::simd::with_avx2(|| {
                for (e, &p) in e.iter_mut().zip(p) {
                    *e = d * *e + one_d * p;
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::{Isa, with_isa};
    use crate::optim::reference;

    fn hyper(decoupled: bool, t: i32) -> AdamStep {
        AdamStep {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
            decoupled,
            bias1: 1.0 - 0.9f64.powi(t),
            bias2: 1.0 - 0.999f64.powi(t),
        }
    }

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
            weight_decay: 0.0,
            ..hyper(false, 1)
        };
        adam(&mut p, &g, &mut m, &mut v, s, 1.0);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn adam_matches_textbook_formula_simd_and_scalar() {
        // Long enough to cover whole 8-lane blocks, a tail and two rayon chunks.
        let n = PAR_CHUNK + 13;
        let p0: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 30.0)
            .collect();
        // |g| ≥ 0.5 keeps g + λθ away from 0, where Adam's direction is ill-conditioned.
        let g: Vec<f32> = (0..n)
            .map(|i| (0.5 + (i * 53 % 97) as f32 / 50.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        for decoupled in [false, true] {
            for isa in [Isa::Scalar, Isa::Avx512] {
                let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
                let mut want: Vec<[f64; 3]> = p0.iter().map(|&x| [x as f64, 0.0, 0.0]).collect();
                for t in 1..=3 {
                    let s = hyper(decoupled, t);
                    with_isa(isa, || adam(&mut p, &g, &mut m, &mut v, s, 0.5));
                    for (w, &gi) in want.iter_mut().zip(&g) {
                        *w = reference::adam(w[0], gi as f64, w[1], w[2], s, 0.5);
                    }
                }
                for i in 0..n {
                    let err = (p[i] as f64 - want[i][0]).abs();
                    assert!(
                        err < 1e-5 * (1.0 + want[i][0].abs()),
                        "i={i}: {} vs {}",
                        p[i],
                        want[i][0]
                    );
                }
            }
        }
    }

    #[test]
    fn ema_blends() {
        let mut e = vec![1.0f32; 10];
        ema(&mut e, &[3.0; 10], 0.75);
        assert!(e.iter().all(|&x| (x - 1.5).abs() < 1e-6), "{e:?}");
    }
}
