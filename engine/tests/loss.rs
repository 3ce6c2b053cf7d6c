//! Cross-entropy: values against a hand computation, f64 gradchecks, bad
//! labels, and input gradients taken inside `no_grad` via `enable_grad`.

use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};
use noisegrad_engine::{DType, Device, Philox, Tensor, enable_grad, no_grad};

#[test]
fn cross_entropy_value_matches_hand_computation() {
    let x = Tensor::from_vec(
        &[1.0, 2.0, 3.0, 0.5, 0.5, 0.5],
        &[2, 3],
        DType::F64,
        Device::Cpu,
    )
    .unwrap();
    let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    let want = -((1.0 - lse0) + (-(3f64).ln())) / 2.0;
    let got = x.cross_entropy(&[0, 2]).unwrap().item().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
}

#[test]
fn cross_entropy_and_log_prob_gradcheck() {
    let x = Tensor::randn(&[4, 5], DType::F64, Device::Cpu, &mut Philox::new(3)).unwrap();
    let labels = [4, 0, 2, 2];
    let r = gradcheck(
        |v| v[0].mul_scalar(3.0)?.cross_entropy(&labels),
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    assert_eq!(r.checked, 20);
    gradcheck(
        |v| v[0].log_prob_of(&labels),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
}

#[test]
fn bad_labels_are_named() {
    let x = Tensor::zeros(&[2, 3], DType::F32, Device::Cpu).unwrap();
    let e = x.cross_entropy(&[0, 3]).unwrap_err().to_string();
    assert!(e.contains("label 3 out of range for 3 classes"), "{e}");
    let e = x.cross_entropy(&[0]).unwrap_err().to_string();
    assert!(e.contains("1 labels for 2 rows"), "{e}");
}

/// ∇ₓ Σ log softmax(Wx)[y] = Wᵀ(onehot(y) − softmax(Wx)), taken inside no_grad.
#[test]
fn input_gradient_inside_no_grad() {
    let w = Tensor::from_vec(&[1.0, -2.0, 0.5, 3.0], &[2, 2], DType::F64, Device::Cpu).unwrap();
    let g = no_grad(|| {
        enable_grad(|| {
            let x = Tensor::from_vec(&[0.3, -0.1], &[1, 2], DType::F64, Device::Cpu)
                .unwrap()
                .set_requires_grad(true);
            let logits = x.matmul(&w.transpose(0, 1).unwrap()).unwrap();
            logits
                .log_prob_of(&[1])
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            x.grad().unwrap().to_vec_f64()
        })
    });
    let z: [f64; 2] = [1.0 * 0.3 - 2.0 * -0.1, 0.5 * 0.3 + 3.0 * -0.1];
    let p1 = z[1].exp() / (z[0].exp() + z[1].exp());
    let d = [-(1.0 - p1), 1.0 - p1]; // onehot(1) − softmax
    let want = [d[0] * 1.0 + d[1] * 0.5, d[0] * -2.0 + d[1] * 3.0];
    assert!(
        (g[0] - want[0]).abs() < 1e-12 && (g[1] - want[1]).abs() < 1e-12,
        "{g:?}"
    );
}
