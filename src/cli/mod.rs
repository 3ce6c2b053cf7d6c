//! What every command shares: the device flags, the embedded data, loading
//! a checkpoint back into a model, I/O errors that name the file.

use clap::Args;
use noisegrad::diffusion::data::load_dataset;
use noisegrad::diffusion::data::{ImageDataset, parse_cifar10};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Device, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod bench;
pub mod eval;
pub mod latent;
pub mod sample;
pub mod train;
pub mod train_autoencoder;

/// The embedded default dataset (real CIFAR-10 records; see assets/cifar10-sample/README.md).
pub const EMBEDDED_TRAIN: &[u8] =
    include_bytes!("../../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");
pub const EMBEDDED_TEST: &[u8] =
    include_bytes!("../../assets/cifar10-sample/cifar-10-batches-bin/test_batch.bin");

/// Where to run, shared by every command.
#[derive(Args, Clone, Copy)]
pub struct DeviceArgs {
    /// cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// On CUDA, allow TF32 tensor-core GEMMs (PyTorch's allow_tf32).
    #[arg(long)]
    pub tf32: bool,
}

pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse()
}

/// Checks the device can be used and applies the TF32 choice.
pub fn open_device(d: DeviceArgs) -> Result<Device> {
    if let Device::Cuda(i) = d.device {
        let dev = noisegrad::engine::cuda_backend::cuda_device(i)?;
        dev.set_tf32(d.tf32);
        println!(
            "device cuda:{i}: {} ({}), TF32 {}",
            dev.name(),
            dev.arch(),
            if d.tf32 { "on" } else { "off" }
        );
    }
    Ok(d.device)
}

pub fn load_train_data(path: &Option<PathBuf>) -> Result<ImageDataset> {
    match path {
        Some(p) => load_dataset(p, true),
        None => parse_cifar10(
            EMBEDDED_TRAIN,
            "embedded CIFAR-10 sample (1,000 train images)",
        ),
    }
}

/// The test split of `path`, or the embedded test sample.
pub fn load_test_data(path: &Option<PathBuf>) -> Result<ImageDataset> {
    match path {
        Some(p) => load_dataset(p, false),
        None => parse_cifar10(EMBEDDED_TEST, "embedded CIFAR-10 test sample (256 images)"),
    }
}

/// Rebuilds the trainer (model + schedule) of a checkpoint, optionally with
/// the EMA weights loaded into the model.
pub fn trainer_from_checkpoint(
    path: &Path,
    use_ema: bool,
    device: Device,
) -> Result<(Trainer, ImageDataset)> {
    let loaded = noisegrad::engine::io::load(path, Device::Cpu)?;
    latent::reject_autoencoder_checkpoint(path, &loaded.metadata)?;
    let cfg_json =
        loaded
            .metadata
            .get("model_config")
            .ok_or_else(|| noisegrad::engine::Error::Io {
                path: path.display().to_string(),
                msg: "not a noisegrad training checkpoint (no model_config metadata)".into(),
            })?;
    let model = UNetConfig::from_json(cfg_json)?;
    // A one-image placeholder dataset of the right size: sampling needs none.
    let dummy = ImageDataset {
        pixels: vec![0; model.in_channels * model.image_size * model.image_size],
        labels: vec![0],
        channels: model.in_channels,
        height: model.image_size,
        width: model.image_size,
        source: "none".into(),
    };
    let mut cfg = TrainConfig::ddpm(model);
    cfg.device = device;
    cfg.latent = noisegrad::diffusion::latent::LatentInfo::from_metadata(path, &loaded.metadata)?;
    let mut trainer = Trainer::new(cfg, Arc::new(dummy.clone()))?;
    trainer.load_checkpoint(path)?;
    if use_ema {
        trainer.use_ema_weights()?;
    }
    Ok((trainer, dummy))
}

pub fn io_err(path: &Path, e: impl std::fmt::Display) -> noisegrad::engine::Error {
    noisegrad::engine::Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}
