//! The group-norm, upsample and noise fixtures again with explicit SIMD
//! switched off, so the scalar fallback (taken on CPUs without AVX2+FMA) is
//! checked against PyTorch too. `force_scalar` is process-wide, hence this
//! separate test binary in which every test forces it.

#[path = "norm_noise_common/mod.rs"]
mod common;

use noisegrad_engine::DType;
use noisegrad_kernels::cpu::simd::{SimdLevel, force_scalar, level};

fn scalar() {
    force_scalar(true);
    assert_eq!(level(), SimdLevel::Scalar);
}

#[test]
fn group_norm_scalar_fallback_matches_pytorch() {
    scalar();
    common::check_group_norm_fixtures(DType::F32);
    common::check_group_norm_fixtures(DType::F64);
}

#[test]
fn upsample_scalar_fallback_matches_pytorch() {
    scalar();
    common::check_upsample_fixtures(DType::F32);
}

#[test]
fn noise_ops_scalar_fallback_match_pytorch() {
    scalar();
    common::check_noise_fixtures(DType::F32);
}
