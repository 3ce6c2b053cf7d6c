//! Class labels and class names: IDX label files (`*-labels-idx1-ubyte[.gz]`
//! beside the images), PNG folders with one subfolder per class, and the
//! fixed names of CIFAR-10 and Fashion-MNIST.

use super::ImageDataset;
use noisegrad_engine::{Error, Result};
use std::path::{Path, PathBuf};

/// CIFAR-10's classes in label order (batches.meta.txt).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Fashion-MNIST's classes in label order (Xiao et al. 2017).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Parses an IDX label file (magic 0x00000801, N as big-endian u32, N bytes).
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let err = |msg: String| Error::Io {
        path: name.into(),
        msg,
    };
    if bytes.len() < 8 {
        return Err(err(format!(
            "{} bytes is too short for an IDX label header (8 bytes)",
            bytes.len()
        )));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    if word(0) != 0x0801 {
        return Err(err(format!(
            "magic number {:#010x} is not an IDX label file (0x00000801)",
            word(0)
        )));
    }
    if bytes.len() != 8 + word(1) {
        return Err(err(format!(
            "header says {} labels but the file has {} label bytes",
            word(1),
            bytes.len() - 8
        )));
    }
    Ok(bytes[8..].to_vec())
}

/// The label file that belongs to an IDX image file, if it exists:
/// `X-images-idx3-ubyte[.gz]` → `X-labels-idx1-ubyte[.gz]`.
pub fn idx_labels_beside(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().to_string();
    let labels = images.with_file_name(name.replace("images-idx3", "labels-idx1"));
    (labels != images && labels.exists()).then_some(labels)
}

/// Attaches `labels` to `ds`, checking there is one per image.
pub fn attach_labels(mut ds: ImageDataset, labels: Vec<u8>, name: &str) -> Result<ImageDataset> {
    if labels.len() != ds.len() {
        return Err(Error::Io {
            path: name.into(),
            msg: format!("{} labels for {} images", labels.len(), ds.len()),
        });
    }
    ds.labels = labels;
    Ok(ds)
}

/// Class names of the dataset at `path` (as `load_dataset` reads it): the
/// subfolder names of a PNG class folder, else CIFAR-10's or
/// Fashion-MNIST's names by format. Empty when the data has no labels.
pub fn class_names(path: &Path, ds: &ImageDataset) -> Result<Vec<String>> {
    if ds.labels.is_empty() {
        return Ok(Vec::new());
    }
    let owned = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    if path.is_dir() && !super::png_folder::class_folders(path)?.is_empty() {
        return Ok(super::png_folder::class_folders(path)?
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string()
            })
            .collect());
    }
    Ok(if ds.channels == 3 {
        owned(&CIFAR10_CLASSES)
    } else {
        owned(&FASHION_MNIST_CLASSES)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_header_checked() {
        let mut b = vec![0, 0, 8, 1, 0, 0, 0, 3, 4, 5, 6];
        assert_eq!(parse_idx_labels(&b, "l").unwrap(), vec![4, 5, 6]);
        b.pop();
        let e = parse_idx_labels(&b, "l").unwrap_err().to_string();
        assert!(e.contains("3 labels") && e.contains("2 label bytes"), "{e}");
    }
}
