//! The model's own weights out of a training checkpoint (which also holds
//! the EMA, Adam's state and metadata), for `noisegrad export`.

use crate::unet::{UNet, UNetConfig};
use noisegrad_engine::io::Loaded;
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::{DType, Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The U-Net config stored in a checkpoint's `model_config` metadata.
pub fn checkpoint_model_config(loaded: &Loaded, path: &Path) -> Result<UNetConfig> {
    let json = loaded
        .metadata
        .get("model_config")
        .ok_or_else(|| Error::Io {
            path: path.display().to_string(),
            msg: "not a noisegrad training checkpoint (no model_config metadata)".into(),
        })?;
    UNetConfig::from_json(json)
}

/// The weights under the model's `state_dict` names: the EMA copy when
/// `ema`, else the raw training weights. EMA tensors are named `ema.<name>`,
/// or `ema.ema.<name>` in checkpoints written while the prefix was added
/// twice; both are read. Every weight must have exactly one EMA copy.
pub fn checkpoint_weights(
    loaded: &Loaded,
    path: &Path,
    ema: bool,
) -> Result<Vec<(String, Tensor)>> {
    let bad = |msg: String| Error::Io {
        path: path.display().to_string(),
        msg,
    };
    let is_state = |n: &str| n.starts_with("ema.") || n.starts_with("opt.");
    let raw: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .filter(|(n, _)| !is_state(n))
        .cloned()
        .collect();
    if !ema {
        return Ok(raw);
    }
    let mut averages: HashMap<&str, (&str, &Tensor)> = HashMap::new();
    for (stored, t) in &loaded.tensors {
        let Some(name) = stored
            .strip_prefix("ema.ema.")
            .or_else(|| stored.strip_prefix("ema."))
        else {
            continue;
        };
        if let Some((first, _)) = averages.insert(name, (stored, t)) {
            return Err(bad(format!(
                "'{first}' and '{stored}' are both EMA copies of '{name}'"
            )));
        }
    }
    if averages.is_empty() {
        return Err(bad(
            "the checkpoint holds no EMA weights (no ema.* tensors); export with --no-ema".into(),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for (name, _) in &raw {
        let (_, t) = averages.remove(name.as_str()).ok_or_else(|| {
            bad(format!(
                "no EMA copy of weight '{name}' (ema.{name}); export with --no-ema"
            ))
        })?;
        out.push((name.clone(), t.clone()));
    }
    if let Some((name, (stored, _))) = averages.into_iter().next() {
        return Err(bad(format!(
            "EMA tensor '{stored}' has no weight '{name}' beside it"
        )));
    }
    Ok(out)
}

/// Builds the U-Net of `cfg` on the CPU and loads `weights` into it
/// strictly (every name, every shape), so what gets exported is exactly a
/// loadable `state_dict`.
pub fn strict_model(cfg: &UNetConfig, weights: &[(String, Tensor)]) -> Result<(ParamStore, UNet)> {
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    let model = UNet::new(cfg.clone(), &store)?;
    store.load_state_dict(weights)?;
    Ok((store, model))
}
