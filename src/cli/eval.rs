//! `noisegrad eval`: the variational bound in bits/dim on a test set.

use super::{DeviceArgs, EMBEDDED_TEST, model_from_checkpoint, open_device, reverse_model};
use clap::Args;
use noisegrad::diffusion::data::{load_dataset, parse_cifar10};
use noisegrad::diffusion::process::DdimSpacing;
use noisegrad::diffusion::respace::{Respaced, Spacing};
use noisegrad::diffusion::vlb::bits_per_dim_with;
use noisegrad::engine::{Philox, Result, Tensor};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Test data (default: the embedded CIFAR-10 test sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Number of test images.
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 64)]
    pub images: usize,
    /// Evaluate this many quadratically spaced timesteps, each standing for its
    /// neighbours (0 = all T terms: the exact bound).
    #[arg(long, default_value_t = 50)]
    pub timesteps: usize,
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The bound of the model respaced to K uniformly spaced steps (β
    /// recomputed on them), as respaced DDPM sampling uses it.
    #[arg(long)]
    pub respaced: Option<usize>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    super::catch_interrupts()?;
    let device = open_device(a.dev)?;
    let trained = model_from_checkpoint(&a.checkpoint, true, device)?;
    let batch = a.batch_size.min(a.images);
    super::guard::check_unet_batch_fits("--batch-size", batch, &trained.model.config)?;
    let decoder = super::latent::decoder_of_checkpoint(&a.checkpoint, device)?;
    let data = match &a.data {
        Some(p) => load_dataset(p, false)?,
        None => parse_cifar10(EMBEDDED_TEST, "embedded CIFAR-10 test sample (256 images)")?,
    }
    .take(a.images);
    let base = &trained.schedule;
    let respaced = match a.respaced {
        Some(k) => Respaced::spaced(base, &Spacing::Sections(vec![k]))?,
        None => Respaced::new(base, (0..base.steps()).collect())?,
    };
    let schedule = &respaced.schedule;
    let t_total = schedule.steps();
    // A partial bound evaluates quadratically spaced steps: the KL terms are
    // large and change fast at small t, where this grid is dense.
    let steps: Option<Vec<usize>> = (a.timesteps > 0 && a.timesteps < t_total).then(|| {
        let mut v = noisegrad::diffusion::process::ddim_timesteps(
            t_total,
            a.timesteps,
            DdimSpacing::Quadratic,
        );
        v.push(t_total - 1);
        v
    });
    let objective = trained.config.objective;
    let mut net = reverse_model(&trained.model, base, objective.predict);
    // The model is conditioned on the original steps of the respaced ones.
    let mut model = |x: &Tensor, t: &[usize]| net(x, &respaced.original(t));
    let mut rng = Philox::new(a.seed);
    let (mut total, mut parts, mut n) = (0.0, [0.0; 4], 0usize);
    let mut exact = true;
    let started = Instant::now();
    for start in (0..data.len()).step_by(a.batch_size.max(1)) {
        let count = a.batch_size.min(data.len() - start);
        let x0 = noisegrad::diffusion::data::batch_from(&data, start, count)?.to_device(device)?;
        let x0 = match &decoder {
            Some(d) => d.encode(&x0)?,
            None => x0,
        };
        let b = bits_per_dim_with(
            schedule,
            objective.sigma(),
            &mut model,
            &x0,
            steps.as_deref(),
            true,
            &mut rng,
        )?;
        let w = count as f64;
        total += b.total * w;
        parts[0] += b.prior * w;
        parts[1] += b.kl_terms * w;
        parts[2] += b.decoder * w;
        parts[3] += b.l_simple * w;
        exact &= b.exact;
        n += count;
    }
    let nf = n as f64;
    if !(total / nf).is_finite() {
        return Err(noisegrad::engine::Error::NonFinite(format!(
            "eval of {}: bits/dim is {} (L_T {}, Σ L_t {}, L_0 {}): the model's output is not finite, its weights have diverged",
            a.checkpoint.display(),
            total / nf,
            parts[0] / nf,
            parts[1] / nf,
            parts[2] / nf
        )));
    }
    println!(
        "bits/dim {:.4} on {n} images ({}): L_T {:.4} + Σ L_t {:.4} + L_0 {:.4}; L_simple {:.5}  [{:.1}s]",
        total / nf,
        if exact {
            format!("exact: all {t_total} terms")
        } else {
            format!(
                "partial: {} of {t_total} timesteps, KL sum as a Riemann sum",
                steps.map_or(t_total, |s| s.len())
            )
        },
        parts[0] / nf,
        parts[1] / nf,
        parts[2] / nf,
        parts[3] / nf,
        started.elapsed().as_secs_f64()
    );
    if let Some(d) = &decoder {
        let (mse, _) = super::train_autoencoder::reconstruction_mse(&d.autoencoder, &data, device)?;
        println!(
            "latent space: the bound above is per latent dimension of the scaled latents \
             (its L_0 treats them as 256-level data in [−1, 1]); it is NOT comparable to \
             pixel-space bits/dim. Autoencoder reconstruction on these images: MSE {mse:.5}, \
             PSNR {:.2} dB",
            noisegrad::diffusion::autoencoder::psnr_db(mse)
        );
    }
    Ok(())
}
