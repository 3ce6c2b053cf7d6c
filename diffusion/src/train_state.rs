//! Checkpoint pieces every trainer shares: the weights, `ema.*` and `opt.*`
//! tensors, and integer metadata read back with an error naming the file.

use noisegrad_engine::io::Loaded;
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, Ema};
use noisegrad_engine::{Error, Result, Tensor};
use std::path::Path;

/// The weights (their own names), the EMA (`ema.*`) and Adam's state (`opt.*`).
pub fn checkpoint_tensors(
    store: &ParamStore,
    ema: &Ema,
    opt: &Adam,
) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = store.state_dict();
    tensors.extend(
        ema.state_dict()
            .into_iter()
            .map(|(n, t)| (format!("ema.{n}"), t)),
    );
    tensors.extend(
        opt.state_dict()?
            .into_iter()
            .map(|(n, t)| (format!("opt.{n}"), t)),
    );
    Ok(tensors)
}

/// Loads what [`checkpoint_tensors`] wrote back into the same parameters.
pub fn restore_checkpoint_tensors(
    loaded: &Loaded,
    store: &ParamStore,
    ema: &mut Ema,
    opt: &mut Adam,
) -> Result<()> {
    let pick = |prefix: &str| -> Vec<(String, Tensor)> {
        loaded
            .tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
            .collect()
    };
    let model: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("ema.") && !n.starts_with("opt."))
        .cloned()
        .collect();
    store.load_state_dict(&model)?;
    ema.load_state_dict(&pick("ema."))?;
    opt.load_state_dict(&pick("opt."))
}

/// Integer metadata `key` of a checkpoint.
pub fn metadata_u64(loaded: &Loaded, path: &Path, key: &str) -> Result<u64> {
    loaded
        .metadata
        .get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Io {
            path: path.display().to_string(),
            msg: format!("checkpoint metadata has no valid '{key}'"),
        })
}
