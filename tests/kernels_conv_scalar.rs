//! conv2d with every SIMD path switched off (`force_scalar` is process-wide,
//! hence this separate test binary): the plain-Rust micro-kernel and the
//! baseline-compiled transforms must match the PyTorch fixtures too.

mod conv_common;

use conv_common::{cases, check_case_against_pytorch};
use noisegrad_engine::DType;
use noisegrad_kernels::conv::cpu::gemm::GemmFloat;
use noisegrad_kernels::cpu::simd;

#[test]
fn scalar_fallback_matches_pytorch() {
    simd::force_scalar(true);
    assert_eq!(f32::micro_kernel().name, "generic");
    for c in cases() {
        check_case_against_pytorch(&c, DType::F32);
    }
}
