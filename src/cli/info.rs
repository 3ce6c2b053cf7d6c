//! `noisegrad info`: what a checkpoint holds (model, training config, classes).

use clap::Args;
use noisegrad::engine::{Device, Result};
use std::path::PathBuf;

#[derive(Args)]
pub struct InfoArgs {
    /// A diffusion checkpoint (`train`) or a classifier (`train-classifier`).
    #[arg(long)]
    pub checkpoint: PathBuf,
}

pub fn info(a: InfoArgs) -> Result<()> {
    let loaded = noisegrad::engine::io::load(&a.checkpoint, Device::Cpu)?;
    let m = &loaded.metadata;
    let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("-");
    let params: usize = loaded
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("ema.") && !n.starts_with("opt."))
        .map(|(_, t)| t.numel())
        .sum();
    println!("{}", a.checkpoint.display());
    println!("  format:       {}", get("format"));
    println!("  parameters:   {params}");
    println!("  model:        {}", get("model_config"));
    for key in ["step", "diffusion_steps", "clean", "train_config"] {
        if let Some(v) = m.get(key) {
            println!("  {key:<13} {v}");
        }
    }
    let names = super::checkpoint_class_names(m);
    if names.is_empty() {
        println!("  classes:      none (unconditional)");
    } else {
        println!("  classes:      {}", names.len());
        for (i, n) in names.iter().enumerate() {
            println!("    {i}: {n}");
        }
    }
    Ok(())
}
