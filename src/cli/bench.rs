//! `noisegrad bench-train`: timed training steps (img/s, ms/step, peak memory).

use super::{DeviceArgs, load_train_data, open_device};
use clap::Args;
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::Result;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model preset: tiny, small or cifar10.
    #[arg(long, default_value = "small")]
    pub preset: String,
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, value_parser = super::positive::<u64>, default_value_t = 10)]
    pub steps: u64,
    /// Untimed steps first (NVRTC compiles, allocator fills its cache).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let device = open_device(a.dev)?;
    let data = Arc::new(load_train_data(&None)?);
    let mut cfg = TrainConfig::ddpm(UNetConfig::preset(&a.preset)?);
    cfg.batch_size = a.batch_size;
    cfg.device = device;
    cfg.tf32 = a.dev.tf32;
    let mut trainer = Trainer::new(cfg, data)?;
    println!(
        "{} U-Net ({} parameters), batch {}, on {device}",
        a.preset,
        trainer.store.num_elements(),
        a.batch_size
    );
    for _ in 0..a.warmup {
        trainer.train_step()?;
    }
    noisegrad::engine::memory::reset_peak(device);
    device.reset_pool_peak()?;
    let started = Instant::now();
    let mut last = 0.0;
    for _ in 0..a.steps {
        // Each step reads its loss back, so the clock stops only when the
        // device has finished the work.
        last = trainer.train_step()?.loss;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_step = secs / a.steps.max(1) as f64;
    let peak = noisegrad::engine::memory::stats(device).peak_bytes;
    println!(
        "{:.1} img/s, {:.1} ms/step over {} steps (last loss {last:.4}); peak tensor memory {:.2} GiB",
        a.batch_size as f64 / per_step,
        per_step * 1e3,
        a.steps,
        peak as f64 / (1u64 << 30) as f64
    );
    if let Some(pool) = device.pool_stats()? {
        println!(
            "CUDA pool: peak in use {:.2} GiB, reserved {:.2} GiB, {} driver allocations",
            pool.peak_in_use as f64 / (1u64 << 30) as f64,
            pool.reserved as f64 / (1u64 << 30) as f64,
            pool.driver_allocs
        );
    }
    Ok(())
}
