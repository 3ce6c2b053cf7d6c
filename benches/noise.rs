//! The fused noise-schedule ops at CIFAR-10 batch shapes (f32): q_sample,
//! L_simple (value only; value + gradient + backward as in training) and the
//! DDPM (clipped x̂_0) and DDIM reverse steps.
//!
//! Mirrored by `scripts/bench_norm_pytorch.py` (the same cases written as
//! eager PyTorch expressions): `cargo bench --bench noise && PYTHONPATH=/opt/pt/site python3 scripts/bench_norm_pytorch.py`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use noisegrad_engine::testing::randn_f32 as randn;
use noisegrad_engine::{QSampleCoef, StepCoef};
use std::hint::black_box;
use std::time::Duration;

/// name, [N, C, H, W] — keep in sync with the Python script.
const CASES: &[(&str, [usize; 4])] = &[
    ("8x3x32x32", [8, 3, 32, 32]),
    ("128x3x32x32", [128, 3, 32, 32]),
];

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// Per-sample ᾱ_t spread over a linear-β schedule's range.
fn alpha_bars(n: usize) -> Vec<f64> {
    (0..n).map(|i| 0.999 - 0.99 * i as f64 / n as f64).collect()
}

fn bench_noise(c: &mut Criterion) {
    let mut g = c.benchmark_group("noise");
    for &(name, shape) in CASES {
        let n = shape[0];
        let (x, eps, eps_pred, z) = (
            randn(&shape, 1),
            randn(&shape, 2),
            randn(&shape, 3),
            randn(&shape, 4),
        );
        let ab = alpha_bars(n);
        let q: Vec<QSampleCoef> = ab.iter().map(|&a| QSampleCoef::from_alpha_bar(a)).collect();
        let ddpm: Vec<StepCoef> = ab
            .iter()
            .map(|&a| StepCoef::ddpm_clipped(a, 0.1, 0.9, 0.05))
            .collect();
        let ddim: Vec<StepCoef> = ab
            .iter()
            .map(|&a| StepCoef::ddim(a, (a + 0.05).min(1.0), 0.5, true))
            .collect();
        g.throughput(Throughput::Elements(x.numel() as u64));
        g.bench_function(BenchmarkId::new("q_sample", name), |b| {
            b.iter(|| black_box(x.q_sample(&eps, &q).unwrap()))
        });
        g.bench_function(BenchmarkId::new("l_simple_fwd", name), |b| {
            b.iter(|| black_box(eps_pred.l_simple_loss(&eps).unwrap()))
        });
        g.bench_function(BenchmarkId::new("l_simple_fwd_bwd", name), |b| {
            b.iter(|| {
                let p = eps_pred.set_requires_grad(true);
                p.l_simple_loss(&eps).unwrap().backward().unwrap();
                black_box(p.grad())
            })
        });
        g.bench_function(BenchmarkId::new("ddpm_clipped_step", name), |b| {
            b.iter(|| black_box(x.denoise_step(&eps_pred, Some(&z), &ddpm).unwrap()))
        });
        g.bench_function(BenchmarkId::new("ddim_step", name), |b| {
            b.iter(|| black_box(x.denoise_step(&eps_pred, Some(&z), &ddim).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_noise
}
criterion_main!(benches);
