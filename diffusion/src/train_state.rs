//! Checkpoint pieces every trainer shares: the weights, `ema.*` and `opt.*`
//! tensors, and integer metadata read back with an error naming the file.

use noisegrad_engine::io::Loaded;
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, Ema};
use noisegrad_engine::{Error, Result, Tensor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Checkpoint metadata key of [`RunFlags`].
pub const RUN_FLAGS_KEY: &str = "run_flags";

/// The command-line settings that define a training run (`--batch-size`,
/// `--seed`, `--lr`, the data, the model preset…), as the values the run
/// resolved them to, stored in its checkpoint so that `--resume` can refuse
/// a command that would silently continue a different run.
///
/// A *fixed* setting can never change on resume (the model's shape, the
/// data, the diffusion, the seed: the random streams continue from the
/// checkpoint). A *changeable* one (learning rate, batch size, EMA…) may,
/// but only when named in `--override`, so a change is always deliberate.
/// `--steps` is not a setting: it is where the run stops, and may always move.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFlags {
    values: BTreeMap<String, String>,
    changeable: BTreeSet<String>,
    overrides: BTreeSet<String>,
}

impl RunFlags {
    /// A setting that can never change on resume.
    pub fn fixed(mut self, flag: &str, value: impl std::fmt::Display) -> Self {
        self.values.insert(flag.to_string(), value.to_string());
        self
    }

    /// A setting `--override` may change on resume.
    pub fn changeable(mut self, flag: &str, value: impl std::fmt::Display) -> Self {
        self.changeable.insert(flag.to_string());
        self.fixed(flag, value)
    }

    /// Allows the changeable settings in `overrides` (flag names without
    /// `--`) to differ from the checkpoint's; a name that is not a setting,
    /// or one that is fixed, is an error naming it.
    pub fn with_overrides(mut self, overrides: &[String]) -> Result<Self> {
        for name in overrides {
            let name = name.trim().trim_start_matches("--");
            if !self.values.contains_key(name) {
                return Err(Error::Config(format!(
                    "--override {name}: no such setting (changeable: {})",
                    self.changeable_list()
                )));
            }
            if !self.changeable.contains(name) {
                return Err(Error::Config(format!(
                    "--override {name}: --{name} cannot change on resume, it defines the run itself (changeable: {})",
                    self.changeable_list()
                )));
            }
            self.overrides.insert(name.to_string());
        }
        Ok(self)
    }

    /// The checkpoint metadata entry; None when no settings were recorded
    /// (a trainer used as a library).
    pub fn metadata(&self) -> Option<(String, String)> {
        (!self.values.is_empty()).then(|| {
            let json = serde_json::to_string(&self.values).expect("strings serialise");
            (RUN_FLAGS_KEY.to_string(), json)
        })
    }

    /// Refuses to resume the checkpoint at `path` (its `meta`) when a
    /// setting differs from the stored one and is not overridden, naming
    /// every such setting with both values. A checkpoint from before
    /// settings were stored, and a trainer without settings, pass.
    pub fn check_resume(&self, path: &Path, meta: &HashMap<String, String>) -> Result<()> {
        let (Some(json), false) = (meta.get(RUN_FLAGS_KEY), self.values.is_empty()) else {
            return Ok(());
        };
        let stored: BTreeMap<String, String> =
            serde_json::from_str(json).map_err(|e| Error::Io {
                path: path.display().to_string(),
                msg: format!("checkpoint metadata '{RUN_FLAGS_KEY}' is unreadable: {e}"),
            })?;
        let differing: Vec<String> = self
            .values
            .iter()
            .filter(|(flag, _)| !self.overrides.contains(*flag))
            .filter_map(|(flag, given)| {
                let was = stored.get(flag).map_or("(not recorded)", String::as_str);
                (was != given).then(|| format!("  --{flag}: checkpoint {was}, this run {given}"))
            })
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        Err(Error::Io {
            path: path.display().to_string(),
            msg: format!(
                "cannot resume: this command's settings differ from the checkpoint's\n{}\nrepeat the run's settings (only --steps may change freely), or name changeable ones in --override (changeable: {})",
                differing.join("\n"),
                self.changeable_list()
            ),
        })
    }

    fn changeable_list(&self) -> String {
        let v: Vec<&str> = self.changeable.iter().map(String::as_str).collect();
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(batch: usize, lr: f64, seed: u64) -> RunFlags {
        RunFlags::default()
            .fixed("seed", seed)
            .changeable("batch-size", batch)
            .changeable("lr", lr)
    }

    fn stored(f: &RunFlags) -> HashMap<String, String> {
        HashMap::from([f.metadata().unwrap()])
    }

    #[test]
    fn same_settings_resume() {
        let f = flags(16, 1e-3, 0);
        f.check_resume(Path::new("c"), &stored(&f)).unwrap();
        // Before settings were stored, and for a library trainer: nothing to compare.
        f.check_resume(Path::new("c"), &HashMap::new()).unwrap();
        RunFlags::default()
            .check_resume(Path::new("c"), &stored(&f))
            .unwrap();
    }

    #[test]
    fn every_difference_is_named_with_both_values() {
        let e = flags(32, 2e-4, 1)
            .check_resume(Path::new("run/c"), &stored(&flags(16, 1e-3, 0)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run/c"), "{e}");
        assert!(
            e.contains("--batch-size: checkpoint 16, this run 32"),
            "{e}"
        );
        assert!(e.contains("--lr: checkpoint 0.001, this run 0.0002"), "{e}");
        assert!(e.contains("--seed: checkpoint 0, this run 1"), "{e}");
        assert!(e.contains("changeable: batch-size, lr"), "{e}");
    }

    #[test]
    fn overrides_allow_only_changeable_settings() {
        let old = stored(&flags(16, 1e-3, 0));
        let lr = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            flags(16, 2e-4, 0).with_overrides(&o)
        };
        lr(&["lr"])
            .unwrap()
            .check_resume(Path::new("c"), &old)
            .unwrap();
        lr(&["--lr"])
            .unwrap()
            .check_resume(Path::new("c"), &old)
            .unwrap();
        // An override of another setting leaves lr's change refused.
        let e = lr(&["batch-size"])
            .unwrap()
            .check_resume(Path::new("c"), &old);
        assert!(e.unwrap_err().to_string().contains("--lr: checkpoint"));
        let e = lr(&["seed"]).unwrap_err().to_string();
        assert!(e.contains("--seed cannot change on resume"), "{e}");
        let e = lr(&["learning-rate"]).unwrap_err().to_string();
        assert!(
            e.contains("--override learning-rate: no such setting"),
            "{e}"
        );
    }
}
