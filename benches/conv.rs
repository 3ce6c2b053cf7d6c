//! conv2d (NCHW, f32, batch 8) at the DDPM CIFAR-10 U-Net's shapes:
//! forward (`y = conv(x, w) + b`) and backward (input, weight and bias
//! gradients for a given dY, the same work as PyTorch's
//! `aten::convolution_backward` with all three outputs).
//!
//! Throughput is reported as `Elements` = floating-point operations of the
//! direct convolution (2·N·O·Ho·Wo·C·kh·kw forward, twice that backward),
//! so criterion's "elem/s" reads as direct-equivalent FLOP/s even where
//! Winograd does fewer multiplies.
//!
//! The cases are mirrored in `scripts/bench_conv_pytorch.py`, which times
//! PyTorch on the same shapes and prints the ratio table from criterion's
//! results: `cargo bench --bench conv -- conv/ && PYTHONPATH=/opt/pt/site
//! python3 scripts/bench_conv_pytorch.py`. The `conv_algorithm` group times
//! Winograd against the GEMM path for the 3×3 stride-1 layers (the choice
//! documented in `noisegrad_kernels::conv::cpu`). On a busy machine compare
//! single-thread CPU time instead: `examples/conv_cpu_time.rs`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use noisegrad_kernels::conv::cpu::{
    Algorithm, Conv2dGeometry, conv2d_backward_bias, conv2d_backward_input,
    conv2d_backward_input_with, conv2d_backward_weight, conv2d_backward_weight_with,
    conv2d_forward, conv2d_forward_with,
};
use std::hint::black_box;
use std::time::Duration;

/// name, N, C, H, W, O, k, stride, pad — keep in sync with the Python script.
const CASES: &[(&str, [usize; 8])] = &[
    ("3x3s1_32x32x128", [8, 128, 32, 32, 128, 3, 1, 1]),
    ("3x3s1_16x16x256", [8, 256, 16, 16, 256, 3, 1, 1]),
    ("3x3s1_8x8x256", [8, 256, 8, 8, 256, 3, 1, 1]),
    ("3x3s1_4x4x256", [8, 256, 4, 4, 256, 3, 1, 1]),
    ("3x3s2_32x32x128", [8, 128, 32, 32, 128, 3, 2, 1]),
    ("1x1_16x16_128to256", [8, 128, 16, 16, 256, 1, 1, 0]),
];

fn geometry(d: [usize; 8]) -> Conv2dGeometry {
    let [
        batch,
        in_channels,
        in_h,
        in_w,
        out_channels,
        k,
        stride,
        padding,
    ] = d;
    Conv2dGeometry {
        batch,
        in_channels,
        in_h,
        in_w,
        out_channels,
        kernel_h: k,
        kernel_w: k,
        stride,
        padding,
    }
}

/// Deterministic values in [−1, 1) (a cheap LCG; benchmarks need no quality).
fn values(n: usize, seed: u32) -> Vec<f32> {
    noisegrad_kernels::test_data::uniform_f32(n, seed as u64)
}

fn bench_conv(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for &(name, d) in CASES {
        let g = geometry(d);
        let x = values(g.input_len(), 1);
        let w = values(g.weight_len(), 2);
        let b = values(g.out_channels, 3);
        let dy = values(g.output_len(), 4);
        let mut y = vec![0f32; g.output_len()];
        let (mut dx, mut dw, mut db) = (
            vec![0f32; g.input_len()],
            vec![0f32; g.weight_len()],
            vec![0f32; g.out_channels],
        );
        let flops = 2 * g.output_len() * g.in_channels * g.kernel_h * g.kernel_w;
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function(BenchmarkId::new(name, "forward"), |bench| {
            bench.iter(|| conv2d_forward(&g, black_box(&x), &w, Some(&b), &mut y))
        });
        group.throughput(Throughput::Elements(2 * flops as u64));
        group.bench_function(BenchmarkId::new(name, "backward"), |bench| {
            bench.iter(|| {
                conv2d_backward_input(&g, black_box(&dy), &w, &mut dx);
                conv2d_backward_weight(&g, &x, &dy, &mut dw);
                conv2d_backward_bias(&g, &dy, &mut db);
            })
        });
    }
    group.finish();
}

/// The algorithm choice for 3×3 stride 1 (the module documentation of
/// `noisegrad_kernels::conv::cpu` quotes these): the same convolutions
/// through Winograd F(2×2, 3×3) and through the GEMM path, forward and the
/// two GEMM-sized gradients (the bias gradient is the same for both).
fn bench_algorithms(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv_algorithm");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    for &(name, d) in CASES.iter().filter(|(n, _)| n.starts_with("3x3s1")) {
        let g = geometry(d);
        let x = values(g.input_len(), 1);
        let w = values(g.weight_len(), 2);
        let dy = values(g.output_len(), 4);
        let mut y = vec![0f32; g.output_len()];
        let (mut dx, mut dw) = (vec![0f32; g.input_len()], vec![0f32; g.weight_len()]);
        let flops = 2 * g.output_len() * g.in_channels * 9;
        for algo in [Algorithm::Winograd, Algorithm::Gemm] {
            let id = |pass: &str| BenchmarkId::new(name, format!("{algo:?}/{pass}"));
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_function(id("forward"), |bench| {
                bench.iter(|| conv2d_forward_with(algo, &g, black_box(&x), &w, None, &mut y))
            });
            group.throughput(Throughput::Elements(2 * flops as u64));
            group.bench_function(id("backward"), |bench| {
                bench.iter(|| {
                    conv2d_backward_input_with(algo, &g, black_box(&dy), &w, &mut dx);
                    conv2d_backward_weight_with(algo, &g, &x, &dy, &mut dw);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_conv, bench_algorithms);
criterion_main!(benches);
