//! `noisegrad train`: the training loop with its progress bar, log,
//! checkpoints, loss plot and sample grids.

use super::latent::{LatentRun, LatentSample};
use super::world::DistBackend;
use super::{DeviceArgs, io_err, load_labelled_data, load_train_data, open_device};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use noisegrad::diffusion::guidance::cfg_eps;
use noisegrad::diffusion::image::{save_grid, save_labelled_grid, save_loss_plot};
use noisegrad::diffusion::latent::LatentDecoder;
use noisegrad::diffusion::objective::{LossKind, Objective, VarianceKind};
use noisegrad::diffusion::parameterization::Prediction;
use noisegrad::diffusion::process::DdimSpacing;
use noisegrad::diffusion::sample::{DdimOptions, SampleOptions, ddim_sample};
use noisegrad::diffusion::schedule::BetaSchedule;
use noisegrad::diffusion::train::ddp::DdpOptions;
use noisegrad::diffusion::train::{StepStats, TrainConfig, Trainer};
use noisegrad::diffusion::train_state::RunFlags;
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::diffusion::vlb::EpsModel;
use noisegrad::engine::comm::Communicator;
use noisegrad::engine::{Philox, Result, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset: a cifar-10-batches-bin folder, a Fashion-MNIST folder or IDX file, or a folder of PNGs
    /// (class subfolders give labels). Default: the Fashion-MNIST sample embedded in the binary,
    /// trained class-conditionally.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Model preset: tiny, small (4.4 M parameters) or cifar10 (35.7 M, the DDPM model).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Override the preset's base channel count.
    #[arg(long)]
    pub ch: Option<usize>,
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Optimisation steps.
    #[arg(long, value_parser = super::positive::<u64>, default_value_t = 1500)]
    pub steps: u64,
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 16)]
    pub batch_size: usize,
    /// Adam learning rate. Default: 2e-4 (the DDPM recipe) with --data; 1e-3 for the
    /// embedded default run, whose few minutes of training want larger steps.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear learning-rate warmup steps (DDPM: 5000).
    #[arg(long, default_value_t = 100)]
    pub warmup: u64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// EMA decay of the weights used for sampling (DDPM: 0.9999).
    #[arg(long, default_value_t = 0.995)]
    pub ema: f64,
    /// Disable random horizontal flips.
    #[arg(long)]
    pub no_flip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder (checkpoint, log.jsonl, loss.png, samples.png).
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Save a checkpoint every N steps (and at the end, and on Ctrl-C).
    #[arg(long, value_parser = super::positive::<u64>, default_value_t = 250)]
    pub ckpt_every: u64,
    /// Write a sample grid every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub sample_every: u64,
    /// DDIM steps for the periodic and final sample grids.
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 50)]
    pub sample_steps: usize,
    #[command(flatten)]
    pub resume: super::ResumeArgs,
    /// Class-conditional model (on by default for the embedded data): labels are
    /// dropped to the null label with probability --p-uncond, for classifier-free guidance.
    #[arg(long)]
    pub class_cond: bool,
    /// Probability of training a class-conditional model on the null label (Ho & Salimans: 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub p_uncond: f64,
    /// Classifier-free guidance weight w of the class-conditional sample grids.
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f64,
    /// β schedule: linear (DDPM, 1e-4 → 0.02) or cosine (improved DDPM, s = 0.008).
    #[arg(long, default_value = "linear")]
    pub schedule: String,
    /// Number of diffusion steps T.
    #[arg(long, default_value_t = 1000)]
    pub diffusion_steps: usize,
    /// Reverse variance: fixed (σ² = β_t) or learned (improved DDPM eq. 15; the U-Net outputs 2C channels).
    #[arg(long, default_value = "fixed")]
    pub variance: String,
    /// Loss: simple (L_simple), hybrid (L_simple + 0.001 L_vlb) or vlb (L_vlb, importance-sampled t).
    #[arg(long, default_value = "simple")]
    pub loss: String,
    /// Prediction target: eps, x0 or v (= √ᾱ ε − √(1−ᾱ) x₀).
    #[arg(long, default_value = "eps")]
    pub predict: String,
    /// Min-SNR-γ weighting of the MSE term (Hang et al. 2023; 5 is their choice).
    #[arg(long)]
    pub min_snr: Option<f64>,
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Latent diffusion: train on the latents of this autoencoder checkpoint
    /// (from `train-autoencoder`); the U-Net's channels and size come from
    /// the latent shape, and samples are decoded to images.
    #[arg(long)]
    pub latent: Option<PathBuf>,
    /// With --latent: train on the posterior mean of each image, or on a fresh
    /// sample z ~ q(z|x) at every use.
    #[arg(long, value_enum, default_value_t = LatentSample::Mean)]
    pub latent_sample: LatentSample,
    /// With --resume: continue a checkpoint written by a run on another number
    /// of processes (the global batch is re-split over this run's processes).
    #[arg(long)]
    pub reshard: bool,
    /// The library that averages gradients over processes: auto (on several
    /// processes, NCCL for --device cuda when built with it, else MPI), mpi, or
    /// nccl (also for one process: its collectives still run, a smoke test).
    #[arg(long, value_enum, default_value_t = DistBackend::Auto)]
    pub dist_backend: DistBackend,
    /// On several processes: about how many MiB of gradient one all-reduce
    /// carries (PyTorch DDP's bucket_cap_mb). Smaller buckets start sooner
    /// during backward; larger ones pay the per-message latency less often.
    #[arg(long, value_parser = bucket_mib, default_value_t = 25.0)]
    pub bucket_mb: f64,
    /// On several processes with MPI: start each bucket's all-reduce while
    /// backward still runs (MPI_Iallreduce), instead of after backward. Off
    /// by default: on one machine whose cores all compute, measured slower
    /// (BENCHMARKS.md "Data-parallel training"); for nodes on a network with
    /// cores to spare. NCCL always reduces after backward.
    #[arg(long)]
    pub overlap: bool,
}

/// A bucket size in MiB: more than 0, at most 4096 (one bucket per tensor
/// at the small end, one bucket for any model here at the large end).
fn bucket_mib(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(v > 0.0 && v <= 4096.0) {
        return Err(format!("{v} MiB is outside (0, 4096]"));
    }
    Ok(v)
}

/// The data-parallel settings of the command line.
fn ddp_options(a: &TrainArgs) -> DdpOptions {
    DdpOptions {
        reshard: a.reshard,
        bucket_bytes: ((a.bucket_mb * (1u64 << 20) as f64) as usize).max(4),
        overlap: a.overlap,
    }
}

/// `train`, on one process or as one rank of an `mpirun` job (only rank 0
/// prints and writes the run folder).
pub fn train(a: TrainArgs) -> Result<()> {
    let (world, device) = super::world::open(a.dist_backend, a.dev.device)?;
    let a = TrainArgs {
        dev: DeviceArgs { device, ..a.dev },
        ..a
    };
    super::world::run_or_abort(&*world.clone(), || train_in(a, world))
}

fn train_in(a: TrainArgs, world: Arc<dyn Communicator>) -> Result<()> {
    let lead = world.rank() == 0;
    let class_cond = a.class_cond || a.data.is_none();
    let (images, class_names) = if class_cond {
        load_labelled_data(&a.data, true)?
    } else {
        (load_train_data(&a.data)?, Vec::new())
    };
    let images = Arc::new(images);
    let latent = LatentRun::open(&a.latent, a.latent_sample, &images, a.dev)?;
    let data = latent.train_data(&images);
    let mut model = UNetConfig::preset(&a.preset)?;
    if class_cond {
        model.num_classes = Some(class_names.len());
    }
    (model.in_channels, model.image_size, _) = data.shape();
    if let Some(ch) = a.ch {
        model.ch = ch;
    }
    if let Some(d) = a.dropout {
        model.dropout = d;
    }
    model.validate()?;
    super::guard::check_unet_batch_fits("--batch-size", a.batch_size, &model)?;
    let mut cfg = TrainConfig::ddpm(model);
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr.unwrap_or(if a.data.is_none() { 1e-3 } else { 2e-4 });
    cfg.warmup_steps = a.warmup;
    cfg.grad_clip = a.grad_clip;
    cfg.ema_decay = a.ema;
    cfg.random_flip = !a.no_flip;
    cfg.seed = a.seed;
    cfg.device = open_device(a.dev)?;
    cfg.tf32 = a.dev.tf32;
    cfg.p_uncond = a.p_uncond;
    cfg.class_names = class_names;
    cfg.schedule = BetaSchedule::parse(&a.schedule)?;
    cfg.diffusion_steps = a.diffusion_steps;
    cfg.objective = objective_from_flags(&a)?;
    cfg.latent = latent.info();
    cfg.run_flags = run_flags(&a, &cfg)?;
    // Only rank 0 writes the run folder, so only it holds the folder's lock.
    let _lock = match lead {
        true => {
            std::fs::create_dir_all(&a.out).map_err(|e| io_err(&a.out, e))?;
            Some(super::guard::RunLock::acquire(&a.out)?)
        }
        false => None,
    };
    let ckpt = a.out.join("checkpoint.safetensors");
    let mut trainer = Trainer::with_data(cfg, data.clone())?;
    // Every rank must cut and start its all-reduces the same way (MPI does
    // not match a blocking collective with a non-blocking one), so the
    // bucket size and overlap are part of what the ranks agree on.
    let ddp = ddp_options(&a);
    let agreed = format!(
        "steps {} buckets {} overlap {}",
        a.steps, ddp.bucket_bytes, ddp.overlap
    );
    trainer.join(world.clone(), &agreed, ddp)?;
    if a.resume.resume {
        trainer.resume_checkpoint(&ckpt)?;
        if lead {
            println!("resumed from {} at step {}", ckpt.display(), trainer.step());
        }
    }
    if !world.is_single() && lead {
        println!(
            "data parallel: {} processes ({}), {} images each per step",
            world.world_size(),
            world.backend(),
            a.batch_size / world.world_size()
        );
    }
    if lead {
        println!(
            "training {} U-Net ({} parameters) on {} ({} images {}×{}×{}), batch {}, {} steps → {}",
            a.preset,
            trainer.store.num_elements(),
            data.source(),
            data.len(),
            data.shape().0,
            data.shape().1,
            data.shape().2,
            a.batch_size,
            a.steps,
            a.out.display()
        );
    }
    super::catch_interrupts()?;
    if !lead {
        return follow(&mut trainer, a.steps);
    }
    let (mut log, log_path) = super::open_run_log(&a.out, trainer.step())?;
    let mut losses = read_loss_log(&log_path, trainer.step());
    let bar = progress_bar(a.steps, trainer.step());
    let started = Instant::now();
    let first_step = trainer.step();
    let parallel = !world.is_single();
    let mut allreduce_s = 0.0;
    while trainer.step() < a.steps {
        let s = trainer.train_step()?;
        losses.push((s.step, s.loss));
        allreduce_s += s.allreduce_s;
        let line = log_line(&s, started.elapsed().as_secs_f64(), parallel);
        writeln!(log, "{line}").map_err(|e| io_err(&log_path, e))?;
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.4}", s.loss));
        // A periodic grid stops early on Ctrl-C; the checkpoint is saved below first.
        let grid = match a.sample_every > 0 && s.step % a.sample_every == 0 && s.step != a.steps {
            true => write_samples(
                &mut trainer,
                &a.out.join(format!("samples_{:06}.png", s.step)),
                a.sample_steps,
                16,
                a.guidance,
                latent.decoder(),
            ),
            false => Ok(()),
        };
        let interrupted = trainer.any_rank(super::interrupted())?;
        if s.step % a.ckpt_every == 0 || s.step == a.steps || interrupted {
            trainer.save_checkpoint(&ckpt)?;
            save_loss_plot(&a.out.join("loss.png"), &losses)?;
        }
        if interrupted {
            bar.abandon_with_message(format!("interrupted: checkpoint saved at step {}", s.step));
            trainer.comm().barrier()?;
            return Err(super::interrupted_at_checkpoint(s.step, &ckpt));
        }
        grid?;
    }
    bar.finish_with_message("done");
    let steps_per_s = super::steps_per_second(first_step, trainer.step(), started.elapsed());
    println!(
        "{steps_per_s:.2} steps/s ({:.1} img/s){}",
        steps_per_s * a.batch_size as f64,
        match parallel {
            true => allreduce_summary(allreduce_s, trainer.step() - first_step, started.elapsed()),
            false => String::new(),
        }
    );
    write_samples(
        &mut trainer,
        &a.out.join("samples.png"),
        a.sample_steps,
        36,
        a.guidance,
        latent.decoder(),
    )?;
    println!(
        "wrote {0}/samples.png, {0}/loss.png, {0}/checkpoint.safetensors, {0}/log.jsonl",
        a.out.display()
    );
    Ok(())
}

/// One log.jsonl line; a run on several processes adds `allreduce_ms`,
/// the milliseconds this step spent averaging gradients over the ranks.
fn log_line(s: &StepStats, elapsed_s: f64, parallel: bool) -> String {
    let comm = match parallel {
        true => format!(",\"allreduce_ms\":{:.2}", s.allreduce_s * 1e3),
        false => String::new(),
    };
    format!(
        "{{\"step\":{},\"loss\":{:.6},\"grad_norm\":{:.4},\"lr\":{:.3e},\"elapsed_s\":{elapsed_s:.2}{comm}}}",
        s.step, s.loss, s.grad_norm, s.lr
    )
}

/// "; all-reduce X ms/step (Y% of the step)" for the summary line, over
/// the `steps` steps of this invocation, which took `elapsed`.
fn allreduce_summary(allreduce_s: f64, steps: u64, elapsed: std::time::Duration) -> String {
    let steps = steps.max(1) as f64;
    let share = allreduce_s / elapsed.as_secs_f64().max(1e-9);
    format!(
        "; gradient all-reduce {:.1} ms/step ({:.1}% of the step)",
        allreduce_s / steps * 1e3,
        share * 100.0
    )
}

/// The loop of a rank other than 0: the same steps and stop decisions as
/// rank 0, with nothing printed or written.
fn follow(trainer: &mut Trainer, steps: u64) -> Result<()> {
    while trainer.step() < steps {
        trainer.train_step()?;
        if trainer.any_rank(super::interrupted())? {
            // Wait for rank 0's checkpoint: its error then ends the job.
            return trainer.comm().barrier();
        }
    }
    Ok(())
}

/// The settings `--resume` compares with the checkpoint's, as this run
/// resolved them (the preset's channel count, the default learning rate…).
fn run_flags(a: &TrainArgs, cfg: &TrainConfig) -> Result<RunFlags> {
    let o = &cfg.objective;
    // The latent mode only means something with --latent.
    let latent_sample = match &a.latent {
        Some(_) => super::value_name(a.latent_sample),
        None => "none".into(),
    };
    RunFlags::default()
        .fixed("data", super::data_setting(&a.data))
        .fixed("preset", &a.preset)
        .fixed("ch", cfg.model.ch)
        .fixed("seed", cfg.seed)
        .fixed("class-cond", cfg.model.num_classes.is_some())
        .fixed("schedule", &a.schedule)
        .fixed("diffusion-steps", cfg.diffusion_steps)
        .fixed("variance", &a.variance)
        .fixed("loss", &a.loss)
        .fixed("predict", &a.predict)
        .fixed(
            "min-snr",
            o.min_snr.map_or("none".into(), |g| g.to_string()),
        )
        .fixed("latent", super::data_setting(&a.latent))
        .fixed("latent-sample", latent_sample)
        .changeable("batch-size", cfg.batch_size)
        .changeable("lr", cfg.lr)
        .changeable("warmup", cfg.warmup_steps)
        .changeable("grad-clip", cfg.grad_clip)
        .changeable("ema", cfg.ema_decay)
        .changeable("dropout", cfg.model.dropout)
        .changeable("no-flip", !cfg.random_flip)
        .changeable("p-uncond", cfg.p_uncond)
        .with_overrides(&a.resume.overrides)
}

/// The objective the flags name (errors name the flag and the choices).
fn objective_from_flags(a: &TrainArgs) -> Result<Objective> {
    let bad = |flag: &str, v: &str, choices: &str| {
        noisegrad::engine::Error::Config(format!("unknown {flag} '{v}' (expected {choices})"))
    };
    let o = Objective {
        predict: Prediction::parse(&a.predict)?,
        variance: match a.variance.as_str() {
            "fixed" => VarianceKind::Fixed,
            "learned" => VarianceKind::Learned,
            v => return Err(bad("--variance", v, "fixed or learned")),
        },
        loss: match a.loss.as_str() {
            "simple" => LossKind::Simple,
            "hybrid" => LossKind::Hybrid,
            "vlb" => LossKind::Vlb,
            v => return Err(bad("--loss", v, "simple, hybrid or vlb")),
        },
        min_snr: a.min_snr,
    };
    o.validate()?;
    Ok(o)
}

/// A grid of `n` samples (DDIM, EMA weights); a class-conditional model
/// gets one labelled row per class, guided with weight `w`.
pub fn write_samples(
    trainer: &mut Trainer,
    path: &Path,
    steps: usize,
    n: usize,
    w: f64,
    decoder: Option<&LatentDecoder>,
) -> Result<()> {
    let cfg = trainer.model.config.clone();
    let names = trainer.config.class_names.clone();
    let per_row = if cfg.num_classes.is_some() {
        8
    } else {
        (n as f64).sqrt().ceil() as usize
    };
    let labels: Option<Vec<usize>> = cfg.num_classes.map(|k| {
        (0..k)
            .flat_map(|y| std::iter::repeat_n(y, per_row))
            .collect()
    });
    let n = labels.as_ref().map_or(n, Vec::len);
    let schedule = trainer.schedule.clone();
    let device = trainer.config.device;
    let predict = trainer.config.objective.predict;
    let images = trainer.with_ema(|model| {
        let mut rng = Philox::new(1234);
        let shape = [n, cfg.in_channels, cfg.image_size, cfg.image_size];
        let opts = SampleOptions::default();
        let mut plain = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
        let net = |x: &Tensor, t: &[usize], y: &[usize]| {
            model.forward_cond(x, t, Some(y), false, &mut Philox::new(0))
        };
        let null = cfg.num_classes.unwrap_or(0);
        let mut guided = labels.clone().map(|y| cfg_eps(net, y, null, w));
        let raw: &mut EpsModel = match guided.as_mut() {
            Some(g) => g,
            None => &mut plain,
        };
        let mut reverse = super::reverse_model_of(raw, &schedule, predict);
        let mut eps = |x: &Tensor, t: &[usize]| Ok(reverse(x, t)?.0);
        Ok(ddim_sample(
            &schedule,
            &mut eps,
            (&shape, device),
            DdimOptions {
                steps,
                spacing: DdimSpacing::Quadratic,
                eta: 0.0,
            },
            &mut rng,
            &opts,
            |_| {},
        )?
        .images)
    })?;
    let images = match decoder {
        Some(d) => d.decode(&images)?,
        None => images,
    };
    super::check_finite_samples(&images, path)?;
    match labels {
        Some(_) => {
            let rows: Vec<String> = (0..cfg.num_classes.unwrap_or(0))
                .map(|k| names.get(k).cloned().unwrap_or_else(|| k.to_string()))
                .collect();
            save_labelled_grid(path, &images, per_row, &rows)?;
            println!("rows of {} (w = {w}): {}", path.display(), rows.join(", "));
            Ok(())
        }
        None => save_grid(path, &images, per_row),
    }
}

/// The training progress bar (steps/s, ETA, a message), at `position` of `len`.
pub fn progress_bar(len: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(position);
    bar
}

pub fn read_loss_log(path: &Path, up_to: u64) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |line: &str, key: &str| -> Option<f64> {
        let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
        line[start..].split([',', '}']).next()?.parse().ok()
    };
    text.lines()
        .filter_map(|l| Some((field(l, "step")? as u64, field(l, "loss")?)))
        .filter(|&(s, _)| s <= up_to)
        .collect()
}
