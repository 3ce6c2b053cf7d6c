//! Checkpoint pieces every trainer shares: the weights, `ema.*` and `opt.*`
//! tensors, and integer metadata read back with an error naming the file.

use noisegrad_engine::io::Loaded;
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, Ema};
use noisegrad_engine::{Error, Result, Tensor};
use std::path::Path;

/// The weights (their own names), the EMA (`ema.*`) and Adam's state
/// (`opt.*`). [`Ema::state_dict`] and [`Adam::state_dict`] already name
/// their tensors with those prefixes, so they are saved as given.
pub fn checkpoint_tensors(
    store: &ParamStore,
    ema: &Ema,
    opt: &Adam,
) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = store.state_dict();
    tensors.extend(ema.state_dict());
    tensors.extend(opt.state_dict()?);
    Ok(tensors)
}

/// A tensor name as [`checkpoint_tensors`] writes it today: checkpoints
/// written before the prefixes were fixed hold `ema.ema.<name>` and
/// `opt.opt.m.<name>`, which still load.
pub fn undoubled(name: &str) -> &str {
    for prefix in ["ema.", "opt."] {
        if let Some(rest) = name.strip_prefix(prefix)
            && rest.starts_with(prefix)
        {
            return rest;
        }
    }
    name
}

/// Loads what [`checkpoint_tensors`] wrote (at `path`) back into the same
/// parameters, after refusing implausible weights
/// ([`Loaded::check_weights`]). With `resume`, the optimizer state of every
/// parameter must be there: resuming without it would silently restart
/// Adam's moments. Without (sampling), weights alone are enough.
pub fn restore_checkpoint_tensors(
    loaded: &Loaded,
    path: &Path,
    store: &ParamStore,
    ema: &mut Ema,
    opt: &mut Adam,
    resume: bool,
) -> Result<()> {
    loaded.check_weights(path)?;
    let tensors: Vec<(String, Tensor)> = loaded
        .tensors
        .iter()
        .map(|(n, t)| (undoubled(n).to_string(), t.clone()))
        .collect();
    if resume {
        check_optimizer_state(&tensors, path, store)?;
    }
    let model: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("ema.") && !n.starts_with("opt."))
        .cloned()
        .collect();
    store.load_state_dict(&model)?;
    ema.load_state_dict(&tensors)?;
    opt.load_state_dict(&tensors)
}

/// Every parameter of `store` has `opt.m.`, `opt.v.` and `opt.step.`
/// entries in `tensors`, or an error naming the first missing ones.
fn check_optimizer_state(
    tensors: &[(String, Tensor)],
    path: &Path,
    store: &ParamStore,
) -> Result<()> {
    let have: std::collections::HashSet<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let params = store.params();
    let missing: Vec<String> = params
        .iter()
        .flat_map(|(n, _)| ["opt.m.", "opt.v.", "opt.step."].map(|p| format!("{p}{n}")))
        .filter(|k| !have.contains(k.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
    Err(Error::Io {
        path: path.display().to_string(),
        msg: format!(
            "cannot resume: the optimizer state is incomplete, {} of {} opt.* tensors missing (e.g. {}); the file still samples, but training must start afresh",
            missing.len(),
            3 * params.len(),
            shown.join(", ")
        ),
    })
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
