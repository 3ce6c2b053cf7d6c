//! A trained model for sampling and evaluation: the network, its weights
//! and the diffusion process of a run, without what only training needs
//! (optimizer, EMA shadow, data, random streams, the world of processes).
//!
//! The [`Trainer`](super::Trainer) is built from one of these, so a sampled
//! model and a trained one are the same network by construction.

use super::TrainConfig;
use crate::schedule::Schedule;
use crate::train_state::undoubled;
use crate::unet::UNet;
use noisegrad_engine::io::Loaded;
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::{DType, Error, Result, Tensor};
use std::path::Path;

pub struct TrainedModel {
    pub config: TrainConfig,
    pub store: ParamStore,
    pub model: UNet,
    pub schedule: Schedule,
}

impl TrainedModel {
    /// The network and process of `config`, its weights drawn from the
    /// config's seed. Checks the settings that shape them and derives the
    /// network's output width from the objective (a learned variance adds
    /// channels).
    pub fn new(mut config: TrainConfig) -> Result<TrainedModel> {
        config.objective.validate()?;
        if config.diffusion_steps < 2 || config.diffusion_steps > 100_000 {
            return Err(Error::Config(format!(
                "--diffusion-steps must be in 2..=100000, got {}",
                config.diffusion_steps
            )));
        }
        config.model.out_mult = config.objective.output_multiplier();
        config.device.set_tf32(config.tf32)?;
        let store = ParamStore::new(DType::F32, config.device, config.seed);
        let model = UNet::new(config.model.clone(), &store)?;
        Ok(TrainedModel {
            schedule: Schedule::new(config.schedule, config.diffusion_steps),
            config,
            store,
            model,
        })
    }

    /// Loads the weights of a `train` checkpoint (already read and its
    /// checksum verified by `io::load`): the EMA copy (`ema.*`, what
    /// DDPM samples from) or the raw weights. Every parameter must be
    /// there with its shape, and no weight may be absurd. Unlike resuming,
    /// this does not care how many processes wrote the checkpoint or with
    /// which flags.
    pub fn load_weights(&self, loaded: &Loaded, path: &Path, use_ema: bool) -> Result<()> {
        loaded.check_weights(path)?;
        let weights: Vec<(String, Tensor)> = loaded
            .tensors
            .iter()
            .filter_map(|(n, t)| {
                let n = undoubled(n);
                let name = match use_ema {
                    true => n.strip_prefix("ema.")?,
                    false if n.starts_with("ema.") || n.starts_with("opt.") => return None,
                    false => n,
                };
                Some((name.to_string(), t.clone()))
            })
            .collect();
        self.store
            .load_state_dict(&weights)
            .map_err(|e| match use_ema {
                true => Error::Io {
                    path: path.display().to_string(),
                    msg: format!("its EMA weights (ema.*) do not fit the model: {e}"),
                },
                false => e,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unet::UNetConfig;
    use std::collections::HashMap;

    fn tiny(seed: u64) -> TrainedModel {
        let mut cfg = TrainConfig::ddpm(UNetConfig::tiny());
        cfg.seed = seed;
        TrainedModel::new(cfg).unwrap()
    }

    fn weights(m: &TrainedModel) -> Vec<Vec<f64>> {
        m.store
            .params()
            .iter()
            .map(|(_, t)| t.to_vec_f64())
            .collect()
    }

    /// A checkpoint whose raw weights are `raw`'s and EMA weights `ema`'s.
    fn checkpoint(raw: &TrainedModel, ema: Option<&TrainedModel>) -> Loaded {
        let mut tensors = raw.store.params();
        if let Some(e) = ema {
            tensors.extend(
                e.store
                    .params()
                    .into_iter()
                    .map(|(n, t)| (format!("ema.{n}"), t)),
            );
        }
        Loaded {
            tensors,
            metadata: HashMap::new(),
        }
    }

    #[test]
    fn loads_the_ema_or_the_raw_weights() {
        let (raw, ema, target) = (tiny(1), tiny(2), tiny(3));
        assert_ne!(weights(&raw), weights(&ema));
        let file = checkpoint(&raw, Some(&ema));
        let path = Path::new("test.safetensors");
        target.load_weights(&file, path, true).unwrap();
        assert_eq!(weights(&target), weights(&ema));
        target.load_weights(&file, path, false).unwrap();
        assert_eq!(weights(&target), weights(&raw));
    }

    #[test]
    fn a_checkpoint_without_ema_weights_is_refused_for_ema_sampling() {
        let (raw, target) = (tiny(1), tiny(3));
        let e = target
            .load_weights(&checkpoint(&raw, None), Path::new("x.safetensors"), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("x.safetensors") && e.contains("EMA weights (ema.*)"),
            "{e}"
        );
    }
}
