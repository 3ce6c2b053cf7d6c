//! Seeded test and benchmark data for the kernels' own tests, benches and
//! examples (the engine's test binaries use `noisegrad_engine::testing`,
//! which builds tensors). Compiled for tests and with the test-only
//! `emulator` feature, never into a release binary.

use crate::rng::{Philox, u32_to_open01};

/// `n` values uniform in (−1, 1) from the counter-based stream `seed`:
/// the same values on every machine and for every `n` prefix.
pub fn uniform(n: usize, seed: u64) -> Vec<f64> {
    uniform_within(n, seed, 1.0)
}

/// `n` values uniform in (−bound, bound), the stream of [`uniform`] scaled.
pub fn uniform_within(n: usize, seed: u64, bound: f64) -> Vec<f64> {
    (0..n)
        .map(|i| (u32_to_open01(Philox::block(seed, i as u64 / 4)[i % 4]) * 2.0 - 1.0) * bound)
        .collect()
}

/// [`uniform`] in f32.
pub fn uniform_f32(n: usize, seed: u64) -> Vec<f32> {
    uniform(n, seed).into_iter().map(|v| v as f32).collect()
}
