//! The KL-regularised convolutional autoencoder of latent diffusion
//! (Rombach et al. 2022, §3 and App. G, `AutoencoderKL`), built from the
//! U-Net's blocks: an encoder of ResBlocks with stride-2 downsampling and a
//! middle attention block gives the mean and log-variance of q(z|x), z with
//! `z_channels` channels at 1/f of the image side; the decoder mirrors it
//! with nearest-neighbour upsampling. Trained with an L1 or L2
//! reconstruction loss plus a small β·KL(q(z|x) ‖ N(0, I)); no perceptual or
//! adversarial loss (those need pretrained networks).

use crate::unet::{Attn, Block, Conv, Ctx, Norm, ResBlock, UNetConfig};
use noisegrad_engine::nn::ParamStore;
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor};
use std::path::Path;

/// The checkpoint `format` of an autoencoder run.
pub const AUTOENCODER_FORMAT: &str = "noisegrad-autoencoder-checkpoint-v1";

/// Every architectural choice of the autoencoder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoencoderConfig {
    pub image_size: usize,
    pub in_channels: usize,
    /// Base channel count.
    pub ch: usize,
    /// Channel multiplier per resolution level; f = 2^(levels − 1).
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Latent channels C_z.
    pub z_channels: usize,
    pub groups: usize,
    pub norm_eps: f64,
}

impl AutoencoderConfig {
    /// A small autoencoder for `in_channels`×`size`×`size` images with
    /// downsampling factor `factor` (a power of two): ch 32, multipliers
    /// 1, 2, 2, 4, … (one level per halving), one ResBlock per level.
    pub fn for_images(size: usize, in_channels: usize, factor: usize) -> Result<Self> {
        if factor == 0 || !factor.is_power_of_two() {
            return Err(Error::Config(format!(
                "autoencoder: the downsampling factor must be a power of two, got {factor}"
            )));
        }
        let levels = factor.trailing_zeros() as usize + 1;
        let cfg = Self {
            image_size: size,
            in_channels,
            ch: 32,
            ch_mult: (0..levels).map(|i| [1, 2, 2, 4][i.min(3)]).collect(),
            num_res_blocks: 1,
            z_channels: 4,
            groups: 8,
            norm_eps: 1e-6,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// f = 4 unless the latent side would then be odd (28×28 → f = 2, 14×14),
    /// so the latent U-Net can halve it.
    pub fn default_factor(size: usize) -> usize {
        if size.is_multiple_of(8) { 4 } else { 2 }
    }

    /// The downsampling factor f.
    pub fn factor(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// The latent shape (C_z, H/f, W/f).
    pub fn latent_shape(&self) -> [usize; 3] {
        let s = self.image_size / self.factor();
        [self.z_channels, s, s]
    }

    pub fn image_shape(&self) -> [usize; 3] {
        [self.in_channels, self.image_size, self.image_size]
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("autoencoder config: {m}")));
        if self.ch_mult.is_empty() || self.ch == 0 || self.in_channels == 0 || self.z_channels == 0
        {
            return bad(
                "ch, in_channels, z_channels and ch_mult must be positive/non-empty".into(),
            );
        }
        use crate::unet::{MAX_CH, MAX_IMAGE_SIZE, MAX_IN_CHANNELS};
        for (name, v, min, max) in [
            ("image_size", self.image_size, 1, MAX_IMAGE_SIZE),
            ("in_channels", self.in_channels, 1, MAX_IN_CHANNELS),
            ("z_channels", self.z_channels, 1, MAX_IN_CHANNELS),
            ("ch", self.ch, 1, MAX_CH),
            ("num_res_blocks", self.num_res_blocks, 0, 16),
            ("groups", self.groups, 1, self.ch),
        ] {
            if !(min..=max).contains(&v) {
                return bad(format!("{name} {v} is outside {min}..={max}"));
            }
        }
        if let Some(m) = self.ch_mult.iter().find(|&&m| !(1..=16).contains(&m)) {
            return bad(format!("channel multiplier {m} is outside 1..=16"));
        }
        // Encoder and decoder: per level ≤ num_res_blocks + 2 blocks of ≤ 20 c²
        // (two 3×3 convs, a 1×1 skip), c the widest level's channels.
        let c = (self.ch * self.ch_mult.iter().copied().max().unwrap_or(1)) as u128;
        let bound =
            2 * 20 * c * c * (self.ch_mult.len() as u128 + 1) * (self.num_res_blocks as u128 + 2);
        if bound > crate::unet::MAX_PARAMETERS {
            return bad(format!(
                "about {bound} parameters is more than the {} allowed",
                crate::unet::MAX_PARAMETERS
            ));
        }
        if self.ch_mult.len() > 8 || self.image_size == 0 {
            return bad(format!(
                "{} levels for image size {}",
                self.ch_mult.len(),
                self.image_size
            ));
        }
        if !self.image_size.is_multiple_of(self.factor()) {
            return bad(format!(
                "image size {} is not divisible by the downsampling factor {}",
                self.image_size,
                self.factor()
            ));
        }
        if let Some(m) = self
            .ch_mult
            .iter()
            .find(|&&m| m == 0 || !(self.ch * m).is_multiple_of(self.groups))
        {
            return bad(format!(
                "channels {} are not divisible by {} groups",
                self.ch * m,
                self.groups
            ));
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plain struct serialises")
    }

    /// The config stored in a checkpoint, validated before anything is
    /// sized from it.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s).map_err(|e| {
            Error::Checkpoint(format!("invalid autoencoder config in checkpoint: {e}"))
        })?;
        cfg.validate()
            .map_err(|e| Error::Checkpoint(format!("invalid config in checkpoint: {e}")))?;
        Ok(cfg)
    }

    /// What the shared U-Net blocks read from a `UNetConfig`: the GroupNorm
    /// groups and ε, and no dropout.
    fn block_config(&self) -> UNetConfig {
        UNetConfig {
            image_size: self.image_size,
            in_channels: self.in_channels,
            groups: self.groups,
            norm_eps: self.norm_eps,
            dropout: 0.0,
            ..UNetConfig::tiny()
        }
    }
}

/// q(z|x) = N(mean, e^logvar), per latent element.
#[derive(Clone)]
pub struct Posterior {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl Posterior {
    /// z = μ + e^{ℓ/2} ⊙ ε with ε ~ N(0, I) (the reparameterisation of
    /// Kingma & Welling 2014, §2.4), differentiable in μ and ℓ.
    pub fn sample(&self, rng: &mut Philox) -> Result<Tensor> {
        let eps = Tensor::randn(
            self.mean.shape(),
            self.mean.dtype(),
            self.mean.device(),
            rng,
        )?;
        self.mean
            .add(&self.logvar.mul_scalar(0.5)?.exp()?.mul(&eps)?)
    }
}

/// KL(N(μ, e^ℓ) ‖ N(0, 1)) = ½(μ² + e^ℓ − 1 − ℓ), elementwise: the closed
/// form of Kingma & Welling (2014), App. B, per latent dimension.
pub fn kl_to_standard_normal(mean: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    mean.square()?
        .add(&logvar.exp()?)?
        .sub(logvar)?
        .add_scalar(-1.0)?
        .mul_scalar(0.5)
}

/// The reconstruction term's norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecLoss {
    L1,
    L2,
}

/// The autoencoder objective and its parts (each a scalar tensor).
pub struct AutoencoderLoss {
    pub total: Tensor,
    pub rec: Tensor,
    pub kl: Tensor,
}

/// L = rec + β · KL/D with rec the mean |x − x̂| (L1) or (x − x̂)² (L2) per
/// pixel value and KL the per-image KL(q(z|x) ‖ N(0, I)) summed over latent
/// dimensions, averaged over the batch, divided by D = C·H·W pixel values:
/// LDM's objective (Rombach et al. 2022, App. G: per-image sums, β ≈ 1e-6)
/// divided by D, so β means the same as there.
pub fn autoencoder_loss(
    x: &Tensor,
    recon: &Tensor,
    post: &Posterior,
    rec_loss: RecLoss,
    kl_weight: f64,
) -> Result<AutoencoderLoss> {
    let diff = x.sub(recon)?;
    let rec = match rec_loss {
        RecLoss::L1 => diff.abs()?,
        RecLoss::L2 => diff.square()?,
    }
    .mean_all()?;
    let b = x.dim(0)? as f64;
    let d = (x.numel() as f64) / b;
    let kl = kl_to_standard_normal(&post.mean, &post.logvar)?
        .sum_all()?
        .mul_scalar(1.0 / b)?;
    let total = rec.add(&kl.mul_scalar(kl_weight / d)?)?;
    Ok(AutoencoderLoss { total, rec, kl })
}

/// ResBlock → attention → ResBlock at the lowest resolution.
struct Middle {
    r1: ResBlock,
    attn: Attn,
    r2: ResBlock,
}

impl Middle {
    fn new(s: &noisegrad_engine::nn::ParamScope, c: usize) -> Result<Middle> {
        Ok(Middle {
            r1: ResBlock::new(&s.sub("r1"), c, c, 0)?,
            attn: Attn::new(&s.sub("attn"), c)?,
            r2: ResBlock::new(&s.sub("r2"), c, c, 0)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let h = self.r1.forward_with(x, None, ctx)?;
        let h = self.attn.forward(&h, ctx.cfg)?;
        self.r2.forward_with(&h, None, ctx)
    }
}

pub struct Autoencoder {
    pub config: AutoencoderConfig,
    block_cfg: UNetConfig,
    enc_in: Conv,
    enc: Vec<Block>,
    enc_mid: Middle,
    enc_norm: Norm,
    enc_out: Conv,
    dec_in: Conv,
    dec_mid: Middle,
    dec: Vec<Block>,
    dec_norm: Norm,
    dec_out: Conv,
}

impl Autoencoder {
    /// Builds the model, creating its parameters in `store`.
    pub fn new(config: AutoencoderConfig, store: &ParamStore) -> Result<Autoencoder> {
        config.validate()?;
        let root = store.root();
        let (e, d) = (root.sub("encoder"), root.sub("decoder"));
        let ch = config.ch;
        let levels = config.ch_mult.len();
        let enc_in = Conv::new(&e.sub("conv_in"), config.in_channels, ch, 3, 1, 1.0)?;
        let (mut enc, mut c) = (Vec::new(), ch);
        for (level, &m) in config.ch_mult.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                let s = e.sub("down").sub(enc.len());
                enc.push(Block::Res(ResBlock::new(&s, c, ch * m, 0)?, None));
                c = ch * m;
            }
            if level != levels - 1 {
                let s = e.sub("down").sub(enc.len());
                enc.push(Block::Down(Conv::new(&s, c, c, 3, 2, 1.0)?));
            }
        }
        let enc_mid = Middle::new(&e.sub("mid"), c)?;
        let enc_norm = Norm::new(&e.sub("norm_out"), c)?;
        // Mean and log-variance, C_z channels each.
        let enc_out = Conv::new(&e.sub("conv_out"), c, 2 * config.z_channels, 3, 1, 1.0)?;
        let dec_in = Conv::new(&d.sub("conv_in"), config.z_channels, c, 3, 1, 1.0)?;
        let dec_mid = Middle::new(&d.sub("mid"), c)?;
        let mut dec = Vec::new();
        for (level, &m) in config.ch_mult.iter().enumerate().rev() {
            for _ in 0..=config.num_res_blocks {
                let s = d.sub("up").sub(dec.len());
                dec.push(Block::Res(ResBlock::new(&s, c, ch * m, 0)?, None));
                c = ch * m;
            }
            if level != 0 {
                let s = d.sub("up").sub(dec.len());
                dec.push(Block::Up(Conv::new(&s, c, c, 3, 1, 1.0)?));
            }
        }
        let dec_norm = Norm::new(&d.sub("norm_out"), c)?;
        let dec_out = Conv::new(&d.sub("conv_out"), c, config.in_channels, 3, 1, 1.0)?;
        Ok(Autoencoder {
            block_cfg: config.block_config(),
            config,
            enc_in,
            enc,
            enc_mid,
            enc_norm,
            enc_out,
            dec_in,
            dec_mid,
            dec,
            dec_norm,
            dec_out,
        })
    }

    fn check_input(&self, x: &Tensor, what: &str, want: [usize; 3]) -> Result<()> {
        let s = x.shape();
        if s.len() != 4 || s[1..] != want {
            return Err(Error::Input(format!(
                "autoencoder {what}: expected [B, {}, {}, {}], got {s:?}",
                want[0], want[1], want[2]
            )));
        }
        Ok(())
    }

    /// q(z|x) for images [B, C, H, W] in [−1, 1]. The log-variance is
    /// clamped to [−30, 20] as in LDM, so e^ℓ stays finite.
    pub fn encode(&self, x: &Tensor) -> Result<Posterior> {
        self.check_input(x, "encoder input", self.config.image_shape())?;
        let mut rng = Philox::new(0);
        let mut ctx = Ctx {
            cfg: &self.block_cfg,
            train: false,
            rng: &mut rng,
        };
        let mut h = self.enc_in.forward(x)?;
        for blk in &self.enc {
            h = run_block(blk, &h, &mut ctx)?;
        }
        let h = self.enc_mid.forward(&h, &mut ctx)?;
        let h = self
            .enc_out
            .forward(&self.enc_norm.forward(&h, &self.block_cfg, true)?)?;
        let z = self.config.z_channels;
        Ok(Posterior {
            mean: h.narrow(1, 0, z)?,
            logvar: h.narrow(1, z, z)?.clamp(-30.0, 20.0)?,
        })
    }

    /// x̂ = D(z) for latents [B, C_z, H/f, W/f].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_input(z, "decoder input (latents)", self.config.latent_shape())?;
        let mut rng = Philox::new(0);
        let mut ctx = Ctx {
            cfg: &self.block_cfg,
            train: false,
            rng: &mut rng,
        };
        let h = self.dec_in.forward(z)?;
        let mut h = self.dec_mid.forward(&h, &mut ctx)?;
        for blk in &self.dec {
            h = run_block(blk, &h, &mut ctx)?;
        }
        self.dec_out
            .forward(&self.dec_norm.forward(&h, &self.block_cfg, true)?)
    }

    /// Builds the autoencoder of a checkpoint written by
    /// `AutoencoderTrainer::save_checkpoint`, with its EMA weights when
    /// `use_ema`. Any other file is an error that says what it is.
    pub fn load(path: &Path, use_ema: bool, device: Device) -> Result<(Autoencoder, ParamStore)> {
        let loaded = noisegrad_engine::io::load(path, Device::Cpu)?;
        let config =
            AutoencoderConfig::from_json(autoencoder_config_json(path, &loaded.metadata)?)?;
        let store = ParamStore::new(DType::F32, device, 0);
        let model = Autoencoder::new(config, &store)?;
        loaded.check_weights(path)?;
        // The EMA is stored as `ema.<name>` (`ema.ema.<name>` in older files).
        let weights: Vec<(String, Tensor)> = loaded
            .tensors
            .iter()
            .filter_map(|(n, t)| {
                let n = crate::train_state::undoubled(n);
                let own = !(n.starts_with("ema.") || n.starts_with("opt."));
                let name = if use_ema {
                    n.strip_prefix("ema.")
                } else {
                    own.then_some(n)
                };
                name.map(|s| (s.to_string(), t.clone()))
            })
            .collect();
        store.load_state_dict(&weights)?;
        Ok((model, store))
    }
}

/// The autoencoder config stored in a checkpoint's metadata, or an error
/// that names what the file is instead.
pub fn autoencoder_config_json<'a>(
    path: &Path,
    meta: &'a std::collections::HashMap<String, String>,
) -> Result<&'a str> {
    let err = |msg: String| Error::Io {
        path: path.display().to_string(),
        msg,
    };
    match meta.get("format").map(String::as_str) {
        Some(AUTOENCODER_FORMAT) => meta
            .get("autoencoder_config")
            .map(String::as_str)
            .ok_or_else(|| err("autoencoder checkpoint without autoencoder_config".into())),
        Some(f) if meta.contains_key("model_config") => Err(err(format!(
            "this is a diffusion checkpoint ({f}, from `noisegrad train`), not an autoencoder \
             checkpoint from `noisegrad train-autoencoder`"
        ))),
        other => Err(err(format!(
            "not an autoencoder checkpoint (format {other:?}; expected {AUTOENCODER_FORMAT})"
        ))),
    }
}

fn run_block(blk: &Block, h: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
    match blk {
        Block::Res(rb, _) => rb.forward_with(h, None, ctx),
        Block::Down(conv) => conv.forward(h),
        Block::Up(conv) => conv.forward(&h.upsample_nearest2x()?),
    }
}

/// Peak signal-to-noise ratio in dB of images in [−1, 1] with mean squared
/// error `mse`: PSNR = 10·log₁₀(MAX²/MSE) with MAX = 2 (the [0, 1] range's
/// PSNR, since rescaling divides both MAX² and MSE by 4).
pub fn psnr_db(mse: f64) -> f64 {
    10.0 * (4.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;
    use noisegrad_engine::gradcheck::{GradcheckOptions, gradcheck};

    fn model(size: usize, c: usize, f: usize) -> Autoencoder {
        let cfg = AutoencoderConfig {
            ch: 8,
            groups: 4,
            ..AutoencoderConfig::for_images(size, c, f).unwrap()
        };
        Autoencoder::new(cfg, &ParamStore::new(DType::F32, Device::Cpu, 3)).unwrap()
    }

    #[test]
    fn encoder_and_decoder_shapes_for_f_2_4_8() {
        for (size, c, f) in [(28, 1, 2), (32, 3, 4), (32, 3, 8)] {
            let ae = model(size, c, f);
            let x = Tensor::randn(
                &[2, c, size, size],
                DType::F32,
                Device::Cpu,
                &mut Philox::new(1),
            )
            .unwrap();
            let post = ae.encode(&x).unwrap();
            let s = size / f;
            assert_eq!(post.mean.shape(), &[2, 4, s, s], "f = {f}");
            assert_eq!(post.logvar.shape(), &[2, 4, s, s]);
            let z = post.sample(&mut Philox::new(2)).unwrap();
            assert_eq!(ae.decode(&z).unwrap().shape(), &[2, c, size, size]);
        }
    }

    #[test]
    fn wrong_shapes_name_both() {
        let ae = model(32, 3, 4);
        let x = Tensor::zeros(&[1, 1, 28, 28], DType::F32, Device::Cpu).unwrap();
        let e = ae.encode(&x).err().unwrap().to_string();
        assert!(
            e.contains("[B, 3, 32, 32]") && e.contains("[1, 1, 28, 28]"),
            "{e}"
        );
        let z = Tensor::zeros(&[1, 4, 4, 4], DType::F32, Device::Cpu).unwrap();
        let e = ae.decode(&z).err().unwrap().to_string();
        assert!(
            e.contains("[B, 4, 8, 8]") && e.contains("[1, 4, 4, 4]"),
            "{e}"
        );
        assert!(AutoencoderConfig::for_images(28, 1, 8).is_err());
        assert!(AutoencoderConfig::for_images(32, 3, 3).is_err());
    }

    /// The closed form against ∫ q log(q/p) dz by the midpoint rule.
    #[test]
    fn kl_matches_numerical_integration() {
        for (mu, lv) in [(0.0, 0.0), (0.7, -1.2), (-1.5, 0.8), (2.0, -4.0)] {
            let sd = (0.5f64 * lv).exp();
            let (lo, hi, n) = (mu - 12.0 * sd, mu + 12.0 * sd, 200_000);
            let dz = (hi - lo) / n as f64;
            let log_q = |z: f64| {
                -0.5 * ((z - mu) / sd).powi(2) - sd.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
            };
            let log_p = |z: f64| -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln();
            let numeric: f64 = (0..n)
                .map(|i| {
                    let z = lo + (i as f64 + 0.5) * dz;
                    log_q(z).exp() * (log_q(z) - log_p(z)) * dz
                })
                .sum();
            let t = |v: f64| Tensor::from_vec(&[v], &[1], DType::F64, Device::Cpu).unwrap();
            let closed = kl_to_standard_normal(&t(mu), &t(lv))
                .unwrap()
                .item()
                .unwrap();
            assert!(
                (closed - numeric).abs() < 1e-6,
                "μ {mu}, ℓ {lv}: {closed} vs {numeric}"
            );
        }
        // And it agrees with the general Gaussian KL of the bound.
        let m = Tensor::from_vec(&[0.3, -0.2], &[2], DType::F64, Device::Cpu).unwrap();
        let l = Tensor::from_vec(&[-0.5, 1.1], &[2], DType::F64, Device::Cpu).unwrap();
        let z = m.zeros_like().unwrap();
        let general = crate::gaussian::normal_kl(&m, &l, &z, &z)
            .unwrap()
            .to_vec_f64();
        let closed = kl_to_standard_normal(&m, &l).unwrap().to_vec_f64();
        for (a, b) in general.iter().zip(&closed) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn kl_and_loss_gradcheck() {
        let mut rng = Philox::new(5);
        let r =
            |s: &[usize], rng: &mut Philox| Tensor::randn(s, DType::F64, Device::Cpu, rng).unwrap();
        let (m, l) = (r(&[2, 3], &mut rng), r(&[2, 3], &mut rng));
        gradcheck(
            |v| kl_to_standard_normal(&v[0], &v[1]),
            &[m.clone(), l.clone()],
            GradcheckOptions::default(),
        )
        .unwrap();
        let (x, y) = (r(&[2, 1, 2, 2], &mut rng), r(&[2, 1, 2, 2], &mut rng));
        for kind in [RecLoss::L1, RecLoss::L2] {
            gradcheck(
                |v| {
                    let post = Posterior {
                        mean: v[1].clone(),
                        logvar: v[2].clone(),
                    };
                    Ok(autoencoder_loss(&x, &v[0], &post, kind, 0.3)?.total)
                },
                &[y.clone(), m.clone(), l.clone()],
                GradcheckOptions::default(),
            )
            .unwrap();
        }
    }

    #[test]
    fn psnr_of_known_errors() {
        // MSE 4e-2 on [−1, 1] is 1e-2 on [0, 1]: 20 dB.
        assert!((psnr_db(0.04) - 20.0).abs() < 1e-12);
    }
}
