//! `noisegrad export`: a checkpoint's model weights as a plain PyTorch
//! `state_dict` file, or under diffusers' `UNet2DModel` names with its
//! `config.json` beside it.

use super::io_err;
use clap::{Args, ValueEnum};
use noisegrad::diffusion::diffusers_names::{diffusers_config, to_diffusers};
use noisegrad::diffusion::export::{checkpoint_model_config, checkpoint_weights, strict_model};
use noisegrad::engine::{Device, Result};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// The model's `state_dict` names (load with `safetensors.torch.load_file`).
    Pytorch,
    /// diffusers' `UNet2DModel` names, plus `config.json` in the same folder.
    Diffusers,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint written by `train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Export the EMA weights (the default).
    #[arg(long, conflicts_with = "no_ema")]
    pub ema: bool,
    /// Export the raw training weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    #[arg(long, value_enum, default_value_t = Format::Pytorch)]
    pub format: Format,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let loaded = noisegrad::engine::io::load(&a.checkpoint, Device::Cpu)?;
    let cfg = checkpoint_model_config(&loaded, &a.checkpoint)?;
    let weights = checkpoint_weights(&loaded, &a.checkpoint, !a.no_ema)?;
    let (store, _) = strict_model(&cfg, &weights).map_err(|e| io_err(&a.checkpoint, e))?;
    let state = store.state_dict();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let which = if a.no_ema { "raw" } else { "EMA" };
    match a.format {
        Format::Pytorch => {
            noisegrad::engine::io::save(&a.out, &state, &meta)?;
            println!(
                "wrote {} ({} {which} tensors, PyTorch state_dict names)",
                a.out.display(),
                state.len()
            );
        }
        Format::Diffusers => {
            let tensors = to_diffusers(&cfg, &state)?;
            let json = serde_json::to_string_pretty(&diffusers_config(&cfg)?).expect("JSON value");
            let dir = a
                .out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let config = dir.join("config.json");
            noisegrad::engine::io::save(&a.out, &tensors, &meta)?;
            noisegrad::engine::io::write_atomically(&config, json.as_bytes())?;
            println!(
                "wrote {} ({} {which} tensors, diffusers UNet2DModel names) and {}",
                a.out.display(),
                tensors.len(),
                config.display()
            );
        }
    }
    Ok(())
}
