//! Helpers shared by the engine's integration tests: seeded inputs and a
//! gradcheck wrapper that names the failing case.
#![allow(dead_code)]

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::{DType, Device, Philox, Result, Tensor};

/// N(0, 1) samples in f64, from a fixed seed.
pub use noisegrad_engine::testing::randn_f64 as randn;

/// Applies `f` to every element (test-side construction of special inputs).
pub fn map(t: &Tensor, f: impl Fn(f64) -> f64) -> Tensor {
    let v: Vec<f64> = t.to_vec_f64().into_iter().map(f).collect();
    Tensor::from_vec(&v, t.shape(), t.dtype(), t.device()).unwrap()
}

/// Normal samples pushed at least `margin` away from 0, so kinks at 0
/// (abs, relu) are never within a finite-difference step.
pub fn away_from_zero(shape: &[usize], seed: u64, margin: f64) -> Tensor {
    map(&randn(shape, seed), |x| {
        if x >= 0.0 { x + margin } else { x - margin }
    })
}

/// Samples in [0.5, ∞): safe for log, sqrt, recip and fractional powers.
pub fn positive(shape: &[usize], seed: u64) -> Tensor {
    map(&randn(shape, seed), |x| x.abs() + 0.5)
}

/// A random shape of `rank` axes, each of size 1..=max, from `seed`.
pub fn random_shape(rank: usize, max: usize, seed: u64) -> Vec<usize> {
    let mut rng = Philox::new(seed);
    let u = Tensor::rand(&[rank], DType::F64, Device::Cpu, &mut rng).unwrap();
    u.to_vec_f64()
        .into_iter()
        .map(|v| 1 + (v * max as f64) as usize)
        .collect()
}

/// Gradchecks `f` at `inputs` (default f64 tolerances) and checks every
/// element of every input was compared. Panics with `name` on failure.
pub fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    check_with(name, inputs, GradcheckOptions::default(), f)
}

pub fn check_with(
    name: &str,
    inputs: &[Tensor],
    opts: GradcheckOptions,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let want: usize = inputs.iter().map(Tensor::numel).sum();
    match gradcheck(f, inputs, opts) {
        Ok(r) => assert_eq!(r.checked, want, "{name}: not every element was checked"),
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Asserts two value lists agree to `tol` (absolute + relative).
pub fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) {
    noisegrad_engine::testing::assert_close(name, got, want, tol, tol);
}
