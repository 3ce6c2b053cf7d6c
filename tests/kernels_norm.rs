//! Group norm (+ fused SiLU) and nearest ×2 upsampling: PyTorch fixtures in
//! f32 and f64, f64 finite-difference gradchecks, and argument errors.

#[path = "norm_noise_common/mod.rs"]
mod common;

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::testing::randn_f64 as randn;
use noisegrad_engine::{DType, Error, Tensor};
use noisegrad_kernels::cpu::simd::{self, Isa};

#[test]
fn group_norm_matches_pytorch_f32() {
    common::check_group_norm_fixtures(DType::F32);
}

/// The fixtures again on the 8-lane AVX2 SiLU kernels (on AVX-512 machines
/// the best path is the 16-lane one) and on the scalar fallback.
#[test]
fn group_norm_avx2_and_scalar_paths_match_pytorch() {
    simd::with_isa(Isa::Avx2, || common::check_group_norm_fixtures(DType::F32));
    simd::with_isa(Isa::Scalar, || {
        assert_eq!(simd::isa(), Isa::Scalar);
        common::check_group_norm_fixtures(DType::F32);
        common::check_group_norm_fixtures(DType::F64);
    });
}

#[test]
fn upsample_scalar_fallback_matches_pytorch() {
    simd::with_isa(Isa::Scalar, || common::check_upsample_fixtures(DType::F32));
}

#[test]
fn group_norm_matches_pytorch_f64() {
    common::check_group_norm_fixtures(DType::F64);
}

#[test]
fn upsample_matches_pytorch_f32_and_f64() {
    common::check_upsample_fixtures(DType::F32);
    common::check_upsample_fixtures(DType::F64);
}

/// x, γ, β for a `[2, 6, 3, 2]` input with a nonzero mean.
fn group_norm_inputs() -> [Tensor; 3] {
    let x = randn(&[2, 6, 3, 2], 1).affine(1.3, 0.7).unwrap();
    let gamma = randn(&[6], 2).add_scalar(1.0).unwrap();
    let beta = randn(&[6], 3);
    [x, gamma, beta]
}

#[test]
fn group_norm_gradcheck_all_group_counts_with_and_without_silu() {
    for groups in [1, 3, 6] {
        for silu in [false, true] {
            let r = gradcheck(
                |v| v[0].group_norm(groups, &v[1], &v[2], 1e-5, silu),
                &group_norm_inputs(),
                GradcheckOptions::default(),
            );
            let r = r.unwrap_or_else(|e| panic!("G={groups} silu={silu}: {e}"));
            assert_eq!(r.checked, 72 + 6 + 6);
        }
    }
}

#[test]
fn group_norm_gradcheck_through_a_following_op() {
    // Backward receives a non-trivial upstream gradient from `square`, and
    // only x is differentiated (γ, β constant).
    let [x, gamma, beta] = group_norm_inputs();
    gradcheck(
        |v| v[0].group_norm(2, &gamma, &beta, 1e-6, true)?.square(),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn group_norm_reads_non_contiguous_inputs() {
    let [x, gamma, beta] = group_norm_inputs();
    // The same values laid out as NHWC, viewed as NCHW.
    let nhwc = x.permute(&[0, 2, 3, 1]).unwrap().contiguous().unwrap();
    let view = nhwc.permute(&[0, 3, 1, 2]).unwrap();
    assert!(!view.is_contiguous());
    let a = x.group_norm(3, &gamma, &beta, 1e-5, true).unwrap();
    let b = view.group_norm(3, &gamma, &beta, 1e-5, true).unwrap();
    common::assert_close("non-contiguous group_norm", &b, &a, 1e-14);
}

#[test]
fn fused_silu_equals_group_norm_then_silu() {
    let [x, gamma, beta] = group_norm_inputs();
    let fused = x.group_norm(3, &gamma, &beta, 1e-6, true).unwrap();
    let split = x
        .group_norm(3, &gamma, &beta, 1e-6, false)
        .unwrap()
        .silu()
        .unwrap();
    common::assert_close("fused silu", &fused, &split, 1e-14);
}

#[test]
fn group_norm_rejects_bad_arguments() {
    let [x, gamma, beta] = group_norm_inputs();
    let bad_arg = |r: Result<Tensor, Error>| {
        let e = r.unwrap_err();
        assert!(e.to_string().contains("group_norm"), "{e}");
    };
    bad_arg(x.group_norm(4, &gamma, &beta, 1e-5, false)); // 6 % 4 != 0
    bad_arg(x.group_norm(0, &gamma, &beta, 1e-5, false));
    bad_arg(x.group_norm(3, &randn(&[5], 4), &beta, 1e-5, false));
    bad_arg(x.group_norm(3, &gamma, &randn(&[6, 1], 5), 1e-5, false));
    bad_arg(x.group_norm(3, &gamma, &beta, -1.0, false));
    bad_arg(randn(&[6], 6).group_norm(3, &gamma, &beta, 1e-5, false));
    let g32 = gamma.to_dtype(DType::F32).unwrap();
    bad_arg(x.group_norm(3, &g32, &beta, 1e-5, false));
}

#[test]
fn upsample_gradcheck() {
    gradcheck(
        |v| v[0].upsample_nearest2x(),
        &[randn(&[2, 3, 3, 2], 7)],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn upsample_rejects_non_nchw() {
    let e = randn(&[3, 4, 5], 8).upsample_nearest2x().unwrap_err();
    assert!(e.to_string().contains("upsample_nearest2x"), "{e}");
}
