//! CUDA against CPU for the core primitives: reductions, softmax,
//! index_select / gather_rows (and index_add, their backward), matmul and
//! the random fills (see `noisegrad_engine::testing`). Without a GPU
//! they run on the CUDA emulator (or skip where it cannot run).

use noisegrad_engine::testing::randn_f32 as randn;
use noisegrad_engine::testing::{compare_devices, gpu_or_skip, scaled_error};
use noisegrad_engine::{DType, Device, Philox, Result, Tensor};

const TOL: f64 = 1e-5;
/// TF32 products keep ~10 mantissa bits.
const TF32_TOL: f64 = 1e-3;

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;
type ViewFn = fn(&Tensor) -> Result<Tensor>;

/// Each op over several axis sets, on a contiguous input and on views that
/// are not contiguous.
#[test]
fn reductions_match_cpu() {
    let Some(gpu) = gpu_or_skip("reductions_match_cpu") else {
        return;
    };
    let axis_sets: [&[usize]; 8] = [&[], &[0], &[1], &[2], &[0, 2], &[1, 2], &[0, 1], &[0, 1, 2]];
    // Each input view is [6, 35, 19] (shapes chosen so no kernel sees a
    // power of two).
    let views: [(&str, Vec<usize>, ViewFn); 3] = [
        ("contiguous", vec![6, 35, 19], |x| Ok(x.clone())),
        ("permuted", vec![19, 6, 35], |x| x.permute(&[1, 2, 0])),
        ("narrowed", vec![6, 40, 19], |x| x.narrow(1, 3, 35)),
    ];
    for (view_name, shape, view) in &views {
        let view = *view;
        for axes in axis_sets {
            for keepdim in [false, true] {
                let ops: [(&str, Op); 4] = [
                    ("sum", Box::new(move |x| view(&x[0])?.sum(axes, keepdim))),
                    ("mean", Box::new(move |x| view(&x[0])?.mean(axes, keepdim))),
                    ("max", Box::new(move |x| view(&x[0])?.max(axes, keepdim))),
                    ("min", Box::new(move |x| view(&x[0])?.min(axes, keepdim))),
                ];
                for (name, f) in ops {
                    let label = format!("{name} over {axes:?} keepdim={keepdim} ({view_name})");
                    compare_devices(&label, f, &[randn(shape, 11)], &[true], gpu, TOL).unwrap();
                }
            }
        }
    }
}

/// Sizes that take the multi-pass plans: one long row, a few long
/// columns, short rows, and many rows.
#[test]
fn large_and_odd_reductions_match_cpu() {
    let Some(gpu) = gpu_or_skip("large_and_odd_reductions_match_cpu") else {
        return;
    };
    // (The CPU sums columns sequentially in f32, so long columns are kept
    // short enough for its own rounding to stay well inside 1e-5.)
    let cases: [(Vec<usize>, Vec<usize>); 6] = [
        (vec![1_000_003], vec![0]),
        (vec![3, 200_001], vec![1]),
        (vec![20_011, 3], vec![0]),
        (vec![4096, 7], vec![1]),
        (vec![64, 3000, 5], vec![1]),
        (vec![8, 32, 16, 16], vec![0, 2, 3]),
    ];
    for (shape, axes) in cases {
        let x = randn(&shape, 12);
        for name in ["sum", "max", "min"] {
            let f = |x: &[Tensor]| match name {
                "sum" => x[0].sum(&axes, false),
                "max" => x[0].max(&axes, false),
                _ => x[0].min(&axes, false),
            };
            let label = format!("{name} of {shape:?} over {axes:?}");
            compare_devices(&label, f, std::slice::from_ref(&x), &[true], gpu, TOL).unwrap();
        }
    }
}

#[test]
fn max_and_min_propagate_nan_and_sum_of_empty_is_zero() {
    let Some(gpu) = gpu_or_skip("max_and_min_propagate_nan_and_sum_of_empty_is_zero") else {
        return;
    };
    let mut v = vec![1.0f32; 3 * 100];
    v[150] = f32::NAN;
    let x = Tensor::from_f32(&v, &[3, 100])
        .unwrap()
        .to_device(gpu)
        .unwrap();
    for t in [
        x.max(&[1], false).unwrap(),
        x.min(&[1], false).unwrap(),
        x.max(&[0], false).unwrap(),
    ] {
        let got = t.to_vec_f32();
        assert_eq!(got.iter().filter(|v| v.is_nan()).count(), 1, "{got:?}");
    }
    assert!(x.max(&[0, 1], false).unwrap().item().unwrap().is_nan());
    let empty = Tensor::zeros(&[4, 0, 3], DType::F32, gpu).unwrap();
    assert_eq!(empty.sum(&[1], false).unwrap().to_vec_f32(), vec![0.0; 12]);
}

/// softmax and log_softmax, forward and gradient, along the last axis
/// (block per row), a middle axis with many columns (thread per column),
/// few long columns (moved innermost), short rows, and a permuted input.
#[test]
fn softmax_matches_cpu() {
    let Some(gpu) = gpu_or_skip("softmax_matches_cpu") else {
        return;
    };
    let cases: [(Vec<usize>, usize); 7] = [
        (vec![37, 300], 1),
        (vec![5, 2000], 1),
        (vec![4, 10, 6], 2),
        (vec![8, 40, 1000], 1),
        (vec![48, 70, 1000], 1),
        (vec![2, 300, 3], 1),
        (vec![3, 5000, 2], 1),
    ];
    for (shape, axis) in &cases {
        for log in [false, true] {
            let axis = *axis;
            let f = move |x: &[Tensor]| {
                let s = x[0].mul_scalar(3.0)?;
                if log {
                    s.log_softmax(axis)
                } else {
                    s.softmax(axis)
                }
            };
            let label = format!("softmax(log={log}) of {shape:?} on axis {axis}");
            compare_devices(&label, f, &[randn(shape, 13)], &[true], gpu, TOL).unwrap();
        }
    }
    for log in [false, true] {
        let f = move |x: &[Tensor]| {
            let t = x[0].transpose(0, 2)?;
            if log { t.log_softmax(2) } else { t.softmax(2) }
        };
        let label = format!("softmax(log={log}) of a transposed view");
        compare_devices(&label, f, &[randn(&[50, 7, 9], 14)], &[true], gpu, TOL).unwrap();
    }
}

/// index_select on each axis with repeated ids (their gradients add up:
/// index_add), gather_rows, and a non-contiguous source.
#[test]
fn index_select_and_gather_rows_match_cpu() {
    let Some(gpu) = gpu_or_skip("index_select_and_gather_rows_match_cpu") else {
        return;
    };
    let ids = vec![4usize, 0, 4, 2, 4, 1, 0];
    for axis in 0..3 {
        let ids = ids.clone();
        let f = move |x: &[Tensor]| x[0].index_select(axis, &ids);
        let label = format!("index_select on axis {axis}");
        compare_devices(&label, f, &[randn(&[5, 6, 7], 15)], &[true], gpu, TOL).unwrap();
    }
    let ids_t = Tensor::from_f32(&[3.0, 3.0, 0.0, 9.0, 3.0], &[5]).unwrap();
    let f = move |x: &[Tensor]| x[0].gather_rows(0, &ids_t);
    compare_devices("gather_rows", f, &[randn(&[10, 33], 16)], &[true], gpu, TOL).unwrap();
    let f = |x: &[Tensor]| x[0].transpose(0, 1)?.index_select(1, &[2, 2, 0]);
    compare_devices(
        "index_select of a view",
        f,
        &[randn(&[3, 8, 4], 17)],
        &[true],
        gpu,
        TOL,
    )
    .unwrap();
    // An embedding-table sized lookup with many repeats.
    let many: Vec<usize> = (0..4000).map(|i| (i * 7919) % 1000).collect();
    let f = move |x: &[Tensor]| x[0].index_select(0, &many);
    compare_devices(
        "embedding lookup",
        f,
        &[randn(&[1000, 64], 18)],
        &[true],
        gpu,
        TOL,
    )
    .unwrap();
}

/// Restores the device's TF32 switch when dropped, even if a check panics.
struct Tf32Off;

impl Drop for Tf32Off {
    fn drop(&mut self) {
        if let Ok(dev) = noisegrad_kernels::cuda::CudaDevice::get(0) {
            dev.set_tf32(false);
        }
    }
}

type Pair = (
    &'static str,
    Vec<usize>,
    Vec<usize>,
    fn(&[Tensor]) -> Result<Tensor>,
);

fn matmul_cases() -> Vec<Pair> {
    fn plain(x: &[Tensor]) -> Result<Tensor> {
        x[0].matmul(&x[1])
    }
    fn t_last(x: &Tensor) -> Result<Tensor> {
        x.transpose(x.rank() - 2, x.rank() - 1)
    }
    vec![
        ("2-D", vec![33, 47], vec![47, 29], plain),
        ("batched", vec![4, 17, 33], vec![4, 33, 21], plain),
        ("broadcast rhs", vec![3, 5, 17, 33], vec![33, 21], plain),
        ("broadcast lhs", vec![17, 33], vec![6, 33, 21], plain),
        (
            "partly broadcast",
            vec![2, 1, 9, 13],
            vec![1, 3, 13, 11],
            plain,
        ),
        ("lhs transposed", vec![4, 33, 17], vec![4, 33, 21], |x| {
            t_last(&x[0])?.matmul(&x[1])
        }),
        ("rhs transposed", vec![4, 17, 33], vec![4, 21, 33], |x| {
            x[0].matmul(&t_last(&x[1])?)
        }),
        ("both transposed", vec![33, 17], vec![21, 33], |x| {
            t_last(&x[0])?.matmul(&t_last(&x[1])?)
        }),
        ("column slice", vec![17, 40], vec![33, 21], |x| {
            x[0].narrow(1, 5, 33)?.matmul(&x[1])
        }),
        ("permuted batch", vec![17, 4, 33], vec![4, 33, 21], |x| {
            x[0].transpose(0, 1)?.matmul(&x[1])
        }),
        ("vector rows", vec![8, 1, 64], vec![8, 64, 1], plain),
    ]
}

/// Matrix products in every operand form, forward and both gradients, at
/// single precision with TF32 off, then at TF32 tolerance with it on.
#[test]
fn matmul_matches_cpu() {
    let Some(gpu) = gpu_or_skip("matmul_matches_cpu") else {
        return;
    };
    let dev = noisegrad_kernels::cuda::CudaDevice::get(0).unwrap();
    let _restore = Tf32Off;
    for (tf32, tol) in [(false, TOL), (true, TF32_TOL)] {
        dev.set_tf32(tf32);
        for (name, a, b, f) in matmul_cases() {
            let label = format!("matmul {name} (tf32={tf32})");
            compare_devices(
                &label,
                f,
                &[randn(&a, 19), randn(&b, 20)],
                &[true, true],
                gpu,
                tol,
            )
            .unwrap();
        }
    }
    dev.set_tf32(false);
    // An empty inner size gives zeros.
    let a = Tensor::zeros(&[3, 0], DType::F32, gpu).unwrap();
    let b = Tensor::zeros(&[0, 4], DType::F32, gpu).unwrap();
    assert_eq!(a.matmul(&b).unwrap().to_vec_f32(), vec![0.0; 12]);
}

/// The GPU fills are the CPU's stream: same values for the same seed, and
/// the generator advances the same way (odd sizes included).
#[test]
fn rand_and_randn_match_cpu_stream() {
    let Some(gpu) = gpu_or_skip("rand_and_randn_match_cpu_stream") else {
        return;
    };
    let (mut rc, mut rg) = (Philox::new(2024), Philox::new(2024));
    for (n, normal) in [
        (1usize, false),
        (7, true),
        (1000, true),
        (4097, false),
        (1 << 20, true),
        (3, true),
    ] {
        let (c, g) = if normal {
            (
                Tensor::randn(&[n], DType::F32, Device::Cpu, &mut rc).unwrap(),
                Tensor::randn(&[n], DType::F32, gpu, &mut rg).unwrap(),
            )
        } else {
            (
                Tensor::rand(&[n], DType::F32, Device::Cpu, &mut rc).unwrap(),
                Tensor::rand(&[n], DType::F32, gpu, &mut rg).unwrap(),
            )
        };
        assert_eq!(g.device(), gpu);
        let err = scaled_error(&g.to_host_f64().unwrap(), &c.to_vec_f64());
        assert!(err <= 1e-6, "n={n} normal={normal}: scaled error {err:e}");
        assert_eq!(rc.state(), rg.state(), "n={n}: generator offsets differ");
    }
    // Uniform values are exact (no transcendental functions involved).
    let mut r = Philox::new(5);
    let g = Tensor::rand(&[999], DType::F32, gpu, &mut r).unwrap();
    let c = Tensor::rand(&[999], DType::F32, Device::Cpu, &mut Philox::new(5)).unwrap();
    assert_eq!(g.to_vec_f32(), c.to_vec_f32());
}
