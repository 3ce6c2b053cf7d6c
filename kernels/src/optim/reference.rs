//! The optimizer updates as textbook formulas in f64, one element at a
//! time: the oracle of the CPU kernel's tests.

use super::AdamStep;

/// One Adam (or AdamW, `decoupled`) step of a parameter p with gradient
/// g·`scale` (Kingma & Ba 2015, Algorithm 1; AdamW: Loshchilov & Hutter
/// 2019): the new (p, m, v). L2 decay adds λp to the gradient; decoupled
/// decay shrinks p by lr·λ·p before the update.
pub fn adam(p: f64, g: f64, m: f64, v: f64, s: AdamStep, scale: f64) -> [f64; 3] {
    let mut g = g * scale;
    let mut p = p;
    if s.decoupled {
        p -= s.lr * s.weight_decay * p;
    } else {
        g += s.weight_decay * p;
    }
    let m = s.beta1 * m + (1.0 - s.beta1) * g;
    let v = s.beta2 * v + (1.0 - s.beta2) * g * g;
    let (mhat, vhat) = (m / s.bias1, v / s.bias2);
    [p - s.lr * mhat / (vhat.sqrt() + s.eps), m, v]
}
