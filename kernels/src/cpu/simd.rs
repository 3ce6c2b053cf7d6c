//! Run-time SIMD selection and the explicit AVX2+FMA kernels.
//!
//! Simple arithmetic (add, mul, ...) is left to the compiler: the generic
//! loops are compiled a second time inside a `#[target_feature(enable =
//! "avx2,fma")]` function, where LLVM vectorises them 8 lanes wide.
//! Transcendentals are not vectorised by LLVM (`expf` is a libm call), so
//! `exp`, sigmoid and SiLU get hand-written AVX2 code with a polynomial exp.

//!
//! **The one ISA selector.** [`isa`] is the instruction set every CPU
//! kernel dispatches on: the best this CPU has, capped by [`with_isa`] for
//! the code it runs (tests check each path against the same fixtures).

use std::cell::Cell;
use std::sync::OnceLock;

/// The instruction sets the kernels have paths for, in increasing order:
/// each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, the baseline target's code.
    Scalar,
    /// AVX2 + FMA: the 8-lane kernels.
    Avx2,
    /// AVX-512F on top: the 16-lane kernels.
    Avx512,
}

/// What this CPU supports (detected once).
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return match has!("avx512f") {
                    true => Isa::Avx512,
                    false => Isa::Avx2,
                };
            }
        }
        Isa::Scalar
    })
}

thread_local! {
    /// The cap [`with_isa`] put on this thread, if any.
    static CAP: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The instruction set to use here and now: [`detected`], lowered to the
/// cap of an enclosing [`with_isa`].
#[inline]
pub fn isa() -> Isa {
    let best = detected();
    CAP.with(|c| c.get()).map_or(best, |cap| cap.min(best))
}

/// Runs `f` with every kernel it calls limited to `cap` (e.g.
/// `Isa::Scalar` for the fallback path), on this thread and on the worker
/// threads its parallel loops use: `f` runs inside a rayon pool of its own
/// whose threads all carry the cap, so other code running at the same time
/// (the other tests of a binary) keeps the best path. For tests and
/// benchmarks; it builds a thread pool per call, and `f` sees that pool's
/// thread-local state (e.g. grad mode is on), not the caller's.
pub fn with_isa<R: Send>(cap: Isa, f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |_| CAP.with(|c| c.set(Some(cap))))
        .build()
        .expect("a thread pool for with_isa");
    pool.install(f)
}

/// Runs `f` compiled with AVX2+FMA enabled when the CPU has them. `f` must be
/// `#[inline(always)]`-able generic code; inlining it here is what lets LLVM
/// vectorise it with 256-bit registers.
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if isa() >= Isa::Avx2 {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn run<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { run(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    //! 8-wide f32 kernels. Every function requires AVX2+FMA (callers check
    //! [`super::isa`]).
    // The safety contract of every function here is the one stated above.
    #![allow(clippy::missing_safety_doc)]
    use std::arch::x86_64::*;

    /// e^x for 8 lanes: range reduction x = n·ln2 + r, |r| ≤ ln2/2, then a
    /// degree-6 polynomial for e^r (Cephes `expf` coefficients, ~1 ulp),
    /// scaled by 2^n through the exponent bits in two halves 2^⌊n/2⌋·2^⌈n/2⌉,
    /// so that n = 128 (results near f32::MAX) and n < −126 (subnormals)
    /// are represented and overflow/underflow round to ∞/0 as in `expf`.
    /// Inputs are clamped to [−104, 89], beyond which e^x is 0 or ∞ in f32;
    /// NaN passes through (max/min return their second operand for NaN).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp_ps(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_set1_ps(89.0),
            _mm256_max_ps(_mm256_set1_ps(-104.0), x),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        // r = x - n·ln2 in two steps (Cody–Waite) to keep r exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let e_r = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let pow2 = |k: __m256i| {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_add_epi32(k, _mm256_set1_epi32(127)),
                23,
            ))
        };
        let ni = _mm256_cvtps_epi32(n);
        let lo = _mm256_srai_epi32(ni, 1);
        let hi = _mm256_sub_epi32(ni, lo);
        _mm256_mul_ps(_mm256_mul_ps(e_r, pow2(lo)), pow2(hi))
    }

    /// σ(x) = 1 / (1 + e^{−x}).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn sigmoid_ps(x: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_div_ps(one, _mm256_add_ps(one, e))
    }

    /// Applies an 8-lane function over `x` into `out`, finishing the tail
    /// through a padded vector so every element takes the same path.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn map8(x: &[f32], out: &mut [f32], f: impl Fn(__m256) -> __m256) {
        let n = x.len().min(out.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, both slices hold at least n elements.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), f(v));
            }
            i += 8;
        }
        if i < n {
            let mut tmp = [0f32; 8];
            tmp[..n - i].copy_from_slice(&x[i..n]);
            let mut res = [0f32; 8];
            // SAFETY: tmp and res are 8 elements long.
            unsafe { _mm256_storeu_ps(res.as_mut_ptr(), f(_mm256_loadu_ps(tmp.as_ptr()))) };
            out[i..n].copy_from_slice(&res[..n - i]);
        }
    }

    /// Two-input version of [`map8`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn zip8(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(__m256, __m256) -> __m256) {
        let n = out.len();
        assert!(a.len() >= n && b.len() >= n);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n and all slices hold at least n elements.
            unsafe {
                let va = _mm256_loadu_ps(a.as_ptr().add(i));
                let vb = _mm256_loadu_ps(b.as_ptr().add(i));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), f(va, vb));
            }
            i += 8;
        }
        if i < n {
            let (mut ta, mut tb, mut res) = ([0f32; 8], [0f32; 8], [0f32; 8]);
            ta[..n - i].copy_from_slice(&a[i..n]);
            tb[..n - i].copy_from_slice(&b[i..n]);
            // SAFETY: the temporaries are 8 elements long.
            unsafe {
                let v = f(_mm256_loadu_ps(ta.as_ptr()), _mm256_loadu_ps(tb.as_ptr()));
                _mm256_storeu_ps(res.as_mut_ptr(), v);
            }
            out[i..n].copy_from_slice(&res[..n - i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn a_cap_holds_on_every_worker_and_only_inside_its_scope() {
        for cap in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            let want = cap.min(detected());
            let seen: Vec<Isa> =
                with_isa(cap, || (0..256).into_par_iter().map(|_| isa()).collect());
            assert!(seen.iter().all(|&i| i == want), "{cap:?}: {seen:?}");
            // Nested caps take the lower one; the outer one is back after.
            with_isa(cap, || {
                assert_eq!(with_isa(Isa::Scalar, isa), Isa::Scalar);
                assert_eq!(isa(), want);
            });
        }
        assert_eq!(isa(), detected());
        // A cap set on another thread's pool does not leak into the global pool.
        let global: Vec<Isa> = (0..256).into_par_iter().map(|_| isa()).collect();
        assert!(global.iter().all(|&i| i == detected()));
    }
}
