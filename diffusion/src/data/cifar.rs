//! CIFAR-10 in the official binary format: records of 1 label byte then
//! 3,072 pixel bytes (1,024 red, 1,024 green, 1,024 blue, row-major 32×32).

use super::ImageDataset;
use noisegrad_engine::{Error, Result};
use std::path::{Path, PathBuf};

pub const CIFAR10_RECORD_BYTES: usize = 1 + 3 * 32 * 32;

/// Parses the bytes of one batch file; `name` is used in errors.
pub fn parse_cifar10(bytes: &[u8], name: &str) -> Result<ImageDataset> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(CIFAR10_RECORD_BYTES) {
        return Err(Error::Io {
            path: name.into(),
            msg: format!(
                "size {} bytes is not a whole number of CIFAR-10 records ({} bytes each); the file is truncated or not CIFAR-10 binary",
                bytes.len(),
                CIFAR10_RECORD_BYTES
            ),
        });
    }
    let n = bytes.len() / CIFAR10_RECORD_BYTES;
    let mut pixels = Vec::with_capacity(n * 3072);
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact(CIFAR10_RECORD_BYTES) {
        if rec[0] > 9 {
            return Err(Error::Io {
                path: name.into(),
                msg: format!(
                    "record {} has label {}, CIFAR-10 labels are 0..=9",
                    labels.len(),
                    rec[0]
                ),
            });
        }
        labels.push(rec[0]);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(ImageDataset {
        pixels,
        labels,
        channels: 3,
        height: 32,
        width: 32,
        source: name.into(),
    })
}

/// Reads and concatenates the given batch files.
pub fn load_cifar10(files: &[PathBuf]) -> Result<ImageDataset> {
    let mut all: Option<ImageDataset> = None;
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| Error::Io {
            path: f.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        let part = parse_cifar10(&bytes, &f.display().to_string())?;
        all = Some(match all {
            None => part,
            Some(mut acc) => {
                acc.pixels.extend_from_slice(&part.pixels);
                acc.labels.extend_from_slice(&part.labels);
                acc.source = format!("{} + {}", acc.source, part.source);
                acc
            }
        });
    }
    all.ok_or_else(|| Error::Data("no CIFAR-10 batch files given".into()))
}

/// The training split (`data_batch_1..5.bin`, those present) or the test
/// split (`test_batch.bin`) of a `cifar-10-batches-bin` folder.
pub fn load_cifar10_dir(dir: &Path, train: bool) -> Result<ImageDataset> {
    let names: Vec<String> = if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".into()]
    };
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .collect();
    if files.is_empty() {
        return Err(Error::Io {
            path: dir.display().to_string(),
            msg: format!(
                "no CIFAR-10 batch files found (expected {})",
                names.join(", ")
            ),
        });
    }
    let mut ds = load_cifar10(&files)?;
    ds.source = format!(
        "{} ({} split)",
        dir.display(),
        if train { "train" } else { "test" }
    );
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_record() {
        let err = parse_cifar10(&vec![0u8; CIFAR10_RECORD_BYTES + 5], "x.bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.bin") && err.contains("3073"), "{err}");
    }

    #[test]
    fn parses_channel_planes() {
        let mut rec = vec![0u8; CIFAR10_RECORD_BYTES];
        rec[0] = 7;
        rec[1] = 10; // red (0,0)
        rec[1 + 1024] = 20; // green (0,0)
        let ds = parse_cifar10(&rec, "r").unwrap();
        assert_eq!(
            (ds.len(), ds.labels[0], ds.image(0)[0], ds.image(0)[1024]),
            (1, 7, 10, 20)
        );
    }
}
