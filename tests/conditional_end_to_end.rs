//! Class-conditional diffusion end to end on a 2-class toy set (8×8, one
//! channel: class 0 is bright on top, class 1 bright at the bottom). A
//! `tiny` conditional U-Net trained briefly and sampled with CFG must draw
//! the asked-for class far above chance (50 %), and a clean classifier
//! trained with cross-entropy must tell the classes apart.

use noisegrad::diffusion::classifier::{ClassifierTrainConfig, ClassifierTrainer};
use noisegrad::diffusion::data::ImageDataset;
use noisegrad::diffusion::guidance::cfg_eps;
use noisegrad::diffusion::process::DdimSpacing;
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample};
use noisegrad::diffusion::schedule::BetaSchedule;
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Device, Philox, Tensor};
use std::sync::Arc;

const SIDE: usize = 8;

/// 64 images, alternating classes, with a little pixel noise.
fn toy_set() -> Arc<ImageDataset> {
    let mut rng = 12345u32;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..64 {
        let y = (i % 2) as u8;
        for r in 0..SIDE {
            for _ in 0..SIDE {
                rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let jitter = (rng >> 27) as u8; // 0..31
                let bright = (r < SIDE / 2) == (y == 0);
                pixels.push(if bright { 220 + jitter } else { 10 + jitter });
            }
        }
        labels.push(y);
    }
    Arc::new(ImageDataset {
        pixels,
        labels,
        channels: 1,
        height: SIDE,
        width: SIDE,
        source: "toy".into(),
    })
}

fn model_config(classes: Option<usize>) -> UNetConfig {
    UNetConfig {
        image_size: SIDE,
        in_channels: 1,
        dropout: 0.0,
        attn_resolutions: vec![],
        num_classes: classes,
        ..UNetConfig::tiny()
    }
}

/// The class a toy image shows: 0 when its top half is brighter.
fn shown_class(img: &[f64]) -> usize {
    let half = SIDE * SIDE / 2;
    let top: f64 = img[..half].iter().sum();
    let bottom: f64 = img[half..].iter().sum();
    usize::from(bottom > top)
}

#[test]
fn conditional_model_draws_the_asked_for_class() {
    let mut cfg = TrainConfig::ddpm(model_config(Some(2)));
    cfg.batch_size = 16;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 20;
    cfg.ema_decay = 0.9;
    cfg.random_flip = false;
    cfg.seed = 3;
    let mut trainer = Trainer::new(cfg, toy_set()).unwrap();
    for _ in 0..250 {
        trainer.train_step().unwrap();
    }
    let labels: Vec<usize> = (0..32).map(|i| i % 2).collect();
    let schedule = trainer.schedule.clone();
    let images = trainer
        .with_ema(|model| {
            let net = |x: &Tensor, t: &[usize], y: &[usize]| {
                model.forward_cond(x, t, Some(y), false, &mut Philox::new(0))
            };
            let mut eps = cfg_eps(net, labels.clone(), 2, 1.0);
            Ok(ddim_sample(
                &schedule,
                &mut eps,
                (&[32, 1, SIDE, SIDE], Device::Cpu),
                DdimOptions {
                    steps: 20,
                    spacing: DdimSpacing::Quadratic,
                    eta: 0.0,
                },
                &mut Philox::new(9),
                &SampleOptions::default(),
                |_| {},
            )?
            .images)
        })
        .unwrap();
    let v = images.to_vec_f64();
    let hits = v
        .chunks(SIDE * SIDE)
        .zip(&labels)
        .filter(|(img, y)| shown_class(img) == **y)
        .count();
    let consistency = hits as f64 / labels.len() as f64;
    assert!(
        consistency >= 0.9,
        "class consistency {consistency} (chance 0.5)"
    );
}

#[test]
fn clean_classifier_learns_the_toy_classes() {
    let cfg = ClassifierTrainConfig {
        model: model_config(Some(2)),
        diffusion_steps: 1000,
        schedule: BetaSchedule::DDPM,
        clean: true,
        batch_size: 16,
        lr: 2e-3,
        random_flip: false,
        seed: 1,
        device: Device::Cpu,
        class_names: vec!["top".into(), "bottom".into()],
    };
    let data = toy_set();
    let mut trainer = ClassifierTrainer::new(cfg, data.clone()).unwrap();
    let first = trainer.train_step().unwrap();
    let mut last = first;
    for _ in 0..60 {
        last = trainer.train_step().unwrap();
    }
    assert!(last < 0.5 * first, "cross-entropy {first} → {last}");
    let acc = trainer.accuracy_by_t(&data, 1).unwrap();
    assert!(acc[0].1 >= 0.95, "accuracy {acc:?}");
}
