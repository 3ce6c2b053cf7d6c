//! Training the autoencoder: Adam with warmup, global grad-norm clipping,
//! an EMA of the weights, and exact resume — the DDPM trainer's pieces
//! (batcher, optimizer, checkpoint tensors) on the objective of
//! [`autoencoder_loss`].

use crate::autoencoder::{
    AUTOENCODER_FORMAT, Autoencoder, AutoencoderConfig, RecLoss, autoencoder_config_json,
    autoencoder_loss,
};
use crate::data::{Batcher, BatcherState, ImageDataset};
use crate::latent::check_image_shape;
use crate::train_state::{RunFlags, checkpoint_tensors, metadata_u64, restore_checkpoint_tensors};
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, AdamConfig, Ema, WarmupSchedule};
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor, no_grad};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct AutoencoderTrainConfig {
    pub model: AutoencoderConfig,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub random_flip: bool,
    pub rec_loss: RecLoss,
    /// β of the KL term (LDM: 1e-6).
    pub kl_weight: f64,
    pub seed: u64,
    pub device: Device,
    /// The command-line settings, stored so `--resume` can refuse another run's.
    pub run_flags: RunFlags,
}

impl AutoencoderTrainConfig {
    pub fn new(model: AutoencoderConfig) -> Self {
        Self {
            model,
            batch_size: 16,
            lr: 1e-3,
            warmup_steps: 50,
            grad_clip: 1.0,
            ema_decay: 0.999,
            random_flip: true,
            rec_loss: RecLoss::L1,
            kl_weight: 1e-6,
            seed: 0,
            device: Device::Cpu,
            run_flags: RunFlags::default(),
        }
    }
}

/// What one optimisation step reports.
#[derive(Clone, Copy, Debug)]
pub struct AutoencoderStepStats {
    pub step: u64,
    pub loss: f64,
    pub rec: f64,
    pub kl: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

pub struct AutoencoderTrainer {
    pub config: AutoencoderTrainConfig,
    pub store: ParamStore,
    pub model: Autoencoder,
    opt: Adam,
    ema: Ema,
    warmup: WarmupSchedule,
    batcher: Batcher,
    rng: Philox,
    step: u64,
}

impl AutoencoderTrainer {
    pub fn new(config: AutoencoderTrainConfig, data: Arc<ImageDataset>) -> Result<Self> {
        check_image_shape(&config.model, &data)?;
        if data.is_empty() {
            return Err(Error::Data(format!("dataset {} is empty", data.source)));
        }
        let store = ParamStore::new(DType::F32, config.device, config.seed);
        let model = Autoencoder::new(config.model.clone(), &store)?;
        let opt = Adam::new(store.params(), AdamConfig::adam(config.lr))?;
        let ema = Ema::new(store.params(), config.ema_decay)?;
        let batcher = Batcher::new(
            data,
            config.batch_size,
            config.random_flip,
            config.seed ^ 0x6461_7461,
        );
        Ok(Self {
            warmup: WarmupSchedule::new(config.lr, config.warmup_steps),
            rng: Philox::new(config.seed ^ 0x6165_6165),
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

    /// One step on the next batch: z ~ q(z|x) by reparameterisation, x̂ = D(z).
    pub fn train_step(&mut self) -> Result<AutoencoderStepStats> {
        self.rng.reserve_blocks(0);
        let x = self.batcher.next_batch()?.to_device(self.config.device)?;
        let post = self.model.encode(&x)?;
        let recon = self.model.decode(&post.sample(&mut self.rng)?)?;
        let loss = autoencoder_loss(
            &x,
            &recon,
            &post,
            self.config.rec_loss,
            self.config.kl_weight,
        )?;
        self.opt.zero_grad();
        loss.total.backward()?;
        let value = loss.total.item()?;
        if !value.is_finite() {
            return Err(Error::Diverged(format!(
                "autoencoder training diverged at step {}: loss is {value} (lower the learning rate)",
                self.step + 1
            )));
        }
        let lr = self.warmup.lr(self.step + 1);
        self.opt.set_lr(lr);
        let grad_norm = self.opt.step_clipped_deferred(self.config.grad_clip)?;
        self.ema.update()?;
        self.step += 1;
        Ok(AutoencoderStepStats {
            step: self.step,
            loss: value,
            rec: loss.rec.item()?,
            kl: loss.kl.item()?,
            grad_norm: grad_norm.value()?,
            lr,
        })
    }

    /// Runs `f` with the EMA weights in the model, restoring them afterwards.
    pub fn with_ema<R>(&mut self, f: impl FnOnce(&Autoencoder) -> Result<R>) -> Result<R> {
        self.ema.swap()?;
        let out = f(&self.model);
        self.ema.swap()?;
        out
    }

    /// The posterior-mean reconstruction D(μ(x)) of images in [−1, 1], clamped.
    pub fn reconstruct(model: &Autoencoder, x: &Tensor) -> Result<Tensor> {
        no_grad(|| model.decode(&model.encode(x)?.mean)?.clamp(-1.0, 1.0))
    }

    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let tensors = checkpoint_tensors(&self.store, &self.ema, &self.opt)?;
        let (seed, offset) = self.rng.state();
        let b = self.batcher.state();
        let mut meta = HashMap::from([
            ("format".to_string(), AUTOENCODER_FORMAT.to_string()),
            ("step".to_string(), self.step.to_string()),
            ("rng_seed".to_string(), seed.to_string()),
            ("rng_offset".to_string(), offset.to_string()),
            ("data_epoch".to_string(), b.epoch.to_string()),
            ("data_position".to_string(), b.position.to_string()),
            (
                "autoencoder_config".to_string(),
                self.config.model.to_json(),
            ),
            ("train_config".to_string(), format!("{:?}", self.config)),
        ]);
        meta.extend(self.config.run_flags.metadata());
        noisegrad_engine::io::save(path, &tensors, &meta)
    }

    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let loaded = noisegrad_engine::io::load(path, Device::Cpu)?;
        self.config.run_flags.check_resume(path, &loaded.metadata)?;
        let stored =
            AutoencoderConfig::from_json(autoencoder_config_json(path, &loaded.metadata)?)?;
        if stored != self.config.model {
            return Err(Error::Io {
                path: path.display().to_string(),
                msg: format!(
                    "checkpoint autoencoder {} differs from this run's {}",
                    stored.to_json(),
                    self.config.model.to_json()
                ),
            });
        }
        restore_checkpoint_tensors(
            &loaded,
            path,
            &self.store,
            &mut self.ema,
            &mut self.opt,
            true,
        )?;
        let meta = |k: &str| metadata_u64(&loaded, path, k);
        self.step = meta("step")?;
        self.rng = Philox::from_state(meta("rng_seed")?, meta("rng_offset")?);
        self.batcher.restore(BatcherState {
            epoch: meta("data_epoch")?,
            position: meta("data_position")?,
        });
        Ok(())
    }
}
