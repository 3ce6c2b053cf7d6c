//! Whole DDPM training steps run from outside the rayon pool (the caller
//! hands each kernel to the pool and sleeps) and from inside it (what the
//! CLI does, `cli::on_compute_pool`), alternating, two rounds, same process:
//!
//!     cargo run --release --example train_step_in_pool
//!
//! Prints seconds per step and the ratio outside / inside for the `small`
//! (batch 32), `cifar10` (batch 8) and `tiny` (batch 16) presets on
//! synthetic 32×32 images. Criterion's `train_step` bench runs outside the
//! pool (criterion cannot move into it).

use noisegrad::diffusion::data::ImageDataset;
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use std::sync::Arc;
use std::time::Instant;

/// Seconds per step over `steps` steps after one warm-up step.
fn seconds_per_step(model: UNetConfig, batch: usize, steps: usize) -> f64 {
    let pixels = (0..batch * 3072).map(|i| (i * 7 % 256) as u8).collect();
    let data = Arc::new(ImageDataset {
        pixels,
        labels: vec![0; batch],
        channels: 3,
        height: 32,
        width: 32,
        source: "synthetic".into(),
    });
    let mut cfg = TrainConfig::ddpm(model);
    cfg.batch_size = batch;
    let mut trainer = Trainer::new(cfg, data).expect("a valid preset");
    trainer.train_step().expect("a training step");
    let start = Instant::now();
    for _ in 0..steps {
        trainer.train_step().expect("a training step");
    }
    start.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .build()
        .expect("a thread pool");
    let cases = [
        ("small b32", UNetConfig::small(), 32, 6),
        ("cifar10 b8", UNetConfig::cifar10(), 8, 6),
        ("tiny b16", UNetConfig::tiny(), 16, 40),
    ];
    for round in 1..=2 {
        for (name, model, batch, steps) in &cases {
            let outside = seconds_per_step(model.clone(), *batch, *steps);
            let inside = pool.install(|| seconds_per_step(model.clone(), *batch, *steps));
            println!(
                "round {round} {name:<10}: outside the pool {outside:.4} s/step, inside {inside:.4} s/step, {:.3}×",
                outside / inside
            );
        }
    }
}
