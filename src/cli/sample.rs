//! `noisegrad sample`: DDPM or DDIM sample grids from a checkpoint.

use super::{DeviceArgs, open_device, reverse_model, trainer_from_checkpoint};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use noisegrad::diffusion::image::save_grid;
use noisegrad::diffusion::langevin::LangevinCorrector;
use noisegrad::diffusion::process::{DdimSpacing, ReverseVariance};
use noisegrad::diffusion::respace::{Respaced, Spacing};
use noisegrad::diffusion::sample::{SampleOptions, ddim_sample, respaced_ddpm_sample};
use noisegrad::diffusion::variance::Sigma;
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
    /// Sampling steps: DDIM's (default 100), or DDPM's respaced K ≤ T
    /// (default T: the full chain; fewer: β recomputed on the subsequence).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM noise scale η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Timestep spacing: uniform or quadratic (DDIM default quadratic; DDPM
    /// default uniform, which also takes section counts such as 10,15,20).
    #[arg(long)]
    pub spacing: Option<String>,
    /// DDPM reverse variance: large (σ² = β) or small (β̃). Default: the
    /// model's own — learned Σ_θ when trained with --variance learned, else large.
    #[arg(long)]
    pub variance: Option<String>,
    /// Langevin corrector steps after each DDPM/DDIM step (predictor–corrector sampling).
    #[arg(long, default_value_t = 0)]
    pub corrector_steps: usize,
    /// Target signal-to-noise ratio r of the corrector's step size.
    #[arg(long, default_value_t = 0.16)]
    pub snr: f64,
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
    let cfg = &trainer.model.config;
    let shape = [a.n, cfg.in_channels, cfg.image_size, cfg.image_size];
    let t_total = trainer.schedule.steps();
    let opts = SampleOptions {
        clip: true,
        progressive_every: if a.progressive {
            (a.steps.unwrap_or(t_total) / 10).max(1)
        } else {
            0
        },
        corrector: LangevinCorrector::new(a.corrector_steps, a.snr)?,
    };
    let mut rng = Philox::new(a.seed);
    let objective = trainer.config.objective;
    let mut net = reverse_model(&trainer.model, &trainer.schedule, objective.predict);
    let steps = match a.sampler {
        Sampler::Ddpm => a.steps.unwrap_or(t_total),
        Sampler::Ddim => a.steps.unwrap_or(100).min(t_total),
    };
    let bar = ProgressBar::new((steps * (1 + a.corrector_steps)) as u64);
    let started = Instant::now();
    let out = match a.sampler {
        Sampler::Ddpm => {
            let sigma = match a.variance.as_deref() {
                None => objective.sigma(),
                Some("large") => Sigma::Fixed(ReverseVariance::FixedLarge),
                Some("small") => Sigma::Fixed(ReverseVariance::FixedSmall),
                Some(v) => {
                    return Err(noisegrad::engine::Error::Msg(format!(
                        "--variance must be large or small, got '{v}'"
                    )));
                }
            };
            let spacing = Spacing::parse(a.spacing.as_deref().unwrap_or("uniform"), steps)?;
            let respaced = Respaced::spaced(&trainer.schedule, &spacing)?;
            let per_step = 1 + a.corrector_steps as u64;
            respaced_ddpm_sample(
                &respaced,
                sigma,
                &mut net,
                &shape,
                device,
                &mut rng,
                &opts,
                |_| bar.inc(per_step),
            )?
        }
        Sampler::Ddim => {
            let spacing = match a.spacing.as_deref().unwrap_or("quadratic") {
                "uniform" => DdimSpacing::Uniform,
                "quadratic" => DdimSpacing::Quadratic,
                s => {
                    return Err(noisegrad::engine::Error::Msg(format!(
                        "--spacing must be uniform or quadratic, got '{s}'"
                    )));
                }
            };
            let mut eps = |x: &Tensor, t: &[usize]| Ok(net(x, t)?.0);
            ddim_sample(
                &trainer.schedule,
                &mut eps,
                &shape,
                device,
                steps,
                spacing,
                a.eta,
                &mut rng,
                &opts,
                |_| bar.inc(1 + a.corrector_steps as u64),
            )?
        }
    };
    bar.finish();
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
