//! conv2d: PyTorch fixtures (forward and the input, weight and bias
//! gradients), f64 finite-difference gradchecks of the differentiable op,
//! and shape validation. The fixtures come from `scripts/fixtures_conv.py`.

mod conv_common;

use conv_common::{assert_close, cases, check_case_against_pytorch};
use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::{DType, Device, Philox, Tensor};
use noisegrad_kernels::cpu::simd::{self, Isa};
use noisegrad_kernels::gemm::packed::GemmFloat;

#[test]
fn forward_and_gradients_match_pytorch_f32() {
    for c in cases() {
        check_case_against_pytorch(&c, DType::F32);
    }
}

/// The same fixtures with every SIMD path off: the plain-Rust micro-kernel
/// and the baseline-compiled transforms (what a CPU without AVX2 runs).
#[test]
fn scalar_fallback_matches_pytorch() {
    simd::with_isa(Isa::Scalar, || {
        assert_eq!(f32::micro_kernel().name, "generic");
        for c in cases() {
            check_case_against_pytorch(&c, DType::F32);
        }
    });
}

#[test]
fn forward_and_gradients_match_pytorch_f64() {
    for c in cases() {
        check_case_against_pytorch(&c, DType::F64);
    }
}

fn randn(shape: &[usize], rng: &mut Philox) -> Tensor {
    Tensor::randn(shape, DType::F64, Device::Cpu, rng).unwrap()
}

/// (N, C, H, W, O, kh, kw, stride, padding)
const GRADCHECK_CASES: &[[usize; 9]] = &[
    [2, 2, 5, 4, 3, 3, 3, 1, 1], // 3×3 s1 p1, non-square (Winograd)
    [1, 2, 4, 5, 2, 3, 3, 1, 0], // pad 0
    [1, 2, 4, 4, 2, 3, 3, 1, 2], // pad 2
    [2, 3, 5, 6, 2, 3, 3, 2, 1], // stride 2 (im2col)
    [2, 3, 4, 3, 4, 1, 1, 1, 0], // 1×1 (plain GEMM)
    [1, 2, 5, 5, 3, 1, 1, 2, 1], // 1×1 strided and padded
    [1, 2, 5, 4, 2, 5, 3, 1, 2], // 5×3 kernel, pad 2
    [1, 2, 6, 6, 2, 2, 2, 2, 0], // 2×2 stride 2
];

#[test]
fn gradcheck_input_weight_and_bias() {
    let mut rng = Philox::new(7);
    for &[n, c, h, w, o, kh, kw, s, p] in GRADCHECK_CASES {
        let x = randn(&[n, c, h, w], &mut rng);
        let wt = randn(&[o, c, kh, kw], &mut rng);
        let b = randn(&[o], &mut rng);
        let report = gradcheck(
            |v| v[0].conv2d(&v[1], Some(&v[2]), s, p),
            &[x, wt, b],
            GradcheckOptions::default(),
        )
        .unwrap_or_else(|e| panic!("case {:?}: {e}", [n, c, h, w, o, kh, kw, s, p]));
        assert_eq!(report.checked, n * c * h * w + o * c * kh * kw + o);
    }
}

#[test]
fn gradcheck_without_bias_and_with_only_some_inputs_tracked() {
    let mut rng = Philox::new(8);
    let x = randn(&[2, 3, 5, 5], &mut rng);
    let w = randn(&[2, 3, 3, 3], &mut rng);
    gradcheck(
        |v| v[0].conv2d(&v[1], None, 1, 1),
        &[x.clone(), w.clone()],
        GradcheckOptions::default(),
    )
    .unwrap();
    // Weight only: the input is a constant, so its gradient is not computed.
    let wl = w.set_requires_grad(true);
    let y = x.conv2d(&wl, None, 2, 1).unwrap();
    y.sum_all().unwrap().backward().unwrap();
    assert!(wl.grad().is_some());
    assert!(x.grad().is_none());
}

#[test]
fn strided_views_are_read_correctly() {
    let mut rng = Philox::new(9);
    // A [N, H, W, C] tensor permuted to NCHW is not contiguous.
    let nhwc = randn(&[2, 6, 5, 3], &mut rng);
    let x = nhwc.permute(&[0, 3, 1, 2]).unwrap();
    assert!(!x.is_contiguous());
    let w = randn(&[4, 3, 3, 3], &mut rng);
    let b = randn(&[4], &mut rng);
    for (s, p) in [(1, 1), (2, 1)] {
        let got = x.conv2d(&w, Some(&b), s, p).unwrap();
        let want = x.contiguous().unwrap().conv2d(&w, Some(&b), s, p).unwrap();
        assert_close("permuted input", &got, &want);
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    let x = t(&[2, 3, 8, 8]);
    let w = t(&[4, 3, 3, 3]);
    let cases: Vec<(&str, noisegrad_engine::Result<Tensor>)> = vec![
        ("rank-3 input", t(&[3, 8, 8]).conv2d(&w, None, 1, 1)),
        ("rank-2 weight", x.conv2d(&t(&[4, 27]), None, 1, 1)),
        ("channel mismatch", x.conv2d(&t(&[4, 2, 3, 3]), None, 1, 1)),
        ("bias length", x.conv2d(&w, Some(&t(&[3])), 1, 1)),
        ("bias rank", x.conv2d(&w, Some(&t(&[1, 4])), 1, 1)),
        ("stride 0", x.conv2d(&w, None, 0, 1)),
        (
            "kernel larger than input",
            t(&[1, 3, 2, 2]).conv2d(&w, None, 1, 0),
        ),
        (
            "dtype mismatch",
            x.conv2d(&w.to_dtype(DType::F64).unwrap(), None, 1, 1),
        ),
    ];
    for (what, r) in cases {
        let e = r.expect_err(what).to_string();
        assert!(e.starts_with("conv2d"), "{what}: {e}");
    }
    // The message names the shapes involved.
    let e = x
        .conv2d(&t(&[4, 2, 3, 3]), None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[2, 3, 8, 8]") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );
}

#[test]
fn output_shape_follows_the_formula() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    let x = t(&[2, 3, 9, 7]);
    for (k, s, p, want) in [
        (3, 1, 1, [9, 7]),
        (3, 2, 1, [5, 4]),
        (1, 1, 0, [9, 7]),
        (5, 2, 2, [5, 4]),
    ] {
        let y = x.conv2d(&t(&[6, 3, k, k]), None, s, p).unwrap();
        assert_eq!(y.shape(), [2, 6, want[0], want[1]], "k{k} s{s} p{p}");
    }
}

#[test]
fn empty_batch_and_zero_input_channels() {
    let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, Device::Cpu).unwrap();
    let b = Tensor::from_f32(&[1.0, -2.0], &[2]).unwrap();
    // No images: an empty output of the right shape.
    let y = t(&[0, 3, 5, 5])
        .conv2d(&t(&[2, 3, 3, 3]), Some(&b), 1, 1)
        .unwrap();
    assert_eq!(y.shape(), [0, 2, 5, 5]);
    // No input channels: the output is the bias alone, on both paths.
    for (k, s) in [(3, 1), (3, 2)] {
        let x = t(&[1, 0, 4, 4]).set_requires_grad(true);
        let w = t(&[2, 0, k, k]).set_requires_grad(true);
        let y = x.conv2d(&w, Some(&b), s, 1).unwrap();
        let p = y.shape()[2] * y.shape()[3];
        let want: Vec<f64> = [1.0, -2.0].iter().flat_map(|&v| vec![v; p]).collect();
        assert_eq!(y.to_vec_f64(), want, "k{k} s{s}");
        y.sum_all().unwrap().backward().unwrap();
    }
    let e = t(&[1, 1, 0, 4])
        .conv2d(&t(&[1, 1, 1, 1]), None, 1, 1)
        .unwrap_err();
    assert!(e.to_string().starts_with("conv2d"), "{e}");
    let e = t(&[1, 1, 4, 4])
        .conv2d(&t(&[1, 1, 1, 1]), None, 1, usize::MAX)
        .unwrap_err();
    assert!(e.to_string().contains("padding"), "{e}");
}
