//! Training with L_simple (DDPM Alg. 1): sample t ~ U{0..T−1}, ε ~ N(0, I),
//! minimise ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖² with Adam, learning-rate
//! warmup, global grad-norm clipping and an EMA of the weights.
//!
//! A run is reproducible from its seed and resumable exactly: a checkpoint
//! holds the weights, the EMA, Adam's moments, the step, the trainer's
//! random stream and the data order, so a resumed run's next losses equal
//! those of an uninterrupted run bit for bit (on the CPU).

pub mod ddp;
pub mod trained;

use crate::data::{Batcher, BatcherState, ImageDataset, TrainData};
use crate::latent::LatentInfo;
use crate::objective::{Objective, batch_loss};
use crate::process::q_sample_coefs;
use crate::resample::LossSecondMomentSampler;
use crate::schedule::{BetaSchedule, Schedule};
use crate::train_state::RunFlags;
use crate::unet::{UNet, UNetConfig};
use ddp::{DdpOptions, Shard};
use noisegrad_engine::comm::{Communicator, Single, backward_and_average};
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::optim::{Adam, AdamConfig, Ema, WarmupSchedule};
use noisegrad_engine::{Device, Error, Philox, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use trained::TrainedModel;

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
    /// Class-conditional training: the probability of replacing a label
    /// by the null label ∅ (Ho & Salimans 2022: 0.1), so one network
    /// learns ε(x, t, y) and ε(x, t, ∅).
    pub p_uncond: f64,
    /// Names of the classes (stored in the checkpoint metadata).
    pub class_names: Vec<String>,
    /// Prediction target, variance and loss (default: DDPM's ε / fixed / L_simple).
    pub objective: Objective,
    /// Latent diffusion: the autoencoder whose latents the model learns.
    pub latent: Option<LatentInfo>,
    /// The command-line settings, stored so `--resume` can refuse another run's.
    pub run_flags: RunFlags,
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
            p_uncond: 0.1,
            class_names: Vec::new(),
            objective: Objective::default(),
            latent: None,
            run_flags: RunFlags::default(),
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
    /// Seconds this step spent averaging gradients over ranks (0 on one
    /// process; see [`backward_and_average`]): the communication backward
    /// did not hide.
    pub allreduce_s: f64,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub store: ParamStore,
    pub model: UNet,
    pub schedule: Schedule,
    opt: Adam,
    pub(crate) ema: Ema,
    warmup: WarmupSchedule,
    pub(crate) batcher: Batcher,
    rng: Philox,
    step: u64,
    /// The timestep importance sampler of `--loss vlb`.
    resampler: Option<LossSecondMomentSampler>,
    /// The data-parallel world (see `ddp.rs`): one process unless joined.
    pub(crate) comm: Arc<dyn Communicator>,
    /// This rank's items of each global batch.
    pub(crate) shard: Shard,
    /// Resharding, bucket size and overlap of the data-parallel step.
    pub(crate) ddp: DdpOptions,
}

impl Trainer {
    pub fn new(config: TrainConfig, data: Arc<ImageDataset>) -> Result<Trainer> {
        Trainer::with_data(config, TrainData::Images(data))
    }

    /// A trainer on images or on autoencoder latents.
    pub fn with_data(config: TrainConfig, data: TrainData) -> Result<Trainer> {
        let TrainedModel {
            config,
            store,
            model,
            schedule,
        } = TrainedModel::new(config)?;
        let m = &config.model;
        let (c, h, w) = data.shape();
        if (c, h, w) != (m.in_channels, m.image_size, m.image_size) {
            return Err(Error::Data(format!(
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
        if data.is_empty() {
            return Err(Error::Data(format!("dataset {} is empty", data.source())));
        }
        check_labels_fit(&data, m.num_classes)?;
        if !(0.0..=1.0).contains(&config.p_uncond) {
            return Err(Error::Config(format!(
                "--p-uncond {} must be in [0, 1]",
                config.p_uncond
            )));
        }
        let opt = Adam::new(store.params(), AdamConfig::adam(config.lr))?;
        let ema = Ema::new(store.params(), config.ema_decay)?;
        let batcher = Batcher::over(
            data,
            config.batch_size,
            config.random_flip,
            config.seed ^ 0x6461_7461,
        );
        Ok(Trainer {
            shard: Shard::full(config.batch_size),
            schedule,
            warmup: WarmupSchedule::new(config.lr, config.warmup_steps),
            rng: Philox::new(config.seed ^ 0x7472_6169),
            resampler: config
                .objective
                .importance_sampled()
                .then(|| LossSecondMomentSampler::new(config.diffusion_steps)),
            config,
            store,
            model,
            opt,
            ema,
            batcher,
            step: 0,
            comm: Arc::new(Single),
            ddp: DdpOptions::default(),
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

    /// The objective's loss for a batch (L_simple by default), with the
    /// graph recorded for backward.
    pub fn loss(&mut self, x0: &Tensor) -> Result<Tensor> {
        self.loss_cond(x0, None)
    }

    /// L_simple with class labels (class-conditional models): each label
    /// becomes ∅ with probability `p_uncond` (classifier-free guidance
    /// training, Ho & Salimans 2022 Alg. 1).
    pub fn loss_cond(&mut self, x0: &Tensor, labels: Option<&[usize]>) -> Result<Tensor> {
        self.loss_shard(x0, labels, Shard::full(x0.dim(0)?))
    }

    /// The loss on `shard` of a global batch: `x0` holds the shard's images,
    /// `labels` the whole batch's. t, ε and the label drops are drawn for
    /// the whole batch and sliced, so the shards of all ranks see exactly
    /// the one-process batch.
    fn loss_shard(
        &mut self,
        x0: &Tensor,
        labels: Option<&[usize]>,
        shard: Shard,
    ) -> Result<Tensor> {
        let n = shard.global;
        let (t_all, weights) = match &self.resampler {
            Some(r) => {
                let (t, w) = r.sample(n, &mut self.rng);
                (t, Some(shard.items(&w)))
            }
            None => (self.sample_timesteps(n), None),
        };
        let t = shard.items(&t_all);
        let mut shape = x0.shape().to_vec();
        shape[0] = n;
        let eps = shard.rows(Tensor::randn(
            &shape,
            x0.dtype(),
            x0.device(),
            &mut self.rng,
        )?)?;
        let xt = x0.q_sample(&eps, &q_sample_coefs(&self.schedule, &t))?;
        let dropped = labels.map(|y| shard.items(&self.drop_labels(y)));
        let mut own = self.dropout_stream();
        let rng = own.as_mut().unwrap_or(&mut self.rng);
        let pred = self
            .model
            .forward_cond(&xt, &t, dropped.as_deref(), true, rng)?;
        let objective = self.config.objective;
        if objective.is_ddpm() {
            return pred.l_simple_loss(&eps);
        }
        let b = batch_loss(
            &self.schedule,
            &objective,
            &pred,
            (x0, &eps),
            (&xt, &t),
            weights.as_deref(),
        )?;
        if self.resampler.is_some() {
            let all = self.gather_per_image(&b.per_image)?;
            if let Some(r) = &mut self.resampler {
                r.update(&t_all, &all);
            }
        }
        Ok(b.loss)
    }

    /// Replaces each label by ∅ (= num_classes) with probability p_uncond.
    fn drop_labels(&mut self, labels: &[usize]) -> Vec<usize> {
        use rand::Rng;
        let null = self.config.model.num_classes.unwrap_or(0);
        let p = self.config.p_uncond;
        labels
            .iter()
            .map(|&y| {
                let u = self.rng.next_u32() as f64 / 4_294_967_296.0;
                if u < p { null } else { y }
            })
            .collect()
    }

    /// One optimisation step on the next batch.
    pub fn train_step(&mut self) -> Result<StepStats> {
        // Start each step on a fresh Philox block, so the saved stream
        // position is exact at every step boundary.
        self.rng.reserve_blocks(0);
        let (x0, labels) = self
            .batcher
            .next_batch_shard(self.shard.start, self.shard.len)?;
        let x0 = x0.to_device(self.config.device)?;
        let conditional = self.config.model.num_classes.is_some();
        let loss = self.loss_shard(&x0, conditional.then_some(&labels[..]), self.shard)?;
        self.opt.zero_grad();
        // Data parallel: every rank's gradient becomes the global batch's
        // (plain backward on one process), before clipping sees it.
        let allreduce_s = backward_and_average(
            &*self.comm,
            &loss,
            &self.store.tensors(),
            self.ddp.bucket_bytes,
            self.ddp.overlap,
        )?;
        // Read the loss only now: on a GPU, reading waits for the device, and
        // by now the whole forward and backward pass is queued behind it. It
        // is still read before the update, so a diverged step changes nothing.
        let loss_value = self.mean_over_ranks(loss.item()?)?;
        drop(loss);
        if !loss_value.is_finite() {
            return Err(Error::Diverged(format!(
                "training diverged at step {}: loss is {loss_value} (lower the learning rate or check the data)",
                self.step + 1
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
            allreduce_s,
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
            (
                "class_names".to_string(),
                serde_json::to_string(&self.config.class_names).expect("strings serialise"),
            ),
        ]);
        meta.extend(self.diffusion_metadata());
        meta.extend(self.world_metadata());
        meta.extend(self.config.run_flags.metadata());
        if let Some(latent) = &self.config.latent {
            meta.extend(latent.metadata());
        }
        noisegrad_engine::io::save(path, &tensors, &meta)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] for
    /// the same configuration, to sample from: the optimizer state may be
    /// absent.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.restore_checkpoint(path, false)
    }

    /// [`Trainer::load_checkpoint`] to go on training (`--resume`): the
    /// optimizer state of every parameter must be there.
    pub fn resume_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.restore_checkpoint(path, true)
    }

    fn restore_checkpoint(&mut self, path: &Path, resume: bool) -> Result<()> {
        // Read on the host; `load_state_dict` copies each tensor into the
        // parameter it belongs to, on whatever device that lives.
        let loaded = noisegrad_engine::io::load(path, Device::Cpu)?;
        let meta = |k: &str| crate::train_state::metadata_u64(&loaded, path, k);
        if resume {
            self.config.run_flags.check_resume(path, &loaded.metadata)?;
        }
        LatentInfo::check_matches(path, &loaded.metadata, self.config.latent.as_ref())?;
        self.check_checkpoint_world(&loaded.metadata, path)?;
        crate::train_state::restore_checkpoint_tensors(
            &loaded,
            path,
            &self.store,
            &mut self.ema,
            &mut self.opt,
            resume,
        )?;
        self.step = meta("step")?;
        self.rng = Philox::from_state(meta("rng_seed")?, meta("rng_offset")?);
        self.batcher.restore(BatcherState {
            epoch: meta("data_epoch")?,
            position: meta("data_position")?,
        });
        self.restore_diffusion_metadata(&loaded.metadata)
            .map_err(|e| Error::Io {
                path: path.display().to_string(),
                msg: e.to_string(),
            })
    }

    /// Schedule, T, objective and the importance sampler's history, as
    /// checkpoint metadata.
    fn diffusion_metadata(&self) -> Vec<(String, String)> {
        let mut m = vec![
            (
                "schedule".to_string(),
                serde_json::to_string(&self.config.schedule).expect("plain enum"),
            ),
            (
                "diffusion_steps".to_string(),
                self.config.diffusion_steps.to_string(),
            ),
            (
                "objective".to_string(),
                serde_json::to_string(&self.config.objective).expect("plain struct"),
            ),
        ];
        if let Some(r) = &self.resampler {
            m.push(("loss_history".to_string(), r.to_json()));
        }
        m
    }

    /// Checks a checkpoint's schedule and objective equal this run's (a
    /// checkpoint without them is DDPM's: linear, T = 1000, ε, fixed) and
    /// restores the importance sampler's history.
    fn restore_diffusion_metadata(&mut self, meta: &HashMap<String, String>) -> Result<()> {
        let stored = DiffusionMetadata::read(meta)?;
        let c = &self.config;
        if (stored.schedule, stored.diffusion_steps, stored.objective)
            != (c.schedule, c.diffusion_steps, c.objective)
        {
            return Err(Error::Checkpoint(format!(
                "checkpoint was trained with {:?}, T = {}, {:?}; this run has {:?}, T = {}, {:?}",
                stored.schedule,
                stored.diffusion_steps,
                stored.objective,
                c.schedule,
                c.diffusion_steps,
                c.objective
            )));
        }
        if let (Some(r), Some(h)) = (&mut self.resampler, meta.get("loss_history")) {
            *r = LossSecondMomentSampler::from_json(h, c.diffusion_steps)?;
        }
        Ok(())
    }
}

/// A class-conditional model needs a label in 0..num_classes for every image.
fn check_labels_fit(data: &TrainData, num_classes: Option<usize>) -> Result<()> {
    let Some(k) = num_classes else {
        return Ok(());
    };
    let labels: Option<Vec<usize>> = (0..data.len()).map(|i| data.label(i)).collect();
    let Some(labels) = labels else {
        return Err(Error::Data(format!(
            "--class-cond needs class labels, but {} has none (use CIFAR-10 batches, an IDX file with its labels-idx1 file beside it, or a folder of class subfolders)",
            data.source()
        )));
    };
    if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
        return Err(Error::Data(format!(
            "{} has label {bad} but the model has {k} classes",
            data.source()
        )));
    }
    Ok(())
}

/// The diffusion settings a checkpoint records.
#[derive(Clone, Copy, Debug)]
pub struct DiffusionMetadata {
    pub schedule: BetaSchedule,
    pub diffusion_steps: usize,
    pub objective: Objective,
}

impl DiffusionMetadata {
    /// Reads them, with DDPM's values for checkpoints written before they
    /// were recorded.
    pub fn read(meta: &HashMap<String, String>) -> Result<DiffusionMetadata> {
        fn parsed<T: serde::de::DeserializeOwned>(
            meta: &HashMap<String, String>,
            key: &str,
            default: T,
        ) -> Result<T> {
            meta.get(key).map_or(Ok(default), |v| {
                serde_json::from_str(v)
                    .map_err(|e| Error::Checkpoint(format!("checkpoint metadata '{key}': {e}")))
            })
        }
        Ok(DiffusionMetadata {
            schedule: parsed(meta, "schedule", BetaSchedule::DDPM)?,
            diffusion_steps: parsed(meta, "diffusion_steps", 1000)?,
            objective: parsed(meta, "objective", Objective::default())?,
        })
    }

    /// Puts these settings into a training configuration.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        cfg.schedule = self.schedule;
        cfg.diffusion_steps = self.diffusion_steps;
        cfg.objective = self.objective;
    }
}
