//! The explicit SIMD kernels against the scalar fallback
//! (`kernels::cpu::simd::with_isa`), on f32 tensors whose lengths leave
//! odd tails (1, 7, 9, 33, 100 003) and through broadcast patterns.

use noisegrad_engine::{DType, Device, Philox, Result, Tensor};
use noisegrad_kernels::cpu::simd::{self, Isa};

const LENGTHS: [usize; 6] = [1, 7, 8, 9, 33, 100_003];

/// `f` evaluated with the best SIMD level and with the scalar fallback.
fn both_ways(f: &(dyn Fn() -> Result<Tensor> + Sync)) -> (Vec<f32>, Vec<f32>) {
    let fast = f().unwrap().to_vec_f32();
    let slow = simd::with_isa(Isa::Scalar, || {
        assert_eq!(simd::isa(), Isa::Scalar);
        f().unwrap().to_vec_f32()
    });
    (fast, slow)
}

/// Same within `rel` relative error (or `abs` absolute, for results near
/// the bottom of the f32 range); NaN must meet NaN.
fn assert_agree(name: &str, fast: &[f32], slow: &[f32], rel: f32, abs: f32) {
    assert_eq!(fast.len(), slow.len());
    for (i, (&f, &s)) in fast.iter().zip(slow).enumerate() {
        let ok = f == s
            || (f.is_nan() && s.is_nan())
            || (f - s).abs() <= rel * s.abs()
            || (f - s).abs() <= abs;
        assert!(ok, "{name}: element {i}: SIMD {f} vs scalar {s}");
    }
}

/// Inputs over the interesting range, with the extremes spliced in.
fn inputs(n: usize, seed: u64) -> Tensor {
    let mut rng = Philox::new(seed);
    let mut v: Vec<f64> = Tensor::randn(&[n], DType::F64, Device::Cpu, &mut rng)
        .unwrap()
        .to_vec_f64()
        .into_iter()
        .map(|x| 8.0 * x)
        .collect();
    let extremes = [
        0.0,
        -0.0,
        88.5,
        -88.5,
        100.0,
        -100.0,
        -1000.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    for (slot, &e) in v.iter_mut().step_by(7).zip(&extremes) {
        *slot = e;
    }
    Tensor::from_vec(&v, &[n], DType::F32, Device::Cpu).unwrap()
}

#[test]
fn simd_and_scalar_paths_agree() {
    println!("detected instruction set: {:?}", simd::detected());
    for &n in &LENGTHS {
        let x = inputs(n, n as u64);
        let g = inputs(n, 1000 + n as u64).tanh().unwrap();
        transcendentals(n, &x, &g);
        arithmetic(n, &x, &g);
        reductions(n, &x);
    }
    broadcast_patterns();
    assert_eq!(simd::isa(), simd::detected(), "the cap stayed in its scope");
}

/// The hand-written AVX2 kernels: exp, sigmoid, SiLU and the fused
/// sigmoid/SiLU backwards (polynomial exp: a few ulp from libm's).
fn transcendentals(n: usize, x: &Tensor, g: &Tensor) {
    let cases: [(&str, &(dyn Fn() -> Result<Tensor> + Sync)); 7] = [
        ("exp", &|| x.exp()),
        ("sigmoid", &|| x.sigmoid()),
        ("silu", &|| x.silu()),
        ("tanh", &|| x.tanh()),
        ("silu backward", &|| {
            let xt = x.set_requires_grad(true);
            xt.silu()?.mul(g)?.sum_all()?.backward()?;
            Ok(xt.grad().unwrap())
        }),
        ("sigmoid backward", &|| {
            let xt = x.set_requires_grad(true);
            xt.sigmoid()?.mul(g)?.sum_all()?.backward()?;
            Ok(xt.grad().unwrap())
        }),
        ("exp of a strided view", &|| {
            x.broadcast_to(&[2, n])?.transpose(0, 1)?.exp()
        }),
    ];
    for (name, f) in cases {
        let (fast, slow) = both_ways(f);
        // The backward formulas cancel (1 + x(1 − σ) crosses 0 near
        // x ≈ −1.28), so there the bound is absolute: a few ulp of the O(1)
        // terms.
        let abs = if name.contains("backward") {
            2e-6
        } else {
            1e-37
        };
        assert_agree(&format!("{name} n={n}"), &fast, &slow, 4e-6, abs);
    }
}

/// Plain arithmetic is compiled twice (AVX2 and baseline) from one generic
/// loop; IEEE results must be bit-identical.
fn arithmetic(n: usize, x: &Tensor, g: &Tensor) {
    let cases: [(&str, &(dyn Fn() -> Result<Tensor> + Sync)); 10] = [
        ("add", &|| x.add(g)),
        ("mul", &|| x.mul(g)),
        ("sub", &|| x.sub(g)),
        ("div", &|| x.div(g)),
        ("maximum", &|| x.maximum(g)),
        ("affine", &|| x.affine(0.3, -1.25)),
        ("relu", &|| x.relu()),
        ("square", &|| x.square()),
        ("relu backward", &|| {
            let xt = x.set_requires_grad(true);
            xt.relu()?.mul(g)?.sum_all()?.backward()?;
            Ok(xt.grad().unwrap())
        }),
        ("where", &|| Tensor::where_cond(&x.gt(g)?, x, g)),
    ];
    for (name, f) in cases {
        let (fast, slow) = both_ways(f);
        assert_agree(&format!("{name} n={n}"), &fast, &slow, 0.0, 0.0);
    }
}

/// Reductions accumulate in a fixed order in both builds.
fn reductions(n: usize, x: &Tensor) {
    let finite = x.clamp(-50.0, 50.0).unwrap();
    let cases: [(&str, &(dyn Fn() -> Result<Tensor> + Sync)); 4] = [
        ("sum", &|| finite.sum_all()),
        ("max", &|| x.max(&[0], false)),
        ("min", &|| x.min(&[0], false)),
        ("column sums", &|| {
            finite.broadcast_to(&[3, n])?.sum(&[0], false)
        }),
    ];
    for (name, f) in cases {
        let (fast, slow) = both_ways(f);
        assert_agree(&format!("{name} n={n}"), &fast, &slow, 1e-6, 0.0);
    }
}

/// Row and column broadcasts over odd sizes, where runs start mid-vector.
fn broadcast_patterns() {
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[7, 9], &[9]),
        (&[7, 9], &[7, 1]),
        (&[33, 1], &[1, 9]),
        (&[3, 33_335], &[33_335]),
        (&[33_335, 3], &[33_335, 1]),
        (&[], &[100_003]),
    ];
    for (sa, sb) in shapes {
        let na: usize = sa.iter().product();
        let nb: usize = sb.iter().product();
        let a = inputs(na, 7).reshape(sa).unwrap();
        let b = inputs(nb, 8).reshape(sb).unwrap();
        for (name, f) in [
            (
                "add",
                &(|| a.add(&b)) as &(dyn Fn() -> Result<Tensor> + Sync),
            ),
            ("mul", &|| a.mul(&b)),
            ("silu backward", &|| {
                let at = a.set_requires_grad(true);
                at.silu()?.mul(&b)?.sum_all()?.backward()?;
                Ok(at.grad().unwrap())
            }),
        ] {
            let (fast, slow) = both_ways(f);
            let (rel, abs) = if name == "silu backward" {
                (4e-6, 2e-6)
            } else {
                (0.0, 0.0)
            };
            assert_agree(&format!("{name} {sa:?} {sb:?}"), &fast, &slow, rel, abs);
        }
    }
}
