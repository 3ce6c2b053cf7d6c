//! Run-time SIMD selection and the explicit AVX2+FMA kernels.
//!
//! Simple arithmetic (add, mul, ...) is left to the compiler: the generic
//! loops are compiled a second time inside a `#[target_feature(enable =
//! "avx2,fma")]` function, where LLVM vectorises them 8 lanes wide.
//! Transcendentals are not vectorised by LLVM (`expf` is a libm call), so
//! `exp`, sigmoid and SiLU get hand-written AVX2 code with a polynomial exp.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    Scalar,
    Avx2Fma,
}

static FORCE_SCALAR: AtomicBool = AtomicBool::new(false);

/// Forces the scalar fallback (tests run every kernel both ways).
pub fn force_scalar(on: bool) {
    FORCE_SCALAR.store(on, Ordering::Relaxed);
}

/// The best instruction set this CPU supports, unless forced scalar.
pub fn level() -> SimdLevel {
    static DETECTED: OnceLock<SimdLevel> = OnceLock::new();
    if FORCE_SCALAR.load(Ordering::Relaxed) {
        return SimdLevel::Scalar;
    }
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return SimdLevel::Avx2Fma;
            }
        }
        SimdLevel::Scalar
    })
}

/// Runs `f` compiled with AVX2+FMA enabled when the CPU has them. `f` must be
/// `#[inline(always)]`-able generic code; inlining it here is what lets LLVM
/// vectorise it with 256-bit registers.
#[inline(always)]
pub fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if level() == SimdLevel::Avx2Fma {
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
    //! [`super::level`]).
    // The safety contract of every function here is the one stated above.
    #![allow(clippy::missing_safety_doc)]
    use std::arch::x86_64::*;

    /// e^x for 8 lanes: range reduction x = n·ln2 + r, |r| ≤ ln2/2, then a
    /// degree-6 polynomial for e^r (Cephes `expf` coefficients, ~1 ulp),
    /// scaled by 2^n through the exponent bits. Inputs are clamped to the
    /// range where f32 neither overflows nor flushes to zero.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp_ps(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.336_55)),
            _mm256_set1_ps(88.376_26),
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
        let pow2n = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(e_r, pow2n)
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
