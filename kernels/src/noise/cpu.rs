//! Fused noise-schedule kernels for diffusion: forward noising q(x_t | x_0),
//! the L_simple loss with its gradient, and the DDPM/DDIM reverse steps.
//!
//! Each is one pass over memory. Tensors are `[N, per-sample...]`, read as
//! N contiguous rows of `len / N` elements; row n uses the scalars of sample
//! n (each sample has its own timestep t). The scalars arrive as small f64
//! structs that the diffusion crate computes from its schedule tables.

pub use super::{QSampleCoef, StepCoef};
use crate::Float;
use crate::cpu::PAR_CHUNK;
use crate::cpu::simd;
use rayon::prelude::*;

/// Runs `f(sample, start, piece)` over `out` cut into rayon jobs of about
/// PAR_CHUNK elements, each piece lying inside one sample's row of `per`
/// elements; `start` is the piece's flat index.
fn for_each_sample_piece<T: Send>(
    out: &mut [T],
    per: usize,
    f: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    out.par_chunks_mut(PAR_CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let start = ci * PAR_CHUNK;
            let end = start + chunk.len();
            let mut i = start;
            while i < end {
                let sample = i / per;
                let stop = ((sample + 1) * per).min(end);
                f(sample, i, &mut chunk[i - start..stop - start]);
                i = stop;
            }
        });
}

/// Elements per sample, checking that the rows divide evenly.
fn per_sample(op: &str, len: usize, samples: usize) -> usize {
    assert!(
        samples > 0 && len.is_multiple_of(samples),
        "{op}: {len} elements do not split into {samples} samples"
    );
    len / samples
}

/// Forward noising, x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, per sample.
pub fn q_sample<T: Float>(x0: &[T], eps: &[T], coefs: &[QSampleCoef], out: &mut [T]) {
    assert!(
        x0.len() == out.len() && eps.len() == out.len(),
        "q_sample: lengths differ"
    );
    if out.is_empty() {
        return;
    }
    let per = per_sample("q_sample", out.len(), coefs.len());
    for_each_sample_piece(out, per, |n, start, o| {
        let a = T::from_f64(coefs[n].sqrt_alpha_bar);
        let b = T::from_f64(coefs[n].sqrt_one_minus_alpha_bar);
        let range = start..start + o.len();
        let (x, e) = (&x0[range.clone()], &eps[range]);
        simd::with_avx2(|| axpby(a, x, b, e, o));
    });
}

// The loops below are `#[inline(always)]` functions taking their scalars by
// value: inlined into `with_avx2` they are compiled with AVX2, and with the
// scalars in registers (not behind a closure's captured references, which
// the compiler must assume the output may alias) they vectorise.

/// out = a·x + b·y
#[inline(always)]
fn axpby<T: Float>(a: T, x: &[T], b: T, y: &[T], out: &mut [T]) {
    for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
        *o = a * x + b * y;
    }
}

/// L_simple = mean((ε_θ − ε)²) over all elements, and, in the same pass,
/// its gradient ∂L/∂ε_θ = 2(ε_θ − ε)/numel into `grad` when given.
///
/// Partial sums are per fixed-size chunk and added in order in f64, so the
/// value does not depend on how rayon schedules the chunks.
pub fn l_simple<T: Float>(pred: &[T], eps: &[T], grad: Option<&mut [T]>) -> f64 {
    assert_eq!(pred.len(), eps.len(), "l_simple: lengths differ");
    if pred.is_empty() {
        return f64::NAN; // the mean of nothing, as in PyTorch
    }
    let scale = T::from_f64(2.0 / pred.len() as f64);
    let parts: Vec<f64> = match grad {
        Some(g) => {
            assert_eq!(g.len(), pred.len(), "l_simple: gradient length");
            pred.par_chunks(PAR_CHUNK)
                .zip(eps.par_chunks(PAR_CHUNK))
                .zip(g.par_chunks_mut(PAR_CHUNK))
                .map(|((p, e), g)| simd::with_avx2(|| sq_diff_sum_grad(p, e, scale, g)))
                .collect()
        }
        None => pred
            .par_chunks(PAR_CHUNK)
            .zip(eps.par_chunks(PAR_CHUNK))
            .map(|(p, e)| simd::with_avx2(|| sq_diff_sum(p, e)))
            .collect(),
    };
    parts.iter().sum::<f64>() / pred.len() as f64
}

/// Independent partial sums, so the compiler can vectorise a float
/// reduction (it may not reassociate one serial chain).
const LANES: usize = 16;

/// Σ (p − e)² over one chunk.
#[inline(always)]
fn sq_diff_sum<T: Float>(p: &[T], e: &[T]) -> f64 {
    let (pc, pt) = p.as_chunks::<LANES>();
    let (ec, et) = e[..p.len()].as_chunks::<LANES>();
    let mut acc = [T::ZERO; LANES];
    for (pv, ev) in pc.iter().zip(ec) {
        for k in 0..LANES {
            let d = pv[k] - ev[k];
            acc[k] += d * d;
        }
    }
    let tail = pt
        .iter()
        .zip(et)
        .fold(T::ZERO, |s, (&a, &b)| s + (a - b) * (a - b));
    acc.iter().fold(tail.to_f64(), |s, v| s + v.to_f64())
}

/// Σ (p − e)² over one chunk, writing g = scale·(p − e).
#[inline(always)]
fn sq_diff_sum_grad<T: Float>(p: &[T], e: &[T], scale: T, g: &mut [T]) -> f64 {
    let n = p.len();
    let (pc, pt) = p.as_chunks::<LANES>();
    let (ec, et) = e[..n].as_chunks::<LANES>();
    let (gc, gt) = g[..n].as_chunks_mut::<LANES>();
    let mut acc = [T::ZERO; LANES];
    for ((pv, ev), gv) in pc.iter().zip(ec).zip(gc) {
        for k in 0..LANES {
            let d = pv[k] - ev[k];
            acc[k] += d * d;
            gv[k] = scale * d;
        }
    }
    let mut tail = T::ZERO;
    for ((&a, &b), gv) in pt.iter().zip(et).zip(gt) {
        let d = a - b;
        tail += d * d;
        *gv = scale * d;
    }
    acc.iter().fold(tail.to_f64(), |s, v| s + v.to_f64())
}

/// One reverse step for every sample (see [`StepCoef`] for the equation):
///
///   x̂_0    = clamp(x0_from_xt·x_t − x0_from_eps·ε_θ, −x0_clip, x0_clip)
///   x_prev = x0_weight·x̂_0 + xt_weight·x_t + eps_weight·ε_θ + sigma·z
///
/// `z` (standard normal noise) may be absent, which means z = 0 (the last
/// step, or deterministic DDIM). A NaN in x̂_0 stays NaN through the clamp.
pub fn denoise_step<T: Float>(
    x_t: &[T],
    eps: &[T],
    z: Option<&[T]>,
    coefs: &[StepCoef],
    out: &mut [T],
) {
    assert!(
        x_t.len() == out.len() && eps.len() == out.len(),
        "denoise_step: lengths differ"
    );
    if let Some(z) = z {
        assert_eq!(z.len(), out.len(), "denoise_step: noise length");
    }
    if out.is_empty() {
        return;
    }
    let per = per_sample("denoise_step", out.len(), coefs.len());
    for_each_sample_piece(out, per, |n, start, o| {
        let c = StepScalars::new(&coefs[n]);
        let range = start..start + o.len();
        let (x, e) = (&x_t[range.clone()], &eps[range.clone()]);
        match z {
            Some(z) => simd::with_avx2(|| c.run_with_noise(x, e, &z[range], o)),
            None => simd::with_avx2(|| c.run(x, e, o)),
        }
    });
}

/// A [`StepCoef`] in the element type.
#[derive(Clone, Copy)]
struct StepScalars<T> {
    kx: T,
    ke: T,
    lo: T,
    hi: T,
    w0: T,
    wx: T,
    we: T,
    sigma: T,
}

impl<T: Float> StepScalars<T> {
    fn new(c: &StepCoef) -> Self {
        let f = T::from_f64;
        Self {
            kx: f(c.x0_from_xt),
            ke: f(c.x0_from_eps),
            lo: f(-c.x0_clip),
            hi: f(c.x0_clip),
            w0: f(c.x0_weight),
            wx: f(c.xt_weight),
            we: f(c.eps_weight),
            sigma: f(c.sigma),
        }
    }

    /// The step without the noise term.
    #[inline(always)]
    fn mean(self, x: T, e: T) -> T {
        let x0 = self.kx * x - self.ke * e;
        // Written as selects (not max/min) so that NaN propagates.
        let x0 = if x0 < self.lo { self.lo } else { x0 };
        let x0 = if x0 > self.hi { self.hi } else { x0 };
        self.w0 * x0 + self.wx * x + self.we * e
    }

    #[inline(always)]
    fn run(self, x: &[T], e: &[T], out: &mut [T]) {
        for ((o, &x), &e) in out.iter_mut().zip(x).zip(e) {
            *o = self.mean(x, e);
        }
    }

    #[inline(always)]
    fn run_with_noise(self, x: &[T], e: &[T], z: &[T], out: &mut [T]) {
        for (((o, &x), &e), &z) in out.iter_mut().zip(x).zip(e).zip(z) {
            *o = self.mean(x, e) + self.sigma * z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::reference;

    /// n values in (−2, 2).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        crate::test_data::uniform_within(n, seed, 2.0)
    }

    /// Every kernel against its equation's loop, on 3 samples long enough
    /// for several rayon chunks and an odd tail.
    #[test]
    fn every_kernel_matches_the_reference() {
        let (samples, per) = (3, PAR_CHUNK + 13);
        let n = samples * per;
        let (x, e, z) = (values(n, 1), values(n, 2), values(n, 3));
        let close = |what: &str, got: &[f64], want: &[f64]| {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "{what}[{i}]: {a} vs {b}"
                );
            }
        };
        let q: Vec<QSampleCoef> = [0.9, 0.5, 0.01].map(QSampleCoef::from_alpha_bar).to_vec();
        let mut out = vec![0.0; n];
        q_sample(&x, &e, &q, &mut out);
        close("q_sample", &out, &reference::q_sample(&x, &e, &q, per));
        let mut grad = vec![0.0; n];
        let loss = l_simple(&x, &e, Some(&mut grad));
        let (want_loss, want_grad) = reference::l_simple(&x, &e);
        close("l_simple", &[loss], &[want_loss]);
        close("l_simple grad", &grad, &want_grad);
        let steps = [
            StepCoef::ddpm(0.98, 0.5, 0.1),
            StepCoef::ddim(0.5, 0.6, 0.3, true),
            StepCoef::ddpm_clipped(0.3, 0.2, 0.7, 0.25),
        ];
        for noise in [None, Some(&z[..])] {
            denoise_step(&x, &e, noise, &steps, &mut out);
            let want = reference::denoise_step(&x, &e, noise, &steps, per);
            close("denoise_step", &out, &want);
        }
    }

    #[test]
    fn q_sample_uses_each_samples_coefficients() {
        let x0 = [1f64, 2., 3., 4.];
        let eps = [10f64, 20., 30., 40.];
        let c = [
            QSampleCoef {
                sqrt_alpha_bar: 1.0,
                sqrt_one_minus_alpha_bar: 0.5,
            },
            QSampleCoef {
                sqrt_alpha_bar: 2.0,
                sqrt_one_minus_alpha_bar: 0.0,
            },
        ];
        let mut out = [0f64; 4];
        q_sample(&x0, &eps, &c, &mut out);
        assert_eq!(out, [6., 12., 6., 8.]);
    }

    #[test]
    fn l_simple_value_and_gradient() {
        let p: Vec<f32> = (0..100_003).map(|i| (i % 7) as f32 * 0.5).collect();
        let e: Vec<f32> = (0..100_003).map(|i| (i % 3) as f32).collect();
        let mut g = vec![0f32; p.len()];
        let loss = l_simple(&p, &e, Some(&mut g));
        let want: f64 = p
            .iter()
            .zip(&e)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / p.len() as f64;
        assert!((loss - want).abs() < 1e-6 * want);
        assert_eq!(l_simple(&p, &e, None), loss);
        let k = 12_345;
        let want_g = 2.0 * (p[k] - e[k]) as f64 / p.len() as f64;
        assert!((g[k] as f64 - want_g).abs() <= 1e-6 * want_g.abs());
    }

    #[test]
    fn clipping_keeps_nan_visible() {
        let c = [StepCoef::ddpm_clipped(0.5, 0.3, 0.6, 0.0)];
        let mut out = [0f32; 2];
        denoise_step(&[f32::NAN, 100.0], &[0.0, 0.0], None, &c, &mut out);
        assert!(out[0].is_nan());
        // x̂_0 = 100/√0.5 clips to 1: 0.3·1 + 0.6·100.
        assert!((out[1] - 60.3).abs() < 1e-4);
    }

    #[test]
    fn ddim_with_eta_zero_recovers_a_noised_point() {
        // For x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with the true ε, a deterministic
        // DDIM step lands exactly on √ᾱ_prev x_0 + √(1−ᾱ_prev) ε.
        let (ab, ab_prev) = (0.3f64, 0.7f64);
        let (x0, eps) = (0.25f64, -1.5f64);
        let xt = ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps;
        let mut out = [0f64];
        denoise_step(
            &[xt],
            &[eps],
            None,
            &[StepCoef::ddim(ab, ab_prev, 0.0, false)],
            &mut out,
        );
        let want = ab_prev.sqrt() * x0 + (1.0 - ab_prev).sqrt() * eps;
        assert!((out[0] - want).abs() < 1e-12);
    }
}
