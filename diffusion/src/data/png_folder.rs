//! A folder of PNG images (all the same size). Grayscale images give one
//! channel; RGB/RGBA give three (alpha dropped). Files load in name order.

use super::ImageDataset;
use noisegrad_engine::{Error, Result};
use std::path::Path;

pub fn load_png_folder(dir: &Path) -> Result<ImageDataset> {
    let err = |p: &Path, msg: String| Error::Io {
        path: p.display().to_string(),
        msg,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, format!("cannot list: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(
            dir,
            "no .png files, CIFAR-10 batches or IDX files found here".into(),
        ));
    }
    let mut ds: Option<ImageDataset> = None;
    for f in &files {
        let (c, h, w, planar) = decode_png(f)?;
        let acc = ds.get_or_insert_with(|| ImageDataset {
            pixels: Vec::new(),
            labels: Vec::new(),
            channels: c,
            height: h,
            width: w,
            source: dir.display().to_string(),
        });
        if (acc.channels, acc.height, acc.width) != (c, h, w) {
            return Err(err(
                f,
                format!(
                    "is {c}×{h}×{w} but earlier images are {}×{}×{}",
                    acc.channels, acc.height, acc.width
                ),
            ));
        }
        acc.pixels.extend_from_slice(&planar);
    }
    Ok(ds.expect("at least one file"))
}

/// Decodes one PNG to planar (CHW) 8-bit pixels.
pub fn decode_png(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let err = |msg: String| Error::Io {
        path: path.display().to_string(),
        msg,
    };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| err(format!("not a readable PNG: {e}")))?;
    let mut buf = vec![
        0;
        reader
            .output_buffer_size()
            .ok_or_else(|| err("image too large".into()))?
    ];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| err(format!("bad PNG data: {e}")))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let src_c = info.color_type.samples();
    let c = if src_c <= 2 { 1 } else { 3 };
    let mut planar = vec![0u8; c * h * w];
    for p in 0..h * w {
        for ch in 0..c {
            planar[ch * h * w + p] = buf[p * src_c + ch];
        }
    }
    Ok((c, h, w, planar))
}
