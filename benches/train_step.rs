//! Whole training steps (forward + backward + optimizer), where per-op
//! benches hide launch gaps and memory traffic: a small MLP (engine core)
//! and the DDPM U-Net presets at the batch sizes of the PyTorch CPU anchors
//! (`small` at batch 32, `cifar10` at batch 8). Each also prints the peak
//! bytes of tensor storage during one step.
//!
//! PyTorch counterpart: scripts/bench_train_step_pytorch.py.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use noisegrad::diffusion::data::ImageDataset;
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::nn::{Linear, ParamStore};
use noisegrad::engine::optim::{Adam, AdamConfig};
use noisegrad::engine::{DType, Device, Philox, Tensor, memory};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn report_peak(name: &str, mut step: impl FnMut()) {
    step();
    memory::reset_peak(Device::Cpu);
    let before = memory::stats(Device::Cpu).live_bytes;
    step();
    let peak = memory::stats(Device::Cpu).peak_bytes;
    eprintln!(
        "{name}: peak tensor memory during one step {:.1} MiB above {:.1} MiB resident",
        (peak - before) as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
}

/// Linear(256→512) → SiLU → Linear(512→512) → SiLU → Linear(512→10), batch 64, MSE, Adam.
fn mlp_step(c: &mut Criterion) {
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    let root = store.root();
    let l1 = Linear::new(&root.sub("l1"), 256, 512).unwrap();
    let l2 = Linear::new(&root.sub("l2"), 512, 512).unwrap();
    let l3 = Linear::new(&root.sub("l3"), 512, 10).unwrap();
    let mut opt = Adam::new(store.params(), AdamConfig::adam(1e-3)).unwrap();
    let mut rng = Philox::new(1);
    let x = Tensor::randn(&[64, 256], DType::F32, Device::Cpu, &mut rng).unwrap();
    let y = Tensor::randn(&[64, 10], DType::F32, Device::Cpu, &mut rng).unwrap();
    let mut step = || {
        let h = l2
            .forward(&l1.forward(&x).unwrap().silu().unwrap())
            .unwrap()
            .silu()
            .unwrap();
        let loss = l3.forward(&h).unwrap().mse_loss(&y).unwrap();
        opt.zero_grad();
        loss.backward().unwrap();
        opt.step().unwrap();
        black_box(loss);
    };
    report_peak("mlp_b64", &mut step);
    let mut g = c.benchmark_group("train_step");
    g.throughput(Throughput::Elements(64));
    g.bench_function("mlp_256-512-512-10_b64", |b| b.iter(&mut step));
    g.finish();
}

fn unet_step(c: &mut Criterion, name: &str, model: UNetConfig, batch: usize, samples: usize) {
    let pixels = (0..batch * 3072).map(|i| (i * 7 % 256) as u8).collect();
    let data = Arc::new(ImageDataset {
        pixels,
        labels: vec![0; batch],
        channels: 3,
        height: 32,
        width: 32,
        source: "bench".into(),
    });
    let mut cfg = TrainConfig::ddpm(model);
    cfg.batch_size = batch;
    let mut trainer = Trainer::new(cfg, data).unwrap();
    report_peak(name, || {
        trainer.train_step().unwrap();
    });
    let mut g = c.benchmark_group("train_step");
    g.sample_size(samples)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function(name, |b| {
        b.iter(|| black_box(trainer.train_step().unwrap()))
    });
    g.finish();
}

fn unet_small(c: &mut Criterion) {
    unet_step(c, "unet_small_b32", UNetConfig::small(), 32, 10);
}

fn unet_cifar10(c: &mut Criterion) {
    unet_step(c, "unet_cifar10_b8", UNetConfig::cifar10(), 8, 10);
}

criterion_group!(benches, mlp_step, unet_small, unet_cifar10);
criterion_main!(benches);
