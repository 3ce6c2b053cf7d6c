//! The noise-aware classifier p_φ(y | x_t, t) of classifier guidance
//! (Dhariwal & Nichol 2021, §4): the U-Net's downsampling half with its
//! time embedding and attention, then GroupNorm, SiLU, global average
//! pooling and a linear layer to the class logits. Trained with
//! cross-entropy on x_t ~ q(x_t | x_0) at uniform t, or at t = 0 only
//! (`clean`: an ordinary classifier, used to score samples).

use crate::data::{Batcher, ImageDataset, batch_from};
use crate::process::q_sample_coefs;
use crate::schedule::{BetaSchedule, Schedule};
use crate::unet::{Ctx, Encoder, Norm, UNetConfig, check_input, down_pass, time_embedding};
use noisegrad_engine::nn::{Linear, ParamStore};
use noisegrad_engine::optim::{Adam, AdamConfig};
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor, no_grad};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Metadata `format` of a classifier checkpoint.
pub const CLASSIFIER_FORMAT: &str = "noisegrad-classifier-v1";

pub struct NoiseClassifier {
    /// The encoder's architecture; `num_classes` is the number of outputs.
    pub config: UNetConfig,
    enc: Encoder,
    nout: Norm,
    head: Linear,
}

impl NoiseClassifier {
    pub fn new(config: UNetConfig, store: &ParamStore) -> Result<NoiseClassifier> {
        config.validate()?;
        let k = config
            .num_classes
            .ok_or_else(|| Error::Config("a classifier needs num_classes".into()))?;
        let root = store.root();
        let enc = Encoder::new(&config, &root)?;
        let nout = Norm::new(&root.sub("nout"), enc.c)?;
        let head = Linear::new(&root.sub("head"), enc.c, k)?;
        Ok(NoiseClassifier {
            config,
            enc,
            nout,
            head,
        })
    }

    /// Class logits [B, K] of noisy images x_t [B, C, H, W] at steps `t`.
    pub fn logits(&self, x: &Tensor, t: &[usize], train: bool, rng: &mut Philox) -> Result<Tensor> {
        let cfg = &self.config;
        check_input(cfg, x, t)?;
        let mut ctx = Ctx { cfg, train, rng };
        let temb_act = time_embedding(&self.enc.temb0, &self.enc.temb2, t, cfg.ch, x)?.silu()?;
        let hs = down_pass(&self.enc.cin, &self.enc.down, x, &temb_act, &mut ctx)?;
        let h = self
            .nout
            .forward(hs.last().expect("non-empty"), cfg, true)?;
        self.head.forward(&h.mean(&[2, 3], false)?)
    }

    /// log p_φ(y_i | x_i, t_i) per image: shape [B].
    pub fn log_prob(&self, x: &Tensor, t: &[usize], labels: &[usize]) -> Result<Tensor> {
        self.logits(x, t, false, &mut Philox::new(0))?
            .log_prob_of(labels)
    }

    /// The most likely class of each image.
    pub fn predict(&self, x: &Tensor, t: &[usize]) -> Result<Vec<usize>> {
        let logits = no_grad(|| self.logits(x, t, false, &mut Philox::new(0)))?;
        let k = logits.dim(1)?;
        Ok(logits
            .to_vec_f64()
            .chunks(k)
            .map(|row| {
                (0..k)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .expect("k ≥ 1")
            })
            .collect())
    }
}

/// Everything that defines a classifier training run.
#[derive(Clone, Debug)]
pub struct ClassifierTrainConfig {
    pub model: UNetConfig,
    pub diffusion_steps: usize,
    pub schedule: BetaSchedule,
    /// Train on clean images only (t = 0).
    pub clean: bool,
    pub batch_size: usize,
    pub lr: f64,
    pub random_flip: bool,
    pub seed: u64,
    pub device: Device,
    pub class_names: Vec<String>,
}

pub struct ClassifierTrainer {
    pub config: ClassifierTrainConfig,
    pub store: ParamStore,
    pub model: NoiseClassifier,
    pub schedule: Schedule,
    opt: Adam,
    batcher: Batcher,
    rng: Philox,
}

impl ClassifierTrainer {
    pub fn new(
        config: ClassifierTrainConfig,
        data: Arc<ImageDataset>,
    ) -> Result<ClassifierTrainer> {
        let m = &config.model;
        if (data.channels, data.height, data.width) != (m.in_channels, m.image_size, m.image_size) {
            return Err(Error::Data(format!(
                "dataset {} has {}×{}×{} images but the classifier expects {}×{}×{}",
                data.source,
                data.channels,
                data.height,
                data.width,
                m.in_channels,
                m.image_size,
                m.image_size
            )));
        }
        let k = m.num_classes.unwrap_or(0);
        if data.is_empty() || data.labels.len() != data.len() {
            return Err(Error::Data(format!(
                "a classifier needs labelled images, but {} has {} images and {} labels",
                data.source,
                data.len(),
                data.labels.len()
            )));
        }
        if let Some(&bad) = data.labels.iter().find(|&&y| y as usize >= k) {
            return Err(Error::Data(format!(
                "{} has label {bad} but {k} classes",
                data.source
            )));
        }
        let store = ParamStore::new(DType::F32, config.device, config.seed);
        let model = NoiseClassifier::new(config.model.clone(), &store)?;
        let opt = Adam::new(store.params(), AdamConfig::adam(config.lr))?;
        let batcher = Batcher::new(
            data,
            config.batch_size,
            config.random_flip,
            config.seed ^ 0x636c,
        );
        Ok(ClassifierTrainer {
            schedule: Schedule::new(config.schedule, config.diffusion_steps),
            rng: Philox::new(config.seed ^ 0x636c_6173),
            config,
            store,
            model,
            opt,
            batcher,
        })
    }

    /// t ~ U{0..T−1} per image, or all 0 for a clean classifier.
    fn sample_timesteps(&mut self, n: usize) -> Vec<usize> {
        use rand::Rng;
        let t = self.schedule.steps() as u64;
        let clean = self.config.clean;
        (0..n)
            .map(|_| {
                let u = self.rng.next_u32() as u64;
                if clean { 0 } else { ((u * t) >> 32) as usize }
            })
            .collect()
    }

    /// One Adam step on the cross-entropy of the next batch; returns the loss.
    pub fn train_step(&mut self) -> Result<f64> {
        let (x0, labels) = self.batcher.next_batch_labelled()?;
        let x0 = x0.to_device(self.config.device)?;
        let t = self.sample_timesteps(labels.len());
        let xt = noisy(&self.schedule, &x0, &t, &mut self.rng)?;
        let loss = self
            .model
            .logits(&xt, &t, true, &mut self.rng)?
            .cross_entropy(&labels)?;
        self.opt.zero_grad();
        loss.backward()?;
        let v = loss.item()?;
        if !v.is_finite() {
            return Err(Error::Diverged(format!(
                "classifier training diverged: loss {v}"
            )));
        }
        self.opt.step()?;
        Ok(v)
    }

    /// Accuracy on `test` with t drawn uniformly inside each of `buckets`
    /// equal ranges of 0..T (one bucket, t = 0, for a clean classifier):
    /// (t range, accuracy) per bucket.
    pub fn accuracy_by_t(
        &mut self,
        test: &ImageDataset,
        buckets: usize,
    ) -> Result<Vec<((usize, usize), f64)>> {
        let total = self.schedule.steps();
        let ranges: Vec<(usize, usize)> = if self.config.clean {
            vec![(0, 1)]
        } else {
            (0..buckets)
                .map(|b| (b * total / buckets, (b + 1) * total / buckets))
                .collect()
        };
        let mut rng = Philox::new(0x7465_7374);
        let mut out = Vec::new();
        for &(lo, hi) in &ranges {
            let mut correct = 0;
            for start in (0..test.len()).step_by(100) {
                let n = 100.min(test.len() - start);
                let x0 = batch_from(test, start, n)?.to_device(self.config.device)?;
                use rand::Rng;
                let t: Vec<usize> = (0..n)
                    .map(|_| lo + ((rng.next_u32() as u64 * (hi - lo) as u64) >> 32) as usize)
                    .collect();
                let xt = no_grad(|| noisy(&self.schedule, &x0, &t, &mut rng))?;
                let pred = self.model.predict(&xt, &t)?;
                correct += pred
                    .iter()
                    .zip(&test.labels[start..start + n])
                    .filter(|(p, y)| **p == **y as usize)
                    .count();
            }
            out.push(((lo, hi), correct as f64 / test.len().max(1) as f64));
        }
        Ok(out)
    }

    /// Weights and metadata (architecture, T, schedule, class names).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = HashMap::from([
            ("format".to_string(), CLASSIFIER_FORMAT.to_string()),
            ("model_config".to_string(), self.config.model.to_json()),
            (
                "diffusion_steps".to_string(),
                self.config.diffusion_steps.to_string(),
            ),
            (
                "schedule".to_string(),
                format!("{:?}", self.config.schedule),
            ),
            ("clean".to_string(), self.config.clean.to_string()),
            (
                "class_names".to_string(),
                serde_json::to_string(&self.config.class_names).expect("strings serialise"),
            ),
        ]);
        noisegrad_engine::io::save(path, &self.store.state_dict(), &meta)
    }
}

/// x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4); identity-free at t = 0.
fn noisy(s: &Schedule, x0: &Tensor, t: &[usize], rng: &mut Philox) -> Result<Tensor> {
    let eps = Tensor::randn(x0.shape(), x0.dtype(), x0.device(), rng)?;
    x0.q_sample(&eps, &q_sample_coefs(s, t))
}

/// A trained classifier read back from [`ClassifierTrainer::save`].
pub struct LoadedClassifier {
    pub model: NoiseClassifier,
    pub diffusion_steps: usize,
    pub clean: bool,
    pub class_names: Vec<String>,
    _store: ParamStore,
}

pub fn load_classifier(path: &Path, device: Device) -> Result<LoadedClassifier> {
    let loaded = noisegrad_engine::io::load(path, Device::Cpu)?;
    let err = |msg: String| Error::Io {
        path: path.display().to_string(),
        msg,
    };
    let meta = |k: &str| loaded.metadata.get(k).cloned();
    if meta("format").as_deref() != Some(CLASSIFIER_FORMAT) {
        return Err(err(format!(
            "not a noisegrad classifier (metadata format is {:?}, expected {CLASSIFIER_FORMAT}; train one with `noisegrad train-classifier`)",
            meta("format").unwrap_or_default()
        )));
    }
    let config = UNetConfig::from_json(&meta("model_config").unwrap_or_default())?;
    let diffusion_steps = meta("diffusion_steps")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err("classifier metadata has no valid diffusion_steps".into()))?;
    let store = ParamStore::new(DType::F32, device, 0);
    let model = NoiseClassifier::new(config, &store)?;
    store.load_state_dict(&loaded.tensors)?;
    Ok(LoadedClassifier {
        model,
        diffusion_steps,
        clean: meta("clean").as_deref() == Some("true"),
        class_names: meta("class_names")
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default(),
        _store: store,
    })
}
