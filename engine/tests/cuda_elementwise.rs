//! CUDA against CPU for the elementwise primitives, views and transfers
//! (see `noisegrad_engine::testing`). Without a GPU they run on the
//! CUDA emulator (or skip where it cannot run); `no_gpu_is_a_clear_error`
//! runs everywhere.

use noisegrad_engine::testing::randn_f32 as randn;
use noisegrad_engine::testing::{compare_devices, gpu_or_skip};
use noisegrad_engine::{DType, Device, Result, Tensor};

const TOL: f64 = 1e-5;

fn positive(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).abs().unwrap().add_scalar(0.5).unwrap()
}

/// A device that is not there is a clear error. `cuda:1`, not `cuda:0`:
/// other tests of this binary may make `cuda:0` the CUDA emulator, which
/// provides `cuda:0` only.
#[test]
fn no_gpu_is_a_clear_error() {
    if Device::cuda_available() {
        return;
    }
    let err = Tensor::zeros(&[2, 3], DType::F32, Device::Cuda(1)).unwrap_err();
    assert!(err.to_string().contains("CUDA is not available"), "{err}");
    let err = randn(&[4], 1).to_device(Device::Cuda(1)).unwrap_err();
    assert!(err.to_string().contains("CUDA is not available"), "{err}");
}

#[test]
fn device_names_parse_like_pytorch() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:1".parse::<Device>().unwrap(), Device::Cuda(1));
    assert!("tpu".parse::<Device>().unwrap_err().contains("tpu"));
}

#[test]
fn round_trip_and_views() {
    let Some(gpu) = gpu_or_skip("round_trip_and_views") else {
        return;
    };
    let x = randn(&[3, 5, 7], 1);
    let g = x.to_device(gpu).unwrap();
    assert_eq!(g.device(), gpu);
    assert_eq!(g.to_vec_f32(), x.to_vec_f32());
    let p = g.permute(&[2, 0, 1]).unwrap().contiguous().unwrap();
    assert_eq!(
        p.to_vec_f32(),
        x.permute(&[2, 0, 1])
            .unwrap()
            .contiguous()
            .unwrap()
            .to_vec_f32()
    );
    let n = g.narrow(1, 1, 3).unwrap();
    assert_eq!(n.to_vec_f32(), x.narrow(1, 1, 3).unwrap().to_vec_f32());
    assert_eq!(
        Tensor::full(&[5], 2.5, DType::F32, gpu)
            .unwrap()
            .to_vec_f32(),
        vec![2.5; 5]
    );
    let f64_err = Tensor::zeros(&[2], DType::F64, gpu).unwrap_err();
    assert!(f64_err.to_string().contains("f32"), "{f64_err}");
}

type Op = fn(&[Tensor]) -> Result<Tensor>;

#[test]
fn unary_ops_match_cpu() {
    let Some(gpu) = gpu_or_skip("unary_ops_match_cpu") else {
        return;
    };
    let ops: [(&str, Op); 12] = [
        ("neg", |x| x[0].neg()),
        ("exp", |x| x[0].exp()),
        ("log", |x| x[0].log()),
        ("sqrt", |x| x[0].sqrt()),
        ("square", |x| x[0].square()),
        ("recip", |x| x[0].recip()),
        ("sigmoid", |x| x[0].sigmoid()),
        ("silu", |x| x[0].silu()),
        ("tanh", |x| x[0].tanh()),
        ("relu", |x| x[0].relu()),
        ("powf", |x| x[0].powf(1.7)),
        ("affine", |x| x[0].affine(-2.0, 0.25)),
    ];
    for (name, f) in ops {
        let x = positive(&[4, 33, 17], 7);
        compare_devices(name, f, &[x], &[true], gpu, TOL).unwrap();
        // A non-contiguous input takes the strided kernel.
        let xt = positive(&[33, 4, 17], 8);
        let g = move |x: &[Tensor]| f(&[x[0].transpose(0, 1)?]);
        compare_devices(name, g, &[xt], &[true], gpu, TOL).unwrap();
    }
}

#[test]
fn broadcast_binary_ops_match_cpu() {
    let Some(gpu) = gpu_or_skip("broadcast_binary_ops_match_cpu") else {
        return;
    };
    let ops: [(&str, Op); 6] = [
        ("add", |x| x[0].add(&x[1])),
        ("sub", |x| x[0].sub(&x[1])),
        ("mul", |x| x[0].mul(&x[1])),
        ("div", |x| x[0].div(&x[1])),
        ("maximum", |x| x[0].maximum(&x[1])),
        ("minimum", |x| x[0].minimum(&x[1])),
    ];
    for (name, f) in ops {
        for (sa, sb) in [
            (vec![8, 16, 9], vec![8, 16, 9]),
            (vec![8, 16, 9], vec![16, 1]),
            (vec![8, 1, 9], vec![1, 16, 9]),
        ] {
            let (a, b) = (randn(&sa, 1), positive(&sb, 2));
            compare_devices(name, f, &[a, b], &[true, true], gpu, TOL).unwrap();
        }
    }
}

#[test]
fn where_and_comparisons_match_cpu() {
    let Some(gpu) = gpu_or_skip("where_and_comparisons_match_cpu") else {
        return;
    };
    let f = |x: &[Tensor]| {
        let c = x[0].gt(&x[1])?;
        Tensor::where_cond(&c, &x[0], &x[1])
    };
    compare_devices(
        "where",
        f,
        &[randn(&[6, 40], 3), randn(&[40], 4)],
        &[true, true],
        gpu,
        TOL,
    )
    .unwrap();
}

#[test]
fn gradient_flows_back_across_devices() {
    let Some(gpu) = gpu_or_skip("gradient_flows_back_across_devices") else {
        return;
    };
    let x = randn(&[10], 5).set_requires_grad(true);
    let y = x
        .to_device(gpu)
        .unwrap()
        .square()
        .unwrap()
        .to_device(Device::Cpu)
        .unwrap();
    y.sum_all().unwrap().backward().unwrap();
    let want: Vec<f32> = x.to_vec_f32().iter().map(|v| 2.0 * v).collect();
    assert_eq!(x.grad().unwrap().to_vec_f32(), want);
}
