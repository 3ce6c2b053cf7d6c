//! `noisegrad train-autoencoder`: the KL autoencoder of latent diffusion,
//! with the same run folder as `train` (checkpoint, log.jsonl, loss.png)
//! plus reconstructions.png and the test-set reconstruction error.

use super::train::{progress_bar, read_loss_log};
use super::{DeviceArgs, io_err, load_test_data, load_train_data, open_device};
use clap::{Args, ValueEnum};
use noisegrad::diffusion::autoencoder::{AutoencoderConfig, RecLoss, psnr_db};
use noisegrad::diffusion::autoencoder_train::{AutoencoderTrainConfig, AutoencoderTrainer};
use noisegrad::diffusion::data::{ImageDataset, batch_from};
use noisegrad::diffusion::image::{save_grid, save_loss_plot};
use noisegrad::diffusion::latent::check_image_shape;
use noisegrad::diffusion::train_state::RunFlags;
use noisegrad::engine::{Device, Result, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, ValueEnum)]
pub enum RecLossArg {
    L1,
    L2,
}

#[derive(Args)]
pub struct TrainAutoencoderArgs {
    /// Dataset, as for `train`. Default: the sample embedded in the binary.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Downsampling factor f (a power of two). Default: 4, or 2 when the
    /// latent side would be odd (28×28 → 14×14).
    #[arg(long)]
    pub factor: Option<usize>,
    /// Latent channels C_z.
    #[arg(long, default_value_t = 4)]
    pub z_channels: usize,
    /// Base channel count.
    #[arg(long, default_value_t = 32)]
    pub ch: usize,
    /// Reconstruction loss.
    #[arg(long, value_enum, default_value_t = RecLossArg::L1)]
    pub loss: RecLossArg,
    /// β of the KL(q(z|x) ‖ N(0, I)) term (LDM: 1e-6).
    #[arg(long, default_value_t = 1e-6)]
    pub kl_weight: f64,
    #[arg(long, value_parser = super::positive::<u64>, default_value_t = 1000)]
    pub steps: u64,
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 16)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 50)]
    pub warmup: u64,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    /// EMA decay of the weights used for encoding and decoding.
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    #[arg(long)]
    pub no_flip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder (checkpoint.safetensors, log.jsonl, loss.png, reconstructions.png).
    #[arg(long, default_value = "runs/ae")]
    pub out: PathBuf,
    #[arg(long, value_parser = super::positive::<u64>, default_value_t = 250)]
    pub ckpt_every: u64,
    /// Test images for the final reconstruction MSE/PSNR.
    #[arg(long, value_parser = super::positive::<usize>, default_value_t = 256)]
    pub test_images: usize,
    #[command(flatten)]
    pub resume: super::ResumeArgs,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn train_autoencoder(a: TrainAutoencoderArgs) -> Result<()> {
    let data = Arc::new(load_train_data(&a.data)?);
    if data.height != data.width {
        return Err(noisegrad::engine::Error::Data(format!(
            "the autoencoder needs square images, {} has {}×{}",
            data.source, data.height, data.width
        )));
    }
    let factor = a
        .factor
        .unwrap_or_else(|| AutoencoderConfig::default_factor(data.height));
    let model = AutoencoderConfig {
        ch: a.ch,
        z_channels: a.z_channels,
        ..AutoencoderConfig::for_images(data.height, data.channels, factor)?
    };
    model.validate()?;
    super::guard::check_batch_fits(
        "--batch-size",
        a.batch_size,
        model.in_channels,
        model.image_size,
        model.ch,
    )?;
    let mut cfg = AutoencoderTrainConfig::new(model);
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.warmup_steps = a.warmup;
    cfg.grad_clip = a.grad_clip;
    cfg.ema_decay = a.ema;
    cfg.random_flip = !a.no_flip;
    cfg.rec_loss = match a.loss {
        RecLossArg::L1 => RecLoss::L1,
        RecLossArg::L2 => RecLoss::L2,
    };
    cfg.kl_weight = a.kl_weight;
    cfg.seed = a.seed;
    cfg.device = open_device(a.dev)?;
    cfg.run_flags = run_flags(&a, &cfg)?;
    std::fs::create_dir_all(&a.out).map_err(|e| io_err(&a.out, e))?;
    let _lock = super::guard::RunLock::acquire(&a.out)?;
    let ckpt = a.out.join("checkpoint.safetensors");
    let mut trainer = AutoencoderTrainer::new(cfg, data.clone())?;
    if a.resume.resume {
        trainer.load_checkpoint(&ckpt)?;
        println!("resumed from {} at step {}", ckpt.display(), trainer.step());
    }
    let [zc, zh, zw] = trainer.model.config.latent_shape();
    println!(
        "training autoencoder ({} parameters, f = {factor}: {}×{}×{} → {zc}×{zh}×{zw}) on {} ({} images), batch {}, {} steps → {}",
        trainer.store.num_elements(),
        data.channels,
        data.height,
        data.width,
        data.source,
        data.len(),
        a.batch_size,
        a.steps,
        a.out.display()
    );
    super::catch_interrupts()?;
    let (mut log, log_path) = super::open_run_log(&a.out, trainer.step())?;
    let mut losses = read_loss_log(&log_path, trainer.step());
    let bar = progress_bar(a.steps, trainer.step());
    let started = Instant::now();
    while trainer.step() < a.steps {
        let s = trainer.train_step()?;
        losses.push((s.step, s.loss));
        let line = format!(
            "{{\"step\":{},\"loss\":{:.6},\"rec\":{:.6},\"kl\":{:.4},\"grad_norm\":{:.4},\"lr\":{:.3e},\"elapsed_s\":{:.2}}}",
            s.step,
            s.loss,
            s.rec,
            s.kl,
            s.grad_norm,
            s.lr,
            started.elapsed().as_secs_f64()
        );
        writeln!(log, "{line}").map_err(|e| io_err(&log_path, e))?;
        bar.set_position(s.step);
        bar.set_message(format!("rec {:.4} kl {:.1}", s.rec, s.kl));
        let interrupted = super::interrupted();
        if s.step % a.ckpt_every == 0 || s.step == a.steps || interrupted {
            trainer.save_checkpoint(&ckpt)?;
            save_loss_plot(&a.out.join("loss.png"), &losses)?;
        }
        if interrupted {
            bar.abandon_with_message(format!("interrupted: checkpoint saved at step {}", s.step));
            return Err(super::interrupted_at_checkpoint(s.step, &ckpt));
        }
    }
    bar.finish_with_message("done");
    if !ckpt.exists() {
        trainer.save_checkpoint(&ckpt)?;
    }
    let test = load_test_data(&a.data)?.take(a.test_images);
    let grid = a.out.join("reconstructions.png");
    let device = trainer.config.device;
    let (mse, n) = trainer.with_ema(|model| {
        write_reconstructions(model, &data, &grid, device)?;
        reconstruction_mse(model, &test, device)
    })?;
    println!(
        "reconstruction on {n} test images ({}): MSE {mse:.5} (on [−1, 1]), PSNR {:.2} dB",
        test.source,
        psnr_db(mse)
    );
    println!(
        "wrote {0}/reconstructions.png (originals above reconstructions), {0}/loss.png, {0}/checkpoint.safetensors, {0}/log.jsonl",
        a.out.display()
    );
    Ok(())
}

/// The settings `--resume` compares with the checkpoint's.
fn run_flags(a: &TrainAutoencoderArgs, cfg: &AutoencoderTrainConfig) -> Result<RunFlags> {
    RunFlags::default()
        .fixed("data", super::data_setting(&a.data))
        .fixed("factor", cfg.model.factor())
        .fixed("z-channels", cfg.model.z_channels)
        .fixed("ch", cfg.model.ch)
        .fixed("seed", cfg.seed)
        .changeable("loss", super::value_name(a.loss))
        .changeable("kl-weight", cfg.kl_weight)
        .changeable("batch-size", cfg.batch_size)
        .changeable("lr", cfg.lr)
        .changeable("warmup", cfg.warmup_steps)
        .changeable("grad-clip", cfg.grad_clip)
        .changeable("ema", cfg.ema_decay)
        .changeable("no-flip", !cfg.random_flip)
        .with_overrides(&a.resume.overrides)
}

/// Eight originals above their posterior-mean reconstructions.
fn write_reconstructions(
    model: &noisegrad::diffusion::autoencoder::Autoencoder,
    data: &ImageDataset,
    path: &Path,
    device: Device,
) -> Result<()> {
    let n = data.len().min(8);
    let x = batch_from(data, 0, n)?.to_device(device)?;
    let recon = AutoencoderTrainer::reconstruct(model, &x)?;
    save_grid(path, &Tensor::concat(&[&x, &recon], 0)?, n)
}

/// Mean squared error (on [−1, 1]) of posterior-mean reconstructions over
/// `data`, and the number of images.
pub fn reconstruction_mse(
    model: &noisegrad::diffusion::autoencoder::Autoencoder,
    data: &ImageDataset,
    device: Device,
) -> Result<(f64, usize)> {
    check_image_shape(&model.config, data)?;
    let (mut sum, mut count) = (0.0, 0usize);
    for start in (0..data.len()).step_by(32) {
        let n = 32.min(data.len() - start);
        let x = batch_from(data, start, n)?.to_device(device)?;
        let recon = AutoencoderTrainer::reconstruct(model, &x)?;
        sum += x.sub(&recon)?.square()?.sum_all()?.item()?;
        count += x.numel();
    }
    Ok((sum / count.max(1) as f64, data.len()))
}
