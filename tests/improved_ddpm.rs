//! Improved DDPM end to end on the CPU with the `tiny` U-Net and a short
//! chain: L_hybrid with learned Σ trains, its exact bound (every term) is
//! finite, resume is exact (with the importance sampler's history for
//! L_vlb), and a checkpoint without the new metadata reads as DDPM's.

use noisegrad::diffusion::data::{ImageDataset, batch_from, parse_cifar10};
use noisegrad::diffusion::objective::{LossKind, Objective, VarianceKind};
use noisegrad::diffusion::parameterization::Prediction;
use noisegrad::diffusion::schedule::BetaSchedule;
use noisegrad::diffusion::train::{DiffusionMetadata, TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::diffusion::variance::reverse_output;
use noisegrad::diffusion::vlb::bits_per_dim_with;
use noisegrad::engine::{Philox, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

const SAMPLE: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");

fn few_images(n: usize) -> Arc<ImageDataset> {
    Arc::new(parse_cifar10(SAMPLE, "sample").unwrap().take(n))
}

fn config(steps: usize, loss: LossKind, predict: Prediction) -> TrainConfig {
    let mut cfg = TrainConfig::ddpm(UNetConfig {
        dropout: 0.0,
        ..UNetConfig::tiny()
    });
    cfg.batch_size = 8;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 5;
    cfg.ema_decay = 0.9;
    cfg.seed = 11;
    cfg.schedule = BetaSchedule::COSINE;
    cfg.diffusion_steps = steps;
    cfg.objective = Objective {
        predict,
        variance: VarianceKind::Learned,
        loss,
        min_snr: None,
    };
    cfg
}

/// Trains 3 steps, saves, and checks 3 more steps of the same trainer equal
/// 3 steps of a fresh one loaded from the checkpoint, bit for bit.
fn resume_is_exact(cfg: TrainConfig, warm_steps: usize, tag: &str) -> Trainer {
    let dir = std::env::temp_dir().join(format!("noisegrad-iddpm-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    let mut a = Trainer::new(cfg.clone(), few_images(16)).unwrap();
    for _ in 0..warm_steps {
        assert!(a.train_step().unwrap().loss.is_finite());
    }
    a.save_checkpoint(&ckpt).unwrap();
    let go = |t: &mut Trainer| -> Vec<u64> {
        (0..3)
            .map(|_| t.train_step().unwrap().loss.to_bits())
            .collect()
    };
    let uninterrupted = go(&mut a);
    let mut b = Trainer::new(cfg.clone(), few_images(16)).unwrap();
    b.load_checkpoint(&ckpt).unwrap();
    assert_eq!(go(&mut b), uninterrupted, "{tag}: resumed losses differ");
    // A run with another objective refuses the checkpoint, naming both.
    let mut other = cfg;
    other.objective.predict = Prediction::X0;
    let mut c = Trainer::new(other, few_images(16)).unwrap();
    let err = c.load_checkpoint(&ckpt).unwrap_err().to_string();
    assert!(err.contains("checkpoint was trained with"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    b
}

#[test]
fn hybrid_learned_variance_has_a_finite_exact_bound_and_resumes_exactly() {
    let cfg = config(20, LossKind::Hybrid, Prediction::V);
    let trainer = resume_is_exact(cfg, 3, "hybrid");
    assert_eq!(trainer.model.config.out_mult, 2);
    let x0 = batch_from(&few_images(2), 0, 2).unwrap();
    let (s, model) = (&trainer.schedule, &trainer.model);
    let mut net = |x: &Tensor, t: &[usize]| {
        let out = model.forward(x, t, false, &mut Philox::new(0))?;
        reverse_output(s, Prediction::V, x, t, &out)
    };
    let sigma = trainer.config.objective.sigma();
    let b = bits_per_dim_with(s, sigma, &mut net, &x0, None, true, &mut Philox::new(1)).unwrap();
    assert!(b.exact && b.per_step.len() == 20, "{b:?}");
    assert!(
        b.total.is_finite() && b.total > 0.0 && b.l_simple.is_finite(),
        "{b:?}"
    );
}

#[test]
fn vlb_importance_sampler_history_resumes_exactly() {
    // T = 4: the sampler is warm (10 losses per step) after 5 batches of 8.
    let trainer = resume_is_exact(config(4, LossKind::Vlb, Prediction::Eps), 6, "vlb");
    assert!(trainer.step() == 9);
}

#[test]
fn checkpoints_without_the_new_metadata_read_as_ddpm() {
    let m = DiffusionMetadata::read(&HashMap::new()).unwrap();
    assert_eq!(
        (m.schedule, m.diffusion_steps, m.objective),
        (BetaSchedule::DDPM, 1000, Objective::default())
    );
    let bad = HashMap::from([("objective".to_string(), "{\"loss\":\"l1\"}".to_string())]);
    assert!(DiffusionMetadata::read(&bad).is_err());
}
