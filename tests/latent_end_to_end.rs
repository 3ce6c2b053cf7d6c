//! Latent diffusion end to end on the CPU with tiny models: the autoencoder
//! learns to reconstruct, resumes exactly, a DDPM trains on its latents,
//! resumes exactly, and its samples decode to images; bad inputs name both
//! shapes.

use noisegrad::diffusion::autoencoder::{Autoencoder, AutoencoderConfig};
use noisegrad::diffusion::autoencoder_train::{AutoencoderTrainConfig, AutoencoderTrainer};
use noisegrad::diffusion::data::{ImageDataset, TrainData, parse_cifar10};
use noisegrad::diffusion::latent::{LatentDecoder, LatentInfo, check_image_shape, encode_dataset};
use noisegrad::diffusion::process::DdimSpacing;
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Device, Philox, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

const SAMPLE: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");

fn few_images(n: usize) -> Arc<ImageDataset> {
    Arc::new(parse_cifar10(SAMPLE, "sample").unwrap().take(n))
}

fn ae_config() -> AutoencoderTrainConfig {
    let model = AutoencoderConfig {
        ch: 8,
        groups: 4,
        ..AutoencoderConfig::for_images(32, 3, 4).unwrap()
    };
    let mut cfg = AutoencoderTrainConfig::new(model);
    cfg.batch_size = 4;
    cfg.lr = 3e-3;
    cfg.warmup_steps = 5;
    cfg.ema_decay = 0.8;
    cfg.seed = 3;
    cfg
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("noisegrad-latent-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Trains the autoencoder on 4 images and returns its checkpoint path.
fn trained_autoencoder(dir: &std::path::Path) -> PathBuf {
    let mut t = AutoencoderTrainer::new(ae_config(), few_images(4)).unwrap();
    let rec: Vec<f64> = (0..60).map(|_| t.train_step().unwrap().rec).collect();
    let (start, end) = (mean(&rec[..5]), mean(&rec[50..]));
    eprintln!("autoencoder L1: first 5 steps {start:.4}, last 10 steps {end:.4}");
    assert!(start > 0.3, "initial L1 {start}");
    assert!(
        end < 0.5 * start,
        "L1 fell only from {start:.4} to {end:.4}"
    );
    let path = dir.join("ae.safetensors");
    t.save_checkpoint(&path).unwrap();
    path
}

#[test]
fn autoencoder_then_latent_ddpm_then_decoded_samples() {
    let dir = temp_dir("e2e");
    let ae_path = trained_autoencoder(&dir);
    let (ae, _store) = Autoencoder::load(&ae_path, true, Device::Cpu).unwrap();
    let images = few_images(8);
    let (latents, scale) = encode_dataset(&ae, &images, false, 4, Device::Cpu, |_| {}).unwrap();
    assert_eq!((latents.channels, latents.height, latents.width), (4, 8, 8));
    // Scaled to unit variance.
    let std = noisegrad::diffusion::latent::latent_std(&latents.mean, &latents.logvar, false);
    assert!((std - 1.0).abs() < 1e-4, "σ̂ after scaling {std}");
    assert!(scale.is_finite() && scale > 0.0);

    let info = LatentInfo {
        autoencoder: ae_path.clone(),
        autoencoder_config: ae.config.clone(),
        scale_factor: scale,
        sample: false,
    };
    let mut cfg = TrainConfig::ddpm(UNetConfig {
        dropout: 0.0,
        in_channels: 4,
        image_size: 8,
        ..UNetConfig::tiny()
    });
    cfg.batch_size = 8;
    cfg.lr = 2e-3;
    cfg.warmup_steps = 5;
    cfg.ema_decay = 0.9;
    cfg.latent = Some(info.clone());
    let data = TrainData::Latents(Arc::new(latents));
    let mut trainer = Trainer::with_data(cfg, data).unwrap();
    let losses: Vec<f64> = (0..40)
        .map(|_| trainer.train_step().unwrap().loss)
        .collect();
    let (start, end) = (mean(&losses[..5]), mean(&losses[30..]));
    eprintln!("latent L_simple: first 5 {start:.4}, last 10 {end:.4}");
    assert!(
        end < 0.8 * start,
        "latent loss fell only from {start:.4} to {end:.4}"
    );

    // The checkpoint records the autoencoder; sampling decodes through it.
    let ckpt = dir.join("ldm.safetensors");
    trainer.save_checkpoint(&ckpt).unwrap();
    let meta = noisegrad::engine::io::load(&ckpt, Device::Cpu)
        .unwrap()
        .metadata;
    let stored = LatentInfo::from_metadata(&ckpt, &meta).unwrap().unwrap();
    assert_eq!(stored.autoencoder_config, info.autoencoder_config);
    assert!((stored.scale_factor - scale).abs() < 1e-9 * scale);
    let decoder = LatentDecoder::open(&stored, Device::Cpu).unwrap();
    let schedule = trainer.schedule.clone();
    let z = trainer
        .with_ema(|model| {
            let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
            Ok(ddim_sample(
                &schedule,
                &mut eps,
                (&[2, 4, 8, 8], Device::Cpu),
                DdimOptions {
                    steps: 5,
                    spacing: DdimSpacing::Quadratic,
                    eta: 0.0,
                },
                &mut Philox::new(1),
                &SampleOptions {
                    clip: false,
                    ..SampleOptions::default()
                },
                |_| {},
            )?
            .images)
        })
        .unwrap();
    let img = decoder.decode(&z).unwrap();
    assert_eq!(img.shape(), &[2, 3, 32, 32]);
    assert!(
        img.to_vec_f64()
            .iter()
            .all(|v| v.is_finite() && v.abs() <= 1.0)
    );

    // A pixel-space run cannot resume a latent checkpoint, and says why.
    let mut pixel = Trainer::new(
        TrainConfig::ddpm(UNetConfig {
            in_channels: 4,
            image_size: 8,
            ..UNetConfig::tiny()
        }),
        Arc::new(ImageDataset {
            pixels: vec![0; 4 * 64],
            labels: vec![0],
            channels: 4,
            height: 8,
            width: 8,
            source: "dummy".into(),
        }),
    )
    .unwrap();
    let e = pixel.load_checkpoint(&ckpt).err().unwrap().to_string();
    assert!(
        e.contains("latents [4, 8, 8]") && e.contains("pixels"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn both_stages_resume_exactly() {
    let dir = temp_dir("resume");
    // Autoencoder: 6 steps, checkpoint, 4 more == fresh trainer from the checkpoint.
    let mut a = AutoencoderTrainer::new(ae_config(), few_images(6)).unwrap();
    for _ in 0..6 {
        a.train_step().unwrap();
    }
    let ae_path = dir.join("ae.safetensors");
    a.save_checkpoint(&ae_path).unwrap();
    let want: Vec<f64> = (0..4).map(|_| a.train_step().unwrap().loss).collect();
    let mut b = AutoencoderTrainer::new(ae_config(), few_images(6)).unwrap();
    b.load_checkpoint(&ae_path).unwrap();
    let got: Vec<f64> = (0..4).map(|_| b.train_step().unwrap().loss).collect();
    assert_eq!(want, got, "autoencoder resume");

    // Latent DDPM on sampled latents (z ~ q(z|x) each use): same check.
    let (ae, _s) = Autoencoder::load(&ae_path, true, Device::Cpu).unwrap();
    let (latents, scale) =
        encode_dataset(&ae, &few_images(6), true, 6, Device::Cpu, |_| {}).unwrap();
    let latents = Arc::new(latents);
    let mut cfg = TrainConfig::ddpm(UNetConfig {
        dropout: 0.0,
        in_channels: 4,
        image_size: 8,
        ..UNetConfig::tiny()
    });
    cfg.batch_size = 4;
    cfg.latent = Some(LatentInfo {
        autoencoder: ae_path.clone(),
        autoencoder_config: ae.config.clone(),
        scale_factor: scale,
        sample: true,
    });
    let mut a = Trainer::with_data(cfg.clone(), TrainData::Latents(latents.clone())).unwrap();
    for _ in 0..3 {
        a.train_step().unwrap();
    }
    let ckpt = dir.join("ldm.safetensors");
    a.save_checkpoint(&ckpt).unwrap();
    let want: Vec<f64> = (0..3).map(|_| a.train_step().unwrap().loss).collect();
    let mut b = Trainer::with_data(cfg, TrainData::Latents(latents)).unwrap();
    b.load_checkpoint(&ckpt).unwrap();
    let got: Vec<f64> = (0..3).map(|_| b.train_step().unwrap().loss).collect();
    assert_eq!(want, got, "latent DDPM resume");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_inputs_name_both_shapes() {
    let dir = temp_dir("bad");
    let t = AutoencoderTrainer::new(ae_config(), few_images(2)).unwrap();
    let ae_path = dir.join("ae.safetensors");
    t.save_checkpoint(&ae_path).unwrap();
    let cfg = t.config.model.clone();

    // A dataset of another image size than the autoencoder's.
    let fmnist = ImageDataset {
        pixels: vec![0; 28 * 28],
        labels: vec![0],
        channels: 1,
        height: 28,
        width: 28,
        source: "28×28 toy".into(),
    };
    let e = check_image_shape(&cfg, &fmnist).err().unwrap().to_string();
    assert!(e.contains("1×28×28") && e.contains("3×32×32"), "{e}");
    assert!(AutoencoderTrainer::new(ae_config(), Arc::new(fmnist)).is_err());

    // The autoencoder file is missing, or maps other shapes.
    let mut info = LatentInfo {
        autoencoder: dir.join("gone.safetensors"),
        autoencoder_config: cfg.clone(),
        scale_factor: 1.0,
        sample: false,
    };
    let e = LatentDecoder::open(&info, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("gone.safetensors") && e.contains("missing") && e.contains("[3, 32, 32]"),
        "{e}"
    );
    info.autoencoder = ae_path.clone();
    info.autoencoder_config = AutoencoderConfig {
        ch: 8,
        groups: 4,
        ..AutoencoderConfig::for_images(28, 1, 2).unwrap()
    };
    let e = LatentDecoder::open(&info, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[3, 32, 32]") && e.contains("[1, 28, 28]"),
        "{e}"
    );

    // A diffusion checkpoint where an autoencoder is expected.
    let ddpm = Trainer::new(TrainConfig::ddpm(UNetConfig::tiny()), few_images(2)).unwrap();
    let ddpm_path = dir.join("ddpm.safetensors");
    ddpm.save_checkpoint(&ddpm_path).unwrap();
    let e = Autoencoder::load(&ddpm_path, true, Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("diffusion checkpoint"), "{e}");

    // And the reverse, through the CLI: an autoencoder where `sample` wants a diffusion model.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["sample", "--n", "1", "--checkpoint"])
        .arg(&ae_path)
        .arg("--out")
        .arg(dir.join("s.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("autoencoder checkpoint"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .args(["train", "--steps", "1", "--latent"])
        .arg(dir.join("gone.safetensors"))
        .arg("--out")
        .arg(dir.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no such autoencoder"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
