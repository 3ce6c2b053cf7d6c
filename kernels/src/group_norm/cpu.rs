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

pub use super::GroupNormDims;

// How the loops are compiled. The per-row work is a handful of small loops
// (sums, y = a·x + b, SiLU and its derivative). For f32 the ones LLVM does
// not vectorise well on its own (float reductions, transcendentals) are
// written with AVX2 / AVX-512 intrinsics in `f32x` below; everything else is
// generic code that each (n, g) task runs inside a `#[target_feature(avx2)]`
// wrapper, so it is auto-vectorised 8 wide. f64 (used by gradient checks)
// and CPUs without AVX2 run the generic code as is.

use crate::Float;
use crate::cpu::simd::{self, Isa};
use crate::cpu::{as_f32, as_f32_mut};
use rayon::prelude::*;

/// Forward group norm:
///
///   μ = mean(x over the group), σ² = mean((x − μ)²), r = 1/√(σ² + ε),
///   h = γ_c·(x − μ)·r + β_c,   y = h, or y = silu(h) = h·σ(h) when `silu`.
///
/// The variance is computed in a second pass over the (cached) group around
/// the mean, so it does not cancel catastrophically when |μ| ≫ σ. Writes `y`
/// (`[N, C, S]`) and the saved statistics `mean`, `rstd` (`[N, G]`).
pub fn group_norm<T: Float>(
    x: &[T],
    dims: GroupNormDims,
    (gamma, beta): (&[T], &[T]),
    eps: f64,
    silu: bool,
    (y, mean, rstd): (&mut [T], &mut [T], &mut [T]),
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
    let isa = isa_for::<T>();
    let eps = T::from_f64(eps);
    x.par_chunks(m)
        .zip(y.par_chunks_mut(m))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .enumerate()
        .with_min_len(dims.groups_per_job())
        .for_each(|(task, ((xg, yg), (mu, r)))| {
            let c0 = (task % dims.groups) * cg;
            let group = GroupForward {
                gamma: &gamma[c0..c0 + cg],
                beta: &beta[c0..c0 + cg],
                spatial: dims.spatial,
                eps,
                silu,
                isa,
            };
            (*mu, *r) = match isa {
                Isa::Scalar => group.run(xg, yg),
                // SAFETY: `isa_for` found AVX2+FMA.
                _ => unsafe { group.run_avx2(xg, yg) },
            };
        });
}

/// The constants of one (n, g) group in forward.
struct GroupForward<'a, T> {
    gamma: &'a [T],
    beta: &'a [T],
    spatial: usize,
    eps: T,
    silu: bool,
    isa: Isa,
}

impl<T: Float> GroupForward<'_, T> {
    /// [`Self::run`] compiled with AVX2+FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, xg: &[T], yg: &mut [T]) -> (T, T) {
        self.run(xg, yg)
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run_avx2(&self, xg: &[T], yg: &mut [T]) -> (T, T) {
        self.run(xg, yg)
    }

    /// Statistics, then y = a_c·x + b_c per channel with a_c = γ_c·r and
    /// b_c = β_c − μ·a_c (then SiLU). Returns (μ, r). `#[inline(always)]`,
    /// as every row function below, so that it takes the target features
    /// of the wrapper it is called from.
    #[inline(always)]
    fn run(&self, xg: &[T], yg: &mut [T]) -> (T, T) {
        let inv_m = T::ONE / T::from_f64(xg.len() as f64);
        let mu = row_sum(self.isa, xg) * inv_m;
        let var = row_sum_sq_dev(self.isa, xg, mu) * inv_m;
        let r = T::ONE / (var + self.eps).sqrt();
        for (c, (xc, yc)) in xg
            .chunks_exact(self.spatial)
            .zip(yg.chunks_exact_mut(self.spatial))
            .enumerate()
        {
            let a = self.gamma[c] * r;
            let b = self.beta[c] - mu * a;
            if self.silu {
                row_affine_silu(self.isa, xc, a, b, yc);
            } else {
                row_affine(xc, a, b, yc);
            }
        }
        (mu, r)
    }
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
pub fn group_norm_backward<T: Float>(
    (x, dy): (&[T], &[T]),
    dims: GroupNormDims,
    (gamma, beta): (&[T], &[T]),
    (mean, rstd): (&[T], &[T]),
    silu: bool,
    (dx, dgamma, dbeta): (&mut [T], &mut [T], &mut [T]),
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
    let isa = isa_for::<T>();
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
            let group = GroupBackward {
                gamma: &gamma[c0..c0 + cg],
                beta: &beta[c0..c0 + cg],
                mu: mean[task],
                r: rstd[task],
                spatial: dims.spatial,
                silu,
                isa,
            };
            let args = (xg, dyg, dxg, s1g, s2g);
            match isa {
                Isa::Scalar => group.run(args),
                // SAFETY: `isa_for` found AVX2+FMA.
                _ => unsafe { group.run_avx2(args) },
            }
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
struct GroupBackward<'a, T> {
    gamma: &'a [T],
    beta: &'a [T],
    mu: T,
    r: T,
    spatial: usize,
    silu: bool,
    isa: Isa,
}

/// A backward task's slices: x, dy, dx of the group; s1, s2 of its channels.
type BackwardArgs<'a, T> = (&'a [T], &'a [T], &'a mut [T], &'a mut [T], &'a mut [T]);

impl<T: Float> GroupBackward<'_, T> {
    /// [`Self::run`] compiled with AVX2+FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, args: BackwardArgs<'_, T>) {
        self.run(args)
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn run_avx2(&self, args: BackwardArgs<'_, T>) {
        self.run(args)
    }

    #[inline(always)]
    fn run(&self, (xg, dyg, dxg, s1, s2): BackwardArgs<'_, T>) {
        let s = self.spatial;
        // Sweep 1: dh (parked in dx when it differs from dy) and the sums.
        for c in 0..self.gamma.len() {
            let rows = c * s..(c + 1) * s;
            let (xc, dyc) = (&xg[rows.clone()], &dyg[rows.clone()]);
            let (sum_dh, sum_dh_xc) = if self.silu {
                let a = self.gamma[c] * self.r;
                let b = self.beta[c] - self.mu * a;
                row_silu_grad(self.isa, xc, dyc, a, b, self.mu, &mut dxg[rows])
            } else {
                row_sum_dot_dev(self.isa, dyc, xc, self.mu)
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
        for c in 0..self.gamma.len() {
            let rows = c * s..(c + 1) * s;
            let p = self.r * self.gamma[c];
            let xc = &xg[rows.clone()];
            if self.silu {
                row_input_grad_in_place(p, q, k, xc, &mut dxg[rows]);
            } else {
                row_input_grad(p, q, k, &dyg[rows.clone()], xc, &mut dxg[rows]);
            }
        }
    }
}

/// Which explicit f32 kernels run, decided once per call: the CPU's
/// [`simd::isa`] for f32 (AVX-512 adds the 16-lane SiLU kernels, see
/// `simd_avx512`); f64 takes the generic loops.
fn isa_for<T: Float>() -> Isa {
    match std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() {
        true => simd::isa(),
        false => Isa::Scalar,
    }
}

// ---- row functions: explicit f32 kernels where chosen, generic loops otherwise.

/// Σ x.
#[inline(always)]
fn row_sum<T: Float>(isa: Isa, x: &[T]) -> T {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(xf)) = (isa != Isa::Scalar, as_f32(x)) {
        // SAFETY: a non-generic `Isa` means AVX2+FMA are present.
        return T::from_f64(unsafe { f32x::sum(xf) } as f64);
    }
    let _ = isa;
    let mut acc = [T::ZERO; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for ch in chunks {
        for k in 0..LANES {
            acc[k] += ch[k];
        }
    }
    fold_lanes(acc, tail.iter().fold(T::ZERO, |s, &v| s + v))
}

/// Σ (x − μ)².
#[inline(always)]
fn row_sum_sq_dev<T: Float>(isa: Isa, x: &[T], mu: T) -> T {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(xf)) = (isa != Isa::Scalar, as_f32(x)) {
        // SAFETY: a non-generic `Isa` means AVX2+FMA are present.
        return T::from_f64(unsafe { f32x::sum_sq_dev(xf, to_f32(mu)) } as f64);
    }
    let _ = isa;
    let mut acc = [T::ZERO; LANES];
    let (chunks, tail) = x.as_chunks::<LANES>();
    for ch in chunks {
        for k in 0..LANES {
            let d = ch[k] - mu;
            acc[k] += d * d;
        }
    }
    let t = tail.iter().fold(T::ZERO, |s, &v| s + (v - mu) * (v - mu));
    fold_lanes(acc, t)
}

/// (Σ g, Σ g·(x − μ)).
#[inline(always)]
fn row_sum_dot_dev<T: Float>(isa: Isa, g: &[T], x: &[T], mu: T) -> (T, T) {
    #[cfg(target_arch = "x86_64")]
    if let (true, Some(gf), Some(xf)) = (isa != Isa::Scalar, as_f32(g), as_f32(x)) {
        // SAFETY: a non-generic `Isa` means AVX2+FMA are present.
        let (s, sx) = unsafe { f32x::sum_dot_dev(gf, xf, to_f32(mu)) };
        return (T::from_f64(s as f64), T::from_f64(sx as f64));
    }
    let _ = isa;
    let (mut sg, mut sgx) = ([T::ZERO; LANES], [T::ZERO; LANES]);
    let (gc, gt) = g.as_chunks::<LANES>();
    let (xc, xt) = x[..g.len()].as_chunks::<LANES>();
    for (gch, xch) in gc.iter().zip(xc) {
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

/// Independent partial sums of the generic reductions, so that the result
/// does not hinge on one serial chain of additions.
const LANES: usize = 16;

/// Σ of the lanes plus the tail, added pairwise.
#[inline(always)]
fn fold_lanes<T: Float>(mut acc: [T; LANES], tail: T) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    acc[0] + tail
}

/// y = a·x + b (auto-vectorised).
#[inline(always)]
fn row_affine<T: Float>(x: &[T], a: T, b: T, y: &mut [T]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = a * v + b;
    }
}

/// dx = p·dy + q·x + k (auto-vectorised).
#[inline(always)]
fn row_input_grad<T: Float>(p: T, q: T, k: T, dy: &[T], x: &[T], dx: &mut [T]) {
    for ((d, &g), &xv) in dx.iter_mut().zip(dy).zip(x) {
        *d = p * g + (q * xv + k);
    }
}

/// dx = p·dx + q·x + k, with dh parked in dx (auto-vectorised).
#[inline(always)]
fn row_input_grad_in_place<T: Float>(p: T, q: T, k: T, x: &[T], dx: &mut [T]) {
    for (d, &xv) in dx.iter_mut().zip(x) {
        *d = p * *d + (q * xv + k);
    }
}

#[inline(always)]
fn sigmoid<T: Float>(v: T) -> T {
    T::ONE / (T::ONE + (-v).exp())
}

/// y = silu(a·x + b).
#[inline(always)]
fn row_affine_silu<T: Float>(isa: Isa, x: &[T], a: T, b: T, y: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(yf)) = (as_f32(x), as_f32_mut(y)) {
        let (a, b) = (to_f32(a), to_f32(b));
        match isa {
            // SAFETY: `isa_for` chose these only where the CPU has them.
            Isa::Avx512 => return unsafe { f32x::affine_silu_avx512(xf, a, b, yf) },
            Isa::Avx2 => return unsafe { f32x::affine_silu(xf, a, b, yf) },
            Isa::Scalar => {}
        }
    }
    for (o, &v) in y.iter_mut().zip(x) {
        let h = a * v + b;
        *o = h * sigmoid(h);
    }
}

/// With SiLU, one channel row of backward sweep 1: writes
/// dh = dy·silu'(a·x + b) into `dh` and returns (Σ dh, Σ dh·(x − μ)).
#[inline(always)]
fn row_silu_grad<T: Float>(isa: Isa, x: &[T], dy: &[T], a: T, b: T, mu: T, dh: &mut [T]) -> (T, T) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(gf), Some(of)) = (as_f32(x), as_f32(dy), as_f32_mut(dh)) {
        let (a, b, mu) = (to_f32(a), to_f32(b), to_f32(mu));
        let sums = match isa {
            // SAFETY: `isa_for` chose these only where the CPU has them.
            Isa::Avx512 => Some(unsafe { f32x::silu_grad_avx512(xf, gf, a, b, mu, of) }),
            Isa::Avx2 => Some(unsafe { f32x::silu_grad(xf, gf, a, b, mu, of) }),
            Isa::Scalar => None,
        };
        if let Some((s, sx)) = sums {
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

#[inline(always)]
fn to_f32<T: Float>(v: T) -> f32 {
    v.to_f64() as f32
}

#[cfg(target_arch = "x86_64")]
mod f32x {
    //! Explicit f32 row kernels. The AVX2 ones need AVX2+FMA, the `_avx512`
    //! ones AVX-512F. Reductions finish their short tail in scalar code.
    use crate::cpu::simd::avx2::{exp_ps, map8, sigmoid_ps};
    use crate::cpu::simd_avx512::avx512;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` is 8 f32 long.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        (lanes[0] + lanes[4])
            + (lanes[1] + lanes[5])
            + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
    }

    /// Loads 8 lanes at `x[i..]` (the caller guarantees i + 8 ≤ len).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load(x: &[f32], i: usize) -> __m256 {
        debug_assert!(i + 8 <= x.len());
        // SAFETY: i + 8 <= x.len() at every call site.
        unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }
    }

    /// Four 8-lane accumulators: an add or FMA takes 3–4 cycles, so four
    /// independent chains keep the core issuing one per cycle per port.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum4(a: [__m256; 4]) -> f32 {
        hsum(_mm256_add_ps(
            _mm256_add_ps(a[0], a[1]),
            _mm256_add_ps(a[2], a[3]),
        ))
    }

    /// Σ x.
    #[target_feature(enable = "avx2,fma")]
    pub fn sum(x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= x.len() {
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, load(x, i + 8 * k));
            }
            i += 32;
        }
        while i + 8 <= x.len() {
            acc[0] = _mm256_add_ps(acc[0], load(x, i));
            i += 8;
        }
        hsum4(acc) + x[i..].iter().sum::<f32>()
    }

    /// Σ (x − μ)².
    #[target_feature(enable = "avx2,fma")]
    pub fn sum_sq_dev(x: &[f32], mu: f32) -> f32 {
        let vmu = _mm256_set1_ps(mu);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= x.len() {
            for (k, a) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(load(x, i + 8 * k), vmu);
                *a = _mm256_fmadd_ps(d, d, *a);
            }
            i += 32;
        }
        while i + 8 <= x.len() {
            let d = _mm256_sub_ps(load(x, i), vmu);
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let tail: f32 = x[i..].iter().map(|v| (v - mu) * (v - mu)).sum();
        hsum4(acc) + tail
    }

    /// (Σ g, Σ g·(x − μ)).
    #[target_feature(enable = "avx2,fma")]
    pub fn sum_dot_dev(g: &[f32], x: &[f32], mu: f32) -> (f32, f32) {
        assert_eq!(g.len(), x.len());
        let vmu = _mm256_set1_ps(mu);
        let (mut s, mut d) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        let mut i = 0;
        while i + 32 <= g.len() {
            for k in 0..4 {
                let gv = load(g, i + 8 * k);
                s[k] = _mm256_add_ps(s[k], gv);
                d[k] = _mm256_fmadd_ps(gv, _mm256_sub_ps(load(x, i + 8 * k), vmu), d[k]);
            }
            i += 32;
        }
        while i + 8 <= g.len() {
            let gv = load(g, i);
            s[0] = _mm256_add_ps(s[0], gv);
            d[0] = _mm256_fmadd_ps(gv, _mm256_sub_ps(load(x, i), vmu), d[0]);
            i += 8;
        }
        let (mut ts, mut td) = (0f32, 0f32);
        for (&gv, &xv) in g[i..].iter().zip(&x[i..]) {
            ts += gv;
            td += gv * (xv - mu);
        }
        (hsum4(s) + ts, hsum4(d) + td)
    }

    /// y = silu(a·x + b).
    #[target_feature(enable = "avx2,fma")]
    pub fn affine_silu(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
        let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        let one = _mm256_set1_ps(1.0);
        map8(x, y, |v| {
            // h·σ(h) = h / (1 + e^{−h}): one division, no extra multiply.
            let h = _mm256_fmadd_ps(v, va, vb);
            let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), h));
            _mm256_div_ps(h, _mm256_add_ps(one, e))
        });
    }

    /// dh = dy·silu'(a·x + b) and (Σ dh, Σ dh·(x − μ)). The tail goes
    /// through a zero-padded vector: padded lanes have dy = 0, so dh = 0
    /// there and they add nothing to the sums.
    #[target_feature(enable = "avx2,fma")]
    pub fn silu_grad(x: &[f32], dy: &[f32], a: f32, b: f32, mu: f32, dh: &mut [f32]) -> (f32, f32) {
        let n = x.len();
        assert!(dy.len() == n && dh.len() == n);
        let c = _mm256_set1_ps;
        let (va, vb, vmu, one) = (c(a), c(b), c(mu), c(1.0));
        let (mut s, mut sx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut step = |xv: __m256, gv: __m256| -> __m256 {
            let h = _mm256_fmadd_ps(xv, va, vb);
            let sg = sigmoid_ps(h);
            let slope = _mm256_mul_ps(sg, _mm256_fmadd_ps(h, _mm256_sub_ps(one, sg), one));
            let d = _mm256_mul_ps(gv, slope);
            s = _mm256_add_ps(s, d);
            sx = _mm256_fmadd_ps(d, _mm256_sub_ps(xv, vmu), sx);
            d
        };
        let mut i = 0;
        while i + 8 <= n {
            let d = step(load(x, i), load(dy, i));
            // SAFETY: i + 8 <= n = dh.len().
            unsafe { _mm256_storeu_ps(dh.as_mut_ptr().add(i), d) };
            i += 8;
        }
        if i < n {
            let (mut tx, mut tg, mut td) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            tx[..n - i].copy_from_slice(&x[i..]);
            tg[..n - i].copy_from_slice(&dy[i..]);
            let d = step(load(&tx, 0), load(&tg, 0));
            // SAFETY: `td` is 8 f32 long.
            unsafe { _mm256_storeu_ps(td.as_mut_ptr(), d) };
            dh[i..].copy_from_slice(&td[..n - i]);
        }
        (hsum(s), hsum(sx))
    }

    /// [`affine_silu`] 16 lanes wide.
    #[target_feature(enable = "avx512f")]
    pub fn affine_silu_avx512(x: &[f32], a: f32, b: f32, y: &mut [f32]) {
        let (va, vb) = (_mm512_set1_ps(a), _mm512_set1_ps(b));
        let one = _mm512_set1_ps(1.0);
        avx512::map16(x, y, |v| {
            let h = _mm512_fmadd_ps(v, va, vb);
            let e = avx512::exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), h));
            _mm512_div_ps(h, _mm512_add_ps(one, e))
        });
    }

    /// [`silu_grad`] 16 lanes wide; masked-off tail lanes load dy = 0, so
    /// they add nothing to the sums.
    #[target_feature(enable = "avx512f")]
    pub fn silu_grad_avx512(
        x: &[f32],
        dy: &[f32],
        a: f32,
        b: f32,
        mu: f32,
        dh: &mut [f32],
    ) -> (f32, f32) {
        let n = x.len();
        assert!(dy.len() == n && dh.len() == n);
        let c = _mm512_set1_ps;
        let (va, vb, vmu, one) = (c(a), c(b), c(mu), c(1.0));
        let (mut s, mut sx) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut step = |xv: __m512, gv: __m512| -> __m512 {
            let h = _mm512_fmadd_ps(xv, va, vb);
            let sg = avx512::sigmoid_ps(h);
            let slope = _mm512_mul_ps(sg, _mm512_fmadd_ps(h, _mm512_sub_ps(one, sg), one));
            let d = _mm512_mul_ps(gv, slope);
            s = _mm512_add_ps(s, d);
            sx = _mm512_fmadd_ps(d, _mm512_sub_ps(xv, vmu), sx);
            d
        };
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n and all three slices hold n elements.
            unsafe {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i));
                let d = step(xv, _mm512_loadu_ps(dy.as_ptr().add(i)));
                _mm512_storeu_ps(dh.as_mut_ptr().add(i), d);
            }
            i += 16;
        }
        if i < n {
            let m = avx512::tail_mask(n - i);
            // SAFETY: masked-off lanes are not accessed (fault suppression);
            // the others lie inside the slices.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                let d = step(xv, _mm512_maskz_loadu_ps(m, dy.as_ptr().add(i)));
                _mm512_mask_storeu_ps(dh.as_mut_ptr().add(i), m, d);
            }
        }
        (_mm512_reduce_add_ps(s), _mm512_reduce_add_ps(sx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group_norm::reference;

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
            let want = reference::forward_and_backward(&x, &dy, d, &gamma, &beta, 1e-5, silu);
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let (y, dx, dg, db) = simd::with_isa(isa, || {
                    let (mut y, mut mu, mut r) = (vec![0f32; len], vec![0f32; 6], vec![0f32; 6]);
                    let affine = (&f(&gamma)[..], &f(&beta)[..]);
                    group_norm(&f(&x), d, affine, 1e-5, silu, (&mut y, &mut mu, &mut r));
                    let (mut dx, mut dg, mut db) = (vec![0f32; len], vec![0f32; 6], vec![0f32; 6]);
                    group_norm_backward(
                        (&f(&x), &f(&dy)),
                        d,
                        affine,
                        (&mu, &r),
                        silu,
                        (&mut dx, &mut dg, &mut db),
                    );
                    (y, dx, dg, db)
                });
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
                            "silu={silu} {isa:?}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
