//! Named tensors in the safetensors format (readable by PyTorch's
//! `safetensors.torch.load_file`, and able to read what it writes).
//!
//! Files are written atomically: to `<path>.tmp`, flushed to disk, then
//! renamed over `path`, so a crash mid-write never leaves a torn file.
//!
//! They are also reproducible and self-checking: the header lists metadata
//! and tensors in a fixed, sorted order (two identical runs give identical
//! bytes), and the metadata key [`CHECKSUM_KEY`] holds a CRC32 of every
//! tensor's bytes and of the other metadata, verified on load. Files without
//! it (written by PyTorch) load unchecked. On load every float value must
//! be finite: a NaN in a checkpoint is an error naming the tensor, never a
//! model that silently samples noise.

use crate::error::{Error, Result};
use crate::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorInfo};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// A tensor's bytes ready for serialisation.
struct Bytes {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
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

/// Metadata key of the checksums: a JSON object mapping each tensor name
/// (and [`METADATA_CHECKSUM`] for the other metadata) to its CRC32 (IEEE)
/// as 8 hex digits. Reserved: [`save`] writes it, [`load`] checks and
/// removes it.
pub const CHECKSUM_KEY: &str = "noisegrad.crc32";

/// The entry of [`CHECKSUM_KEY`] that covers the other metadata.
pub const METADATA_CHECKSUM: &str = "__metadata__";

/// The largest |w| a trained weight plausibly has: checkpoint loaders refuse
/// a model or EMA tensor beyond it (see [`Loaded::check_weights`]).
pub const MAX_ABS_WEIGHT: f64 = 1e6;

/// Writes `tensors` (name → tensor) and string `metadata` to `path`,
/// atomically, in the fixed order and with the checksums of the module docs.
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
    if metadata.contains_key(CHECKSUM_KEY) {
        return Err(io_err(
            path,
            format!("metadata key '{CHECKSUM_KEY}' is reserved for the checksums"),
        ));
    }
    let bytes: Vec<(String, Bytes)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), to_bytes(t)))
        .collect();
    write_atomically(path, &serialize(&bytes, metadata))
}

/// The CRC32 (IEEE) of `data` as 8 lowercase hex digits.
pub fn crc32_hex(data: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(data))
}

/// The checksum [`METADATA_CHECKSUM`] of string metadata (its JSON with
/// sorted keys, so it does not depend on map order).
fn metadata_checksum(metadata: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = metadata.iter().collect();
    crc32_hex(to_json(&sorted).as_bytes())
}

/// JSON of a value that always serialises (strings, maps of strings, tensor infos).
fn to_json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// A safetensors file: 8-byte header length, the JSON header (metadata
/// first, keys sorted; then tensors, wider dtypes first so each stays
/// aligned, by name), space padding to 8 bytes, then the tensors' bytes in
/// header order. Written here rather than by `safetensors::serialize`,
/// whose metadata map has a random iteration order.
fn serialize(tensors: &[(String, Bytes)], metadata: &HashMap<String, String>) -> Vec<u8> {
    let mut order: Vec<&(String, Bytes)> = tensors.iter().collect();
    let width = |d: StDtype| if d == StDtype::F64 { 8 } else { 4 };
    order.sort_by(|(na, a), (nb, b)| width(b.dtype).cmp(&width(a.dtype)).then(na.cmp(nb)));
    let mut sums: BTreeMap<&str, String> = order
        .iter()
        .map(|(n, b)| (n.as_str(), crc32_hex(&b.data)))
        .collect();
    sums.insert(METADATA_CHECKSUM, metadata_checksum(metadata));
    let mut meta: BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let sums = to_json(&sums);
    meta.insert(CHECKSUM_KEY, &sums);
    let mut header = format!("{{\"__metadata__\":{}", to_json(&meta));
    let mut offset = 0;
    for (name, b) in &order {
        let info = TensorInfo {
            dtype: b.dtype,
            shape: b.shape.clone(),
            data_offsets: (offset, offset + b.data.len()),
        };
        offset += b.data.len();
        header.push_str(&format!(",{}:{}", to_json(name), to_json(&info)));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut buf = Vec::with_capacity(8 + header.len() + offset);
    buf.extend((header.len() as u64).to_le_bytes());
    buf.extend(header.as_bytes());
    for (_, b) in &order {
        buf.extend(&b.data);
    }
    buf
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
                Error::Checkpoint(format!(
                    "no tensor '{name}' in checkpoint (it has {names:?}…)"
                ))
            })
    }

    /// Refuses a weight beyond ±[`MAX_ABS_WEIGHT`] in any tensor but the
    /// optimizer's (`opt.*`: Adam's step counters are legitimately large),
    /// naming the tensor and `path`. Checkpoint loaders call it; generic
    /// files (test fixtures) may hold any finite value.
    pub fn check_weights(&self, path: &Path) -> Result<()> {
        for (name, t) in self.tensors.iter().filter(|(n, _)| !n.starts_with("opt.")) {
            let values = t.to_vec_f64();
            if let Some(i) = values.iter().position(|v| v.abs() > MAX_ABS_WEIGHT) {
                return Err(io_err(
                    path,
                    format!(
                        "tensor '{name}' holds {:e} (element {i}), beyond the ±{MAX_ABS_WEIGHT:e} any trained weight stays within: the file is corrupt or was saved from a diverged run",
                        values[i]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads every tensor of a safetensors file onto `device`. F32/F64 load as
/// themselves; F16/BF16 are widened to F32 and I64 to F64. A missing,
/// truncated or corrupt file is an [`Error::Io`] naming the path; so is a
/// checksum that does not match (files that have [`CHECKSUM_KEY`]) and a
/// non-finite value, each naming the tensor.
pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Loaded> {
    let path = path.as_ref();
    let buf = std::fs::read(path).map_err(|e| io_err(path, format!("reading: {e}")))?;
    let st = SafeTensors::deserialize(&buf)
        .map_err(|e| io_err(path, format!("not a valid safetensors file: {e}")))?;
    let (_, meta) =
        SafeTensors::read_metadata(&buf).map_err(|e| io_err(path, format!("bad header: {e}")))?;
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    let sums = Checksums::take(path, &mut metadata)?;
    let mut names: Vec<(usize, String)> = Vec::new();
    for (name, view) in st.tensors() {
        // Keep file order (by data offset) so loading is deterministic.
        let start = view.data().as_ptr() as usize - buf.as_ptr() as usize;
        names.push((start, name));
    }
    names.sort();
    if let Some(sums) = &sums {
        sums.check_covers(path, names.iter().map(|(_, n)| n.as_str()))?;
    }
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st
            .tensor(&name)
            .map_err(|e| io_err(path, format!("tensor '{name}': {e}")))?;
        if let Some(sums) = &sums {
            sums.check(path, &name, view.data())?;
        }
        let (values, dtype) = decode(path, &name, view.dtype(), view.data())?;
        check_finite(path, &name, &values)?;
        tensors.push((
            name,
            Tensor::from_vec(&values, view.shape(), dtype, device)?,
        ));
    }
    if let Some(sums) = &sums {
        sums.check_metadata(path, &metadata)?;
    }
    Ok(Loaded { tensors, metadata })
}

/// The checksums a file's [`CHECKSUM_KEY`] lists.
struct Checksums(HashMap<String, String>);

impl Checksums {
    /// Removes [`CHECKSUM_KEY`] from `metadata` and parses it; None for a
    /// file without it (PyTorch's).
    fn take(path: &Path, metadata: &mut HashMap<String, String>) -> Result<Option<Checksums>> {
        let Some(json) = metadata.remove(CHECKSUM_KEY) else {
            return Ok(None);
        };
        serde_json::from_str(&json).map(|m| Some(Checksums(m))).map_err(|e| {
            io_err(
                path,
                format!("checksum metadata '{CHECKSUM_KEY}' is unreadable ({e}): the file is corrupt"),
            )
        })
    }

    /// Every tensor has a checksum and every checksum a tensor (a renamed or
    /// dropped tensor is corruption too).
    fn check_covers<'a>(&self, path: &Path, names: impl Iterator<Item = &'a str>) -> Result<()> {
        let names: std::collections::HashSet<&str> = names.collect();
        if let Some(n) = names.iter().find(|n| !self.0.contains_key(**n)) {
            return Err(corrupt(path, format!("tensor '{n}' has no checksum")));
        }
        let mut extra: Vec<&String> = (self.0.keys())
            .filter(|k| *k != METADATA_CHECKSUM && !names.contains(k.as_str()))
            .collect();
        extra.sort();
        match extra.first() {
            Some(n) => Err(corrupt(
                path,
                format!("it lists a checksum for tensor '{n}' but holds no such tensor"),
            )),
            None => Ok(()),
        }
    }

    fn check(&self, path: &Path, name: &str, data: &[u8]) -> Result<()> {
        if self.0.get(name).map(String::as_str) == Some(&crc32_hex(data)) {
            return Ok(());
        }
        Err(Error::Checkpoint(format!(
            "checksum mismatch in tensor '{name}' of {}: the file is corrupt",
            path.display()
        )))
    }

    /// The metadata checksum, if the file has one.
    fn check_metadata(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        match self.0.get(METADATA_CHECKSUM) {
            Some(want) if *want != metadata_checksum(metadata) => Err(corrupt(
                path,
                "checksum mismatch in its metadata".to_string(),
            )),
            _ => Ok(()),
        }
    }
}

/// "`path`: `what`: the file is corrupt".
fn corrupt(path: &Path, what: String) -> Error {
    io_err(path, format!("{what}: the file is corrupt"))
}

/// A tensor's values as f64 and the dtype it loads as.
fn decode(path: &Path, name: &str, dtype: StDtype, raw: &[u8]) -> Result<(Vec<f64>, DType)> {
    Ok(match dtype {
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
    })
}

/// A NaN or ±∞ in a stored tensor: the run that wrote it had diverged, or
/// the file was damaged in a way no checksum covers (a PyTorch file).
fn check_finite(path: &Path, name: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(io_err(
            path,
            format!(
                "tensor '{name}' holds {} (element {i} of {}): the file is corrupt or was saved from a diverged run",
                values[i],
                values.len()
            ),
        )),
    }
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
