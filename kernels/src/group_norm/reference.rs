//! Group norm (+ affine, + SiLU) as plain f64 loops, forward and backward
//! side by side: the oracle the CPU and CUDA kernels are tested against.
//!
//! Per (sample, group) of m = (C/G)·S elements: μ, σ² = var(x) (biased),
//! r = 1/√(σ² + ε), x̂ = (x − μ)·r, h = γ_c x̂ + β_c, y = h or SiLU(h) =
//! h·σ(h). Backward: dh = dy (or dy·σ(h)(1 + h(1 − σ(h))) through SiLU),
//! dβ_c = Σ dh, dγ_c = Σ dh·x̂, and with g = γ_c·dh,
//! dx = r·(g − mean(g) − x̂·mean(g·x̂)) (the normalisation's backward,
//! over each group; GroupNorm is Wu & He 2018).

use super::GroupNormDims;

/// (y, dx, dγ, dβ) for input `x` `[n, C, S]`, output gradient `dy`,
/// per-channel γ and β, and ε; `silu` applies SiLU after the affine map.
pub fn forward_and_backward(
    x: &[f64],
    dy: &[f64],
    d: GroupNormDims,
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
    silu: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (cg, s, m) = (d.channels_per_group(), d.spatial, d.group_len());
    let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    let (mut dg, mut db) = (vec![0.0; d.channels], vec![0.0; d.channels]);
    for t in 0..d.n * d.groups {
        let xg = &x[t * m..(t + 1) * m];
        let mu = xg.iter().sum::<f64>() / m as f64;
        let var = xg.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / m as f64;
        let r = 1.0 / (var + eps).sqrt();
        let mut dh = vec![0.0; m];
        let xhat: Vec<f64> = xg.iter().map(|v| (v - mu) * r).collect();
        for i in 0..m {
            let c = (t % d.groups) * cg + i / s;
            let h = gamma[c] * xhat[i] + beta[c];
            let sg = 1.0 / (1.0 + (-h).exp());
            y[t * m + i] = if silu { h * sg } else { h };
            let g = dy[t * m + i];
            dh[i] = if silu {
                g * sg * (1.0 + h * (1.0 - sg))
            } else {
                g
            };
            db[c] += dh[i];
            dg[c] += dh[i] * xhat[i];
        }
        let gdh: Vec<f64> = (0..m)
            .map(|i| gamma[(t % d.groups) * cg + i / s] * dh[i])
            .collect();
        let a = gdh.iter().sum::<f64>() / m as f64;
        let b = gdh.iter().zip(&xhat).map(|(p, q)| p * q).sum::<f64>() / m as f64;
        for i in 0..m {
            dx[t * m + i] = r * (gdh[i] - a - xhat[i] * b);
        }
    }
    (y, dx, dg, db)
}
