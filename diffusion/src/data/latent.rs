//! Training examples that are not u8 images: the latents of an
//! autoencoder (latent diffusion, Rombach et al. 2022), and the one enum
//! the batcher draws from, so latent training reuses the whole trainer.

use super::ImageDataset;
use noisegrad_engine::{DType, Device, Philox, Result, Tensor};
use std::sync::Arc;

/// The posterior q(z|x) of every training image, already multiplied by the
/// scale factor, NCHW.
#[derive(Clone, Debug)]
pub struct LatentDataset {
    pub mean: Vec<f32>,
    pub logvar: Vec<f32>,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Draw z ~ q(z|x) afresh for every use instead of taking the mean.
    pub sample: bool,
    pub source: String,
}

impl LatentDataset {
    pub fn example_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn len(&self) -> usize {
        self.mean.len() / self.example_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends example `i`: its mean, or μ + σ ε with ε drawn from the
    /// Philox stream `(seed, global·2²⁰)`, so a resumed run draws the same.
    fn write(&self, i: usize, global: u64, seed: u64, out: &mut Vec<f32>) -> Result<()> {
        let n = self.example_len();
        let (mean, logvar) = (
            &self.mean[i * n..(i + 1) * n],
            &self.logvar[i * n..(i + 1) * n],
        );
        if !self.sample {
            out.extend_from_slice(mean);
            return Ok(());
        }
        let mut rng = Philox::from_state(seed, global << 20);
        let eps = Tensor::randn(&[n], DType::F32, Device::Cpu, &mut rng)?.to_vec_f32();
        out.extend(
            mean.iter()
                .zip(logvar)
                .zip(eps)
                .map(|((m, l), e)| m + (0.5 * l).exp() * e),
        );
        Ok(())
    }
}

/// What a trainer draws batches from.
#[derive(Clone, Debug)]
pub enum TrainData {
    Images(Arc<ImageDataset>),
    Latents(Arc<LatentDataset>),
}

impl TrainData {
    pub fn len(&self) -> usize {
        match self {
            TrainData::Images(d) => d.len(),
            TrainData::Latents(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (C, H, W) of one example.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            TrainData::Images(d) => (d.channels, d.height, d.width),
            TrainData::Latents(d) => (d.channels, d.height, d.width),
        }
    }

    pub fn source(&self) -> &str {
        match self {
            TrainData::Images(d) => &d.source,
            TrainData::Latents(d) => &d.source,
        }
    }

    /// The class label of example `i`, if the data has labels.
    pub fn label(&self, i: usize) -> Option<usize> {
        let labels = match self {
            TrainData::Images(d) => &d.labels,
            TrainData::Latents(d) => &d.labels,
        };
        labels.get(i).map(|&y| y as usize)
    }

    /// Horizontal flips apply to pixels only: the flip of a latent is not
    /// the latent of the flipped image.
    pub fn can_flip(&self) -> bool {
        matches!(self, TrainData::Images(_))
    }

    /// Appends example `i` (scaled to [−1, 1] for images), flipped if asked;
    /// `global` numbers the draw over the run, `seed` keys latent sampling.
    pub(crate) fn write_example(
        &self,
        i: usize,
        global: u64,
        flip: bool,
        seed: u64,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            TrainData::Images(d) => {
                for row in d.image(i).chunks_exact(d.width) {
                    if flip {
                        out.extend(row.iter().rev().map(|&v| super::byte_to_unit(v)));
                    } else {
                        out.extend(row.iter().map(|&v| super::byte_to_unit(v)));
                    }
                }
                Ok(())
            }
            TrainData::Latents(d) => d.write(i, global, seed, out),
        }
    }
}
