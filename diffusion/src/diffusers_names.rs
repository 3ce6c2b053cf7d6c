//! noisegrad's U-Net ↔ diffusers' `UNet2DModel` in the DDPM layout
//! (`DownBlock2D` / `AttnDownBlock2D` levels, `UNetMidBlock2D`, one head,
//! as `google/ddpm-cifar10-32`): parameter names, tensor layouts and the
//! model config, both ways.
//!
//! The names come from one table: [`TOP`], [`RESBLOCK`] and [`ATTENTION`]
//! rename modules, [`modules`] walks the levels to pair block prefixes
//! (`down.4.0` ↔ `down_blocks.1.resnets.1`). Two layouts differ: our
//! attention uses one 1×1 conv `qkv` [3C, C, 1, 1] and a 1×1 conv `o`, where
//! diffusers has `to_q`, `to_k`, `to_v` and `to_out.0` as `Linear` [C, C].
//! Every conversion is strict: a tensor without a counterpart, a missing
//! one or a wrong shape is an error naming it.

use crate::unet::{DownsamplePad, UNetConfig};
use noisegrad_engine::{Error, Result, Tensor};
use serde_json::{Value, json};
use std::collections::HashMap;

/// How one noisegrad tensor is stored on the diffusers side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Same shape, same values.
    Same,
    /// A 1×1 conv [O, I, 1, 1] stored as a `Linear` [O, I].
    Conv1x1AsLinear,
    /// `qkv` [3C, …] split into q, k, v (weights as `Linear` [C, C]).
    QkvSplit,
}

/// What a module is, which says how its parameters are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A conv, linear or norm with `weight` and `bias`.
    Plain,
    /// An embedding table: `weight` only.
    Embedding,
    Res,
    Attn,
}

/// Top-level modules: (noisegrad, diffusers).
const TOP: [(&str, &str, Kind); 6] = [
    ("temb.0", "time_embedding.linear_1", Kind::Plain),
    ("temb.2", "time_embedding.linear_2", Kind::Plain),
    ("cin", "conv_in", Kind::Plain),
    ("nout", "conv_norm_out", Kind::Plain),
    ("cout", "conv_out", Kind::Plain),
    ("label_emb", "class_embedding", Kind::Embedding),
];

/// Inside a ResBlock (`ResnetBlock2D`).
const RESBLOCK: [(&str, &str); 6] = [
    ("n1", "norm1"),
    ("c1", "conv1"),
    ("t", "time_emb_proj"),
    ("n2", "norm2"),
    ("c2", "conv2"),
    ("skip", "conv_shortcut"),
];

/// Inside an attention block (`Attention`); `qkv` maps to [`QKV`].
const ATTENTION: [(&str, &str, Layout); 3] = [
    ("n", "group_norm", Layout::Same),
    ("o", "to_out.0", Layout::Conv1x1AsLinear),
    ("qkv", "", Layout::QkvSplit),
];

/// The three diffusers projections that make up our `qkv`, in its order.
const QKV: [&str; 3] = ["to_q", "to_k", "to_v"];

/// Attention names of files written before diffusers 0.14 (the original
/// `google/ddpm-*` uploads), accepted when loading, as diffusers does.
const DEPRECATED: [(&str, &str); 4] = [
    ("query", "to_q"),
    ("key", "to_k"),
    ("value", "to_v"),
    ("proj_attn", "to_out.0"),
];

/// One noisegrad tensor and the diffusers tensor(s) holding it.
#[derive(Clone, Debug)]
struct Entry {
    ours: String,
    theirs: Vec<String>,
    layout: Layout,
}

/// Module prefixes (noisegrad, diffusers, kind) of the model `cfg` builds,
/// walked in the order `UNet::new` builds them.
fn modules(cfg: &UNetConfig) -> Vec<(String, String, Kind)> {
    let mut out: Vec<(String, String, Kind)> = TOP
        .iter()
        .map(|&(a, b, k)| (a.to_string(), b.to_string(), k))
        .collect();
    let attn_at = |res: usize| cfg.attn_resolutions.contains(&res);
    let levels = cfg.ch_mult.len();
    let (mut n, mut res) = (0, cfg.image_size);
    for level in 0..levels {
        for j in 0..cfg.num_res_blocks {
            let theirs = format!("down_blocks.{level}");
            out.push((
                format!("down.{n}.0"),
                format!("{theirs}.resnets.{j}"),
                Kind::Res,
            ));
            if attn_at(res) {
                out.push((
                    format!("down.{n}.1"),
                    format!("{theirs}.attentions.{j}"),
                    Kind::Attn,
                ));
            }
            n += 1;
        }
        if level + 1 != levels {
            let theirs = format!("down_blocks.{level}.downsamplers.0.conv");
            out.push((format!("down.{n}.0"), theirs, Kind::Plain));
            n += 1;
            res /= 2;
        }
    }
    out.push(("mid1".into(), "mid_block.resnets.0".into(), Kind::Res));
    out.push(("mida".into(), "mid_block.attentions.0".into(), Kind::Attn));
    out.push(("mid2".into(), "mid_block.resnets.1".into(), Kind::Res));
    let mut n = 0;
    for (u, level) in (0..levels).rev().enumerate() {
        for j in 0..=cfg.num_res_blocks {
            let theirs = format!("up_blocks.{u}");
            out.push((
                format!("up.{n}.0"),
                format!("{theirs}.resnets.{j}"),
                Kind::Res,
            ));
            if attn_at(res) {
                out.push((
                    format!("up.{n}.1"),
                    format!("{theirs}.attentions.{j}"),
                    Kind::Attn,
                ));
            }
            n += 1;
        }
        if level != 0 {
            let theirs = format!("up_blocks.{u}.upsamplers.0.conv");
            out.push((format!("up.{n}.1"), theirs, Kind::Plain));
            n += 1;
            res *= 2;
        }
    }
    out
}

/// Every tensor name pair of `cfg`'s layout. It also lists tensors a
/// particular model may lack (a 1×1 skip where channels do not change);
/// the conversions check against the model's actual parameters.
fn entries(cfg: &UNetConfig) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut push = |ours: String, theirs: Vec<String>, layout: Layout| {
        out.push(Entry {
            ours,
            theirs,
            layout,
        })
    };
    for (ours, theirs, kind) in modules(cfg) {
        let leaves: &[&str] = match kind {
            Kind::Embedding => &["weight"],
            _ => &["weight", "bias"],
        };
        for leaf in leaves {
            let pair =
                |a: &str, b: &str| (format!("{ours}.{a}{leaf}"), format!("{theirs}.{b}{leaf}"));
            match kind {
                Kind::Plain | Kind::Embedding => {
                    let (a, b) = pair("", "");
                    push(a, vec![b], Layout::Same);
                }
                Kind::Res => {
                    for (a, b) in RESBLOCK {
                        let (a, b) = pair(&format!("{a}."), &format!("{b}."));
                        push(a, vec![b], Layout::Same);
                    }
                }
                Kind::Attn => {
                    for (a, b, layout) in ATTENTION {
                        let names = match layout {
                            Layout::QkvSplit => {
                                QKV.iter().map(|q| pair("", &format!("{q}.")).1).collect()
                            }
                            _ => vec![pair("", &format!("{b}.")).1],
                        };
                        push(pair(&format!("{a}."), "").0, names, layout);
                    }
                }
            }
        }
    }
    out
}

/// Checks that diffusers' `UNet2DModel` can hold this model exactly.
fn check_expressible(cfg: &UNetConfig) -> Result<()> {
    if cfg.ch_mult[0] != 1 {
        return Err(Error::Interop(format!(
            "diffusers layout: ch_mult starts with {}, but UNet2DModel's conv_in, time embedding and \
             output norm all use block_out_channels[0], so it must start with 1",
            cfg.ch_mult[0]
        )));
    }
    Ok(())
}

/// Our tensors (names of `UNet`'s `state_dict`) under diffusers'
/// `UNet2DModel` names and layouts. A name with no counterpart is an error.
pub fn to_diffusers(cfg: &UNetConfig, ours: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>> {
    check_expressible(cfg)?;
    let table: HashMap<String, Entry> = entries(cfg)
        .into_iter()
        .map(|e| (e.ours.clone(), e))
        .collect();
    let mut out = Vec::new();
    for (name, t) in ours {
        let e = table.get(name).ok_or_else(|| {
            Error::Interop(format!(
                "noisegrad tensor '{name}' has no diffusers UNet2DModel name in this layout"
            ))
        })?;
        match e.layout {
            Layout::Same => out.push((e.theirs[0].clone(), t.clone())),
            Layout::Conv1x1AsLinear if t.rank() == 4 => out.push((
                e.theirs[0].clone(),
                t.reshape(&linear_shape(name, t)?)?.contiguous()?,
            )),
            Layout::Conv1x1AsLinear => out.push((e.theirs[0].clone(), t.clone())),
            Layout::QkvSplit => {
                let c = t.dim(0)? / 3;
                let mut shape = t.shape().to_vec();
                shape[0] = c;
                if t.rank() == 4 {
                    shape = linear_shape(name, t)?;
                    shape[0] = c;
                }
                for (i, theirs) in e.theirs.iter().enumerate() {
                    out.push((
                        theirs.clone(),
                        t.narrow(0, i * c, c)?.contiguous()?.reshape(&shape)?,
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// [O, I] of a 1×1 conv weight [O, I, 1, 1].
fn linear_shape(name: &str, t: &Tensor) -> Result<Vec<usize>> {
    match t.shape() {
        &[o, i, 1, 1] => Ok(vec![o, i]),
        s => Err(Error::Interop(format!(
            "noisegrad tensor '{name}' should be a 1×1 conv weight, has shape {s:?}"
        ))),
    }
}

/// The diffusers name without deprecated attention names (`query` →
/// `to_q`, …).
fn canonical(name: &str) -> String {
    if name.contains(".attentions.") {
        for (old, new) in DEPRECATED {
            for leaf in ["weight", "bias"] {
                if let Some(head) = name.strip_suffix(&format!(".{old}.{leaf}")) {
                    return format!("{head}.{new}.{leaf}");
                }
            }
        }
    }
    name.to_string()
}

/// diffusers `UNet2DModel` tensors as ours: exactly the names and shapes
/// of `expected` (a model's `ParamStore::params()`), in its order. A
/// diffusers tensor this config has no place for, a missing one and a
/// shape mismatch are errors naming the diffusers tensor.
pub fn from_diffusers(
    cfg: &UNetConfig,
    theirs: &[(String, Tensor)],
    expected: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>> {
    check_expressible(cfg)?;
    let table = entries(cfg);
    let wanted: HashMap<&str, &Tensor> = expected.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut slot: HashMap<String, (usize, usize)> = HashMap::new();
    for (i, e) in table.iter().enumerate() {
        if wanted.contains_key(e.ours.as_str()) {
            for (part, name) in e.theirs.iter().enumerate() {
                slot.insert(name.clone(), (i, part));
            }
        }
    }
    let mut given: HashMap<(usize, usize), (&str, &Tensor)> = HashMap::new();
    for (name, t) in theirs {
        let key = *slot.get(&canonical(name)).ok_or_else(|| {
            Error::Interop(format!(
                "diffusers tensor '{name}' has no place in this model ({})",
                describe(cfg)
            ))
        })?;
        if let Some((first, _)) = given.insert(key, (name, t)) {
            return Err(Error::Interop(format!(
                "diffusers tensors '{first}' and '{name}' are the same parameter"
            )));
        }
    }
    let by_ours: HashMap<&str, usize> = table
        .iter()
        .enumerate()
        .map(|(i, e)| (e.ours.as_str(), i))
        .collect();
    let mut out = Vec::with_capacity(expected.len());
    for (ours, want) in expected {
        let i = *by_ours.get(ours.as_str()).ok_or_else(|| {
            Error::Interop(format!(
                "noisegrad parameter '{ours}' has no diffusers UNet2DModel name"
            ))
        })?;
        let e = &table[i];
        let parts: Vec<(&str, &Tensor)> = (0..e.theirs.len())
            .map(|part| {
                given.get(&(i, part)).copied().ok_or_else(|| {
                    Error::Interop(format!(
                        "the diffusers weights have no '{}' (noisegrad '{ours}')",
                        e.theirs[part]
                    ))
                })
            })
            .collect::<Result<_>>()?;
        out.push((ours.clone(), assemble(e, &parts, want.shape())?));
    }
    Ok(out)
}

/// Our tensor of shape `want` from its diffusers part(s).
fn assemble(e: &Entry, parts: &[(&str, &Tensor)], want: &[usize]) -> Result<Tensor> {
    let n = parts.len();
    let mut part_shape = want.to_vec();
    part_shape[0] /= n;
    if e.layout != Layout::Same && want.len() == 4 {
        part_shape.truncate(2); // a Linear [O, I] standing for a 1×1 conv
    }
    for (name, t) in parts {
        if t.shape() != part_shape.as_slice() {
            return Err(Error::Interop(format!(
                "diffusers tensor '{name}' has shape {:?}, expected {part_shape:?} (noisegrad '{}' {want:?})",
                t.shape(),
                e.ours
            )));
        }
    }
    let tensors: Vec<&Tensor> = parts.iter().map(|(_, t)| *t).collect();
    Tensor::concat(&tensors, 0)?.reshape(want)
}

fn describe(cfg: &UNetConfig) -> String {
    format!(
        "ch {}, ch_mult {:?}, {} res blocks, attention at {:?}",
        cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions
    )
}

/// The diffusers version the layout was checked against.
const DIFFUSERS_VERSION: &str = "0.42.1";

/// `config.json` of the `UNet2DModel` that holds `cfg` exactly (its
/// `downsample_padding` follows [`UNetConfig::downsample_pad`]).
pub fn diffusers_config(cfg: &UNetConfig) -> Result<Value> {
    check_expressible(cfg)?;
    let levels = cfg.ch_mult.len();
    let attn = |level: usize| cfg.attn_resolutions.contains(&(cfg.image_size >> level));
    let down: Vec<&str> = (0..levels)
        .map(|l| {
            if attn(l) {
                "AttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = (0..levels)
        .rev()
        .map(|l| {
            if attn(l) {
                "AttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let channels: Vec<usize> = cfg.ch_mult.iter().map(|m| cfg.ch * m).collect();
    Ok(json!({
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels * cfg.out_mult,
        "center_input_sample": false,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": false,
        "freq_shift": 1,
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": channels,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": match cfg.downsample_pad {
            DownsamplePad::TfSame => 0,
            DownsamplePad::Symmetric => 1,
        },
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": null,
        "norm_num_groups": cfg.groups,
        "attn_norm_num_groups": null,
        "norm_eps": cfg.norm_eps,
        "resnet_time_scale_shift": "default",
        "add_attention": true,
        "class_embed_type": null,
        "num_class_embeds": cfg.num_classes.map(|k| k + 1),
    }))
}

/// Reads a diffusers `config.json` (`source` names it in errors) with
/// `UNet2DModel`'s defaults for absent keys. Everything the DDPM layout
/// fixes must have its DDPM value (sin-first embedding with `freq_shift` 1,
/// SiLU, one attention head, ...); any other value or unknown key is an
/// error naming it. `num_class_embeds` = K + 1 reads as K classes plus
/// noisegrad's null label (the last row).
pub fn config_from_diffusers(json: &str, source: &str) -> Result<UNetConfig> {
    let err = |m: String| Error::Interop(format!("{source}: {m}"));
    let v: Value = serde_json::from_str(json).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| err("not a JSON object".into()))?;
    const KNOWN: [&str; 28] = [
        "sample_size",
        "in_channels",
        "out_channels",
        "center_input_sample",
        "time_embedding_type",
        "time_embedding_dim",
        "freq_shift",
        "flip_sin_to_cos",
        "down_block_types",
        "mid_block_type",
        "up_block_types",
        "block_out_channels",
        "layers_per_block",
        "mid_block_scale_factor",
        "downsample_padding",
        "downsample_type",
        "upsample_type",
        "dropout",
        "act_fn",
        "attention_head_dim",
        "norm_num_groups",
        "attn_norm_num_groups",
        "norm_eps",
        "resnet_time_scale_shift",
        "add_attention",
        "class_embed_type",
        "num_class_embeds",
        "num_train_timesteps",
    ];
    if let Some(k) = obj
        .keys()
        .find(|k| !k.starts_with('_') && !KNOWN.contains(&k.as_str()))
    {
        return Err(err(format!("unknown UNet2DModel config key '{k}'")));
    }
    if let Some(c) = obj
        .get("_class_name")
        .filter(|c| c.as_str() != Some("UNet2DModel"))
    {
        return Err(err(format!("_class_name {c} is not UNet2DModel")));
    }
    let get = |k: &str, default: Value| obj.get(k).cloned().unwrap_or(default);
    let require = |k: &str, default: Value, want: Value, why: &str| -> Result<()> {
        let got = get(k, default);
        let same = match (got.as_f64(), want.as_f64()) {
            (Some(a), Some(b)) => a == b,
            _ => got == want,
        };
        if same {
            Ok(())
        } else {
            Err(err(format!(
                "{k} {got} is not supported: {why} (needs {want})"
            )))
        }
    };
    require(
        "time_embedding_type",
        json!("positional"),
        json!("positional"),
        "the DDPM sinusoidal embedding",
    )?;
    require(
        "flip_sin_to_cos",
        json!(true),
        json!(false),
        "noisegrad's embedding puts sin first",
    )?;
    require(
        "freq_shift",
        json!(0),
        json!(1),
        "noisegrad's frequencies are exp(-ln(1e4)·i/(d/2 − 1))",
    )?;
    require(
        "center_input_sample",
        json!(false),
        json!(false),
        "inputs are already in [-1, 1]",
    )?;
    require(
        "act_fn",
        json!("silu"),
        json!("silu"),
        "the DDPM activation",
    )?;
    require(
        "mid_block_type",
        json!("UNetMidBlock2D"),
        json!("UNetMidBlock2D"),
        "the DDPM middle block",
    )?;
    require(
        "mid_block_scale_factor",
        json!(1),
        json!(1),
        "residuals are not rescaled",
    )?;
    require(
        "downsample_type",
        json!("conv"),
        json!("conv"),
        "downsampling is a stride-2 conv",
    )?;
    require(
        "upsample_type",
        json!("conv"),
        json!("conv"),
        "upsampling is nearest ×2 then a conv",
    )?;
    require(
        "resnet_time_scale_shift",
        json!("default"),
        json!("default"),
        "the time embedding is added",
    )?;
    require(
        "add_attention",
        json!(true),
        json!(true),
        "the middle block has attention",
    )?;
    require(
        "class_embed_type",
        Value::Null,
        Value::Null,
        "class labels use an embedding table",
    )?;
    let uint = |k: &str, default: Option<usize>| -> Result<usize> {
        match obj.get(k) {
            None => default.ok_or_else(|| err(format!("missing '{k}'"))),
            Some(x) => x
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| err(format!("'{k}' {x} is not a whole number"))),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64> {
        obj.get(k)
            .map_or(Some(default), Value::as_f64)
            .ok_or_else(|| err(format!("'{k}' is not a number")))
    };
    let strings = |k: &str| -> Result<Vec<String>> {
        let a = obj
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("missing list '{k}'")))?;
        a.iter()
            .map(|s| {
                s.as_str()
                    .map(String::from)
                    .ok_or_else(|| err(format!("'{k}' holds a non-string {s}")))
            })
            .collect()
    };
    let image_size = match obj.get("sample_size") {
        Some(Value::Array(a)) if a.len() == 2 && a[0] == a[1] => a[0].as_u64().map(|u| u as usize),
        Some(x) => x.as_u64().map(|u| u as usize),
        None => None,
    }
    .ok_or_else(|| err("sample_size must be a whole number (square images)".into()))?;
    let channels: Vec<usize> = obj
        .get("block_out_channels")
        .and_then(Value::as_array)
        .ok_or_else(|| err("missing list 'block_out_channels'".into()))?
        .iter()
        .map(|c| c.as_u64().map(|u| u as usize).filter(|&u| u > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| err("block_out_channels must hold positive whole numbers".into()))?;
    let ch = *channels
        .first()
        .ok_or_else(|| err("block_out_channels is empty".into()))?;
    let ch_mult: Vec<usize> = channels
        .iter()
        .map(|&c| c.is_multiple_of(ch).then_some(c / ch))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            err(format!(
                "block_out_channels {channels:?} are not multiples of the first"
            ))
        })?;
    let (down, up) = (strings("down_block_types")?, strings("up_block_types")?);
    if down.len() != channels.len() || up.len() != channels.len() {
        return Err(err(format!(
            "{} down and {} up block types for {} block_out_channels",
            down.len(),
            up.len(),
            channels.len()
        )));
    }
    let mut attn_resolutions = Vec::new();
    for (level, d) in down.iter().enumerate() {
        let has = match d.as_str() {
            "DownBlock2D" => false,
            "AttnDownBlock2D" => true,
            other => {
                return Err(err(format!(
                    "down block type '{other}' is not supported (DownBlock2D or AttnDownBlock2D)"
                )));
            }
        };
        let want_up = if has { "AttnUpBlock2D" } else { "UpBlock2D" };
        let u = &up[channels.len() - 1 - level];
        if u != want_up {
            return Err(err(format!(
                "up block '{u}' mirrors down block '{d}' of level {level}: expected '{want_up}' (attention at the same resolutions)"
            )));
        }
        if has {
            attn_resolutions.push(image_size >> level);
        }
    }
    let groups = uint("norm_num_groups", Some(32))?;
    if obj
        .get("attn_norm_num_groups")
        .is_some_and(|g| !g.is_null() && g.as_u64() != Some(groups as u64))
    {
        return Err(err(
            "attn_norm_num_groups must be null or equal norm_num_groups".into(),
        ));
    }
    if let Some(d) = obj.get("time_embedding_dim").filter(|d| !d.is_null())
        && d.as_u64() != Some(4 * ch as u64)
    {
        return Err(err(format!(
            "time_embedding_dim {d} must be null or 4 × block_out_channels[0] = {}",
            4 * ch
        )));
    }
    // One head: diffusers gives c / attention_head_dim heads of each attended block.
    match get("attention_head_dim", json!(8)) {
        Value::Null => {}
        d => {
            let attended = attn_resolutions
                .iter()
                .map(|r| channels[(image_size / r).trailing_zeros() as usize]);
            if let Some(c) = attended
                .chain([channels[channels.len() - 1]])
                .find(|&c| d.as_u64() != Some(c as u64))
            {
                return Err(err(format!(
                    "attention_head_dim {d} splits {c} channels into several heads; noisegrad's attention has one head (use null)"
                )));
            }
        }
    }
    let in_channels = uint("in_channels", Some(3))?;
    let out_channels = uint("out_channels", Some(3))?;
    if out_channels != in_channels && out_channels != 2 * in_channels {
        return Err(err(format!(
            "out_channels {out_channels} must be in_channels {in_channels} or twice it"
        )));
    }
    let num_classes = match obj.get("num_class_embeds") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64().filter(|&n| n >= 2).ok_or_else(|| {
                err(format!(
                    "num_class_embeds {n} must be at least 2 (K classes + the null label)"
                ))
            })? as usize
                - 1,
        ),
    };
    let downsample_pad = match uint("downsample_padding", Some(1))? {
        0 => DownsamplePad::TfSame,
        1 => DownsamplePad::Symmetric,
        p => {
            return Err(err(format!(
                "downsample_padding {p} is not supported (0: TF 'SAME', 1: symmetric)"
            )));
        }
    };
    let cfg = UNetConfig {
        image_size,
        in_channels,
        ch,
        ch_mult,
        num_res_blocks: uint("layers_per_block", Some(2))?,
        attn_resolutions,
        dropout: float("dropout", 0.0)?,
        groups,
        norm_eps: float("norm_eps", 1e-5)?,
        num_classes,
        out_mult: out_channels / in_channels,
        downsample_pad,
    };
    cfg.validate().map_err(|e| err(e.to_string()))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar10_names_pair_up_as_in_diffusers() {
        let cfg = UNetConfig::cifar10();
        let t = entries(&cfg);
        let find = |ours: &str| t.iter().find(|e| e.ours == ours).unwrap().theirs.clone();
        assert_eq!(find("temb.0.weight"), ["time_embedding.linear_1.weight"]);
        assert_eq!(
            find("down.0.0.n1.weight"),
            ["down_blocks.0.resnets.0.norm1.weight"]
        );
        assert_eq!(
            find("down.2.0.bias"),
            ["down_blocks.0.downsamplers.0.conv.bias"]
        );
        assert_eq!(
            find("down.4.1.o.weight"),
            ["down_blocks.1.attentions.1.to_out.0.weight"]
        );
        assert_eq!(
            find("down.3.0.skip.weight"),
            ["down_blocks.1.resnets.0.conv_shortcut.weight"]
        );
        assert_eq!(
            find("mida.qkv.bias"),
            [
                "mid_block.attentions.0.to_q.bias",
                "mid_block.attentions.0.to_k.bias",
                "mid_block.attentions.0.to_v.bias"
            ]
        );
        // Up path: level 3 first, 3 ResBlocks per level, then the upsampler.
        assert_eq!(
            find("up.3.1.weight"),
            ["up_blocks.0.upsamplers.0.conv.weight"]
        );
        assert_eq!(
            find("up.8.1.n.weight"),
            ["up_blocks.2.attentions.0.group_norm.weight"]
        );
        assert_eq!(
            find("up.14.0.t.weight"),
            ["up_blocks.3.resnets.2.time_emb_proj.weight"]
        );
    }

    #[test]
    fn deprecated_attention_names_are_accepted() {
        assert_eq!(
            canonical("mid_block.attentions.0.query.weight"),
            "mid_block.attentions.0.to_q.weight"
        );
        assert_eq!(
            canonical("up_blocks.2.attentions.1.proj_attn.bias"),
            "up_blocks.2.attentions.1.to_out.0.bias"
        );
        assert_eq!(canonical("conv_in.weight"), "conv_in.weight");
    }
}
