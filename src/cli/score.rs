//! `noisegrad score`: class consistency, the fraction of samples a clean
//! classifier assigns to the class they were asked for.

use super::{DeviceArgs, open_device, sample::labels_sidecar};
use clap::Args;
use noisegrad::diffusion::classifier::load_classifier;
use noisegrad::diffusion::data::{ImageDataset, batch_from, decode_png, load_png_folder};
use noisegrad::engine::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ScoreArgs {
    /// A grid written by `sample --class` (with its .labels.json beside it), or a folder with
    /// one subfolder of PNGs per class (named as the classifier's classes).
    #[arg(long)]
    pub samples: PathBuf,
    /// A classifier from `train-classifier --clean`.
    #[arg(long)]
    pub classifier: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    super::catch_interrupts()?;
    let device = open_device(a.dev)?;
    let clf = load_classifier(&a.classifier, device)?;
    if !clf.clean {
        println!(
            "note: {} is a noise-aware classifier; scoring is meant for a --clean one",
            a.classifier.display()
        );
    }
    let cfg = &clf.model.config;
    let data = if a.samples.is_dir() {
        load_png_folder(&a.samples)?
    } else {
        tiles_of_grid(&a.samples, cfg.image_size)?
    };
    if (data.channels, data.height) != (cfg.in_channels, cfg.image_size)
        || data.labels.len() != data.len()
    {
        return Err(Error::Data(format!(
            "{}: {} labelled {}×{}×{} images, but the classifier expects {}×{}×{}",
            a.samples.display(),
            data.labels.len(),
            data.channels,
            data.height,
            data.width,
            cfg.in_channels,
            cfg.image_size,
            cfg.image_size
        )));
    }
    let k = cfg.num_classes.unwrap_or(0);
    let (mut hits, mut seen) = (vec![0usize; k], vec![0usize; k]);
    for start in (0..data.len()).step_by(100) {
        super::stop_if_interrupted()?;
        let n = 100.min(data.len() - start);
        let x = batch_from(&data, start, n)?.to_device(device)?;
        let pred = clf.model.predict(&x, &vec![0; n])?;
        for (p, &y) in pred.iter().zip(&data.labels[start..start + n]) {
            let y = y as usize;
            if y >= k {
                return Err(Error::Data(format!(
                    "{}: label {y} but the classifier has {k} classes",
                    a.samples.display()
                )));
            }
            seen[y] += 1;
            hits[y] += usize::from(*p == y);
        }
    }
    for y in (0..k).filter(|&y| seen[y] > 0) {
        let name = clf
            .class_names
            .get(y)
            .cloned()
            .unwrap_or_else(|| y.to_string());
        println!(
            "  {y} {name:<14} {:>5.1}% of {}",
            100.0 * hits[y] as f64 / seen[y] as f64,
            seen[y]
        );
    }
    let total: usize = seen.iter().sum();
    println!(
        "class consistency: {:.1}% of {total} samples",
        100.0 * hits.iter().sum::<usize>() as f64 / total.max(1) as f64
    );
    Ok(())
}

/// The tiles of a `sample --class` grid, labelled from its sidecar.
fn tiles_of_grid(png: &Path, size: usize) -> Result<ImageDataset> {
    let sidecar = labels_sidecar(png);
    let text = std::fs::read_to_string(&sidecar).map_err(|e| Error::Io {
        path: sidecar.display().to_string(),
        msg: format!(
            "cannot read the labels of {} ({e}); write grids with `sample --class`",
            png.display()
        ),
    })?;
    #[derive(serde::Deserialize)]
    struct Sidecar {
        columns: usize,
        left: usize,
        labels: Vec<usize>,
    }
    let s: Sidecar = serde_json::from_str(&text).map_err(|e| Error::Io {
        path: sidecar.display().to_string(),
        msg: format!("not a labels file: {e}"),
    })?;
    let (c, h, w, planar) = decode_png(png)?;
    let c_out = if c == 3 && is_gray(&planar, h * w) {
        1
    } else {
        c
    };
    let mut pixels = Vec::with_capacity(s.labels.len() * c_out * size * size);
    for i in 0..s.labels.len() {
        let (ox, oy) = (
            s.left + 2 + (i % s.columns) * (size + 2),
            2 + (i / s.columns) * (size + 2),
        );
        if ox + size > w || oy + size > h {
            return Err(Error::Io {
                path: png.display().to_string(),
                msg: format!(
                    "tile {i} lies outside the {w}×{h} image: not a grid of {size}×{size} samples"
                ),
            });
        }
        for ch in 0..c_out {
            for y in 0..size {
                let row = ch * h * w + (oy + y) * w + ox;
                pixels.extend_from_slice(&planar[row..row + size]);
            }
        }
    }
    Ok(ImageDataset {
        pixels,
        labels: s.labels.iter().map(|&y| y.min(255) as u8).collect(),
        channels: c_out,
        height: size,
        width: size,
        source: png.display().to_string(),
    })
}

/// Whether planar RGB pixels are all gray (grids of 1-channel samples are saved as RGB).
fn is_gray(planar: &[u8], plane: usize) -> bool {
    (0..plane).all(|p| planar[p] == planar[plane + p] && planar[p] == planar[2 * plane + p])
}
