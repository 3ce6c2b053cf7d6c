//! DDPM end to end on the CPU with the `tiny` U-Net: training lowers the
//! loss, resume is exact, sampling is deterministic, bits/dim is finite.

use noisegrad::diffusion::data::{ImageDataset, batch_from, parse_cifar10};
use noisegrad::diffusion::process::{DdimSpacing, ReverseVariance};
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::diffusion::vlb::bits_per_dim;
use noisegrad::engine::{Device, Philox, Tensor};
use std::sync::Arc;

const SAMPLE: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");

fn few_images(n: usize) -> Arc<ImageDataset> {
    Arc::new(parse_cifar10(SAMPLE, "sample").unwrap().take(n))
}

fn quick_config() -> TrainConfig {
    let mut cfg = TrainConfig::ddpm(UNetConfig {
        dropout: 0.0,
        ..UNetConfig::tiny()
    });
    cfg.batch_size = 8;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 10;
    cfg.ema_decay = 0.9;
    cfg.seed = 7;
    cfg
}

#[test]
fn training_lowers_the_loss_then_samples_and_evaluates() {
    let mut trainer = Trainer::new(quick_config(), few_images(8)).unwrap();
    let losses: Vec<f64> = (0..160)
        .map(|_| trainer.train_step().unwrap().loss)
        .collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (start, end) = (mean(&losses[..10]), mean(&losses[140..]));
    eprintln!("L_simple: first 10 steps {start:.4}, last 20 steps {end:.4}");
    // L_simple starts near E‖ε‖²/dim = 1 for an untrained model.
    assert!(start > 0.7, "initial loss {start}");
    assert!(end < 0.2, "loss fell only from {start:.3} to {end:.3}");

    let schedule = trainer.schedule.clone();
    let images = trainer
        .with_ema(|model| {
            let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
            let run = |eps: &mut dyn FnMut(&Tensor, &[usize]) -> _| {
                ddim_sample(
                    &schedule,
                    eps,
                    (&[2, 3, 32, 32], Device::Cpu),
                    DdimOptions {
                        steps: 10,
                        spacing: DdimSpacing::Quadratic,
                        eta: 0.0,
                    },
                    &mut Philox::new(3),
                    &SampleOptions::default(),
                    |_| {},
                )
                .map(|s| s.images.to_vec_f64())
            };
            let (a, b) = (run(&mut eps)?, run(&mut eps)?);
            assert_eq!(a, b, "sampling must be deterministic for a seed");
            Ok(a)
        })
        .unwrap();
    assert!(
        images
            .iter()
            .all(|v| v.is_finite() && (-1.0..=1.0).contains(v))
    );

    let x0 = batch_from(&few_images(4), 0, 4).unwrap();
    let model = &trainer.model;
    let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
    let steps = [0, 100, 400, 999];
    let bpd = bits_per_dim(
        &schedule,
        ReverseVariance::FixedLarge,
        &mut eps,
        &x0,
        Some(&steps),
        true,
        &mut Philox::new(1),
    )
    .unwrap();
    assert!(!bpd.exact && bpd.per_step.len() == 4);
    assert!(
        bpd.total.is_finite() && bpd.total > 0.0 && bpd.prior < 1e-3,
        "{bpd:?}"
    );
}

#[test]
fn resumed_run_repeats_the_uninterrupted_losses_exactly() {
    let dir = std::env::temp_dir().join(format!("noisegrad-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let mut cfg = quick_config();
    cfg.model.dropout = 0.1; // dropout masks must resume too
    let mut a = Trainer::new(cfg.clone(), few_images(12)).unwrap();
    for _ in 0..3 {
        a.train_step().unwrap();
    }
    a.save_checkpoint(&ckpt).unwrap();
    let uninterrupted: Vec<u64> = (0..3)
        .map(|_| a.train_step().unwrap().loss.to_bits())
        .collect();

    // Files written before the prefixes were fixed (`ema.ema.*`,
    // `opt.opt.*`) resume the same.
    let old = dir.join("doubled.safetensors");
    let loaded = noisegrad::engine::io::load(&ckpt, Device::Cpu).unwrap();
    let doubled: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .map(|(n, t)| match n.split_once('.') {
            Some((p @ ("ema" | "opt"), _)) => (format!("{p}.{n}"), t.clone()),
            _ => (n.clone(), t.clone()),
        })
        .collect();
    assert!(doubled.iter().any(|(n, _)| n.starts_with("opt.opt.m.")));
    noisegrad::engine::io::save(&old, &doubled, &loaded.metadata).unwrap();
    let mut c = Trainer::new(cfg.clone(), few_images(12)).unwrap();
    c.resume_checkpoint(&old).unwrap();
    assert_eq!(c.train_step().unwrap().loss.to_bits(), uninterrupted[0]);

    let mut b = Trainer::new(cfg, few_images(12)).unwrap();
    b.resume_checkpoint(&ckpt).unwrap();
    assert_eq!(b.step(), 3);
    let resumed: Vec<u64> = (0..3)
        .map(|_| b.train_step().unwrap().loss.to_bits())
        .collect();
    assert_eq!(uninterrupted, resumed);
    // Not only the losses: every weight, average, moment and stream
    // position, byte for byte.
    let (ca, cb) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    a.save_checkpoint(&ca).unwrap();
    b.save_checkpoint(&cb).unwrap();
    assert!(
        std::fs::read(&ca).unwrap() == std::fs::read(&cb).unwrap(),
        "resumed checkpoint differs from the uninterrupted one"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What went wrong is in the error's variant, not only in its text: a bad
/// setting is `Config`, an unusable dataset `Data`, a model input of the
/// wrong shape `Input`.
#[test]
fn refusals_say_what_failed_by_variant() {
    use noisegrad::engine::{DType, Error};
    let mut cfg = quick_config();
    cfg.p_uncond = 1.5;
    let e = Trainer::new(cfg, few_images(8)).err().unwrap();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let mut gray = quick_config();
    gray.model.in_channels = 1;
    let e = Trainer::new(gray, few_images(8)).err().unwrap();
    assert!(matches!(e, Error::Data(_)), "{e:?}");
    let t = Trainer::new(quick_config(), few_images(8)).unwrap();
    let wrong = Tensor::zeros(&[2, 3, 8, 8], DType::F32, Device::Cpu).unwrap();
    let e = t
        .model
        .forward(&wrong, &[0, 0], false, &mut Philox::new(0))
        .err()
        .unwrap();
    assert!(matches!(e, Error::Input(_)), "{e:?}");
}
