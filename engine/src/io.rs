//! Named tensors in the safetensors format (readable by PyTorch's
//! `safetensors.torch.load_file`, and able to read what it writes).
//!
//! Files are written atomically: to `<path>.tmp`, flushed to disk, then
//! renamed over `path`, so a crash mid-write never leaves a torn file.

use crate::error::{Error, Result};
use crate::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// A tensor's bytes ready for serialisation.
struct Bytes {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Bytes {
    let values = t.to_vec_f64();
    let (dtype, data) = match t.dtype() {
        DType::F32 => (
            StDtype::F32,
            values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        ),
        DType::F64 => (
            StDtype::F64,
            values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        ),
    };
    Bytes {
        dtype,
        shape: t.shape().to_vec(),
        data,
    }
}

fn io_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: msg.to_string(),
    }
}

/// Writes `tensors` (name → tensor) and string `metadata` to `path`, atomically.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names = std::collections::HashSet::new();
    if let Some((dup, _)) = tensors.iter().find(|(n, _)| !names.insert(n.as_str())) {
        return Err(io_err(path, format!("tensor name '{dup}' given twice")));
    }
    let bytes: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), to_bytes(t)))
        .collect();
    let views = bytes.iter().map(|(n, b)| (n.as_str(), b));
    let meta = (!metadata.is_empty()).then(|| metadata.clone());
    let buf = safetensors::tensor::serialize(views, meta)
        .map_err(|e| io_err(path, format!("serialising: {e}")))?;
    write_atomically(path, &buf)
}

/// Writes `data` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(match path.extension() {
        Some(e) => format!("{}.tmp", e.to_string_lossy()),
        None => "tmp".into(),
    });
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the rename itself (best effort: not every FS allows it).
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, format!("writing: {e}"))
    })
}

/// Tensors (in file order) and metadata read from a safetensors file.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
}

impl Loaded {
    /// The tensor called `name`, or an error listing what the file holds.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .tensors
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .take(8)
                    .collect();
                Error::Msg(format!(
                    "no tensor '{name}' in checkpoint (it has {names:?}…)"
                ))
            })
    }
}

/// Reads every tensor of a safetensors file onto `device`. F32/F64 load as
/// themselves; F16/BF16 are widened to F32 and I64 to F64. A missing,
/// truncated or corrupt file is an [`Error::Io`] naming the path.
pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Loaded> {
    let path = path.as_ref();
    let buf = std::fs::read(path).map_err(|e| io_err(path, format!("reading: {e}")))?;
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| io_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&buf).map_err(|e| io_err(path, format!("bad header: {e}")))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let mut names: Vec<(usize, String)> = Vec::new();
    for (name, view) in st.tensors() {
        // Keep file order (by data offset) so loading is deterministic.
        let start = view.data().as_ptr() as usize - buf.as_ptr() as usize;
        names.push((start, name));
    }
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st
            .tensor(&name)
            .map_err(|e| io_err(path, format!("tensor '{name}': {e}")))?;
        let raw = view.data();
        let (values, dtype): (Vec<f64>, DType) = match view.dtype() {
            StDtype::F32 => (
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                DType::F32,
            ),
            StDtype::F64 => (
                raw.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                DType::F64,
            ),
            StDtype::F16 => (
                raw.chunks_exact(2)
                    .map(|b| f16_to_f64(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                DType::F32,
            ),
            StDtype::BF16 => (
                raw.chunks_exact(2)
                    .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16) as f64)
                    .collect(),
                DType::F32,
            ),
            StDtype::I64 => (
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                DType::F64,
            ),
            other => {
                return Err(io_err(
                    path,
                    format!("tensor '{name}' has unsupported dtype {other:?}"),
                ));
            }
        };
        tensors.push((
            name,
            Tensor::from_vec(&values, view.shape(), dtype, device)?,
        ));
    }
    Ok(Loaded { tensors, metadata })
}

/// IEEE 754 binary16 → f64 (exact: every half value is an f64).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + frac / 1024.0) * 2f64.powi(exp - 15),
    }
}
