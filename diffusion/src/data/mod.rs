//! Image datasets and batching.
//!
//! Every loader produces an [`ImageDataset`]: raw `u8` pixels in NCHW order.
//! [`Batcher`] turns it into training batches scaled to [−1, 1] with random
//! horizontal flips, reshuffled each epoch from a seeded, resumable stream.

mod batcher;
mod cifar;
mod idx;
mod labels;
mod latent;
mod png_folder;

pub use batcher::{Batcher, BatcherState};
pub use cifar::{CIFAR10_RECORD_BYTES, load_cifar10, parse_cifar10};
pub use idx::{gunzip_if_compressed, load_idx_images, parse_idx_images, read_maybe_gzip};
pub use labels::{
    CIFAR10_CLASSES, FASHION_MNIST_CLASSES, attach_labels, class_names, idx_labels_beside,
    parse_idx_labels,
};
pub use latent::{LatentDataset, TrainData};
pub use png_folder::{decode_png, load_png_folder};

use noisegrad_engine::{Error, Result};
use std::path::Path;

/// Images as bytes, NCHW, with optional class labels.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Where the images came from (shown in logs and errors).
    pub source: String,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_bytes().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn image_bytes(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The first `n` images (for quick runs and evaluation subsets).
    pub fn take(mut self, n: usize) -> ImageDataset {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.image_bytes());
        self.labels.truncate(n);
        self
    }

    /// Pixel bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let b = self.image_bytes();
        &self.pixels[i * b..(i + 1) * b]
    }
}

/// Images `start..start+count` as an f32 CPU tensor [count, C, H, W] in
/// [−1, 1], in dataset order, unflipped (for evaluation).
pub fn batch_from(
    ds: &ImageDataset,
    start: usize,
    count: usize,
) -> Result<noisegrad_engine::Tensor> {
    if start + count > ds.len() {
        return Err(Error::Data(format!(
            "images {start}..{} requested from {} ({} images)",
            start + count,
            ds.source,
            ds.len()
        )));
    }
    let b = ds.image_bytes();
    let v: Vec<f32> = ds.pixels[start * b..(start + count) * b]
        .iter()
        .map(|&p| byte_to_unit(p))
        .collect();
    noisegrad_engine::Tensor::from_vec(
        &v,
        &[count, ds.channels, ds.height, ds.width],
        noisegrad_engine::DType::F32,
        noisegrad_engine::Device::Cpu,
    )
}

/// Data scaling used throughout: byte v ↦ v/127.5 − 1 ∈ [−1, 1].
pub fn byte_to_unit(v: u8) -> f32 {
    v as f32 / 127.5 - 1.0
}

/// Loads a dataset from `path`, recognising the format:
/// a CIFAR-10 binary folder or `.bin` file, an IDX image file (`*-ubyte`,
/// optionally `.gz`), a Fashion-MNIST folder, or a folder of PNGs.
pub fn load_dataset(path: &Path, train: bool) -> Result<ImageDataset> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.display().to_string(),
            msg: "no such file or directory".into(),
        });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if path.is_file() {
        if name.ends_with(".bin") {
            return load_cifar10(&[path.to_path_buf()]);
        }
        if name.contains("ubyte") {
            return load_idx_images(path);
        }
        return Err(Error::Io {
            path: path.display().to_string(),
            msg: "unknown file type (expected a CIFAR-10 .bin or an IDX *-ubyte[.gz] file)".into(),
        });
    }
    let has = |f: &str| path.join(f).exists();
    if has("data_batch_1.bin") || has("test_batch.bin") {
        return cifar::load_cifar10_dir(path, train);
    }
    let idx_name = if train {
        "train-images-idx3-ubyte"
    } else {
        "t10k-images-idx3-ubyte"
    };
    for candidate in [format!("{idx_name}.gz"), idx_name.to_string()] {
        if has(&candidate) {
            return load_idx_images(&path.join(candidate));
        }
    }
    load_png_folder(path)
}
