//! Latent diffusion (Rombach et al. 2022): the dataset encoded once by a
//! trained autoencoder, scaled to unit variance, and samples decoded back.

use crate::autoencoder::{Autoencoder, AutoencoderConfig};
use crate::data::{ImageDataset, LatentDataset, batch_from};
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::{Device, Error, Result, Tensor, no_grad};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a latent diffusion checkpoint records about its autoencoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentInfo {
    /// The autoencoder checkpoint.
    pub autoencoder: PathBuf,
    pub autoencoder_config: AutoencoderConfig,
    /// LDM's scale_factor 1/σ̂: latents are multiplied by it before diffusion.
    pub scale_factor: f64,
    /// Trained on fresh samples z ~ q(z|x) (true) or on the posterior mean.
    pub sample: bool,
}

impl LatentInfo {
    pub fn metadata(&self) -> Vec<(String, String)> {
        vec![
            (
                "latent_autoencoder".into(),
                self.autoencoder.display().to_string(),
            ),
            (
                "latent_autoencoder_config".into(),
                self.autoencoder_config.to_json(),
            ),
            (
                "latent_scale_factor".into(),
                format!("{:e}", self.scale_factor),
            ),
            ("latent_sample".into(), self.sample.to_string()),
        ]
    }

    /// The latent info of a diffusion checkpoint's metadata (None: pixel space).
    pub fn from_metadata(
        path: &Path,
        meta: &HashMap<String, String>,
    ) -> Result<Option<LatentInfo>> {
        let Some(ae) = meta.get("latent_autoencoder") else {
            return Ok(None);
        };
        let bad = |k: &str| Error::Io {
            path: path.display().to_string(),
            msg: format!("latent checkpoint metadata has no valid '{k}'"),
        };
        let config = meta
            .get("latent_autoencoder_config")
            .ok_or_else(|| bad("latent_autoencoder_config"))?;
        Ok(Some(LatentInfo {
            autoencoder: PathBuf::from(ae),
            autoencoder_config: AutoencoderConfig::from_json(config)?,
            scale_factor: meta
                .get("latent_scale_factor")
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| v.is_finite() && *v > 0.0)
                .ok_or_else(|| bad("latent_scale_factor"))?,
            sample: meta.get("latent_sample").is_some_and(|v| v == "true"),
        }))
    }

    /// Resuming needs the same space: pixels with pixels, latents of the
    /// same autoencoder shape with latents.
    pub fn check_matches(
        path: &Path,
        meta: &HashMap<String, String>,
        ours: Option<&LatentInfo>,
    ) -> Result<()> {
        let theirs = LatentInfo::from_metadata(path, meta)?;
        let space = |l: Option<&LatentInfo>| match l {
            Some(l) => format!(
                "latents {:?} of the autoencoder {}",
                l.autoencoder_config.latent_shape(),
                l.autoencoder.display()
            ),
            None => "pixels".to_string(),
        };
        let same = match (&theirs, ours) {
            (None, None) => true,
            (Some(a), Some(b)) => a.autoencoder_config == b.autoencoder_config,
            _ => false,
        };
        if !same {
            return Err(Error::Io {
                path: path.display().to_string(),
                msg: format!(
                    "the checkpoint was trained on {} but this run is on {}",
                    space(theirs.as_ref()),
                    space(ours)
                ),
            });
        }
        Ok(())
    }
}

/// σ̂ of the latents the diffusion model sees: the standard deviation over
/// all elements of the posterior means, plus the mean posterior variance
/// E[e^ℓ] when z is sampled (Var z = Var μ + E σ²). LDM sets
/// scale_factor = 1/σ̂ (Rombach et al. 2022, §4.3.2 and App. G).
pub fn latent_std(mean: &[f32], logvar: &[f32], sample: bool) -> f64 {
    let n = mean.len().max(1) as f64;
    let mu = mean.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var_mean = mean.iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>() / n;
    let var_post = if sample {
        logvar.iter().map(|&l| (l as f64).exp()).sum::<f64>() / n
    } else {
        0.0
    };
    (var_mean + var_post).sqrt()
}

/// Encodes every image of `data` (batches of `batch`, on `device`), scales
/// the posteriors by 1/σ̂ and returns them with the scale factor.
/// `on_batch` gets the number of images done.
pub fn encode_dataset(
    ae: &Autoencoder,
    data: &ImageDataset,
    sample: bool,
    batch: usize,
    device: Device,
    mut on_batch: impl FnMut(usize),
) -> Result<(LatentDataset, f64)> {
    check_image_shape(&ae.config, data)?;
    let (mut mean, mut logvar) = (Vec::new(), Vec::new());
    no_grad(|| -> Result<()> {
        for start in (0..data.len()).step_by(batch.max(1)) {
            let count = batch.max(1).min(data.len() - start);
            let post = ae.encode(&batch_from(data, start, count)?.to_device(device)?)?;
            mean.extend(post.mean.to_host_f64()?.iter().map(|&v| v as f32));
            logvar.extend(post.logvar.to_host_f64()?.iter().map(|&v| v as f32));
            on_batch(start + count);
        }
        Ok(())
    })?;
    let std = latent_std(&mean, &logvar, sample);
    if !(std.is_finite() && std > 0.0) {
        return Err(Error::Data(format!(
            "the latents of {} have standard deviation {std}: cannot scale them",
            data.source
        )));
    }
    let scale = 1.0 / std;
    // z·s ~ N(s μ, s² σ²): the mean scales by s, the log-variance shifts by 2 ln s.
    let shift = (2.0 * scale.ln()) as f32;
    mean.iter_mut().for_each(|v| *v *= scale as f32);
    logvar.iter_mut().for_each(|v| *v += shift);
    let [c, h, w] = ae.config.latent_shape();
    Ok((
        LatentDataset {
            mean,
            logvar,
            labels: data.labels.clone(),
            channels: c,
            height: h,
            width: w,
            sample,
            source: format!("latents ({c}×{h}×{w}) of {}", data.source),
        },
        scale,
    ))
}

/// A dataset of another image shape than the autoencoder's is an error
/// naming both.
pub fn check_image_shape(cfg: &AutoencoderConfig, data: &ImageDataset) -> Result<()> {
    let have = [data.channels, data.height, data.width];
    if have != cfg.image_shape() {
        return Err(Error::Data(format!(
            "dataset {} has {}×{}×{} images but the autoencoder was trained on {}×{}×{}",
            data.source, have[0], have[1], have[2], cfg.in_channels, cfg.image_size, cfg.image_size
        )));
    }
    Ok(())
}

/// The autoencoder of a latent checkpoint, to decode its samples.
pub struct LatentDecoder {
    pub autoencoder: Autoencoder,
    _store: ParamStore,
    pub scale_factor: f64,
}

impl LatentDecoder {
    /// Loads the autoencoder (EMA weights) that `info` names and checks it
    /// is the one the diffusion model was trained with.
    pub fn open(info: &LatentInfo, device: Device) -> Result<LatentDecoder> {
        if !info.autoencoder.exists() {
            return Err(Error::Io {
                path: info.autoencoder.display().to_string(),
                msg: format!(
                    "the autoencoder of this latent checkpoint (for {:?} images, {:?} latents) is missing",
                    info.autoencoder_config.image_shape(),
                    info.autoencoder_config.latent_shape()
                ),
            });
        }
        let (autoencoder, store) = Autoencoder::load(&info.autoencoder, true, device)?;
        let (want, got) = (&info.autoencoder_config, &autoencoder.config);
        if want != got {
            return Err(Error::Io {
                path: info.autoencoder.display().to_string(),
                msg: format!(
                    "this autoencoder maps {:?} images to {:?} latents, but the diffusion model \
                     was trained with one mapping {:?} images to {:?} latents ({} vs {})",
                    got.image_shape(),
                    got.latent_shape(),
                    want.image_shape(),
                    want.latent_shape(),
                    got.to_json(),
                    want.to_json()
                ),
            });
        }
        Ok(LatentDecoder {
            autoencoder,
            _store: store,
            scale_factor: info.scale_factor,
        })
    }

    /// The scaled posterior mean μ(x)·scale_factor of images in [−1, 1]:
    /// what the diffusion model was trained on (in `mean` mode).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        no_grad(|| {
            self.autoencoder
                .encode(x)?
                .mean
                .mul_scalar(self.scale_factor)
        })
    }

    /// Images in [−1, 1] from scaled latents: D(z / scale_factor), clamped.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        no_grad(|| {
            self.autoencoder
                .decode(&z.mul_scalar(1.0 / self.scale_factor)?)?
                .clamp(-1.0, 1.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_std_adds_the_posterior_variance_when_sampling() {
        let mean = [1.0f32, -1.0, 1.0, -1.0];
        let logvar = [0.0f32; 4];
        assert!((latent_std(&mean, &logvar, false) - 1.0).abs() < 1e-12);
        assert!((latent_std(&mean, &logvar, true) - 2f64.sqrt()).abs() < 1e-12);
    }
}
