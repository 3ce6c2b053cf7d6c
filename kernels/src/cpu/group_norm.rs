//! Group normalisation over a contiguous `[N, C, S]` tensor (S = the product
//! of the spatial sizes), with an optional SiLU fused on the output.
//!
//! The channels are split into G groups of C/G; group (n, g) is the
//! contiguous run `x[n, g·C/G .. (g+1)·C/G, :]` of M = (C/G)·S elements, so
//! each (n, g) is one independent task (rayon splits across them). A task
//! reads its group a few times (statistics, then normalise), but the group
//! is small enough to stay in cache, so memory sees one read of x and one
//! write of y. Backward likewise: one sweep for the two reductions, one
//! for the input gradient.
//!
//! Only the per-group mean and 1/σ are saved for backward; x̂ is recomputed
//! from x, which the caller keeps anyway.

use super::PAR_CHUNK;
use super::simd::{self, SimdLevel};
use crate::Float;
use rayon::prelude::*;

/// The sizes of a group-norm problem: x is `[n, channels, spatial]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormDims {
    pub n: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
}

impl GroupNormDims {
    fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    /// Elements in one (n, g) group.
    fn group_len(&self) -> usize {
        self.channels_per_group() * self.spatial
    }
    fn numel(&self) -> usize {
        self.n * self.channels * self.spatial
    }
    fn check(&self, op: &str) {
        assert!(
            self.groups > 0 && self.channels % self.groups == 0,
            "{op}: {} channels do not split into {} groups",
            self.channels,
            self.groups
        );
    }
    /// Groups handed to one rayon job, so a job is at least ~PAR_CHUNK/4
    /// elements (tiny groups, e.g. 4×4 maps, would otherwise cost more in
    /// scheduling than in arithmetic).
    fn groups_per_job(&self) -> usize {
        (PAR_CHUNK / 4 / self.group_len().max(1)).max(1)
    }
}

/// Forward group norm:
///
///   μ = mean(x over the group), σ² = mean((x − μ)²), r = 1/√(σ² + ε),
///   h = γ_c·(x − μ)·r + β_c,   y = h, or y = silu(h) = h·σ(h) when `silu`.
///
/// The variance is computed in a second pass over the (cached) group around
/// the mean, so it does not cancel catastrophically when |μ| ≫ σ. Writes `y`
/// (`[N, C, S]`) and the saved statistics `mean`, `rstd` (`[N, G]`).
#[allow(clippy::too_many_arguments)]
pub fn group_norm<T: Float>(
    x: &[T],
    dims: GroupNormDims,
    gamma: &[T],
    beta: &[T],
    eps: f64,
    silu: bool,
    y: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
) {
    dims.check("group_norm");
    assert_eq!(x.len(), dims.numel(), "group_norm: x length");
    assert_eq!(y.len(), x.len(), "group_norm: y length");
    assert!(gamma.len() == dims.channels && beta.len() == dims.channels);
    assert!(mean.len() == dims.n * dims.groups && rstd.len() == mean.len());
    let m = dims.group_len();
    if m == 0 {
        mean.fill(T::ZERO);
        rstd.fill(T::ZERO);
        return;
    }
    let cg = dims.channels_per_group();
    let eps = T::from_f64(eps);
    x.par_chunks(m)
        .zip(y.par_chunks_mut(m))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .with_min_len(dims.groups_per_job())
        .for_each(|(task, ((xg, yg), (mu, r)))| {
            let c0 = (task % dims.groups) * cg;
            let (gam, bet) = (&gamma[c0..c0 + cg], &beta[c0..c0 + cg]);
            (*mu, *r) = forward_group(xg, yg, gam, bet, dims.spatial, eps, silu);
        });
}

/// One (n, g) group: statistics, then y = a_c·x + b_c per channel with
/// a_c = γ_c·r and b_c = β_c − μ·a_c (then SiLU). Returns (μ, r).
fn forward_group<T: Float>(
    xg: &[T],
    yg: &mut [T],
    gamma: &[T],
    beta: &[T],
    spatial: usize,
    eps: T,
    silu: bool,
) -> (T, T) {
    let inv_m = T::ONE / T::from_f64(xg.len() as f64);
    let (mu, var) = simd::with_avx2(|| {
        let mu = lane_sum(xg) * inv_m;
        (mu, lane_sum_sq_dev(xg, mu) * inv_m)
    });
    let r = T::ONE / (var + eps).sqrt();
    for (c, (xc, yc)) in xg
        .chunks_exact(spatial)
        .zip(yg.chunks_exact_mut(spatial))
        .enumerate()
    {
        let a = gamma[c] * r;
        let b = beta[c] - mu * a;
        affine_row(xc, a, b, silu, yc);
    }
    (mu, r)
}

/// Backward of [`group_norm`]. Given x, ∂L/∂y, γ, β and the saved μ, r:
///
///   dh = dy, or dy·σ(h)(1 + h(1 − σ(h))) with SiLU (h recomputed from x);
///   per channel: s1_c = Σ_S dh, s2_c = Σ_S dh·x̂;  dβ_c = Σ_n s1_c, dγ_c = Σ_n s2_c;
///   per group: A = Σ_c γ_c s1_c, B = Σ_c γ_c s2_c, M = group size;
///   dx = r·(γ_c·dh − A/M − x̂·B/M).
///
/// Each (n, g) task makes one sweep computing dh and the sums (dh is parked
/// in `dx`, which is overwritten next), then one sweep writing dx as
/// dx = p_c·dh + q·x + k with per-channel/group constants.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward<T: Float>(
    x: &[T],
    dy: &[T],
    dims: GroupNormDims,
    gamma: &[T],
    beta: &[T],
    mean: &[T],
    rstd: &[T],
    silu: bool,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    dims.check("group_norm_backward");
    assert!(x.len() == dims.numel() && dy.len() == x.len() && dx.len() == x.len());
    assert!(gamma.len() == dims.channels && beta.len() == dims.channels);
    assert!(dgamma.len() == dims.channels && dbeta.len() == dims.channels);
    assert!(mean.len() == dims.n * dims.groups && rstd.len() == mean.len());
    dgamma.fill(T::ZERO);
    dbeta.fill(T::ZERO);
    let m = dims.group_len();
    if m == 0 {
        return;
    }
    let cg = dims.channels_per_group();
    // Per-(n, c) partial sums, reduced over n below (tasks write disjoint rows).
    let mut s1 = vec![T::ZERO; dims.n * dims.channels];
    let mut s2 = vec![T::ZERO; dims.n * dims.channels];
    x.par_chunks(m)
        .zip(dy.par_chunks(m))
        .zip(dx.par_chunks_mut(m))
        .zip(s1.par_chunks_mut(cg).zip(s2.par_chunks_mut(cg)))
        .enumerate()
        .with_min_len(dims.groups_per_job())
        .for_each(|(task, (((xg, dyg), dxg), (s1g, s2g)))| {
            let c0 = (task % dims.groups) * cg;
            let group = GroupGrad {
                gamma: &gamma[c0..c0 + cg],
                beta: &beta[c0..c0 + cg],
                mu: mean[task],
                r: rstd[task],
                spatial: dims.spatial,
                silu,
            };
            group.backward(xg, dyg, dxg, s1g, s2g);
        });
    for (s1n, s2n) in s1
        .chunks_exact(dims.channels)
        .zip(s2.chunks_exact(dims.channels))
    {
        for c in 0..dims.channels {
            dbeta[c] += s1n[c];
            dgamma[c] += s2n[c];
        }
    }
}

/// The constants of one (n, g) group in backward.
struct GroupGrad<'a, T> {
    gamma: &'a [T],
    beta: &'a [T],
    mu: T,
    r: T,
    spatial: usize,
    silu: bool,
}

impl<T: Float> GroupGrad<'_, T> {
    fn backward(&self, xg: &[T], dyg: &[T], dxg: &mut [T], s1: &mut [T], s2: &mut [T]) {
        let s = self.spatial;
        // Sweep 1: dh (parked in dx when it differs from dy) and the sums.
        for c in 0..self.gamma.len() {
            let rows = c * s..(c + 1) * s;
            let (xc, dyc) = (&xg[rows.clone()], &dyg[rows.clone()]);
            let (sum_dh, sum_dh_xc) = if self.silu {
                let a = self.gamma[c] * self.r;
                let b = self.beta[c] - self.mu * a;
                silu_grad_row(xc, dyc, a, b, self.mu, &mut dxg[rows])
            } else {
                simd::with_avx2(|| lane_sum_dot_dev(dyc, xc, self.mu))
            };
            s1[c] = sum_dh;
            s2[c] = sum_dh_xc * self.r;
        }
        let (mut a_sum, mut b_sum) = (T::ZERO, T::ZERO);
        for c in 0..self.gamma.len() {
            a_sum += self.gamma[c] * s1[c];
            b_sum += self.gamma[c] * s2[c];
        }
        // Sweep 2: dx = r·γ_c·dh + q·x + k, q = −r²·B/M, k = −r·A/M − q·μ.
        let inv_m = T::ONE / T::from_f64(xg.len() as f64);
        let q = -(self.r * self.r * b_sum * inv_m);
        let k = -(self.r * a_sum * inv_m) - q * self.mu;
        simd::with_avx2(|| {
            for c in 0..self.gamma.len() {
                let rows = c * s..(c + 1) * s;
                let p = self.r * self.gamma[c];
                let xc = &xg[rows.clone()];
                if self.silu {
                    for (d, &xv) in dxg[rows].iter_mut().zip(xc) {
                        *d = p * *d + (q * xv + k);
                    }
                } else {
                    for ((d, &g), &xv) in dxg[rows.clone()].iter_mut().zip(&dyg[rows]).zip(xc) {
                        *d = p * g + (q * xv + k);
                    }
                }
            }
        });
    }
}

/// Partial sums kept in this many independent lanes, so the compiler can
/// vectorise a reduction without reassociating one serial chain (which it
/// may not do for floats). 16 = two AVX2 registers of f32.
const LANES: usize = 16;

/// Σ x, summed lane-wise.
#[inline(always)]
fn lane_sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for k in 0..LANES {
            acc[k] += ch[k];
        }
    }
    fold_lanes(acc, tail.iter().fold(T::ZERO, |s, &v| s + v))
}

/// Σ (x − μ)².
#[inline(always)]
fn lane_sum_sq_dev<T: Float>(x: &[T], mu: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for ch in chunks {
        for k in 0..LANES {
            let d = ch[k] - mu;
            acc[k] += d * d;
        }
    }
    let t = tail.iter().fold(T::ZERO, |s, &v| s + (v - mu) * (v - mu));
    fold_lanes(acc, t)
}

/// (Σ g, Σ g·(x − μ)) in one sweep.
#[inline(always)]
fn lane_sum_dot_dev<T: Float>(g: &[T], x: &[T], mu: T) -> (T, T) {
    let (mut sg, mut sgx) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let gc = g.chunks_exact(LANES);
    let xc = x.chunks_exact(LANES);
    let (gt, xt) = (gc.remainder(), xc.remainder());
    for (gch, xch) in gc.zip(xc) {
        for k in 0..LANES {
            sg[k] += gch[k];
            sgx[k] += gch[k] * (xch[k] - mu);
        }
    }
    let (mut tg, mut tgx) = (T::ZERO, T::ZERO);
    for (&gv, &xv) in gt.iter().zip(xt) {
        tg += gv;
        tgx += gv * (xv - mu);
    }
    (fold_lanes(sg, tg), fold_lanes(sgx, tgx))
}

#[inline(always)]
fn fold_lanes<T: Float>(acc: [T; LANES], tail: T) -> T {
    acc.iter().fold(tail, |s, &v| s + v)
}

#[inline(always)]
fn sigmoid<T: Float>(v: T) -> T {
    T::ONE / (T::ONE + (-v).exp())
}

/// y = a·x + b, then SiLU when asked.
fn affine_row<T: Float>(x: &[T], a: T, b: T, silu: bool, y: &mut [T]) {
    if silu {
        #[cfg(target_arch = "x86_64")]
        if let (Some(xf), Some(yf)) = (as_f32(x), as_f32_mut(y)) {
            if simd::level() == SimdLevel::Avx2Fma {
                // SAFETY: AVX2+FMA checked just above; T is f32.
                unsafe { affine_silu_f32_avx2(xf, a.to_f64() as f32, b.to_f64() as f32, yf) };
                return;
            }
        }
        for (o, &v) in y.iter_mut().zip(x) {
            let h = a * v + b;
            *o = h * sigmoid(h);
        }
    } else {
        simd::with_avx2(|| {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = a * v + b;
            }
        })
    }
}

/// For one channel row with SiLU: writes dh = dy·silu'(a·x + b) into `dh`
/// and returns (Σ dh, Σ dh·(x − μ)).
fn silu_grad_row<T: Float>(x: &[T], dy: &[T], a: T, b: T, mu: T, dh: &mut [T]) -> (T, T) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(gf), Some(of)) = (as_f32(x), as_f32(dy), as_f32_mut(dh)) {
        if simd::level() == SimdLevel::Avx2Fma {
            let f = |v: T| v.to_f64() as f32;
            // SAFETY: AVX2+FMA checked just above; T is f32.
            let (s, sx) = unsafe { silu_grad_f32_avx2(xf, gf, f(a), f(b), f(mu), of) };
            return (T::from_f64(s as f64), T::from_f64(sx as f64));
        }
    }
    let (mut s, mut sx) = (T::ZERO, T::ZERO);
    for ((o, &v), &g) in dh.iter_mut().zip(x).zip(dy) {
        let h = a * v + b;
        let sg = sigmoid(h);
        let d = g * sg * (T::ONE + h * (T::ONE - sg));
        *o = d;
        s += d;
        sx += d * (v - mu);
    }
    (s, sx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn affine_silu_f32_avx2(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
    use simd::avx2::{map8, sigmoid_ps};
    use std::arch::x86_64::*;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    map8(x, y, |v| {
        let h = _mm256_fmadd_ps(v, va, vb);
        _mm256_mul_ps(h, sigmoid_ps(h))
    });
}

/// AVX2 version of the SiLU row of [`silu_grad_row`]. The tail goes through
/// a zero-padded vector: padded lanes have dy = 0, so dh = 0 there and they
/// add nothing to the sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn silu_grad_f32_avx2(
    x: &[f32],
    dy: &[f32],
    a: f32,
    b: f32,
    mu: f32,
    dh: &mut [f32],
) -> (f32, f32) {
    use simd::avx2::sigmoid_ps;
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(dy.len() == n && dh.len() == n);
    let (va, vb, vmu, one) = (
        _mm256_set1_ps(a),
        _mm256_set1_ps(b),
        _mm256_set1_ps(mu),
        _mm256_set1_ps(1.0),
    );
    let (mut s, mut sx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut step = |xv: __m256, gv: __m256| -> __m256 {
        let h = _mm256_fmadd_ps(xv, va, vb);
        let sg = sigmoid_ps(h);
        let d = _mm256_mul_ps(
            gv,
            _mm256_mul_ps(sg, _mm256_fmadd_ps(h, _mm256_sub_ps(one, sg), one)),
        );
        s = _mm256_add_ps(s, d);
        sx = _mm256_fmadd_ps(d, _mm256_sub_ps(xv, vmu), sx);
        d
    };
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n and all three slices hold n elements.
        unsafe {
            let d = step(
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(dy.as_ptr().add(i)),
            );
            _mm256_storeu_ps(dh.as_mut_ptr().add(i), d);
        }
        i += 8;
    }
    if i < n {
        let (mut tx, mut tg, mut td) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        tx[..n - i].copy_from_slice(&x[i..]);
        tg[..n - i].copy_from_slice(&dy[i..]);
        // SAFETY: the temporaries are 8 elements long.
        unsafe {
            let d = step(_mm256_loadu_ps(tx.as_ptr()), _mm256_loadu_ps(tg.as_ptr()));
            _mm256_storeu_ps(td.as_mut_ptr(), d);
        }
        dh[i..].copy_from_slice(&td[..n - i]);
    }
    (hsum(s), hsum(sx))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 f32 long.
    unsafe { std::arch::x86_64::_mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    lanes.iter().sum()
}

// The same f32 views as elementwise.rs (kept private there): the explicit
// AVX2 code is f32-only, the generic code serves f64.
#[inline(always)]
fn as_f32<T: Float>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, same layout.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

#[inline(always)]
fn as_f32_mut<T: Float>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: T is f32, same layout.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward f64 reference of the forward and backward formulas.
    fn reference(
        x: &[f64],
        dy: &[f64],
        d: GroupNormDims,
        gamma: &[f64],
        beta: &[f64],
        silu: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (cg, s, m) = (d.channels_per_group(), d.spatial, d.group_len());
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (mut dg, mut db) = (vec![0.0; d.channels], vec![0.0; d.channels]);
        for t in 0..d.n * d.groups {
            let xg = &x[t * m..(t + 1) * m];
            let mu = xg.iter().sum::<f64>() / m as f64;
            let var = xg.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / m as f64;
            let r = 1.0 / (var + 1e-5).sqrt();
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

    #[test]
    fn f32_kernels_match_f64_reference_both_simd_paths() {
        let d = GroupNormDims {
            n: 2,
            channels: 6,
            spatial: 13,
            groups: 3,
        };
        let len = d.numel();
        let x: Vec<f64> = (0..len)
            .map(|i| ((i * 37 % 101) as f64) * 0.05 + 3.0)
            .collect();
        let dy: Vec<f64> = (0..len)
            .map(|i| ((i * 53 % 29) as f64) * 0.1 - 1.4)
            .collect();
        let gamma: Vec<f64> = (0..6).map(|c| 0.5 + c as f64 * 0.3).collect();
        let beta: Vec<f64> = (0..6).map(|c| c as f64 * 0.2 - 0.5).collect();
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        for silu in [false, true] {
            let want = reference(&x, &dy, d, &gamma, &beta, silu);
            for scalar in [true, false] {
                simd::force_scalar(scalar);
                let (mut y, mut mu, mut r) = (vec![0f32; len], vec![0f32; 6], vec![0f32; 6]);
                group_norm(
                    &f(&x),
                    d,
                    &f(&gamma),
                    &f(&beta),
                    1e-5,
                    silu,
                    &mut y,
                    &mut mu,
                    &mut r,
                );
                let (mut dx, mut dg, mut db) = (vec![0f32; len], vec![0f32; 6], vec![0f32; 6]);
                group_norm_backward(
                    &f(&x),
                    &f(&dy),
                    d,
                    &f(&gamma),
                    &f(&beta),
                    &mu,
                    &r,
                    silu,
                    &mut dx,
                    &mut dg,
                    &mut db,
                );
                simd::force_scalar(false);
                for (got, want) in [
                    (&y, &want.0),
                    (&dx, &want.1),
                    (&dg, &want.2),
                    (&db, &want.3),
                ] {
                    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                    for (g, w) in got.iter().zip(want.iter()) {
                        assert!(
                            (*g as f64 - w).abs() <= 2e-5 * scale,
                            "silu={silu} scalar={scalar}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
