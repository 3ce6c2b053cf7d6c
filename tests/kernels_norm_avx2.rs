//! The group-norm fixtures with the AVX-512 kernels switched off, so that on
//! AVX-512 machines the 8-lane AVX2 SiLU kernels are checked against
//! PyTorch too (elsewhere they are the path taken anyway). The switch is
//! process-wide, hence this separate test binary.

#[path = "norm_noise_common/mod.rs"]
mod common;

use noisegrad_engine::DType;
use noisegrad_kernels::cpu::simd_avx512;

#[test]
fn group_norm_avx2_kernels_match_pytorch() {
    simd_avx512::set_enabled(false);
    assert!(!simd_avx512::available());
    common::check_group_norm_fixtures(DType::F32);
}
