//! Training with L_simple (DDPM Alg. 1): sample t ~ U{0..T−1}, ε ~ N(0, I),
//! minimise ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² with Adam, learning-rate
//! warmup, global grad-norm clipping and an EMA of the weights.
//!
//! A run is reproducible from its seed and resumable exactly: a checkpoint
//! holds the weights, the EMA, Adam's moments, the step, the trainer's
//! random stream and the data order, so a resumed run's next losses equal
//! those of an uninterrupted run bit for bit (on the CPU).

use crate::data::{Batcher, BatcherState, ImageDataset, TrainData};
use crate::latent::LatentInfo;
use crate::process::q_sample_coefs;
use crate::schedule::{BetaSchedule, Schedule};
use crate::unet::{UNet, UNetConfig};
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, AdamConfig, Ema, WarmupSchedule};
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Everything that defines a training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub model: UNetConfig,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub random_flip: bool,
    pub schedule: BetaSchedule,
    pub diffusion_steps: usize,
    pub seed: u64,
    pub device: Device,
    /// On CUDA, let cuBLAS use TF32 tensor cores for f32 GEMMs (PyTorch's
    /// `allow_tf32`); ignored on the CPU.
    pub tf32: bool,
    /// Latent diffusion: the autoencoder whose latents the model learns.
    pub latent: Option<LatentInfo>,
}

impl TrainConfig {
    /// The DDPM CIFAR-10 recipe for `model`.
    pub fn ddpm(model: UNetConfig) -> Self {
        Self {
            model,
            batch_size: 128,
            lr: 2e-4,
            warmup_steps: 5000,
            grad_clip: 1.0,
            ema_decay: 0.9999,
            random_flip: true,
            schedule: BetaSchedule::DDPM,
            diffusion_steps: 1000,
            seed: 0,
            device: Device::Cpu,
            tf32: false,
            latent: None,
        }
    }
}

/// What one optimisation step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub step: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub store: ParamStore,
    pub model: UNet,
    pub schedule: Schedule,
    opt: Adam,
    ema: Ema,
    warmup: WarmupSchedule,
    batcher: Batcher,
    rng: Philox,
    step: u64,
}

impl Trainer {
    pub fn new(config: TrainConfig, data: Arc<ImageDataset>) -> Result<Trainer> {
        Trainer::with_data(config, TrainData::Images(data))
    }

    /// A trainer on images or on autoencoder latents.
    pub fn with_data(config: TrainConfig, data: TrainData) -> Result<Trainer> {
        let m = &config.model;
        let (c, h, w) = data.shape();
        if (c, h, w) != (m.in_channels, m.image_size, m.image_size) {
            return Err(Error::Msg(format!(
                "dataset {} has {}×{}×{} examples but the model expects {}×{}×{}",
                data.source(),
                c,
                h,
                w,
                m.in_channels,
                m.image_size,
                m.image_size
            )));
        }
        if let Device::Cuda(i) = config.device {
            noisegrad_engine::cuda_backend::cuda_device(i)?.set_tf32(config.tf32);
        }
        if data.is_empty() {
            return Err(Error::Msg(format!("dataset {} is empty", data.source())));
        }
        let store = ParamStore::new(DType::F32, config.device, config.seed);
        let model = UNet::new(config.model.clone(), &store)?;
        let opt = Adam::new(store.params(), AdamConfig::adam(config.lr))?;
        let ema = Ema::new(store.params(), config.ema_decay)?;
        let batcher = Batcher::over(
            data,
            config.batch_size,
            config.random_flip,
            config.seed ^ 0x6461_7461,
        );
        Ok(Trainer {
            schedule: Schedule::new(config.schedule, config.diffusion_steps),
            warmup: WarmupSchedule::new(config.lr, config.warmup_steps),
            rng: Philox::new(config.seed ^ 0x7472_6169),
            config,
            store,
            model,
            opt,
            ema,
            batcher,
            step: 0,
        })
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// t ~ U{0, …, T−1} per sample, from one 32-bit word each (Lemire's
    /// multiply-shift: bias < T/2³², negligible).
    fn sample_timesteps(&mut self, n: usize) -> Vec<usize> {
        use rand::Rng;
        let t = self.schedule.steps() as u64;
        (0..n)
            .map(|_| ((self.rng.next_u32() as u64 * t) >> 32) as usize)
            .collect()
    }

    /// L_simple for a batch, with the graph recorded for backward.
    pub fn loss(&mut self, x0: &Tensor) -> Result<Tensor> {
        let n = x0.dim(0)?;
        let t = self.sample_timesteps(n);
        let eps = Tensor::randn(x0.shape(), x0.dtype(), x0.device(), &mut self.rng)?;
        let xt = x0.q_sample(&eps, &q_sample_coefs(&self.schedule, &t))?;
        let pred = self.model.forward(&xt, &t, true, &mut self.rng)?;
        pred.l_simple_loss(&eps)
    }

    /// One optimisation step on the next batch.
    pub fn train_step(&mut self) -> Result<StepStats> {
        // Start each step on a fresh Philox block, so the saved stream
        // position is exact at every step boundary.
        self.rng.reserve_blocks(0);
        let x0 = self.batcher.next_batch()?.to_device(self.config.device)?;
        let loss = self.loss(&x0)?;
        self.opt.zero_grad();
        loss.backward()?;
        // Read the loss only now: on a GPU, reading waits for the device, and
        // by now the whole forward and backward pass is queued behind it. It
        // is still read before the update, so a diverged step changes nothing.
        let loss_value = loss.item()?;
        drop(loss);
        if !loss_value.is_finite() {
            return Err(Error::Msg(format!(
                "training diverged at step {}: loss is {loss_value} (lower the learning rate or check the data)",
                self.step
            )));
        }
        let lr = self.warmup.lr(self.step + 1);
        self.opt.set_lr(lr);
        // Clipping and the update are queued without waiting; the norm is
        // read (for the log) once the EMA update is queued too.
        let grad_norm = self.opt.step_clipped_deferred(self.config.grad_clip)?;
        self.ema.update()?;
        let grad_norm = grad_norm.value()?;
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: loss_value,
            grad_norm,
            lr,
        })
    }

    /// Runs `f` with the EMA weights in the model (sampling uses them),
    /// restoring the training weights afterwards.
    pub fn with_ema<R>(&mut self, f: impl FnOnce(&UNet) -> Result<R>) -> Result<R> {
        self.ema.swap()?;
        let out = f(&self.model);
        self.ema.swap()?;
        out
    }

    /// Puts the EMA weights into the model for good (sampling/evaluation only).
    pub fn use_ema_weights(&mut self) -> Result<()> {
        self.ema.copy_to_params()
    }

    /// Writes a checkpoint atomically: weights (PyTorch `state_dict` names),
    /// `ema.*`, the optimizer state, and metadata (step, random streams,
    /// data position, config).
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let tensors = crate::train_state::checkpoint_tensors(&self.store, &self.ema, &self.opt)?;
        let (seed, offset) = self.rng.state();
        let b = self.batcher.state();
        let mut meta = HashMap::from([
            (
                "format".to_string(),
                "noisegrad-ddpm-checkpoint-v1".to_string(),
            ),
            ("step".to_string(), self.step.to_string()),
            ("rng_seed".to_string(), seed.to_string()),
            ("rng_offset".to_string(), offset.to_string()),
            ("data_epoch".to_string(), b.epoch.to_string()),
            ("data_position".to_string(), b.position.to_string()),
            ("model_config".to_string(), self.config.model.to_json()),
            ("train_config".to_string(), format!("{:?}", self.config)),
        ]);
        if let Some(latent) = &self.config.latent {
            meta.extend(latent.metadata());
        }
        noisegrad_engine::io::save(path, &tensors, &meta)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] for
    /// the same configuration.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        // Read on the host; `load_state_dict` copies each tensor into the
        // parameter it belongs to, on whatever device that lives.
        let loaded = noisegrad_engine::io::load(path, Device::Cpu)?;
        let meta = |k: &str| crate::train_state::metadata_u64(&loaded, path, k);
        LatentInfo::check_matches(path, &loaded.metadata, self.config.latent.as_ref())?;
        crate::train_state::restore_checkpoint_tensors(
            &loaded,
            &self.store,
            &mut self.ema,
            &mut self.opt,
        )?;
        self.step = meta("step")?;
        self.rng = Philox::from_state(meta("rng_seed")?, meta("rng_offset")?);
        self.batcher.restore(BatcherState {
            epoch: meta("data_epoch")?,
            position: meta("data_position")?,
        });
        Ok(())
    }
}
