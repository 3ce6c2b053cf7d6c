//! `noisegrad sample`: DDPM or DDIM sample grids from a checkpoint.

use super::guide::{check_classifier_fits, parse_classes};
use super::inpaint::{inpaint_row, load_image_and_mask};
use super::{DeviceArgs, io_err, model_from_checkpoint, open_device, reverse_model_of};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use noisegrad::diffusion::classifier::load_classifier;
use noisegrad::diffusion::guidance::{
    GuidedSampler, cfg_eps, classifier_guided_eps, input_gradient,
};
use noisegrad::diffusion::image::save_grid;
use noisegrad::diffusion::image::save_labelled_grid;
use noisegrad::diffusion::inpaint::inpaint;
use noisegrad::diffusion::langevin::LangevinCorrector;
use noisegrad::diffusion::process::{DdimSpacing, ReverseVariance};
use noisegrad::diffusion::respace::{Respaced, Spacing};
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample, respaced_ddpm_sample};
use noisegrad::diffusion::variance::Sigma;
use noisegrad::diffusion::vlb::EpsModel;
use noisegrad::engine::Error;
use noisegrad::engine::{Philox, Result, Tensor};
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum Sampler {
    Ddpm,
    Ddim,
}

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint written by `train` (or, with --from-diffusers, a diffusers
    /// `UNet2DModel` weights file, e.g. `export --format diffusers` output).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// --checkpoint holds diffusers `UNet2DModel` weights (names as diffusers'
    /// DDPM layout, the `config.json` beside the file); sampled with Ho et al.'s
    /// process (linear β 1e-4 → 0.02, T = 1000). --no-ema has no effect.
    #[arg(long)]
    pub from_diffusers: bool,
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    pub sampler: Sampler,
    /// Sampling steps: DDIM's (default 100), or DDPM's respaced K ≤ T
    /// (default T: the full chain; fewer: β recomputed on the subsequence).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM noise scale η (0 = deterministic).
    #[arg(long, value_parser = super::unit_interval, default_value_t = 0.0)]
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
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 64)]
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
    /// Class to draw: a number, a class name, or `all` (one row of --n / K samples per class).
    /// Needs a class-conditional checkpoint or --classifier.
    #[arg(long)]
    pub class: Option<String>,
    /// Classifier-free guidance weight w: ε̃ = (1 + w) ε(x, y) − w ε(x, ∅); 0 = plain
    /// conditional. diffusers' guidance_scale is 1 + w.
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f64,
    /// Noise-aware classifier (from `train-classifier`) for classifier guidance.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Classifier guidance scale s (Dhariwal & Nichol): the step moves by s·Σ·∇ log p(y|x_t).
    #[arg(long, default_value_t = 1.0)]
    pub classifier_scale: f64,
    /// Use a class-conditional model's unconditional prediction ε(x, ∅) (with --class and
    /// --classifier: classifier guidance alone).
    #[arg(long)]
    pub uncond: bool,
    /// Inpaint this PNG (DDPM with the replacement method): --n completions of it.
    #[arg(long, requires = "mask")]
    pub inpaint: Option<PathBuf>,
    /// Inpainting mask PNG of the image's size: white (255) = keep, black (0) = generate.
    #[arg(long, requires = "inpaint")]
    pub mask: Option<PathBuf>,
    /// RePaint resampling: repeat every inpainting step R times (1 = plain replacement).
    #[arg(long, default_value_t = 1)]
    pub resample: usize,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn sample(a: SampleArgs) -> Result<()> {
    super::catch_interrupts()?;
    let device = open_device(a.dev)?;
    let (trained, decoder) = match a.from_diffusers {
        true => (super::model_from_diffusers(&a.checkpoint, device)?, None),
        false => (
            model_from_checkpoint(&a.checkpoint, !a.no_ema, device)?,
            super::latent::decoder_of_checkpoint(&a.checkpoint, device)?,
        ),
    };
    let cfg = &trained.model.config;
    let t_total = trained.schedule.steps();
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
    let model = &trained.model;
    let objective = trained.config.objective;
    let classifier = a
        .classifier
        .as_ref()
        .map(|p| load_classifier(p, device))
        .transpose()?;
    if let Some(c) = &classifier {
        check_classifier_fits(c, cfg, t_total)?;
    }
    if !(0.0..=1000.0).contains(&a.guidance) || !a.classifier_scale.is_finite() {
        return Err(Error::Config(format!(
            "--guidance {} must be in [0, 1000] and --classifier-scale finite",
            a.guidance
        )));
    }
    if a.guidance != 0.0 && a.uncond {
        return Err(Error::Config(
            "--guidance needs the conditional prediction; drop --uncond".into(),
        ));
    }
    if a.guidance != 0.0 && cfg.num_classes.is_none() {
        return Err(Error::Config(
            "--guidance needs a class-conditional checkpoint (train with --class-cond); this one is unconditional".into(),
        ));
    }
    let k = cfg
        .num_classes
        .or_else(|| classifier.as_ref().and_then(|c| c.model.config.num_classes));
    let names = if trained.config.class_names.is_empty() {
        classifier
            .as_ref()
            .map(|c| c.class_names.clone())
            .unwrap_or_default()
    } else {
        trained.config.class_names.clone()
    };
    let labels = match (&a.class, k) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::Config(
                "--class needs a class-conditional checkpoint or a --classifier".into(),
            ));
        }
        (Some(spec), Some(k)) => {
            let per = if spec == "all" { (a.n / k).max(1) } else { a.n };
            Some(parse_classes(spec, &names, k, per)?)
        }
    };
    let n = labels.as_ref().map_or(a.n, Vec::len);
    super::guard::check_unet_batch_fits("--n", n, cfg)?;
    let shape = [n, cfg.in_channels, cfg.image_size, cfg.image_size];
    let steps = match a.sampler {
        Sampler::Ddpm => a.steps.unwrap_or(t_total),
        Sampler::Ddim => a.steps.unwrap_or(100).min(t_total),
    };
    let scale = match (&classifier, &labels) {
        (Some(_), Some(_)) => a.classifier_scale,
        _ => 0.0, // no classifier guidance: the wrapper passes ε through
    };
    // The network's raw output: plain, or classifier-free guided. CFG mixes
    // raw outputs with weights summing to 1, and every ε/x₀/v conversion is
    // affine in the output at fixed x_t, so mixing before converting equals
    // mixing the ε's (and mixes a learned variance's v the same way).
    let mut plain = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
    let cond = |x: &Tensor, t: &[usize], y: &[usize]| {
        model.forward_cond(x, t, Some(y), false, &mut Philox::new(0))
    };
    let mut cfg_guided = labels
        .clone()
        .filter(|_| cfg.num_classes.is_some() && !a.uncond)
        .map(|y| cfg_eps(cond, y, cfg.num_classes.unwrap_or(0), a.guidance));
    let raw: &mut EpsModel = match cfg_guided.as_mut() {
        Some(g) => g,
        None => &mut plain,
    };
    let mut net = reverse_model_of(raw, &trained.schedule, objective.predict);
    let ddpm_sigma = match a.variance.as_deref() {
        None => objective.sigma(),
        Some(v) => Sigma::Fixed(parse_variance(v)?),
    };
    let guided_sampler = match (a.sampler, ddpm_sigma) {
        (Sampler::Ddim, _) => GuidedSampler::Ddim,
        (Sampler::Ddpm, Sigma::Fixed(var)) if steps == t_total => GuidedSampler::Ddpm(var),
        (Sampler::Ddpm, _) if scale != 0.0 => {
            return Err(Error::Config(
                "classifier guidance with --sampler ddpm needs all T steps and a fixed variance (--variance large|small)".into(),
            ));
        }
        (Sampler::Ddpm, _) => GuidedSampler::Ddim, // unused: scale is 0
    };
    let wanted = labels.clone().unwrap_or_default();
    let grad = |x: &Tensor, t: &[usize]| match &classifier {
        Some(c) => input_gradient(|xl| c.model.log_prob(xl, t, &wanted), x),
        None => Err(Error::Config(
            "classifier guidance without a classifier".into(),
        )),
    };
    // Classifier guidance shifts ε; a learned variance's v passes through.
    let last_v = std::cell::RefCell::new(None);
    let eps_of_net = |x: &Tensor, t: &[usize]| {
        let (e, v) = net(x, t)?;
        *last_v.borrow_mut() = v;
        Ok(e)
    };
    let mut eps = classifier_guided_eps(eps_of_net, grad, &trained.schedule, guided_sampler, scale);
    if let (Some(image), Some(mask)) = (&a.inpaint, &a.mask) {
        let (x0, m) = load_image_and_mask(image, mask, cfg, n, device)?;
        let bar = ProgressBar::new(t_total as u64);
        let var = parse_variance(a.variance.as_deref().unwrap_or("large"))?;
        let done = inpaint(
            &trained.schedule,
            var,
            &mut eps,
            (&x0, &m),
            a.resample,
            &mut rng,
            |_| bar.inc(1),
        )?;
        bar.finish();
        super::check_finite_samples(&done, &a.out)?;
        save_grid(&a.out, &inpaint_row(&x0, &m, &done)?, n + 2)?;
        println!(
            "wrote {}: original, masked input, {n} completions (resample {})",
            a.out.display(),
            a.resample
        );
        return Ok(());
    }
    let bar = ProgressBar::new((steps * (1 + a.corrector_steps)) as u64);
    let started = Instant::now();
    let out = match a.sampler {
        Sampler::Ddpm => {
            let spacing = Spacing::parse(a.spacing.as_deref().unwrap_or("uniform"), steps)?;
            let respaced = Respaced::spaced(&trained.schedule, &spacing)?;
            let per_step = 1 + a.corrector_steps as u64;
            let mut guided_net = |x: &Tensor, t: &[usize]| {
                let e = eps(x, t)?;
                Ok((e, last_v.borrow_mut().take()))
            };
            respaced_ddpm_sample(
                &respaced,
                ddpm_sigma,
                &mut guided_net,
                (&shape, device),
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
                    return Err(noisegrad::engine::Error::Config(format!(
                        "--spacing must be uniform or quadratic, got '{s}'"
                    )));
                }
            };
            ddim_sample(
                &trained.schedule,
                &mut eps,
                (&shape, device),
                DdimOptions {
                    steps,
                    spacing,
                    eta: a.eta,
                },
                &mut rng,
                &opts,
                |_| bar.inc(1 + a.corrector_steps as u64),
            )?
        }
    };
    bar.finish();
    let out = super::latent::decode_samples(out, decoder.as_ref())?;
    super::check_finite_samples(&out.images, &a.out)?;
    match &labels {
        Some(y) => save_class_grid(&a.out, &out.images, y, &names)?,
        None => save_grid(&a.out, &out.images, (n as f64).sqrt().ceil() as usize)?,
    }
    println!(
        "wrote {} ({} samples in {:.1}s)",
        a.out.display(),
        n,
        started.elapsed().as_secs_f64()
    );
    if a.progressive && !out.progressive.is_empty() {
        // One row per sample (up to 8), one column per kept step: coarse to fine.
        let rows = n.min(8);
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

fn parse_variance(v: &str) -> Result<ReverseVariance> {
    match v {
        "large" => Ok(ReverseVariance::FixedLarge),
        "small" => Ok(ReverseVariance::FixedSmall),
        v => Err(Error::Config(format!(
            "--variance must be large or small, got '{v}'"
        ))),
    }
}

/// One labelled row per run of equal labels, and `<out>.labels.json`
/// beside it (the asked-for class of every tile, for `noisegrad score`).
fn save_class_grid(out: &Path, images: &Tensor, labels: &[usize], names: &[String]) -> Result<()> {
    let per_row = labels
        .iter()
        .take_while(|&&y| y == labels[0])
        .count()
        .max(1);
    let rows: Vec<String> = labels
        .chunks(per_row)
        .map(|c| names.get(c[0]).cloned().unwrap_or_else(|| c[0].to_string()))
        .collect();
    let left = save_labelled_grid(out, images, per_row, &rows)?;
    let sidecar = labels_sidecar(out);
    let json = format!(
        "{{\"columns\":{per_row},\"left\":{left},\"labels\":{}}}",
        serde_json::to_string(labels).expect("numbers serialise")
    );
    std::fs::write(&sidecar, json).map_err(|e| io_err(&sidecar, e))
}

/// `samples.png` → `samples.labels.json`.
pub fn labels_sidecar(png: &Path) -> PathBuf {
    png.with_extension("labels.json")
}
