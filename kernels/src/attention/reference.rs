//! Attention as plain f64 loops, forward and backward side by side: the
//! oracle the flash and plain CPU paths (and the CUDA launcher) are tested
//! against.
//!
//! Per batch item: S = s·Q Kᵀ `[M, N]`, P = softmax over each row of S,
//! O = P V `[M, E]`, L_r = ln Σ_c e^{S_rc}. Backward (Vaswani et al. 2017's
//! attention; the softmax Jacobian): dV = Pᵀ dO, dP = dO Vᵀ,
//! dS_rc = P_rc (dP_rc − Σ_c' P_rc' dP_rc'), dQ = s·dS K, dK = s·dSᵀ Q.

use super::AttnConfig;

/// P `[M, N]` of batch item `b`: the row softmax of s·Q Kᵀ, and each row's
/// log-sum-exp.
fn probabilities(c: &AttnConfig, q: &[f64], k: &[f64], b: usize) -> (Vec<f64>, Vec<f64>) {
    let (m, n, d) = (c.q_len, c.kv_len, c.qk_dim);
    let mut p = vec![0.0; m * n];
    let mut lse = vec![0.0; m];
    for r in 0..m {
        let qr = &q[(b * m + r) * d..][..d];
        let s: Vec<f64> = (0..n)
            .map(|j| {
                c.scale
                    * qr.iter()
                        .zip(&k[(b * n + j) * d..][..d])
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
        lse[r] = max + sum.ln();
        for j in 0..n {
            p[r * n + j] = (s[j] - lse[r]).exp();
        }
    }
    (p, lse)
}

/// (O `[B, M, E]`, L `[B, M]`) of row-major q `[B, M, C]`, k `[B, N, C]`,
/// v `[B, N, E]`.
pub fn forward(c: &AttnConfig, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (m, n, e) = (c.q_len, c.kv_len, c.v_dim);
    let mut out = vec![0.0; c.batch * m * e];
    let mut lse = Vec::with_capacity(c.batch * m);
    for b in 0..c.batch {
        let (p, l) = probabilities(c, q, k, b);
        for r in 0..m {
            for j in 0..n {
                for x in 0..e {
                    out[(b * m + r) * e + x] += p[r * n + j] * v[(b * n + j) * e + x];
                }
            }
        }
        lse.extend(l);
    }
    (out, lse)
}

/// (dq, dk, dv): the gradients of Σ dO ⊙ O.
pub fn backward(
    c: &AttnConfig,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_out: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (m, n, d, e) = (c.q_len, c.kv_len, c.qk_dim, c.v_dim);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..c.batch {
        let (p, _) = probabilities(c, q, k, b);
        for r in 0..m {
            let dor = &d_out[(b * m + r) * e..][..e];
            // dP_rj = dO_r · V_j
            let dp: Vec<f64> = (0..n)
                .map(|j| {
                    dor.iter()
                        .zip(&v[(b * n + j) * e..][..e])
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let row_dot: f64 = (0..n).map(|j| p[r * n + j] * dp[j]).sum();
            for j in 0..n {
                let pj = p[r * n + j];
                for x in 0..e {
                    dv[(b * n + j) * e + x] += pj * dor[x];
                }
                let ds = pj * (dp[j] - row_dot) * c.scale;
                for y in 0..d {
                    dq[(b * m + r) * d + y] += ds * k[(b * n + j) * d + y];
                    dk[(b * n + j) * d + y] += ds * q[(b * m + r) * d + y];
                }
            }
        }
    }
    (dq, dk, dv)
}
