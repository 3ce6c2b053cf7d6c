//! The fused noise-schedule ops: PyTorch fixtures in f32 and f64, f64
//! gradchecks of the differentiable ones, and argument errors.

#[path = "norm_noise_common/mod.rs"]
mod common;

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::testing::randn_f64 as randn;
use noisegrad_engine::{DType, QSampleCoef, StepCoef, no_grad};
use noisegrad_kernels::cpu::simd::{self, Isa};

#[test]
fn noise_ops_match_pytorch_f32() {
    common::check_noise_fixtures(DType::F32);
}

/// The fixtures again on the scalar fallback (CPUs without AVX2+FMA).
#[test]
fn noise_ops_scalar_fallback_match_pytorch() {
    simd::with_isa(Isa::Scalar, || common::check_noise_fixtures(DType::F32));
}

#[test]
fn noise_ops_match_pytorch_f64() {
    common::check_noise_fixtures(DType::F64);
}

#[test]
fn l_simple_gradcheck_both_inputs() {
    gradcheck(
        |v| v[0].l_simple_loss(&v[1]),
        &[randn(&[2, 3, 4], 1), randn(&[2, 3, 4], 2)],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn l_simple_backward_scales_by_the_upstream_gradient() {
    let (p, e) = (randn(&[3, 5], 3), randn(&[3, 5], 4));
    gradcheck(
        |v| v[0].l_simple_loss(&v[1])?.mul_scalar(-2.5)?.exp(),
        &[p.clone(), e.clone()],
        GradcheckOptions::default(),
    )
    .unwrap();
    let plain = no_grad(|| p.l_simple_loss(&e)).unwrap().item().unwrap();
    let mse = p.mse_loss(&e).unwrap().item().unwrap();
    assert!((plain - mse).abs() <= 1e-14 * mse);
}

#[test]
fn q_sample_gradcheck() {
    let coefs = [
        QSampleCoef::from_alpha_bar(0.9),
        QSampleCoef::from_alpha_bar(0.2),
    ];
    gradcheck(
        |v| v[0].q_sample(&v[1], &coefs),
        &[randn(&[2, 3, 2], 5), randn(&[2, 3, 2], 6)],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn denoise_step_refuses_tracked_inputs() {
    let x = randn(&[2, 4], 7);
    let eps = randn(&[2, 4], 8).set_requires_grad(true);
    let coefs = [StepCoef::ddim(0.5, 0.8, 0.0, false); 2];
    let e = x.denoise_step(&eps, None, &coefs).unwrap_err();
    assert!(e.to_string().contains("denoise_step"), "{e}");
    // Under no_grad (how samplers run) the same call is fine.
    no_grad(|| x.denoise_step(&eps, None, &coefs)).unwrap();
}

#[test]
fn deterministic_ddim_needs_no_noise_tensor() {
    let (x, eps, z) = (randn(&[2, 4], 9), randn(&[2, 4], 10), randn(&[2, 4], 11));
    let coefs = [StepCoef::ddim(0.5, 0.8, 0.0, true); 2];
    let with_z = x.denoise_step(&eps, Some(&z), &coefs).unwrap();
    let without = x.denoise_step(&eps, None, &coefs).unwrap();
    common::assert_close("ddim η=0", &without, &with_z, 0.0);
}

#[test]
fn noise_ops_reject_bad_arguments() {
    let (x, eps) = (randn(&[2, 4], 12), randn(&[2, 4], 13));
    let msg = |e: noisegrad_engine::Error| e.to_string();
    let q1 = [QSampleCoef::from_alpha_bar(0.5)];
    assert!(msg(x.q_sample(&eps, &q1).unwrap_err()).contains("q_sample"));
    let nan = [QSampleCoef::from_alpha_bar(f64::NAN); 2];
    assert!(msg(x.q_sample(&eps, &nan).unwrap_err()).contains("q_sample"));
    assert!(msg(x.l_simple_loss(&randn(&[4, 2], 14)).unwrap_err()).contains("l_simple_loss"));
    let step = [StepCoef::ddpm(0.99, 0.5, 0.1); 3];
    assert!(msg(x.denoise_step(&eps, None, &step).unwrap_err()).contains("denoise_step"));
    let step = [StepCoef::ddpm(0.99, 0.5, 0.1); 2];
    let short = randn(&[2, 3], 15);
    assert!(msg(x.denoise_step(&eps, Some(&short), &step).unwrap_err()).contains("denoise_step"));
}
