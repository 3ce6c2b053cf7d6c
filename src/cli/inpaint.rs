//! `sample --inpaint image.png --mask mask.png`: reading and checking the
//! image and mask, and the picture of originals, masked inputs and completions.

use super::io_err;
use noisegrad::diffusion::data::decode_png;
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{DType, Device, Error, Result, Tensor};
use std::path::Path;

/// The image to complete as [n, C, H, W] in [−1, 1] (n copies) and the mask
/// (1 = keep, from white; 0 from black), checked against the model.
pub fn load_image_and_mask(
    image: &Path,
    mask: &Path,
    cfg: &UNetConfig,
    n: usize,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let (c, h, w, px) = decode_png(image)?;
    let size = cfg.image_size;
    let (cm, hm, wm, mpx) = decode_png(mask)?;
    if (h, w) != (size, size) {
        return Err(io_err(
            image,
            format!("the inpainting image is {w}×{h} but the model makes {size}×{size} images"),
        ));
    }
    if (hm, wm) != (size, size) {
        return Err(io_err(
            mask,
            format!("the mask is {wm}×{hm} but the image is {size}×{size}"),
        ));
    }
    if let Some(bad) = mpx.iter().find(|&&v| v != 0 && v != 255) {
        return Err(io_err(
            mask,
            format!("the mask must be black (0) or white (255) only, found the value {bad}"),
        ));
    }
    let plane = size * size;
    let channel =
        |p: &[u8], k: usize, ch: usize| p[(ch % k) * plane..(ch % k + 1) * plane].to_vec();
    let cin = cfg.in_channels;
    if c != cin && !(c == 3 && cin == 1) {
        return Err(io_err(
            image,
            format!("the inpainting image has {c} channels but the model has {cin}"),
        ));
    }
    let mut img = Vec::new();
    let mut msk = Vec::new();
    for _ in 0..n {
        for ch in 0..cin {
            img.extend(channel(&px, c, ch).iter().map(|&v| v as f32 / 127.5 - 1.0));
            msk.extend(channel(&mpx, cm, 0).iter().map(|&v| f32::from(v == 255)));
        }
    }
    let shape = [n, cin, size, size];
    let t = |v: &[f32]| Tensor::from_vec(v, &shape, DType::F32, Device::Cpu)?.to_device(device);
    Ok((t(&img)?, t(&msk)?))
}

/// One row: the original, the masked input (unknown pixels gray), then the completions.
pub fn inpaint_row(x0: &Tensor, mask: &Tensor, completions: &Tensor) -> Result<Tensor> {
    let orig = x0.narrow(0, 0, 1)?;
    let masked = orig.mul(&mask.narrow(0, 0, 1)?)?;
    Tensor::concat(&[&orig, &masked, completions], 0)
        .map_err(|e| Error::Input(format!("inpainting grid: {e}")))
}
