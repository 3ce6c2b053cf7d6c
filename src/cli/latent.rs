//! Latent diffusion in the CLI: `train --latent` encodes the dataset once;
//! `sample` and `eval` find the autoencoder through the checkpoint.

use super::DeviceArgs;
use clap::ValueEnum;
use noisegrad::diffusion::autoencoder::{AUTOENCODER_FORMAT, Autoencoder};
use noisegrad::diffusion::data::{ImageDataset, TrainData};
use noisegrad::diffusion::latent::{LatentDecoder, LatentInfo, encode_dataset};
use noisegrad::diffusion::sample::Samples;
use noisegrad::engine::{Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LatentSample {
    /// The posterior mean μ(x), fixed for the run.
    Mean,
    /// z ~ q(z|x), drawn afresh each time an image is used.
    Sample,
}

/// A training run in pixel space (no autoencoder) or in latent space.
pub struct LatentRun {
    encoded: Option<(
        Arc<noisegrad::diffusion::data::LatentDataset>,
        LatentInfo,
        LatentDecoder,
    )>,
}

impl LatentRun {
    /// With `--latent PATH`: loads the autoencoder and encodes `images`.
    pub fn open(
        path: &Option<PathBuf>,
        mode: LatentSample,
        images: &ImageDataset,
        dev: DeviceArgs,
    ) -> Result<LatentRun> {
        let Some(path) = path else {
            return Ok(LatentRun { encoded: None });
        };
        if !path.exists() {
            return Err(Error::Io {
                path: path.display().to_string(),
                msg: "--latent: no such autoencoder checkpoint".into(),
            });
        }
        let (ae, _store) = Autoencoder::load(path, true, dev.device)?;
        let sample = mode == LatentSample::Sample;
        let bar = indicatif::ProgressBar::new(images.len() as u64);
        bar.set_message("encoding");
        let (latents, scale_factor) =
            encode_dataset(&ae, images, sample, 64, dev.device, |done| {
                bar.set_position(done as u64)
            })?;
        bar.finish_and_clear();
        println!(
            "encoded {} images to {}×{}×{} latents with {}; scale factor 1/σ̂ = {scale_factor:.4}",
            latents.len(),
            latents.channels,
            latents.height,
            latents.width,
            path.display()
        );
        let info = LatentInfo {
            autoencoder: path.clone(),
            autoencoder_config: ae.config.clone(),
            scale_factor,
            sample,
        };
        let decoder = LatentDecoder::open(&info, dev.device)?;
        Ok(LatentRun {
            encoded: Some((Arc::new(latents), info, decoder)),
        })
    }

    pub fn train_data(&self, images: &Arc<ImageDataset>) -> TrainData {
        match &self.encoded {
            Some((latents, _, _)) => TrainData::Latents(latents.clone()),
            None => TrainData::Images(images.clone()),
        }
    }

    pub fn info(&self) -> Option<LatentInfo> {
        self.encoded.as_ref().map(|(_, info, _)| info.clone())
    }

    pub fn decoder(&self) -> Option<&LatentDecoder> {
        self.encoded.as_ref().map(|(_, _, d)| d)
    }
}

/// The autoencoder that decodes a diffusion checkpoint's samples (None for
/// a pixel-space checkpoint).
pub fn decoder_of_checkpoint(path: &Path, device: Device) -> Result<Option<LatentDecoder>> {
    let loaded = noisegrad::engine::io::load(path, Device::Cpu)?;
    LatentInfo::from_metadata(path, &loaded.metadata)?
        .map(|info| LatentDecoder::open(&info, device))
        .transpose()
}

/// `sample`/`eval` need a diffusion checkpoint: say so when given an autoencoder's.
pub fn reject_autoencoder_checkpoint(path: &Path, meta: &HashMap<String, String>) -> Result<()> {
    if meta.get("format").map(String::as_str) == Some(AUTOENCODER_FORMAT) {
        return Err(Error::Io {
            path: path.display().to_string(),
            msg: "this is an autoencoder checkpoint (from `train-autoencoder`); this command needs a \
                  diffusion checkpoint from `train` (train one on its latents with \
                  `train --latent` this file)"
                .into(),
        });
    }
    Ok(())
}

/// Samples (and their x̂_0 chain) decoded to images when in latent space.
pub fn decode_samples(out: Samples, decoder: Option<&LatentDecoder>) -> Result<Samples> {
    let Some(d) = decoder else {
        return Ok(out);
    };
    let progressive = out
        .progressive
        .iter()
        .map(|(t, x)| Ok((*t, d.decode(x)?)))
        .collect::<Result<Vec<(usize, Tensor)>>>()?;
    Ok(Samples {
        images: d.decode(&out.images)?,
        progressive,
    })
}
