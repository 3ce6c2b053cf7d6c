//! The DDPM U-Net (Ho et al. 2020, CIFAR-10 model) and its smaller presets.
//!
//! Parameter names follow the PyTorch replica `ref_unet.py` exactly
//! (`temb.0.weight`, `down.2.1.qkv.weight`, ...), so a `state_dict` saved
//! from it with `safetensors.torch.save_file` loads here unchanged and
//! vice versa. Initialisation follows the reference TF code: fan-avg
//! uniform everywhere, near-zero (scale 1e-10) for the second conv of each
//! ResBlock, the attention output projection and the final conv.

use noisegrad_engine::nn::{Init, Linear, ParamScope, ParamStore, default_init};
use noisegrad_engine::{DType, Device, Error, Philox, Result, Tensor};

/// The largest image side [`UNetConfig::validate`] accepts (pixels or latents).
pub const MAX_IMAGE_SIZE: usize = 4096;
/// The most input channels (images have 1–4, latents a few more).
pub const MAX_IN_CHANNELS: usize = 256;
/// The largest base channel count (DDPM uses 128, ADM 256).
pub const MAX_CH: usize = 4096;
/// The most classes of a class-conditional model.
pub const MAX_CLASSES: usize = 100_000;
/// 2^32 parameters: 16 GiB of f32 weights, 80 GiB with the gradients,
/// Adam's moments and the EMA (the DDPM CIFAR-10 model has 35.7 M).
pub const MAX_PARAMETERS: u128 = 1 << 32;

/// Every architectural choice of the model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UNetConfig {
    pub image_size: usize,
    pub in_channels: usize,
    /// Base channel count (128 in DDPM).
    pub ch: usize,
    /// Channel multiplier per resolution level.
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Resolutions (image side) that get self-attention.
    pub attn_resolutions: Vec<usize>,
    pub dropout: f64,
    pub groups: usize,
    pub norm_eps: f64,
    /// Class-conditional with this many classes (None: unconditional).
    /// Absent in older checkpoints, which therefore load as unconditional.
    #[serde(default)]
    pub num_classes: Option<usize>,
    /// Output channels = in_channels × out_mult: 2 when the model also
    /// predicts its variance (improved DDPM's learned Σ_θ).
    #[serde(default = "one")]
    pub out_mult: usize,
    /// How the stride-2 downsampling convs pad. Absent in older
    /// checkpoints, which therefore load with the symmetric padding they
    /// were trained with.
    #[serde(default)]
    pub downsample_pad: DownsamplePad,
}

fn one() -> usize {
    1
}

/// The padding of the stride-2 3×3 downsampling conv.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownsamplePad {
    /// One zero row/column on every side (PyTorch `padding=1`; diffusers'
    /// `downsample_padding` 1).
    #[default]
    Symmetric,
    /// TF's 'SAME' for an even input: no zeros top/left, one bottom/right.
    /// Ho et al.'s TF model pads this way, and diffusers emulates it with
    /// `downsample_padding` 0 plus an explicit pad, so the official DDPM
    /// weights reproduce their outputs only with this option.
    TfSame,
}

impl UNetConfig {
    /// The DDPM CIFAR-10 model: 35,746,307 parameters.
    pub fn cifar10() -> Self {
        Self {
            image_size: 32,
            in_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.1,
            groups: 32,
            norm_eps: 1e-6,
            num_classes: None,
            out_mult: 1,
            downsample_pad: DownsamplePad::Symmetric,
        }
    }

    /// ch 64, mult (1, 2, 2), one ResBlock per level: 4,437,699 parameters.
    pub fn small() -> Self {
        Self {
            ch: 64,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            ..Self::cifar10()
        }
    }

    /// A very small model for tests and quick demos.
    pub fn tiny() -> Self {
        Self {
            ch: 16,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            groups: 8,
            ..Self::cifar10()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "cifar10" => Ok(Self::cifar10()),
            "small" => Ok(Self::small()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Config(format!(
                "unknown model preset '{other}' (expected cifar10, small or tiny)"
            ))),
        }
    }

    /// The config as JSON (stored in checkpoint metadata).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plain struct serialises")
    }

    /// The config stored in a checkpoint, validated: a corrupt or edited
    /// value (say an image size of 2^20) is refused here, before anything
    /// is allocated from it.
    pub fn from_json(s: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(s)
            .map_err(|e| Error::Checkpoint(format!("invalid U-Net config in checkpoint: {e}")))?;
        cfg.validate()
            .map_err(|e| Error::Checkpoint(format!("invalid config in checkpoint: {e}")))?;
        Ok(cfg)
    }

    /// An upper bound on the parameter count, computed without building
    /// the model: every ResBlock counted at the widest level with a doubled
    /// input (the up path's skip concatenation) and a 1×1 skip, every
    /// block with attention. Within a small factor of the true count (the
    /// presets are tested), so it catches sizes that cannot fit in memory.
    pub fn parameter_bound(&self) -> u128 {
        let ch = self.ch as u128;
        let c = ch * self.ch_mult.iter().copied().max().unwrap_or(1) as u128;
        let temb = 4 * ch;
        let levels = self.ch_mult.len() as u128;
        let blocks = self.num_res_blocks as u128;
        let res_block = 29 * c * c + temb * c + 10 * c;
        let attn = 4 * c * c + 6 * c;
        let resample = 9 * c * c + c;
        let res_blocks = levels * (2 * blocks + 1) + 2;
        let io = 9 * ch * (self.in_channels as u128) * (1 + self.out_mult as u128) + 4 * ch;
        let classes = self.num_classes.map_or(0, |k| (k as u128 + 1) * temb);
        res_blocks * (res_block + attn) + 2 * levels * resample + 5 * temb * temb + io + classes
    }

    /// Rejects configurations the architecture cannot build, and sizes far
    /// beyond any model this crate trains (a mistyped flag, a corrupt
    /// checkpoint) before a buffer is sized from them.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("U-Net config: {m}")));
        if self.ch_mult.is_empty() || self.ch == 0 || self.in_channels == 0 {
            return bad("ch, in_channels and ch_mult must be non-empty/positive".into());
        }
        for (name, v, min, max) in [
            ("image_size", self.image_size, 1, MAX_IMAGE_SIZE),
            ("in_channels", self.in_channels, 1, MAX_IN_CHANNELS),
            ("ch", self.ch, 1, MAX_CH),
            ("ch_mult levels", self.ch_mult.len(), 1, 8),
            ("num_res_blocks", self.num_res_blocks, 0, 16),
            ("groups", self.groups, 1, self.ch),
            ("num_classes", self.num_classes.unwrap_or(1), 1, MAX_CLASSES),
        ] {
            if !(min..=max).contains(&v) {
                return bad(format!("{name} {v} is outside {min}..={max}"));
            }
        }
        if let Some(m) = self.ch_mult.iter().find(|&&m| !(1..=16).contains(&m)) {
            return bad(format!("channel multiplier {m} is outside 1..=16"));
        }
        if !(self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return bad(format!("norm_eps {} must be in (0, 1)", self.norm_eps));
        }
        if self.parameter_bound() > MAX_PARAMETERS {
            return bad(format!(
                "about {} parameters ({} bytes as f32) is more than the {MAX_PARAMETERS} allowed",
                self.parameter_bound(),
                self.parameter_bound() * 4
            ));
        }
        let down = 1usize << (self.ch_mult.len() - 1);
        if !self.image_size.is_multiple_of(down) {
            return bad(format!(
                "image size {} must be divisible by {down} ({} levels halve it {} times)",
                self.image_size,
                self.ch_mult.len(),
                self.ch_mult.len() - 1
            ));
        }
        for m in &self.ch_mult {
            if !(self.ch * m).is_multiple_of(self.groups) || !self.ch.is_multiple_of(self.groups) {
                return bad(format!(
                    "channels {} are not divisible by {} groups",
                    self.ch * m,
                    self.groups
                ));
            }
        }
        if !(1..=2).contains(&self.out_mult) {
            return bad(format!("out_mult {} must be 1 or 2", self.out_mult));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// GroupNorm γ, β (PyTorch names `weight`, `bias`).
pub(crate) struct Norm {
    gamma: Tensor,
    beta: Tensor,
}

impl Norm {
    pub(crate) fn new(s: &ParamScope, c: usize) -> Result<Norm> {
        Ok(Norm {
            gamma: s.param("weight", &[c], Init::Ones)?,
            beta: s.param("bias", &[c], Init::Zeros)?,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor, cfg: &UNetConfig, silu: bool) -> Result<Tensor> {
        x.group_norm(cfg.groups, &self.gamma, &self.beta, cfg.norm_eps, silu)
    }
}

/// A 2-D convolution with bias.
pub(crate) struct Conv {
    w: Tensor,
    b: Tensor,
    stride: usize,
    pad: usize,
    /// Zeros added at the bottom and right before the conv (TF 'SAME' of a
    /// stride-2 conv; `pad` is then 0).
    pad_after: usize,
}

impl Conv {
    pub(crate) fn new(
        s: &ParamScope,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        init_scale: f64,
    ) -> Result<Conv> {
        Ok(Conv {
            w: s.param("weight", &[cout, cin, k, k], default_init(init_scale))?,
            b: s.param("bias", &[cout], Init::Zeros)?,
            stride,
            pad: k / 2,
            pad_after: 0,
        })
    }

    /// The stride-2 3×3 downsampling conv, padded as `pad` says.
    pub(crate) fn downsample(s: &ParamScope, c: usize, pad: DownsamplePad) -> Result<Conv> {
        let conv = Conv::new(s, c, c, 3, 2, 1.0)?;
        Ok(match pad {
            DownsamplePad::Symmetric => conv,
            DownsamplePad::TfSame => Conv {
                pad: 0,
                pad_after: 1,
                ..conv
            },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_after == 0 {
            return x.conv2d(&self.w, Some(&self.b), self.stride, self.pad);
        }
        let p = self.pad_after;
        x.pad_zeros(&[(0, 0), (0, 0), (0, p), (0, p)])?.conv2d(
            &self.w,
            Some(&self.b),
            self.stride,
            self.pad,
        )
    }
}

/// GroupNorm → SiLU → conv3×3 → + Linear(SiLU(temb)) → GroupNorm → SiLU →
/// dropout → conv3×3, plus a 1×1 skip when the channel count changes.
/// With `temb` = 0 it has no time projection (the autoencoder's blocks).
pub(crate) struct ResBlock {
    n1: Norm,
    c1: Conv,
    t: Option<Linear>,
    n2: Norm,
    c2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    pub(crate) fn new(s: &ParamScope, cin: usize, cout: usize, temb: usize) -> Result<ResBlock> {
        Ok(ResBlock {
            n1: Norm::new(&s.sub("n1"), cin)?,
            c1: Conv::new(&s.sub("c1"), cin, cout, 3, 1, 1.0)?,
            t: (temb > 0)
                .then(|| Linear::with_init(&s.sub("t"), temb, cout, default_init(1.0)))
                .transpose()?,
            n2: Norm::new(&s.sub("n2"), cout)?,
            c2: Conv::new(&s.sub("c2"), cout, cout, 3, 1, 0.0)?,
            skip: if cin != cout {
                Some(Conv::new(&s.sub("skip"), cin, cout, 1, 1, 1.0)?)
            } else {
                None
            },
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, temb_act: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.forward_with(x, Some(temb_act), ctx)
    }

    /// The block with an optional time embedding (`None` for blocks built
    /// with `temb` = 0).
    pub(crate) fn forward_with(
        &self,
        x: &Tensor,
        temb_act: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let mut h = self.c1.forward(&self.n1.forward(x, ctx.cfg, true)?)?;
        if let (Some(proj), Some(temb_act)) = (&self.t, temb_act) {
            let t = proj.forward(temb_act)?;
            h = h.add(&t.reshape(&[t.dim(0)?, t.dim(1)?, 1, 1])?)?;
        }
        let h = self
            .n2
            .forward(&h, ctx.cfg, true)?
            .dropout(ctx.cfg.dropout, ctx.train, ctx.rng)?;
        let h = self.c2.forward(&h)?;
        let skip = match &self.skip {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip.add(&h)
    }
}

/// Single-head self-attention over the H·W positions with separate q, k, v
/// (one 1×1 conv to 3C) and a residual 1×1 output projection.
pub(crate) struct Attn {
    n: Norm,
    qkv: Conv,
    o: Conv,
}

impl Attn {
    pub(crate) fn new(s: &ParamScope, c: usize) -> Result<Attn> {
        Ok(Attn {
            n: Norm::new(&s.sub("n"), c)?,
            qkv: Conv::new(&s.sub("qkv"), c, 3 * c, 1, 1, 1.0)?,
            o: Conv::new(&s.sub("o"), c, c, 1, 1, 0.0)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, cfg: &UNetConfig) -> Result<Tensor> {
        let (b, c, h, w) = dims4(x)?;
        let qkv = self
            .qkv
            .forward(&self.n.forward(x, cfg, false)?)?
            .reshape(&[b, 3, c, h * w])?;
        // [B, C, T] → [B, T, C] token layout, as views.
        let part = |i: usize| {
            qkv.narrow(1, i, 1)?
                .reshape(&[b, c, h * w])?
                .transpose(1, 2)
        };
        let out = part(0)?.attention(&part(1)?, &part(2)?, None)?;
        let out = out.transpose(1, 2)?.reshape(&[b, c, h, w])?;
        x.add(&self.o.forward(&out)?)
    }
}

// A few dozen blocks built once per model: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Block {
    Res(ResBlock, Option<Attn>),
    Down(Conv),
    Up(Conv),
}

/// What a forward pass needs besides the input: config, mode and the
/// dropout stream.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a UNetConfig,
    pub(crate) train: bool,
    pub(crate) rng: &'a mut Philox,
}

pub struct UNet {
    pub config: UNetConfig,
    temb0: Linear,
    temb2: Linear,
    cin: Conv,
    down: Vec<Block>,
    mid1: ResBlock,
    mida: Attn,
    mid2: ResBlock,
    up: Vec<Block>,
    nout: Norm,
    cout: Conv,
    /// Class embedding [num_classes + 1, 4·ch] (improved-diffusion's
    /// `label_emb`); the last row is the null label ∅.
    label_emb: Option<Tensor>,
}

impl UNet {
    /// Builds the model, creating its parameters in `store`.
    pub fn new(config: UNetConfig, store: &ParamStore) -> Result<UNet> {
        config.validate()?;
        let (ch, temb) = (config.ch, config.ch * 4);
        let root = store.root();
        let Encoder {
            temb0,
            temb2,
            cin,
            down,
            mut chans,
            mut c,
            mut res,
        } = Encoder::new(&config, &root)?;
        let mid1 = ResBlock::new(&root.sub("mid1"), c, c, temb)?;
        let mida = Attn::new(&root.sub("mida"), c)?;
        let mid2 = ResBlock::new(&root.sub("mid2"), c, c, temb)?;
        let mut up = Vec::new();
        for (level, &m) in config.ch_mult.iter().enumerate().rev() {
            for _ in 0..=config.num_res_blocks {
                let s = root.sub("up").sub(up.len());
                let skip_c = chans.pop().expect("one skip per down block");
                let rb = ResBlock::new(&s.sub(0), c + skip_c, ch * m, temb)?;
                c = ch * m;
                let attn = config
                    .attn_resolutions
                    .contains(&res)
                    .then(|| Attn::new(&s.sub(1), c))
                    .transpose()?;
                up.push(Block::Res(rb, attn));
            }
            if level != 0 {
                let s = root.sub("up").sub(up.len());
                up.push(Block::Up(Conv::new(&s.sub(1), c, c, 3, 1, 1.0)?));
                res *= 2;
            }
        }
        let nout = Norm::new(&root.sub("nout"), c)?;
        let out_c = config.in_channels * config.out_mult;
        let cout = Conv::new(&root.sub("cout"), c, out_c, 3, 1, 0.0)?;
        let label_emb = config
            .num_classes
            .map(|k| {
                root.sub("label_emb")
                    .param("weight", &[k + 1, temb], default_init(1.0))
            })
            .transpose()?;
        Ok(UNet {
            config,
            temb0,
            temb2,
            cin,
            down,
            mid1,
            mida,
            mid2,
            up,
            nout,
            cout,
            label_emb,
        })
    }

    /// ε_θ(x_t, t) for images [B, C, H, W] and per-sample steps `t`.
    /// `train` enables dropout, drawn from `rng`. A class-conditional
    /// model gives its unconditional prediction ε_θ(x_t, t, ∅) here.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &[usize],
        train: bool,
        rng: &mut Philox,
    ) -> Result<Tensor> {
        self.forward_cond(x, t, None, train, rng)
    }

    /// ε_θ(x_t, t, y) with per-sample labels y ∈ 0..=num_classes, where
    /// y = num_classes is the null label ∅ (`None`: ∅ for every sample).
    pub fn forward_cond(
        &self,
        x: &Tensor,
        t: &[usize],
        labels: Option<&[usize]>,
        train: bool,
        rng: &mut Philox,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        check_input(cfg, x, t)?;
        let mut ctx = Ctx { cfg, train, rng };
        let temb = time_embedding(&self.temb0, &self.temb2, t, cfg.ch, x)?;
        let temb = match (&self.label_emb, labels) {
            (Some(table), labels) => {
                let k = cfg.num_classes.unwrap_or(0);
                let ids = labels.map_or_else(|| vec![k; t.len()], <[usize]>::to_vec);
                check_labels(&ids, k, t.len())?;
                temb.add(&table.index_select(0, &ids)?)?
            }
            (None, None) => temb,
            (None, Some(_)) => {
                return Err(Error::Input(
                    "class labels given to an unconditional U-Net (trained without --class-cond)"
                        .into(),
                ));
            }
        };
        // SiLU(temb) feeds every ResBlock's projection: computed once.
        let temb_act = temb.silu()?;
        let mut hs = down_pass(&self.cin, &self.down, x, &temb_act, &mut ctx)?;
        let h = hs.last().expect("non-empty").clone();
        let h = self.mid1.forward(&h, &temb_act, &mut ctx)?;
        let h = self.mida.forward(&h, cfg)?;
        let mut h = self.mid2.forward(&h, &temb_act, &mut ctx)?;
        for blk in &self.up {
            h = match blk {
                Block::Res(rb, attn) => {
                    let skip = hs.pop().expect("one skip per up ResBlock");
                    let cat = Tensor::concat(&[&h, &skip], 1)?;
                    apply_attn(attn, rb.forward(&cat, &temb_act, &mut ctx)?, cfg)?
                }
                Block::Up(conv) => conv.forward(&h.upsample_nearest2x()?)?,
                Block::Down(_) => unreachable!("no downsampling on the way up"),
            };
        }
        self.cout.forward(&self.nout.forward(&h, cfg, true)?)
    }
}

/// The U-Net's downsampling half (time-embedding MLP, input conv, the
/// down blocks) with the channel bookkeeping the up path needs; the
/// noise-aware classifier reuses it.
pub(crate) struct Encoder {
    pub(crate) temb0: Linear,
    pub(crate) temb2: Linear,
    pub(crate) cin: Conv,
    pub(crate) down: Vec<Block>,
    /// Channels of every skip activation, in order.
    pub(crate) chans: Vec<usize>,
    /// Channels and resolution at the bottom.
    pub(crate) c: usize,
    pub(crate) res: usize,
}

impl Encoder {
    pub(crate) fn new(config: &UNetConfig, root: &ParamScope) -> Result<Encoder> {
        let (ch, temb) = (config.ch, config.ch * 4);
        let temb0 = Linear::with_init(&root.sub("temb").sub(0), ch, temb, default_init(1.0))?;
        let temb2 = Linear::with_init(&root.sub("temb").sub(2), temb, temb, default_init(1.0))?;
        let cin = Conv::new(&root.sub("cin"), config.in_channels, ch, 3, 1, 1.0)?;
        let (mut down, mut chans, mut c, mut res) = (Vec::new(), vec![ch], ch, config.image_size);
        let levels = config.ch_mult.len();
        for (level, &m) in config.ch_mult.iter().enumerate() {
            for _ in 0..config.num_res_blocks {
                let s = root.sub("down").sub(down.len());
                let rb = ResBlock::new(&s.sub(0), c, ch * m, temb)?;
                c = ch * m;
                let attn = config
                    .attn_resolutions
                    .contains(&res)
                    .then(|| Attn::new(&s.sub(1), c))
                    .transpose()?;
                down.push(Block::Res(rb, attn));
                chans.push(c);
            }
            if level != levels - 1 {
                let s = root.sub("down").sub(down.len());
                down.push(Block::Down(Conv::downsample(
                    &s.sub(0),
                    c,
                    config.downsample_pad,
                )?));
                chans.push(c);
                res /= 2;
            }
        }
        Ok(Encoder {
            temb0,
            temb2,
            cin,
            down,
            chans,
            c,
            res,
        })
    }
}

/// temb = Linear(SiLU(Linear(sinusoidal(t)))), before its final SiLU.
pub(crate) fn time_embedding(
    temb0: &Linear,
    temb2: &Linear,
    t: &[usize],
    ch: usize,
    like: &Tensor,
) -> Result<Tensor> {
    let emb = timestep_embedding(t, ch, like.dtype(), like.device())?;
    temb2.forward(&temb0.forward(&emb)?.silu()?)
}

/// Input conv then the down blocks; returns every activation (the skips).
pub(crate) fn down_pass(
    cin: &Conv,
    down: &[Block],
    x: &Tensor,
    temb_act: &Tensor,
    ctx: &mut Ctx,
) -> Result<Vec<Tensor>> {
    let mut hs = vec![cin.forward(x)?];
    for blk in down {
        let prev = hs.last().expect("non-empty");
        let h = match blk {
            Block::Res(rb, attn) => apply_attn(attn, rb.forward(prev, temb_act, ctx)?, ctx.cfg)?,
            Block::Down(conv) => conv.forward(prev)?,
            Block::Up(_) => unreachable!("no upsampling on the way down"),
        };
        hs.push(h);
    }
    Ok(hs)
}

/// Images [B, C, H, W] of the configured size with one step per image.
pub(crate) fn check_input(cfg: &UNetConfig, x: &Tensor, t: &[usize]) -> Result<()> {
    let (b, c, h, w) = dims4(x)?;
    if c != cfg.in_channels || h != cfg.image_size || w != cfg.image_size || t.len() != b {
        return Err(Error::Input(format!(
            "U-Net: expected input [B, {}, {}, {}] with B steps, got {:?} with {} steps",
            cfg.in_channels,
            cfg.image_size,
            cfg.image_size,
            x.shape(),
            t.len()
        )));
    }
    Ok(())
}

/// Labels y ∈ 0..=k (k = ∅), one per image.
fn check_labels(labels: &[usize], k: usize, batch: usize) -> Result<()> {
    if labels.len() != batch {
        return Err(Error::Input(format!(
            "U-Net: {} class labels for a batch of {batch}",
            labels.len()
        )));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y > k) {
        return Err(Error::Input(format!(
            "U-Net: class {bad} is outside 0..{k} (and {k} = the null label)"
        )));
    }
    Ok(())
}

fn apply_attn(attn: &Option<Attn>, h: Tensor, cfg: &UNetConfig) -> Result<Tensor> {
    match attn {
        Some(a) => a.forward(&h, cfg),
        None => Ok(h),
    }
}

fn dims4(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    match x.shape() {
        &[b, c, h, w] => Ok((b, c, h, w)),
        s => Err(Error::Input(format!(
            "U-Net: expected a 4-D [B, C, H, W] tensor, got shape {s:?}"
        ))),
    }
}

/// Sinusoidal embedding of the step t (Vaswani et al., as in DDPM):
/// e_i = sin(t·ω_i) for i < d/2 and cos(t·ω_{i−d/2}) after, with
/// ω_i = exp(−ln(10⁴)·i/(d/2 − 1)) and raw t ∈ 0..T−1.
pub fn timestep_embedding(t: &[usize], dim: usize, dtype: DType, device: Device) -> Result<Tensor> {
    let half = dim / 2;
    let denom = (half.max(2) - 1) as f64;
    let mut v = Vec::with_capacity(t.len() * dim);
    for &step in t {
        let freqs = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / denom).exp() * step as f64);
        let args: Vec<f64> = freqs.collect();
        v.extend(args.iter().map(|a| a.sin()));
        v.extend(args.iter().map(|a| a.cos()));
        v.extend(std::iter::repeat_n(0.0, dim - 2 * half));
    }
    Tensor::from_vec(&v, &[t.len(), dim], dtype, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cfg: &UNetConfig) -> u128 {
        let store = ParamStore::new(DType::F32, Device::Cpu, 0);
        UNet::new(cfg.clone(), &store).unwrap();
        store.num_elements() as u128
    }

    /// The bound holds, and is tight enough to mean something (within 6×),
    /// for every preset, class-conditional and with a learned variance.
    #[test]
    fn parameter_bound_is_above_the_true_count_and_close_to_it() {
        let cond = UNetConfig {
            num_classes: Some(10),
            out_mult: 2,
            ..UNetConfig::tiny()
        };
        for cfg in [UNetConfig::tiny(), UNetConfig::small(), cond] {
            let (n, bound) = (count(&cfg), cfg.parameter_bound());
            assert!(
                n <= bound && bound <= 6 * n,
                "{n} parameters, bound {bound}"
            );
        }
        assert_eq!(count(&UNetConfig::cifar10()), 35_746_307);
        assert!(UNetConfig::cifar10().parameter_bound() < 6 * 35_746_307);
    }

    /// Sizes no machine holds are refused naming the field, before any
    /// parameter is allocated; the presets pass.
    #[test]
    fn validate_refuses_absurd_sizes_naming_the_field() {
        for p in ["tiny", "small", "cifar10"] {
            UNetConfig::preset(p).unwrap().validate().unwrap();
        }
        let tiny = UNetConfig::tiny;
        let cases = [
            (
                UNetConfig {
                    image_size: 1 << 20,
                    ..tiny()
                },
                "image_size 1048576 is outside 1..=4096",
            ),
            (
                UNetConfig {
                    ch: 1_000_000,
                    ..tiny()
                },
                "ch 1000000 is outside 1..=4096",
            ),
            (
                UNetConfig {
                    num_classes: Some(0),
                    ..tiny()
                },
                "num_classes 0 is outside",
            ),
            (
                UNetConfig {
                    ch: 4096,
                    ch_mult: vec![16, 16],
                    groups: 32,
                    ..tiny()
                },
                "parameters",
            ),
            (
                UNetConfig {
                    norm_eps: f64::NAN,
                    ..tiny()
                },
                "norm_eps",
            ),
        ];
        for (cfg, want) in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err} should say {want}");
            let json = cfg.to_json();
            let err = UNetConfig::from_json(&json).unwrap_err().to_string();
            // JSON has no NaN: serde writes null, which fails to parse as f64
            // before validation can name the field.
            let named = err.contains(want) || !cfg.norm_eps.is_finite();
            assert!(err.contains("in checkpoint") && named, "{err}");
        }
    }
}
