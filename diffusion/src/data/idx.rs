//! IDX image files (MNIST / Fashion-MNIST), raw or gzip-compressed.
//! Layout: magic 0x00000803 (u8 data, 3 dims), then N, rows, cols as
//! big-endian u32, then N·rows·cols bytes.

use super::ImageDataset;
use noisegrad_engine::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Loads an IDX image file, with the labels of the
/// `*-labels-idx1-ubyte[.gz]` file beside it when there is one.
pub fn load_idx_images(path: &Path) -> Result<ImageDataset> {
    let ds = parse_idx_images(&read_maybe_gzip(path)?, &path.display().to_string())?;
    match super::idx_labels_beside(path) {
        Some(lp) => {
            let name = lp.display().to_string();
            let labels = super::parse_idx_labels(&read_maybe_gzip(&lp)?, &name)?;
            super::attach_labels(ds, labels, &name)
        }
        None => Ok(ds),
    }
}

/// A file's bytes, gunzipped when it starts with the gzip magic.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let err = |msg: String| Error::Io {
        path: path.display().to_string(),
        msg,
    };
    let raw = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    gunzip_if_compressed(raw).map_err(|e| err(format!("bad gzip data: {e}")))
}

/// `raw` itself, or its gunzipped content when it starts with the gzip magic.
pub fn gunzip_if_compressed(raw: Vec<u8>) -> std::io::Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    Ok(out)
}

pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<ImageDataset> {
    let err = |msg: String| Error::Io {
        path: name.into(),
        msg,
    };
    if bytes.len() < 16 {
        return Err(err(format!(
            "{} bytes is too short for an IDX image header (16 bytes)",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    if word(0) != 0x0803 {
        return Err(err(format!(
            "magic number {:#010x} is not an IDX u8 image file (0x00000803)",
            word(0)
        )));
    }
    let (n, h, w) = (word(1), word(2), word(3));
    let expected = 16 + n * h * w;
    if bytes.len() != expected {
        return Err(err(format!(
            "header says {n} images of {h}×{w} ({expected} bytes) but the file has {} bytes",
            bytes.len()
        )));
    }
    Ok(ImageDataset {
        pixels: bytes[16..].to_vec(),
        labels: Vec::new(),
        channels: 1,
        height: h,
        width: w,
        source: name.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_size_checked() {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend(0..12u8);
        let ds = parse_idx_images(&b, "f").unwrap();
        assert_eq!(
            (ds.len(), ds.height, ds.width, ds.image(1)[0]),
            (2, 2, 3, 6)
        );
        b.pop();
        let msg = parse_idx_images(&b, "f").unwrap_err().to_string();
        assert!(msg.contains("27 bytes") && msg.contains("2×3"), "{msg}");
    }
}
