//! `noisegrad sample`: DDPM or DDIM sample grids from a checkpoint.

use super::{DeviceArgs, open_device, trainer_from_checkpoint};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use noisegrad::diffusion::image::save_grid;
use noisegrad::diffusion::process::{DdimSpacing, ReverseVariance};
use noisegrad::diffusion::sample::{SampleOptions, ddim_sample, ddpm_sample};
use noisegrad::engine::{Philox, Result, Tensor};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum Sampler {
    Ddpm,
    Ddim,
}

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint written by `train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    pub sampler: Sampler,
    /// DDIM steps (DDPM always uses all T).
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// DDIM noise scale η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// DDIM timestep spacing.
    #[arg(long, default_value = "quadratic")]
    pub spacing: String,
    /// DDPM reverse variance: large (σ² = β, the reference default) or small (β̃).
    #[arg(long, default_value = "large")]
    pub variance: String,
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw training weights instead of the EMA.
    #[arg(long)]
    pub no_ema: bool,
    /// Also save the x̂_0 predictions along the chain (DDPM Fig. 6).
    #[arg(long)]
    pub progressive: bool,
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let device = open_device(a.dev)?;
    let (trainer, _) = trainer_from_checkpoint(&a.checkpoint, !a.no_ema, device)?;
    let decoder = super::latent::decoder_of_checkpoint(&a.checkpoint, device)?;
    let cfg = &trainer.model.config;
    let shape = [a.n, cfg.in_channels, cfg.image_size, cfg.image_size];
    let opts = SampleOptions {
        clip: true,
        progressive_every: if a.progressive { 100 } else { 0 },
    };
    let mut rng = Philox::new(a.seed);
    let model = &trainer.model;
    let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
    let total = match a.sampler {
        Sampler::Ddpm => trainer.schedule.steps(),
        Sampler::Ddim => a.steps.min(trainer.schedule.steps()),
    };
    let bar = ProgressBar::new(total as u64);
    let started = Instant::now();
    let out = match a.sampler {
        Sampler::Ddpm => {
            let var = match a.variance.as_str() {
                "large" => ReverseVariance::FixedLarge,
                "small" => ReverseVariance::FixedSmall,
                v => {
                    return Err(noisegrad::engine::Error::Msg(format!(
                        "--variance must be large or small, got '{v}'"
                    )));
                }
            };
            ddpm_sample(
                &trainer.schedule,
                var,
                &mut eps,
                &shape,
                device,
                &mut rng,
                &opts,
                |_| bar.inc(1),
            )?
        }
        Sampler::Ddim => {
            let spacing = match a.spacing.as_str() {
                "uniform" => DdimSpacing::Uniform,
                "quadratic" => DdimSpacing::Quadratic,
                s => {
                    return Err(noisegrad::engine::Error::Msg(format!(
                        "--spacing must be uniform or quadratic, got '{s}'"
                    )));
                }
            };
            let opts2 = SampleOptions {
                progressive_every: if a.progressive {
                    (a.steps / 10).max(1)
                } else {
                    0
                },
                ..opts
            };
            ddim_sample(
                &trainer.schedule,
                &mut eps,
                &shape,
                device,
                a.steps,
                spacing,
                a.eta,
                &mut rng,
                &opts2,
                |_| bar.inc(1),
            )?
        }
    };
    bar.finish();
    let out = super::latent::decode_samples(out, decoder.as_ref())?;
    let ncol = (a.n as f64).sqrt().ceil() as usize;
    save_grid(&a.out, &out.images, ncol)?;
    println!(
        "wrote {} ({} samples in {:.1}s)",
        a.out.display(),
        a.n,
        started.elapsed().as_secs_f64()
    );
    if a.progressive && !out.progressive.is_empty() {
        // One row per sample (up to 8), one column per kept step: coarse to fine.
        let rows = a.n.min(8);
        let mut frames = Vec::new();
        for i in 0..rows {
            for (_, x0) in &out.progressive {
                frames.push(x0.narrow(0, i, 1)?);
            }
        }
        let refs: Vec<&Tensor> = frames.iter().collect();
        let grid = Tensor::concat(&refs, 0)?;
        let path = a.out.with_file_name(format!(
            "{}_progressive.png",
            a.out
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "samples".into())
        ));
        save_grid(&path, &grid, out.progressive.len())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
