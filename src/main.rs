//! The `noisegrad` command line: `train`, `sample`, `eval`.
//!
//! `noisegrad train` with no arguments is the embedded default: the `tiny`
//! U-Net on the 1,000-image CIFAR-10 sample compiled into this binary, a few
//! minutes on 2 cores, leaving `samples.png`, `loss.png` and a checkpoint
//! in `runs/default/`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use noisegrad::diffusion::data::{ImageDataset, load_dataset, parse_cifar10};
use noisegrad::diffusion::image::{save_grid, save_loss_plot};
use noisegrad::diffusion::process::{DdimSpacing, ReverseVariance};
use noisegrad::diffusion::sample::{SampleOptions, ddim_sample, ddpm_sample};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::diffusion::vlb::bits_per_dim;
use noisegrad::engine::{Device, Philox, Result, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The embedded default dataset (real CIFAR-10 records; see assets/cifar10-sample/README.md).
const EMBEDDED_TRAIN: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");
const EMBEDDED_TEST: &[u8] =
    include_bytes!("../assets/cifar10-sample/cifar-10-batches-bin/test_batch.bin");

#[derive(Parser)]
#[command(
    name = "noisegrad",
    version,
    about = "DDPM diffusion models on a from-scratch autodiff engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DDPM (no arguments: the embedded default run).
    Train(TrainArgs),
    /// Draw samples from a checkpoint with DDPM or DDIM.
    Sample(SampleArgs),
    /// The variational bound in bits/dim on a test set.
    Eval(EvalArgs),
    /// Training throughput: timed steps of a preset at a batch size (img/s,
    /// ms/step, peak memory). The numbers BENCHMARKS.md quotes for whole steps.
    BenchTrain(BenchTrainArgs),
}

/// Where to run, shared by every command.
#[derive(Args, Clone, Copy)]
struct DeviceArgs {
    /// cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// On CUDA, allow TF32 tensor-core GEMMs (PyTorch's allow_tf32).
    #[arg(long)]
    tf32: bool,
}

#[derive(Args)]
struct BenchTrainArgs {
    /// Model preset: tiny, small or cifar10.
    #[arg(long, default_value = "small")]
    preset: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: u64,
    /// Untimed steps first (NVRTC compiles, allocator fills its cache).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Args)]
struct TrainArgs {
    /// Dataset: a cifar-10-batches-bin folder, a Fashion-MNIST folder or IDX file, or a folder of PNGs.
    /// Default: the CIFAR-10 sample embedded in the binary.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model preset: tiny, small (4.4 M parameters) or cifar10 (35.7 M, the DDPM model).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Override the preset's base channel count.
    #[arg(long)]
    ch: Option<usize>,
    #[arg(long)]
    dropout: Option<f64>,
    /// Optimisation steps.
    #[arg(long, default_value_t = 1500)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Linear learning-rate warmup steps (DDPM: 5000).
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// EMA decay of the weights used for sampling (DDPM: 0.9999).
    #[arg(long, default_value_t = 0.995)]
    ema: f64,
    /// Disable random horizontal flips.
    #[arg(long)]
    no_flip: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (checkpoint, log.jsonl, loss.png, samples.png).
    #[arg(long, default_value = "runs/default")]
    out: PathBuf,
    /// Save a checkpoint every N steps (and at the end, and on Ctrl-C).
    #[arg(long, default_value_t = 250)]
    ckpt_every: u64,
    /// Write a sample grid every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    sample_every: u64,
    /// DDIM steps for the periodic and final sample grids.
    #[arg(long, default_value_t = 50)]
    sample_steps: usize,
    /// Continue from the run folder's checkpoint.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Sampler {
    Ddpm,
    Ddim,
}

#[derive(Args)]
struct SampleArgs {
    /// Checkpoint written by `train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[arg(long, value_enum, default_value_t = Sampler::Ddim)]
    sampler: Sampler,
    /// DDIM steps (DDPM always uses all T).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// DDIM noise scale η (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// DDIM timestep spacing.
    #[arg(long, default_value = "quadratic")]
    spacing: String,
    /// DDPM reverse variance: large (σ² = β, the reference default) or small (β̃).
    #[arg(long, default_value = "large")]
    variance: String,
    #[arg(long, default_value_t = 64)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw training weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// Also save the x̂_0 predictions along the chain (DDPM Fig. 6).
    #[arg(long)]
    progressive: bool,
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    #[command(flatten)]
    dev: DeviceArgs,
}

#[derive(Args)]
struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Test data (default: the embedded CIFAR-10 test sample).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Number of test images.
    #[arg(long, default_value_t = 64)]
    images: usize,
    /// Evaluate this many quadratically spaced timesteps, each standing for its
    /// neighbours (0 = all T terms: the exact bound).
    #[arg(long, default_value_t = 50)]
    timesteps: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    dev: DeviceArgs,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(a) => train(a),
        Command::Sample(a) => sample(a),
        Command::Eval(a) => eval(a),
        Command::BenchTrain(a) => bench_train(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse()
}

/// Checks the device can be used and applies the TF32 choice.
fn open_device(d: DeviceArgs) -> Result<Device> {
    if let Device::Cuda(i) = d.device {
        let dev = noisegrad::engine::cuda_backend::cuda_device(i)?;
        dev.set_tf32(d.tf32);
        println!(
            "device cuda:{i}: {} ({}), TF32 {}",
            dev.name(),
            dev.arch(),
            if d.tf32 { "on" } else { "off" }
        );
    }
    Ok(d.device)
}

fn load_train_data(path: &Option<PathBuf>) -> Result<ImageDataset> {
    match path {
        Some(p) => load_dataset(p, true),
        None => parse_cifar10(
            EMBEDDED_TRAIN,
            "embedded CIFAR-10 sample (1,000 train images)",
        ),
    }
}

/// Set by Ctrl-C; the training loop checks it between steps.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn train(a: TrainArgs) -> Result<()> {
    let data = Arc::new(load_train_data(&a.data)?);
    let mut model = UNetConfig::preset(&a.preset)?;
    model.in_channels = data.channels;
    model.image_size = data.height;
    if let Some(ch) = a.ch {
        model.ch = ch;
    }
    if let Some(d) = a.dropout {
        model.dropout = d;
    }
    let mut cfg = TrainConfig::ddpm(model);
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.warmup_steps = a.warmup;
    cfg.grad_clip = a.grad_clip;
    cfg.ema_decay = a.ema;
    cfg.random_flip = !a.no_flip;
    cfg.seed = a.seed;
    cfg.device = open_device(a.dev)?;
    cfg.tf32 = a.dev.tf32;
    std::fs::create_dir_all(&a.out).map_err(|e| io_err(&a.out, e))?;
    let ckpt = a.out.join("checkpoint.safetensors");
    let mut trainer = Trainer::new(cfg, data.clone())?;
    if a.resume {
        trainer.load_checkpoint(&ckpt)?;
        println!("resumed from {} at step {}", ckpt.display(), trainer.step());
    }
    println!(
        "training {} U-Net ({} parameters) on {} ({} images {}×{}×{}), batch {}, {} steps → {}",
        a.preset,
        trainer.store.num_elements(),
        data.source,
        data.len(),
        data.channels,
        data.height,
        data.width,
        a.batch_size,
        a.steps,
        a.out.display()
    );
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).map_err(|e| {
        noisegrad::engine::Error::Msg(format!("cannot install the Ctrl-C handler: {e}"))
    })?;
    let log_path = a.out.join("log.jsonl");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io_err(&log_path, e))?;
    let mut losses = read_loss_log(&log_path, trainer.step());
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.step());
    let started = Instant::now();
    while trainer.step() < a.steps {
        let s = trainer.train_step()?;
        losses.push((s.step, s.loss));
        let line = format!(
            "{{\"step\":{},\"loss\":{:.6},\"grad_norm\":{:.4},\"lr\":{:.3e},\"elapsed_s\":{:.2}}}",
            s.step,
            s.loss,
            s.grad_norm,
            s.lr,
            started.elapsed().as_secs_f64()
        );
        writeln!(log, "{line}").map_err(|e| io_err(&log_path, e))?;
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.4}", s.loss));
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if s.step % a.ckpt_every == 0 || s.step == a.steps || interrupted {
            trainer.save_checkpoint(&ckpt)?;
            save_loss_plot(&a.out.join("loss.png"), &losses)?;
        }
        if interrupted {
            bar.abandon_with_message(format!("interrupted: checkpoint saved at step {}", s.step));
            return Ok(());
        }
        if a.sample_every > 0 && s.step % a.sample_every == 0 && s.step != a.steps {
            write_samples(
                &mut trainer,
                &a.out.join(format!("samples_{:06}.png", s.step)),
                a.sample_steps,
                16,
            )?;
        }
    }
    bar.finish_with_message("done");
    let steps_per_s = (a.steps as f64) / started.elapsed().as_secs_f64();
    println!(
        "{steps_per_s:.2} steps/s ({:.1} img/s)",
        steps_per_s * a.batch_size as f64
    );
    write_samples(&mut trainer, &a.out.join("samples.png"), a.sample_steps, 36)?;
    println!(
        "wrote {0}/samples.png, {0}/loss.png, {0}/checkpoint.safetensors, {0}/log.jsonl",
        a.out.display()
    );
    Ok(())
}

fn write_samples(trainer: &mut Trainer, path: &Path, steps: usize, n: usize) -> Result<()> {
    let cfg = trainer.model.config.clone();
    let schedule = trainer.schedule.clone();
    let device = trainer.config.device;
    let images = trainer.with_ema(|model| {
        let mut rng = Philox::new(1234);
        let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
        let shape = [n, cfg.in_channels, cfg.image_size, cfg.image_size];
        let opts = SampleOptions::default();
        Ok(ddim_sample(
            &schedule,
            &mut eps,
            &shape,
            device,
            steps,
            DdimSpacing::Quadratic,
            0.0,
            &mut rng,
            &opts,
            |_| {},
        )?
        .images)
    })?;
    save_grid(path, &images, (n as f64).sqrt().ceil() as usize)
}

fn read_loss_log(path: &Path, up_to: u64) -> Vec<(u64, f64)> {
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

fn sample(a: SampleArgs) -> Result<()> {
    let device = open_device(a.dev)?;
    let (trainer, _) = trainer_from_checkpoint(&a.checkpoint, !a.no_ema, device)?;
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

/// Rebuilds the trainer (model + schedule) of a checkpoint, optionally with
/// the EMA weights loaded into the model.
fn trainer_from_checkpoint(
    path: &Path,
    use_ema: bool,
    device: Device,
) -> Result<(Trainer, ImageDataset)> {
    let loaded = noisegrad::engine::io::load(path, Device::Cpu)?;
    let cfg_json =
        loaded
            .metadata
            .get("model_config")
            .ok_or_else(|| noisegrad::engine::Error::Io {
                path: path.display().to_string(),
                msg: "not a noisegrad training checkpoint (no model_config metadata)".into(),
            })?;
    let model = UNetConfig::from_json(cfg_json)?;
    // A one-image placeholder dataset of the right size: sampling needs none.
    let dummy = ImageDataset {
        pixels: vec![0; model.in_channels * model.image_size * model.image_size],
        labels: vec![0],
        channels: model.in_channels,
        height: model.image_size,
        width: model.image_size,
        source: "none".into(),
    };
    let mut cfg = TrainConfig::ddpm(model);
    cfg.device = device;
    let mut trainer = Trainer::new(cfg, Arc::new(dummy.clone()))?;
    trainer.load_checkpoint(path)?;
    if use_ema {
        trainer.use_ema_weights()?;
    }
    Ok((trainer, dummy))
}

fn eval(a: EvalArgs) -> Result<()> {
    let device = open_device(a.dev)?;
    let (trainer, _) = trainer_from_checkpoint(&a.checkpoint, true, device)?;
    let data = match &a.data {
        Some(p) => load_dataset(p, false)?,
        None => parse_cifar10(EMBEDDED_TEST, "embedded CIFAR-10 test sample (256 images)")?,
    }
    .take(a.images);
    let t_total = trainer.schedule.steps();
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
    let model = &trainer.model;
    let mut eps = |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0));
    let mut rng = Philox::new(a.seed);
    let (mut total, mut parts, mut n) = (0.0, [0.0; 3], 0usize);
    let mut exact = true;
    let started = Instant::now();
    for start in (0..data.len()).step_by(a.batch_size.max(1)) {
        let count = a.batch_size.min(data.len() - start);
        let x0 = noisegrad::diffusion::data::batch_from(&data, start, count)?.to_device(device)?;
        let b = bits_per_dim(
            &trainer.schedule,
            ReverseVariance::FixedLarge,
            &mut eps,
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
        exact &= b.exact;
        n += count;
    }
    let nf = n as f64;
    println!(
        "bits/dim {:.4} on {n} images ({}): L_T {:.4} + Σ L_t {:.4} + L_0 {:.4}  [{:.1}s]",
        total / nf,
        if exact {
            "exact: all T terms".to_string()
        } else {
            format!(
                "partial: {} of {t_total} timesteps, KL sum as a Riemann sum",
                steps.map_or(t_total, |s| s.len())
            )
        },
        parts[0] / nf,
        parts[1] / nf,
        parts[2] / nf,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn bench_train(a: BenchTrainArgs) -> Result<()> {
    let device = open_device(a.dev)?;
    let data = Arc::new(load_train_data(&None)?);
    let mut cfg = TrainConfig::ddpm(UNetConfig::preset(&a.preset)?);
    cfg.batch_size = a.batch_size;
    cfg.device = device;
    cfg.tf32 = a.dev.tf32;
    let mut trainer = Trainer::new(cfg, data)?;
    println!(
        "{} U-Net ({} parameters), batch {}, on {device}",
        a.preset,
        trainer.store.num_elements(),
        a.batch_size
    );
    for _ in 0..a.warmup {
        trainer.train_step()?;
    }
    noisegrad::engine::memory::reset_peak(device);
    if let Device::Cuda(i) = device {
        noisegrad::engine::cuda_backend::cuda_device(i)?.reset_peak();
    }
    let started = Instant::now();
    let mut last = 0.0;
    for _ in 0..a.steps {
        // Each step reads its loss back, so the clock stops only when the
        // device has finished the work.
        last = trainer.train_step()?.loss;
    }
    let secs = started.elapsed().as_secs_f64();
    let per_step = secs / a.steps.max(1) as f64;
    let peak = noisegrad::engine::memory::stats(device).peak_bytes;
    println!(
        "{:.1} img/s, {:.1} ms/step over {} steps (last loss {last:.4}); peak tensor memory {:.2} GiB",
        a.batch_size as f64 / per_step,
        per_step * 1e3,
        a.steps,
        peak as f64 / (1u64 << 30) as f64
    );
    if let Device::Cuda(i) = device {
        let pool = noisegrad::engine::cuda_backend::cuda_device(i)?.pool_stats();
        println!(
            "CUDA pool: peak in use {:.2} GiB, reserved {:.2} GiB, {} driver allocations",
            pool.peak_in_use as f64 / (1u64 << 30) as f64,
            pool.reserved as f64 / (1u64 << 30) as f64,
            pool.driver_allocs
        );
    }
    Ok(())
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> noisegrad::engine::Error {
    noisegrad::engine::Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}
