//! What every command shares: the device flags, the embedded data, loading
//! a checkpoint back into a model, I/O errors that name the file.

use clap::Args;
use noisegrad::diffusion::data::load_dataset;
use noisegrad::diffusion::data::{ImageDataset, parse_cifar10};
use noisegrad::diffusion::parameterization::Prediction;
use noisegrad::diffusion::schedule::Schedule;
use noisegrad::diffusion::train::TrainConfig;
use noisegrad::diffusion::train::trained::TrainedModel;
use noisegrad::diffusion::unet::{UNet, UNetConfig};
use noisegrad::diffusion::variance::reverse_output;
use noisegrad::engine::{Device, Philox, Result, Tensor};
use std::path::{Path, PathBuf};

pub mod bench;
pub mod eval;
pub mod export;
pub mod guard;
pub mod guide;
pub mod info;
pub mod inpaint;
pub mod interpolate;
pub mod latent;
pub mod sample;
pub mod score;
pub mod train;
pub mod train_autoencoder;
pub mod train_classifier;
pub mod world;

/// The embedded default dataset (real CIFAR-10 records; see assets/cifar10-sample/README.md).
pub const EMBEDDED_TRAIN: &[u8] =
    include_bytes!("../../assets/cifar10-sample/cifar-10-batches-bin/data_batch_1.bin");
pub const EMBEDDED_TEST: &[u8] =
    include_bytes!("../../assets/cifar10-sample/cifar-10-batches-bin/test_batch.bin");

/// The embedded Fashion-MNIST sample (300 train and 100 test images per
/// class; see assets/fashion-mnist-sample/README.md): the default data of
/// the class-conditional commands.
const FASHION: [&[u8]; 4] = [
    include_bytes!("../../assets/fashion-mnist-sample/train-images-idx3-ubyte.gz"),
    include_bytes!("../../assets/fashion-mnist-sample/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../assets/fashion-mnist-sample/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../assets/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz"),
];

/// A labelled dataset and its class names: `path`, or the embedded
/// Fashion-MNIST sample (train or test split) when None.
pub fn load_labelled_data(
    path: &Option<PathBuf>,
    train: bool,
) -> Result<(ImageDataset, Vec<String>)> {
    use noisegrad::diffusion::data as d;
    let ds = match path {
        Some(p) => {
            let ds = load_dataset(p, train)?;
            let names = d::class_names(p, &ds)?;
            return Ok((ds, names));
        }
        None => {
            let (imgs, labels) = if train {
                (FASHION[0], FASHION[1])
            } else {
                (FASHION[2], FASHION[3])
            };
            let name = format!(
                "embedded Fashion-MNIST sample ({} split)",
                if train { "train" } else { "test" }
            );
            let unzip = |b: &[u8]| {
                d::gunzip_if_compressed(b.to_vec())
                    .map_err(|e| noisegrad::engine::Error::Data(format!("{name}: {e}")))
            };
            let ds = d::parse_idx_images(&unzip(imgs)?, &name)?;
            d::attach_labels(ds, d::parse_idx_labels(&unzip(labels)?, &name)?, &name)?
        }
    };
    let names = d::FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok((ds, names))
}

/// Class names stored in a checkpoint's metadata (empty if none).
pub fn checkpoint_class_names(meta: &std::collections::HashMap<String, String>) -> Vec<String> {
    meta.get("class_names")
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_default()
}

/// Where to run, shared by every command.
#[derive(Args, Clone, Copy)]
pub struct DeviceArgs {
    /// cpu, cuda (= cuda:0) or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// On CUDA, allow TF32 tensor-core GEMMs (PyTorch's allow_tf32).
    #[arg(long)]
    pub tf32: bool,
}

/// `--resume` and which settings it may change, shared by the trainers.
#[derive(Args, Clone, Debug)]
pub struct ResumeArgs {
    /// Continue from the run folder's checkpoint, with the run's settings.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: settings allowed to differ from the checkpoint's,
    /// comma-separated flag names (e.g. lr,batch-size). Without it a resume
    /// with any different setting is refused, naming each one and which can
    /// change; --steps may always change.
    #[arg(
        long = "override",
        value_delimiter = ',',
        value_name = "FLAG",
        requires = "resume"
    )]
    pub overrides: Vec<String>,
}

/// Set by Ctrl-C, SIGTERM or SIGHUP; long loops check it between steps.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Routes Ctrl-C, SIGTERM and SIGHUP to `interrupted()` instead of killing
/// the process, so a training loop can save its checkpoint first and a
/// sampler stops at its next step. A second one exits at once (status 130).
pub fn catch_interrupts() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
    })
    .map_err(|e| {
        noisegrad::engine::Error::Interrupted(format!("cannot install the Ctrl-C handler: {e}"))
    })
}

/// An "interrupted" error once a stop was asked for: long loops call it
/// every step (`main` then exits with status 130).
pub fn stop_if_interrupted() -> Result<()> {
    match interrupted() {
        true => Err(noisegrad::engine::Error::Interrupted(
            "interrupted (Ctrl-C, SIGTERM or SIGHUP)".into(),
        )),
        false => Ok(()),
    }
}

/// What a trainer returns once it has saved its checkpoint on a stop (`main`
/// then exits with status 130: the run did not finish).
pub fn interrupted_at_checkpoint(step: u64, ckpt: &Path) -> noisegrad::engine::Error {
    noisegrad::engine::Error::Interrupted(format!(
        "interrupted (Ctrl-C, SIGTERM or SIGHUP) at step {step}: checkpoint saved to {}; add --resume to the same command to continue",
        ckpt.display()
    ))
}

/// Whether a stop was asked for since `catch_interrupts`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The run folder's JSONL log, opened for appending after dropping every
/// line past `step` (the step training starts from: 0, or the checkpoint's
/// on `--resume`), so a resumed run's log holds each step once.
pub fn open_run_log(out: &Path, step: u64) -> Result<(std::fs::File, PathBuf)> {
    let path = out.join("log.jsonl");
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&path, e)),
    };
    let kept: String = old
        .lines()
        .filter(|l| log_line_step(l).is_some_and(|s| s <= step))
        .map(|l| format!("{l}\n"))
        .collect();
    if kept != old {
        noisegrad::engine::io::write_atomically(&path, kept.as_bytes())?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    Ok((file, path))
}

/// Refuses samples holding a NaN or ±∞ (a diverged model's output) before
/// anything is written to `path`: a grid of garbage is not a result.
pub fn check_finite_samples(images: &Tensor, path: &Path) -> Result<()> {
    let values = images.to_vec_f64();
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(io_err(
        path,
        format!(
            "not written: sampling produced {bad} non-finite values (NaN/inf) out of {}; the model's weights have diverged",
            values.len()
        ),
    ))
}

/// The `"step"` of one log.jsonl line.
fn log_line_step(line: &str) -> Option<u64> {
    let rest = &line[line.find("\"step\":")? + 7..];
    rest.split([',', '}']).next()?.trim().parse().ok()
}

/// Steps per second of this invocation alone (a resumed run started at
/// `first_step`, not 0).
pub fn steps_per_second(first_step: u64, last_step: u64, elapsed: std::time::Duration) -> f64 {
    last_step.saturating_sub(first_step) as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A whole number ≥ 1 (steps, batch sizes, counts, intervals): zero is
/// rejected when the flags are parsed, so no command can run on it.
pub fn positive<T: TryFrom<u64>>(s: &str) -> std::result::Result<T, String> {
    let v: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(v).map_err(|_| format!("{v} is too large"))
}

/// Runs a whole command on a thread of the rayon pool the kernels split
/// their work over. Outside it, the main thread hands every kernel to the
/// pool and sleeps until it is done; inside, the thread that runs the code
/// between kernels (tape, allocation, small ops) also takes the first share
/// of each kernel, with no hand-off. Measured on 2 cores: training steps
/// 1.08–1.14× faster for `small` and `cifar10`, 1.4× for `tiny`
/// (`cargo run --release --example train_step_in_pool`, BENCHMARKS.md).
/// The pool has `RAYON_NUM_THREADS` threads (default: one per CPU) with the
/// main thread's 8 MiB stack. Everything the command does, MPI included,
/// stays on that one thread.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .thread_name(|i| format!("noisegrad-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        // Without threads of its own (a refused spawn), run where we are.
        Err(_) => f(),
    }
}

/// A number in [0, 1] (DDIM's η).
pub fn unit_interval(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is outside [0, 1]"));
    }
    Ok(v)
}

pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse()
}

/// Checks the device can be used and applies the TF32 choice.
pub fn open_device(d: DeviceArgs) -> Result<Device> {
    if let Device::Cuda(i) = d.device {
        d.device.set_tf32(d.tf32)?;
        println!(
            "device cuda:{i}: {}, TF32 {}",
            d.device.describe()?,
            if d.tf32 { "on" } else { "off" }
        );
    }
    Ok(d.device)
}

/// A path flag as a resume setting: the file it names wherever the command
/// was run from (so `runs/x` and `./runs/x` agree), or "embedded" without one.
pub fn data_setting(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.clone())
            .display()
            .to_string(),
        None => "embedded".into(),
    }
}

/// A value-enum flag's value as it is spelled on the command line.
pub fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

pub fn load_train_data(path: &Option<PathBuf>) -> Result<ImageDataset> {
    match path {
        Some(p) => load_dataset(p, true),
        None => parse_cifar10(
            EMBEDDED_TRAIN,
            "embedded CIFAR-10 sample (1,000 train images)",
        ),
    }
}

/// The test split of `path`, or the embedded test sample.
pub fn load_test_data(path: &Option<PathBuf>) -> Result<ImageDataset> {
    match path {
        Some(p) => load_dataset(p, false),
        None => parse_cifar10(EMBEDDED_TEST, "embedded CIFAR-10 test sample (256 images)"),
    }
}

/// The model (network, weights, process) of a `train` checkpoint, with its
/// EMA weights or the raw ones, on `device`.
pub fn model_from_checkpoint(path: &Path, use_ema: bool, device: Device) -> Result<TrainedModel> {
    let loaded = noisegrad::engine::io::load(path, Device::Cpu)?;
    latent::reject_autoencoder_checkpoint(path, &loaded.metadata)?;
    let cfg_json =
        loaded
            .metadata
            .get("model_config")
            .ok_or_else(|| noisegrad::engine::Error::Io {
                path: path.display().to_string(),
                msg: "not a noisegrad training checkpoint (no model_config metadata)".into(),
            })?;
    let model = UNetConfig::from_json(cfg_json).map_err(|e| io_err(path, e))?;
    let diffusion = noisegrad::diffusion::train::DiffusionMetadata::read(&loaded.metadata)
        .map_err(|e| io_err(path, e))?;
    let mut cfg = TrainConfig::ddpm(model);
    diffusion.apply(&mut cfg);
    cfg.device = device;
    cfg.class_names = checkpoint_class_names(&loaded.metadata);
    cfg.latent = noisegrad::diffusion::latent::LatentInfo::from_metadata(path, &loaded.metadata)?;
    let trained = TrainedModel::new(cfg)?;
    trained.load_weights(&loaded, path, use_ema)?;
    Ok(trained)
}

/// The model of diffusers `UNet2DModel` weights (`sample --from-diffusers`):
/// the U-Net from the `config.json` beside `path`, the weights renamed to
/// ours, and the DDPM process of Ho et al. (linear β 1e-4 → 0.02, T = 1000,
/// ε-prediction, σ² = β_t), which is what `google/ddpm-cifar10-32`'s
/// scheduler uses (diffusers keeps the scheduler in a separate folder).
pub fn model_from_diffusers(path: &Path, device: Device) -> Result<TrainedModel> {
    let config_path = path.with_file_name("config.json");
    let json = std::fs::read_to_string(&config_path).map_err(|e| {
        io_err(
            &config_path,
            format!("diffusers weights need their config.json beside them: {e}"),
        )
    })?;
    let model = noisegrad::diffusion::diffusers_names::config_from_diffusers(
        &json,
        &config_path.display().to_string(),
    )?;
    let theirs = noisegrad::engine::io::load(path, Device::Cpu)?.tensors;
    let mut cfg = TrainConfig::ddpm(model.clone());
    cfg.device = device;
    let trained = TrainedModel::new(cfg)?;
    let ours = noisegrad::diffusion::diffusers_names::from_diffusers(
        &model,
        &theirs,
        &trained.store.params(),
    )
    .map_err(|e| io_err(path, e))?;
    trained.store.load_state_dict(&ours)?;
    Ok(trained)
}

pub fn io_err(path: &Path, e: impl std::fmt::Display) -> noisegrad::engine::Error {
    noisegrad::engine::Error::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// The trained network as the reverse process reads it: ε̂ converted from
/// its prediction target (with `schedule`, the one it was trained on, at the
/// original steps it is called with) and its variance output, if any.
pub fn reverse_model<'a>(
    model: &'a UNet,
    schedule: &'a Schedule,
    predict: Prediction,
) -> impl FnMut(&Tensor, &[usize]) -> Result<(Tensor, Option<Tensor>)> + 'a {
    reverse_model_of(
        move |x: &Tensor, t: &[usize]| model.forward(x, t, false, &mut Philox::new(0)),
        schedule,
        predict,
    )
}

/// The same for any network closure `raw(x, t)` giving the model's raw
/// output (e.g. a classifier-free guided one).
pub fn reverse_model_of<'a>(
    mut raw: impl FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a,
    schedule: &'a Schedule,
    predict: Prediction,
) -> impl FnMut(&Tensor, &[usize]) -> Result<(Tensor, Option<Tensor>)> + 'a {
    move |x, t| {
        // Every sampler, the bound and interpolation call the network once
        // per step through here: where a Ctrl-C stops them.
        stop_if_interrupted()?;
        let out = raw(x, t)?;
        reverse_output(schedule, predict, x, t, &out)
    }
}
