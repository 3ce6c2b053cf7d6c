//! The whole model on the GPU against the CPU: U-Net forward and backward
//! (output and every parameter gradient), a short training run's loss curve,
//! and DDIM sampling. Without a GPU they run on the CUDA emulator (the
//! training run with fewer steps), or skip where it cannot run.

use noisegrad::diffusion::data::{ImageDataset, parse_cifar10};
use noisegrad::diffusion::process::DdimSpacing;
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample};
use noisegrad::diffusion::schedule::{BetaSchedule, Schedule};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::{UNet, UNetConfig};
use noisegrad::engine::nn::ParamStore;
use noisegrad::engine::testing::{gpu_or_skip, is_emulated, scaled_error};
use noisegrad::engine::{DType, Device, Philox, Tensor};
use std::sync::Arc;

const SAMPLE: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");

fn few_images(n: usize) -> Arc<ImageDataset> {
    Arc::new(parse_cifar10(SAMPLE, "sample").unwrap().take(n))
}

/// The tiny U-Net on `device`, with the weights of the CPU one of `seed`.
fn tiny_unet(device: Device, seed: u64) -> (ParamStore, UNet) {
    let cfg = UNetConfig {
        dropout: 0.0,
        ..UNetConfig::tiny()
    };
    let cpu_store = ParamStore::new(DType::F32, Device::Cpu, seed);
    let cpu_model = UNet::new(cfg.clone(), &cpu_store).unwrap();
    if device == Device::Cpu {
        return (cpu_store, cpu_model);
    }
    let store = ParamStore::new(DType::F32, device, seed);
    let model = UNet::new(cfg, &store).unwrap();
    store.load_state_dict(&cpu_store.state_dict()).unwrap();
    (store, model)
}

#[test]
fn unet_forward_and_backward_match_cpu() {
    let Some(gpu) = gpu_or_skip("unet_forward_and_backward_match_cpu") else {
        return;
    };
    let x = Tensor::randn(
        &[3, 3, 32, 32],
        DType::F32,
        Device::Cpu,
        &mut Philox::new(1),
    )
    .unwrap();
    let t = [5, 500, 999];
    let run = |device: Device| {
        let (store, model) = tiny_unet(device, 11);
        let y = model
            .forward(&x.to_device(device).unwrap(), &t, true, &mut Philox::new(2))
            .unwrap();
        let w = Tensor::randn(y.shape(), DType::F32, Device::Cpu, &mut Philox::new(3)).unwrap();
        y.mul(&w.to_device(device).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads: Vec<(String, Vec<f64>)> = store
            .params()
            .into_iter()
            .map(|(n, p)| (n, p.grad().unwrap().to_vec_f64()))
            .collect();
        (y.to_vec_f64(), grads)
    };
    let (y_cpu, g_cpu) = run(Device::Cpu);
    let (y_gpu, g_gpu) = run(gpu);
    let err = scaled_error(&y_gpu, &y_cpu);
    assert!(err <= 1e-4, "U-Net output differs: {err:.3e}");
    for ((name, a), (_, b)) in g_gpu.iter().zip(&g_cpu) {
        let err = scaled_error(a, b);
        assert!(err <= 1e-3, "gradient of {name} differs: {err:.3e}");
    }
}

fn train_losses(device: Device, steps: usize) -> Vec<f64> {
    let mut cfg = TrainConfig::ddpm(UNetConfig {
        dropout: 0.1,
        ..UNetConfig::tiny()
    });
    cfg.batch_size = 8;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 10;
    cfg.ema_decay = 0.9;
    cfg.seed = 7;
    cfg.device = device;
    let mut trainer = Trainer::new(cfg, few_images(16)).unwrap();
    (0..steps)
        .map(|_| trainer.train_step().unwrap().loss)
        .collect()
}

#[test]
fn short_training_run_has_the_cpu_loss_curve() {
    let Some(gpu) = gpu_or_skip("short_training_run_has_the_cpu_loss_curve") else {
        return;
    };
    // Same seed: same initial weights, timesteps, noise and dropout masks
    // (Philox gives both devices the same numbers), so the curves agree up
    // to f32 rounding, which grows slowly with the steps. On the CUDA
    // emulator a step takes seconds: 6 steps still run every part of one
    // (noise, forward, backward, clipping, Adam, EMA) through the CUDA
    // kernels; a GPU runs all 30.
    let steps = if is_emulated() { 6 } else { 30 };
    let (cpu, gpu) = (train_losses(Device::Cpu, steps), train_losses(gpu, steps));
    for (step, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        assert!(
            (a - b).abs() <= 2e-3 * a.abs().max(1.0),
            "step {step}: cpu {a:.5} vs cuda {b:.5}"
        );
    }
    eprintln!("loss cpu {cpu:.4?}\nloss gpu {gpu:.4?}");
}

#[test]
fn ddim_sampling_on_the_gpu_matches_cpu() {
    let Some(gpu) = gpu_or_skip("ddim_sampling_on_the_gpu_matches_cpu") else {
        return;
    };
    let schedule = Schedule::new(BetaSchedule::DDPM, 1000);
    let sample = |device: Device| {
        let (_, model) = tiny_unet(device, 5);
        let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
        ddim_sample(
            &schedule,
            &mut eps,
            (&[2, 3, 32, 32], device),
            DdimOptions {
                steps: 10,
                spacing: DdimSpacing::Quadratic,
                eta: 0.0,
            },
            &mut Philox::new(9),
            &SampleOptions::default(),
            |_| {},
        )
        .unwrap()
        .images
        .to_vec_f64()
    };
    let err = scaled_error(&sample(gpu), &sample(Device::Cpu));
    assert!(err <= 1e-3, "DDIM samples differ: {err:.3e}");
}

#[test]
fn bits_per_dim_on_the_gpu_matches_cpu() {
    let Some(gpu) = gpu_or_skip("bits_per_dim_on_the_gpu_matches_cpu") else {
        return;
    };
    use noisegrad::diffusion::data::batch_from;
    use noisegrad::diffusion::process::ReverseVariance;
    use noisegrad::diffusion::vlb::bits_per_dim;
    let schedule = Schedule::new(BetaSchedule::DDPM, 1000);
    let data = few_images(2);
    let bpd = |device: Device| {
        let (_, model) = tiny_unet(device, 5);
        let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
        let x0 = batch_from(&data, 0, 2).unwrap().to_device(device).unwrap();
        let steps = [0, 10, 100, 500, 999];
        bits_per_dim(
            &schedule,
            ReverseVariance::FixedLarge,
            &mut eps,
            &x0,
            Some(&steps),
            true,
            &mut Philox::new(4),
        )
        .unwrap()
        .total
    };
    let (cpu, gpu) = (bpd(Device::Cpu), bpd(gpu));
    assert!(
        (cpu - gpu).abs() <= 1e-3 * cpu.abs(),
        "bits/dim cpu {cpu} vs cuda {gpu}"
    );
}
