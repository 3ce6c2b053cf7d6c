//! CUDA benchmarks at the DDPM U-Net's shapes (batch 128), each kernel
//! forward + backward, and whole training steps of the `cifar10` preset.
//! Every iteration ends with a device synchronize, so the time is the GPU's.
//!
//! PyTorch counterparts: scripts/bench_cuda_pytorch.py (same shapes); training
//! step: scripts/bench_train_step_pytorch_cuda.py. All are run by
//! `scripts/gpu_suite.sh run`. Without a GPU this bench prints that it
//! skipped and measures nothing.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use noisegrad::diffusion::data::parse_cifar10;
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{DType, Device, Philox, Result, Tensor, no_grad};
use std::sync::Arc;
use std::time::Duration;

const GPU: Device = Device::Cuda(0);
const BATCH: usize = 128;
const SAMPLE: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");

fn sync() {
    Device::Cuda(0).synchronize().unwrap();
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, DType::F32, GPU, &mut Philox::new(seed)).unwrap()
}

fn leaf(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).set_requires_grad(true)
}

/// Times `f` (forward, or forward + backward of Σ y·w) with a sync per run.
fn bench_op(
    c: &mut Criterion,
    name: &str,
    inputs: &[Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
) {
    let y = f(inputs).unwrap();
    let w = randn(y.shape(), 99);
    drop(y);
    // Sample size and times come from `criterion_group!` below, so that
    // command-line flags (`--measurement-time 1`, as gpu_suite.sh passes)
    // can override them; a group's own settings would win over the flags.
    let mut g = c.benchmark_group("cuda");
    g.bench_function(format!("{name}/forward"), |b| {
        b.iter(|| {
            no_grad(|| f(inputs)).unwrap();
            sync();
        })
    });
    g.bench_function(format!("{name}/forward+backward"), |b| {
        b.iter(|| {
            f(inputs)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for x in inputs {
                x.zero_grad();
            }
            sync();
        })
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    if !Device::cuda_available() {
        eprintln!("cuda benches: SKIPPED (no CUDA device on this machine)");
        return;
    }
    for tf32 in [false, true] {
        Device::Cuda(0).set_tf32(tf32).unwrap();
        let mode = if tf32 { "tf32" } else { "fp32" };
        let conv = |ch: usize, hw: usize| {
            [
                leaf(&[BATCH, ch, hw, hw], 1),
                leaf(&[ch, ch, 3, 3], 2),
                leaf(&[ch], 3),
            ]
        };
        bench_op(
            c,
            &format!("conv3x3_128ch_32x32/{mode}"),
            &conv(128, 32),
            |x| x[0].conv2d(&x[1], Some(&x[2]), 1, 1),
        );
        bench_op(
            c,
            &format!("conv3x3_256ch_16x16/{mode}"),
            &conv(256, 16),
            |x| x[0].conv2d(&x[1], Some(&x[2]), 1, 1),
        );
        let qkv = [
            leaf(&[BATCH, 256, 256], 4),
            leaf(&[BATCH, 256, 256], 5),
            leaf(&[BATCH, 256, 256], 6),
        ];
        bench_op(c, &format!("attention_256tok_256ch/{mode}"), &qkv, |x| {
            x[0].attention(&x[1], &x[2], None)
        });
        let mm = [leaf(&[4096, 4096], 7), leaf(&[4096, 4096], 8)];
        bench_op(c, &format!("matmul_4096/{mode}"), &mm, |x| {
            x[0].matmul(&x[1])
        });
    }
    Device::Cuda(0).set_tf32(false).unwrap();
    let gn = [
        leaf(&[BATCH, 128, 32, 32], 9),
        leaf(&[128], 10),
        leaf(&[128], 11),
    ];
    bench_op(c, "group_norm_silu_128ch_32x32", &gn, |x| {
        x[0].group_norm(32, &x[1], &x[2], 1e-5, true)
    });
    bench_op(
        c,
        "upsample_256ch_16x16",
        &[leaf(&[BATCH, 256, 16, 16], 12)],
        |x| x[0].upsample_nearest2x(),
    );
}

/// Whole DDPM training steps of the 35.7 M-parameter model at batch 128.
fn train_step(c: &mut Criterion) {
    if !Device::cuda_available() {
        return;
    }
    let data = Arc::new(parse_cifar10(SAMPLE, "sample").unwrap());
    let mut g = c.benchmark_group("cuda_train_step");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(BATCH as u64));
    for tf32 in [false, true] {
        let mut cfg = TrainConfig::ddpm(UNetConfig::cifar10());
        cfg.batch_size = BATCH;
        cfg.device = GPU;
        cfg.tf32 = tf32;
        let mut trainer = Trainer::new(cfg, data.clone()).unwrap();
        trainer.train_step().unwrap();
        let name = format!("cifar10_b128/{}", if tf32 { "tf32" } else { "fp32" });
        g.bench_function(name, |b| b.iter(|| trainer.train_step().unwrap()));
        // Forward of a batch of 256 in evaluation mode (the anchor's 36.6 ms).
        let x = randn(&[256, 3, 32, 32], 13);
        let t = vec![500; 256];
        let name = format!(
            "cifar10_forward_b256/{}",
            if tf32 { "tf32" } else { "fp32" }
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                no_grad(|| trainer.model.forward(&x, &t, false, &mut Philox::new(0))).unwrap();
                sync();
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = kernels, train_step
}
criterion_main!(benches);
