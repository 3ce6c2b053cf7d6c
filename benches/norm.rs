//! Group norm (with and without the fused SiLU) and nearest ×2 upsampling at
//! the DDPM CIFAR-10 U-Net's shapes, batch 8, f32, through the `Tensor` API
//! (output allocation included, as in PyTorch).
//!
//! - `group_norm/fwd*`: forward without a tape. `fwd_silu` is the fused op,
//!   `fwd_then_silu` the same result as two ops (group norm, then `silu`):
//!   their ratio is what the fusion buys.
//! - `group_norm/bwd*`: one backward pass (dx, dγ, dβ) from a recorded
//!   forward; the forward is set-up, not timed. `bwd_then_silu` runs SiLU's
//!   backward and then the plain group-norm backward.
//! - `upsample/fwd`, `upsample/bwd`.
//!
//! Mirrored by `scripts/bench_norm_pytorch.py`, which times PyTorch on the
//! same cases and prints the ratio table from criterion's results:
//! `cargo bench --bench norm && PYTHONPATH=/opt/pt/site python3 scripts/bench_norm_pytorch.py`.

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use noisegrad_engine::Tensor;
use noisegrad_engine::testing::randn_f32 as randn;
use std::hint::black_box;
use std::time::Duration;

/// name, [N, C, H, W] — keep in sync with the Python script.
const NORM_CASES: &[(&str, [usize; 4])] = &[
    ("32x32x128", [8, 128, 32, 32]),
    ("16x16x256", [8, 256, 16, 16]),
    ("8x8x256", [8, 256, 8, 8]),
    ("4x4x256", [8, 256, 4, 4]),
];
const GROUPS: usize = 32;
const EPS: f64 = 1e-6;

/// name, [N, C, H, W] of the upsample input.
const UPSAMPLE_CASES: &[(&str, [usize; 4])] = &[
    ("16x16x256", [8, 256, 16, 16]),
    ("8x8x256", [8, 256, 8, 8]),
    ("4x4x256", [8, 256, 4, 4]),
];

fn config() -> Criterion {
    // Short runs: the machine is shared; re-take final numbers when quiet.
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// How a benchmark variant applies group norm (+ SiLU).
#[derive(Clone, Copy)]
enum Variant {
    Plain,
    FusedSilu,
    ThenSilu,
}

impl Variant {
    fn apply(self, x: &Tensor, gamma: &Tensor, beta: &Tensor) -> Tensor {
        match self {
            Variant::Plain => x.group_norm(GROUPS, gamma, beta, EPS, false).unwrap(),
            Variant::FusedSilu => x.group_norm(GROUPS, gamma, beta, EPS, true).unwrap(),
            Variant::ThenSilu => x
                .group_norm(GROUPS, gamma, beta, EPS, false)
                .unwrap()
                .silu()
                .unwrap(),
        }
    }
}

const VARIANTS: [(&str, Variant); 3] = [
    ("", Variant::Plain),
    ("_silu", Variant::FusedSilu),
    ("_then_silu", Variant::ThenSilu),
];

fn bench_group_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("group_norm");
    for &(name, shape) in NORM_CASES {
        let x = randn(&shape, 1);
        let gamma = randn(&[shape[1]], 2).add_scalar(1.0).unwrap();
        let beta = randn(&[shape[1]], 3);
        let dy = randn(&shape, 4);
        g.throughput(Throughput::Elements(x.numel() as u64));
        for (suffix, variant) in VARIANTS {
            g.bench_with_input(
                BenchmarkId::new(format!("fwd{suffix}"), name),
                &x,
                |b, x| b.iter(|| black_box(variant.apply(x, &gamma, &beta))),
            );
        }
        for (suffix, variant) in VARIANTS {
            g.bench_function(BenchmarkId::new(format!("bwd{suffix}"), name), |b| {
                b.iter_batched(
                    || {
                        let leaves = [&x, &gamma, &beta].map(|t| t.set_requires_grad(true));
                        let y = variant.apply(&leaves[0], &leaves[1], &leaves[2]);
                        (y, leaves)
                    },
                    |(y, leaves)| {
                        y.backward_with(&dy).unwrap();
                        leaves
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

fn bench_upsample(c: &mut Criterion) {
    let mut g = c.benchmark_group("upsample");
    for &(name, shape) in UPSAMPLE_CASES {
        let x = randn(&shape, 5);
        let dy = randn(&[shape[0], shape[1], 2 * shape[2], 2 * shape[3]], 6);
        g.throughput(Throughput::Elements(dy.numel() as u64));
        g.bench_with_input(BenchmarkId::new("fwd", name), &x, |b, x| {
            b.iter(|| black_box(x.upsample_nearest2x().unwrap()))
        });
        g.bench_function(BenchmarkId::new("bwd", name), |b| {
            b.iter_batched(
                || {
                    let leaf = x.set_requires_grad(true);
                    (leaf.upsample_nearest2x().unwrap(), leaf)
                },
                |(y, leaf)| {
                    y.backward_with(&dy).unwrap();
                    leaf
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_group_norm, bench_upsample
}
criterion_main!(benches);
