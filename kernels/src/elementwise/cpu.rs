//! Elementwise kernels: one unary mechanism (contiguous in, contiguous out)
//! and one binary mechanism (two strided, broadcast operands, contiguous out).
//!
//! Fused backward formulas (SiLU', ReLU', ...) are binary ops of (x, grad) so
//! that a backward pass is one sweep over memory instead of four or five.

pub use super::{BinaryOp, UnaryOp};
use crate::Float;
use crate::cpu::simd::{self, Isa};
use crate::cpu::{PAR_CHUNK, collapse_dims, row_offset};
use crate::cpu::{as_f32, as_f32_mut};
use rayon::prelude::*;

#[inline(always)]
fn sigmoid<T: Float>(x: T) -> T {
    T::ONE / (T::ONE + (-x).exp())
}

/// max(a, b) that returns NaN when either is NaN, as PyTorch's maximum,
/// relu and clamp do (`f32::max` returns the other operand, which would
/// hide a diverged activation).
#[inline(always)]
fn max_nan<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a > b { a } else { b }
}

/// min(a, b) that returns NaN when either is NaN (see [`max_nan`]).
#[inline(always)]
fn min_nan<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || a < b { a } else { b }
}

#[inline(always)]
fn bool01<T: Float>(b: bool) -> T {
    if b { T::ONE } else { T::ZERO }
}

/// [`unary_eval`] as a closure (tests compare against it).
#[cfg(test)]
fn unary_scalar<T: Float>(op: UnaryOp) -> impl Fn(T) -> T {
    move |x: T| unary_eval(op, x)
}

/// The scalar definition of each unary op: the specification every SIMD
/// path must agree with.
#[inline(always)]
fn unary_eval<T: Float>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Sqr => x * x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Recip => T::ONE / x,
        UnaryOp::Sigmoid => sigmoid(x),
        UnaryOp::Silu => x * sigmoid(x),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Relu => max_nan(x, T::ZERO),
        UnaryOp::Sign => {
            if x > T::ZERO {
                T::ONE
            } else if x < T::ZERO {
                -T::ONE
            } else {
                T::ZERO
            }
        }
        UnaryOp::Affine { mul, add } => x.mul_add(T::from_f64(mul), T::from_f64(add)),
        UnaryOp::Powf(e) => x.powf(T::from_f64(e)),
        UnaryOp::MaxScalar(c) => max_nan(x, T::from_f64(c)),
        UnaryOp::MinScalar(c) => min_nan(x, T::from_f64(c)),
        UnaryOp::GeScalar(c) => bool01(x >= T::from_f64(c)),
    }
}

/// The scalar definition of each binary op.
#[inline(always)]
fn binary_eval<T: Float>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Maximum => max_nan(a, b),
        BinaryOp::Minimum => min_nan(a, b),
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Eq => bool01(a == b),
        BinaryOp::Ne => bool01(a != b),
        BinaryOp::Lt => bool01(a < b),
        BinaryOp::Le => bool01(a <= b),
        BinaryOp::Gt => bool01(a > b),
        BinaryOp::Ge => bool01(a >= b),
        BinaryOp::SiluBackward => {
            let s = sigmoid(a);
            b * s * (T::ONE + a * (T::ONE - s))
        }
        BinaryOp::SigmoidBackward => {
            let s = sigmoid(a);
            b * s * (T::ONE - s)
        }
        BinaryOp::TanhBackward => {
            let t = a.tanh();
            b * (T::ONE - t * t)
        }
        BinaryOp::ReluBackward => {
            if a > T::ZERO {
                b
            } else {
                T::ZERO
            }
        }
    }
}

/// Runs `$body` with `$f` bound to the scalar function of `$op`, once per
/// variant. Each arm's closure names its op as a literal in its own body
/// (only parameters such as `mul` are captured data), so wherever the
/// closure is inlined the `match` in [`unary_eval`] folds away and the loop
/// in `$body` is compiled, and vectorised, for that one op. A loop over a
/// runtime `op` would branch on it for every element and never vectorise.
macro_rules! for_each_unary {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            UnaryOp::Neg => for_each_unary!(@arm UnaryOp::Neg, $f => $body),
            UnaryOp::Exp => for_each_unary!(@arm UnaryOp::Exp, $f => $body),
            UnaryOp::Log => for_each_unary!(@arm UnaryOp::Log, $f => $body),
            UnaryOp::Sqrt => for_each_unary!(@arm UnaryOp::Sqrt, $f => $body),
            UnaryOp::Sqr => for_each_unary!(@arm UnaryOp::Sqr, $f => $body),
            UnaryOp::Abs => for_each_unary!(@arm UnaryOp::Abs, $f => $body),
            UnaryOp::Recip => for_each_unary!(@arm UnaryOp::Recip, $f => $body),
            UnaryOp::Sigmoid => for_each_unary!(@arm UnaryOp::Sigmoid, $f => $body),
            UnaryOp::Silu => for_each_unary!(@arm UnaryOp::Silu, $f => $body),
            UnaryOp::Tanh => for_each_unary!(@arm UnaryOp::Tanh, $f => $body),
            UnaryOp::Relu => for_each_unary!(@arm UnaryOp::Relu, $f => $body),
            UnaryOp::Sign => for_each_unary!(@arm UnaryOp::Sign, $f => $body),
            UnaryOp::Affine { mul, add } => {
                for_each_unary!(@arm UnaryOp::Affine { mul, add }, $f => $body)
            }
            UnaryOp::Powf(e) => for_each_unary!(@arm UnaryOp::Powf(e), $f => $body),
            UnaryOp::MaxScalar(c) => for_each_unary!(@arm UnaryOp::MaxScalar(c), $f => $body),
            UnaryOp::MinScalar(c) => for_each_unary!(@arm UnaryOp::MinScalar(c), $f => $body),
            UnaryOp::GeScalar(c) => for_each_unary!(@arm UnaryOp::GeScalar(c), $f => $body),
        }
    };
    (@arm $lit:expr, $f:ident => $body:expr) => {{
        let $f = move |x| unary_eval($lit, x);
        $body
    }};
}

/// [`for_each_unary`] for [`BinaryOp`]: one compiled loop per op.
macro_rules! for_each_binary {
    ($op:expr, $f:ident => $body:expr) => {
        for_each_binary!(@match $op, $f => $body;
            Add Sub Mul Div Maximum Minimum Pow Eq Ne Lt Le Gt Ge
            SiluBackward SigmoidBackward TanhBackward ReluBackward)
    };
    (@match $op:expr, $f:ident => $body:expr; $($v:ident)*) => {
        match $op {
            $(BinaryOp::$v => {
                let $f = |a, b| binary_eval(BinaryOp::$v, a, b);
                $body
            })*
        }
    };
}

/// `out[i] = op(x[i])` for contiguous `x`, `out` of equal length.
pub fn unary<T: Float>(op: UnaryOp, x: &[T], out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "unary: input and output lengths differ");
    let run = |x: &[T], out: &mut [T]| unary_chunk(op, x, out);
    if x.len() <= PAR_CHUNK {
        run(x, out);
    } else {
        x.par_chunks(PAR_CHUNK)
            .zip(out.par_chunks_mut(PAR_CHUNK))
            .for_each(|(x, o)| run(x, o));
    }
}

fn unary_chunk<T: Float>(op: UnaryOp, x: &[T], out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(xf), Some(of)) = (as_f32(x), as_f32_mut(out))
        && simd::isa() >= Isa::Avx2
    {
        // SAFETY: AVX2+FMA checked just above.
        let done = unsafe { unary_f32_avx2(op, xf, of) };
        if done {
            return;
        }
    }
    simd::with_avx2(|| {
        for_each_unary!(op, f => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = f(v);
            }
        })
    })
}

/// Hand-vectorised f32 transcendentals; returns false when `op` has no
/// explicit kernel (the auto-vectorised generic loop handles it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn unary_f32_avx2(op: UnaryOp, x: &[f32], out: &mut [f32]) -> bool {
    use simd::avx2::*;
    use std::arch::x86_64::*;
    match op {
        UnaryOp::Exp => map8(x, out, |v| exp_ps(v)),
        UnaryOp::Sigmoid => map8(x, out, |v| sigmoid_ps(v)),
        UnaryOp::Silu => map8(x, out, |v| _mm256_mul_ps(v, sigmoid_ps(v))),
        _ => return false,
    }
    true
}

/// A strided view of one operand: element `idx` (multi-index) lives at
/// `data[offset + Σ idx[d]·strides[d]]`. Stride 0 broadcasts.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub offset: usize,
    pub strides: &'a [usize],
}

/// `out = op(a, b)` over `shape`, with `a` and `b` strided (broadcast via
/// stride 0) and `out` contiguous. Dimensions are collapsed first, then each
/// innermost run is processed by a loop specialised to its stride pattern.
pub fn binary<T: Float>(
    op: BinaryOp,
    shape: &[usize],
    a: Strided<T>,
    b: Strided<T>,
    out: &mut [T],
) {
    let numel: usize = shape.iter().product();
    assert_eq!(
        out.len(),
        numel,
        "binary: output length does not match shape"
    );
    if numel == 0 {
        return;
    }
    let (shape, strides) = collapse_dims(shape, &[a.strides, b.strides]);
    let n = *shape.last().unwrap();
    let (sa, sb) = (strides[0][shape.len() - 1], strides[1][shape.len() - 1]);
    let chunk = |start: usize, out: &mut [T]| {
        let mut idx = start;
        let end = start + out.len();
        while idx < end {
            let (row, col) = (idx / n, idx % n);
            let run = (n - col).min(end - idx);
            let ao = a.offset + row_offset(&shape, &strides[0], row) + col * sa;
            let bo = b.offset + row_offset(&shape, &strides[1], row) + col * sb;
            let o = &mut out[idx - start..idx - start + run];
            binary_run(op, Run::new(a.data, ao, sa), Run::new(b.data, bo, sb), o);
            idx += run;
        }
    };
    if numel <= PAR_CHUNK {
        chunk(0, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, o)| chunk(i * PAR_CHUNK, o));
    }
}

/// One innermost run of an operand: element i at `data[offset + i·stride]`.
#[derive(Clone, Copy)]
struct Run<'a, T> {
    data: &'a [T],
    offset: usize,
    stride: usize,
}

impl<'a, T> Run<'a, T> {
    fn new(data: &'a [T], offset: usize, stride: usize) -> Self {
        Run {
            data,
            offset,
            stride,
        }
    }
}

/// One innermost run: `out[i] = op(a[i], b[i])` (see [`Run`]).
fn binary_run<T: Float>(op: BinaryOp, a: Run<T>, b: Run<T>, out: &mut [T]) {
    let n = out.len();
    let (
        Run {
            data: ad,
            offset: ao,
            stride: sa,
        },
        Run {
            data: bd,
            offset: bo,
            stride: sb,
        },
    ) = (a, b);
    #[cfg(target_arch = "x86_64")]
    if sa == 1
        && sb == 1
        && simd::isa() >= Isa::Avx2
        && let (Some(af), Some(bf), Some(of)) = (
            as_f32(&ad[ao..ao + n]),
            as_f32(&bd[bo..bo + n]),
            as_f32_mut(out),
        )
    {
        // SAFETY: AVX2+FMA checked above.
        if unsafe { binary_f32_avx2(op, af, bf, of) } {
            return;
        }
    }
    for_each_binary!(op, f => simd::with_avx2(|| strided_loop(f, a, b, out)))
}

/// `out[i] = f(a[i], b[i])` over two [`Run`]s, with the stride patterns
/// that occur (both contiguous, one broadcast) as separate loops so each
/// is a plain vectorisable loop.
#[inline(always)]
fn strided_loop<T: Float>(f: impl Fn(T, T) -> T, a: Run<T>, b: Run<T>, out: &mut [T]) {
    let n = out.len();
    let (
        Run {
            data: a,
            offset: ao,
            stride: sa,
        },
        Run {
            data: b,
            offset: bo,
            stride: sb,
        },
    ) = (a, b);
    match (sa, sb) {
        (1, 1) => {
            for ((o, &x), &y) in out.iter_mut().zip(&a[ao..ao + n]).zip(&b[bo..bo + n]) {
                *o = f(x, y);
            }
        }
        (1, 0) => {
            let y = b[bo];
            for (o, &x) in out.iter_mut().zip(&a[ao..ao + n]) {
                *o = f(x, y);
            }
        }
        (0, 1) => {
            let x = a[ao];
            for (o, &y) in out.iter_mut().zip(&b[bo..bo + n]) {
                *o = f(x, y);
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f(a[ao + i * sa], b[bo + i * sb]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn binary_f32_avx2(op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) -> bool {
    use simd::avx2::*;
    use std::arch::x86_64::*;
    match op {
        BinaryOp::SiluBackward => zip8(a, b, out, |x, g| {
            let one = _mm256_set1_ps(1.0);
            let s = sigmoid_ps(x);
            let d = _mm256_fmadd_ps(x, _mm256_sub_ps(one, s), one);
            _mm256_mul_ps(g, _mm256_mul_ps(s, d))
        }),
        BinaryOp::SigmoidBackward => zip8(a, b, out, |x, g| {
            let s = sigmoid_ps(x);
            _mm256_mul_ps(g, _mm256_mul_ps(s, _mm256_sub_ps(_mm256_set1_ps(1.0), s)))
        }),
        _ => return false,
    }
    true
}

/// `out = cond ? a : b` elementwise, every operand strided, `cond` nonzero = true.
pub fn where_cond<T: Float>(
    shape: &[usize],
    cond: Strided<T>,
    a: Strided<T>,
    b: Strided<T>,
    out: &mut [T],
) {
    // Expressed through the binary mechanism in two sweeps would cost more
    // memory traffic; a direct strided walk is simpler and one pass.
    let numel: usize = shape.iter().product();
    assert_eq!(
        out.len(),
        numel,
        "where: output length does not match shape"
    );
    if numel == 0 {
        return;
    }
    let (shape, st) = collapse_dims(shape, &[cond.strides, a.strides, b.strides]);
    let n = *shape.last().unwrap();
    let last = shape.len() - 1;
    let chunk = |start: usize, out: &mut [T]| {
        let end = start + out.len();
        let mut idx = start;
        while idx < end {
            let (row, col) = (idx / n, idx % n);
            let run = (n - col).min(end - idx);
            let co = cond.offset + row_offset(&shape, &st[0], row);
            let ao = a.offset + row_offset(&shape, &st[1], row);
            let bo = b.offset + row_offset(&shape, &st[2], row);
            for k in 0..run {
                let j = col + k;
                let c = cond.data[co + j * st[0][last]];
                out[idx - start + k] = if c != T::ZERO {
                    a.data[ao + j * st[1][last]]
                } else {
                    b.data[bo + j * st[2][last]]
                };
            }
            idx += run;
        }
    };
    if numel <= PAR_CHUNK {
        chunk(0, out);
    } else {
        out.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, o)| chunk(i * PAR_CHUNK, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f` on the scalar fallback, then on the best path.
    fn both_paths(f: impl Fn() + Sync) {
        simd::with_isa(Isa::Scalar, &f);
        f();
    }

    #[test]
    fn simd_transcendentals_match_scalar_definition() {
        let x: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.037).collect();
        both_paths(|| {
            for op in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Silu] {
                let mut got = vec![0f32; x.len()];
                unary(op, &x, &mut got);
                for (i, &v) in x.iter().enumerate() {
                    let want = unary_scalar::<f64>(op)(v as f64);
                    let err = (got[i] as f64 - want).abs() / want.abs().max(1e-6);
                    assert!(err < 2e-6, "{op:?}({v}) = {} want {want}", got[i]);
                }
            }
        });
    }

    #[test]
    fn broadcast_add_row_and_column() {
        both_paths(|| {
            // a: [2,3] contiguous, b: [3] broadcast over rows
            let a = [1f32, 2., 3., 4., 5., 6.];
            let b = [10f32, 20., 30.];
            let mut out = [0f32; 6];
            let sa = Strided {
                data: &a,
                offset: 0,
                strides: &[3, 1],
            };
            let sb = Strided {
                data: &b,
                offset: 0,
                strides: &[0, 1],
            };
            binary(BinaryOp::Add, &[2, 3], sa, sb, &mut out);
            assert_eq!(out, [11., 22., 33., 14., 25., 36.]);
            // b as a column [2,1] broadcast over columns
            let c = [100f32, 200.];
            let sc = Strided {
                data: &c,
                offset: 0,
                strides: &[1, 0],
            };
            binary(BinaryOp::Mul, &[2, 3], sa, sc, &mut out);
            assert_eq!(out, [100., 200., 300., 800., 1000., 1200.]);
        });
    }

    #[test]
    fn silu_backward_simd_matches_scalar() {
        let x: Vec<f32> = (0..77).map(|i| (i as f32 - 38.0) * 0.21).collect();
        let g: Vec<f32> = (0..77).map(|i| 1.0 + i as f32 * 0.01).collect();
        let run = |out: &mut [f32]| {
            let operand = |data| Strided {
                data,
                offset: 0,
                strides: &[1],
            };
            binary(BinaryOp::SiluBackward, &[77], operand(&x), operand(&g), out);
        };
        let (mut fast, mut slow) = (vec![0f32; 77], vec![0f32; 77]);
        run(&mut fast);
        simd::with_isa(Isa::Scalar, || run(&mut slow));
        for (f, s) in fast.iter().zip(&slow) {
            assert!((f - s).abs() <= 1e-5 * s.abs().max(1.0));
        }
    }

    const ALL_UNARY: [UnaryOp; 17] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Sqr,
        UnaryOp::Abs,
        UnaryOp::Recip,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::Tanh,
        UnaryOp::Relu,
        UnaryOp::Sign,
        UnaryOp::Affine {
            mul: 1.5,
            add: -0.25,
        },
        UnaryOp::Powf(1.7),
        UnaryOp::MaxScalar(0.3),
        UnaryOp::MinScalar(-0.2),
        UnaryOp::GeScalar(0.1),
    ];

    const ALL_BINARY: [BinaryOp; 17] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Pow,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
        BinaryOp::SiluBackward,
        BinaryOp::SigmoidBackward,
        BinaryOp::TanhBackward,
        BinaryOp::ReluBackward,
    ];

    /// Positive values with repeats (so comparisons hit equality), long
    /// enough to take the parallel path and leave a ragged SIMD tail.
    fn test_values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| 0.05 + ((i * 7 + seed * 13) % 41) as f32 * 0.07)
            .collect()
    }

    /// Ops computed by hand-written AVX2 approximations rather than by the
    /// scalar definition compiled for the vector unit.
    fn approximated(op: BinaryOp) -> bool {
        matches!(op, BinaryOp::SiluBackward | BinaryOp::SigmoidBackward)
    }

    #[test]
    fn every_unary_op_matches_its_scalar_definition() {
        let x = test_values(PAR_CHUNK + 37, 1);
        for op in ALL_UNARY {
            both_paths(|| {
                let mut got = vec![0f32; x.len()];
                unary(op, &x, &mut got);
                for (&v, &g) in x.iter().zip(&got) {
                    let want = unary_eval(op, v);
                    let tol = 2e-6 * want.abs().max(1.0);
                    assert!((g - want).abs() <= tol, "{op:?}({v}) = {g}, want {want}");
                }
            });
        }
    }

    /// Every op under every stride pattern the loops specialise: both
    /// contiguous, either side broadcast along the inner axis, and a
    /// transposed (strided) operand.
    #[test]
    fn every_binary_op_matches_its_scalar_definition_for_each_stride_pattern() {
        let (rows, cols) = (301, 129); // > PAR_CHUNK elements in all
        let a = test_values(rows * cols, 2);
        let b = test_values(rows * cols, 3);
        let patterns: [(&[usize], &[usize]); 4] = [
            (&[cols, 1], &[cols, 1]),
            (&[cols, 1], &[1, 0]),
            (&[0, 1], &[cols, 1]),
            (&[1, rows], &[cols, 1]),
        ];
        for op in ALL_BINARY {
            for (sa, sb) in patterns {
                both_paths(|| {
                    let mut got = vec![0f32; rows * cols];
                    let strided = |data, strides| Strided {
                        data,
                        offset: 0,
                        strides,
                    };
                    binary(
                        op,
                        &[rows, cols],
                        strided(&a, sa),
                        strided(&b, sb),
                        &mut got,
                    );
                    for r in 0..rows {
                        for c in 0..cols {
                            let x = a[r * sa[0] + c * sa[1]];
                            let y = b[r * sb[0] + c * sb[1]];
                            let want = binary_eval(op, x, y);
                            let g = got[r * cols + c];
                            let tol = if approximated(op) {
                                2e-6 * want.abs().max(1.0)
                            } else {
                                0.0
                            };
                            assert!(
                                (g - want).abs() <= tol || (g.is_nan() && want.is_nan()),
                                "{op:?}({x}, {y}) = {g}, want {want} (strides {sa:?}, {sb:?})"
                            );
                        }
                    }
                });
            }
        }
    }
}
