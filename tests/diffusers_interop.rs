//! diffusers interop: a `UNet2DModel` in the DDPM layout (random weights,
//! written by scripts/fixtures_diffusers.py) loads through the diffusers
//! name table and reproduces diffusers' output; export → load round trips;
//! a trained checkpoint exports its EMA or raw weights.

use noisegrad::diffusion::diffusers_names::{
    config_from_diffusers, diffusers_config, from_diffusers, to_diffusers,
};
use noisegrad::diffusion::export::{checkpoint_weights, strict_model};
use noisegrad::diffusion::unet::{DownsamplePad, UNet, UNetConfig};
use noisegrad::engine::nn::ParamStore;
use noisegrad::engine::{DType, Device, Philox, Tensor, io};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/diffusers_unet");

fn fixture_config() -> UNetConfig {
    let json = std::fs::read_to_string(format!("{DIR}/config.json")).unwrap();
    config_from_diffusers(&json, "config.json").unwrap()
}

#[test]
fn diffusers_config_reads_as_the_ddpm_layout() {
    let cfg = fixture_config();
    assert_eq!((cfg.ch, cfg.ch_mult.clone()), (16, vec![1, 2, 2, 2]));
    assert_eq!((cfg.num_res_blocks, cfg.groups), (2, 8));
    assert_eq!(cfg.attn_resolutions, vec![16]);
    assert_eq!(cfg.downsample_pad, DownsamplePad::TfSame);
    // google/ddpm-cifar10-32's config.json is our cifar10 preset with TF padding.
    let official = r#"{"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu",
        "attention_head_dim": null, "block_out_channels": [128, 256, 256, 256],
        "center_input_sample": false,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "downsample_padding": 0, "flip_sin_to_cos": false, "freq_shift": 1, "in_channels": 3,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-06,
        "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
        "time_embedding_type": "positional",
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}"#;
    let got = config_from_diffusers(official, "ddpm-cifar10-32").unwrap();
    let want = UNetConfig {
        dropout: 0.0,
        downsample_pad: DownsamplePad::TfSame,
        ..UNetConfig::cifar10()
    };
    assert_eq!(got, want);
    // ... and writing our config gives back the same model.
    let back = diffusers_config(&want).unwrap().to_string();
    assert_eq!(config_from_diffusers(&back, "written").unwrap(), want);
}

#[test]
fn unsupported_diffusers_configs_are_refused_by_name() {
    let json = std::fs::read_to_string(format!("{DIR}/config.json")).unwrap();
    for (from, to, needle) in [
        (
            "\"flip_sin_to_cos\": false",
            "\"flip_sin_to_cos\": true",
            "flip_sin_to_cos true",
        ),
        (
            "\"attention_head_dim\": null",
            "\"attention_head_dim\": 8",
            "attention_head_dim 8",
        ),
        (
            "\"downsample_padding\": 0",
            "\"downsample_padding\": 2",
            "downsample_padding 2",
        ),
        (
            "\"act_fn\": \"silu\"",
            "\"act_fn\": \"gelu\", \"xyz\": 1",
            "unknown UNet2DModel config key 'xyz'",
        ),
    ] {
        let bad = json.replace(from, to);
        let err = config_from_diffusers(&bad, "cfg.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle) && err.contains("cfg.json"), "{err}");
    }
}

#[test]
fn diffusers_weights_reproduce_the_diffusers_output() {
    let cfg = fixture_config();
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    let model = UNet::new(cfg.clone(), &store).unwrap();
    let theirs = io::load(
        format!("{DIR}/diffusion_pytorch_model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let ours = from_diffusers(&cfg, &theirs.tensors, &store.params()).unwrap();
    store.load_state_dict(&ours).unwrap();
    let fx = io::load(format!("{DIR}/io.safetensors"), Device::Cpu).unwrap();
    let t: Vec<usize> = fx
        .get("t")
        .unwrap()
        .to_vec_f64()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let y = model
        .forward(fx.get("x").unwrap(), &t, false, &mut Philox::new(0))
        .unwrap();
    let want = fx.get("y").unwrap().to_vec_f64();
    let err = y
        .to_vec_f64()
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-4, "max |noisegrad − diffusers| = {err:e}");
    // The padding option matters: symmetric padding gives another output.
    let sym = UNetConfig {
        downsample_pad: DownsamplePad::Symmetric,
        ..cfg.clone()
    };
    let store2 = ParamStore::new(DType::F32, Device::Cpu, 0);
    let model2 = UNet::new(sym, &store2).unwrap();
    store2.load_state_dict(&ours).unwrap();
    let y2 = model2
        .forward(fx.get("x").unwrap(), &t, false, &mut Philox::new(0))
        .unwrap();
    let off = y2
        .to_vec_f64()
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        off > 1e-2,
        "symmetric padding should not match diffusers (off by {off:e})"
    );
}

#[test]
fn export_then_load_gives_identical_tensors() {
    let theirs = io::load(
        format!("{DIR}/diffusion_pytorch_model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let cfg = fixture_config();
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    UNet::new(cfg.clone(), &store).unwrap();
    let ours = from_diffusers(&cfg, &theirs.tensors, &store.params()).unwrap();
    let back = to_diffusers(&cfg, &ours).unwrap();
    assert_eq!(back.len(), theirs.tensors.len());
    for (name, t) in &back {
        let orig = theirs.get(name).unwrap();
        assert_eq!(t.shape(), orig.shape(), "{name}");
        assert_eq!(t.to_vec_f64(), orig.to_vec_f64(), "{name}");
    }
    let again = from_diffusers(&cfg, &back, &store.params()).unwrap();
    for ((n1, a), (n2, b)) in ours.iter().zip(&again) {
        assert_eq!((n1, a.to_vec_f64()), (n2, b.to_vec_f64()));
    }
}

#[test]
fn missing_and_unknown_diffusers_tensors_are_named() {
    let theirs = io::load(
        format!("{DIR}/diffusion_pytorch_model.safetensors"),
        Device::Cpu,
    )
    .unwrap();
    let cfg = fixture_config();
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    UNet::new(cfg.clone(), &store).unwrap();
    let mut fewer = theirs.tensors.clone();
    fewer.retain(|(n, _)| n != "mid_block.attentions.0.to_k.weight");
    let err = from_diffusers(&cfg, &fewer, &store.params())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no 'mid_block.attentions.0.to_k.weight' (noisegrad 'mida.qkv.weight')"),
        "{err}"
    );
    let mut more = theirs.tensors.clone();
    more.push((
        "down_blocks.0.resnets.0.conv_shortcut.weight".into(),
        Tensor::zeros(&[16, 16, 1, 1], DType::F32, Device::Cpu).unwrap(),
    ));
    let err = from_diffusers(&cfg, &more, &store.params())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "diffusers tensor 'down_blocks.0.resnets.0.conv_shortcut.weight' has no place"
        ),
        "{err}"
    );
}

#[test]
fn checkpoint_weights_pick_ema_under_either_prefix() {
    let w = |v: f64| Tensor::from_vec(&[v], &[1], DType::F32, Device::Cpu).unwrap();
    for prefix in ["ema.", "ema.ema."] {
        let loaded = io::Loaded {
            tensors: vec![
                ("cin.bias".into(), w(1.0)),
                (format!("{prefix}cin.bias"), w(2.0)),
                ("opt.m.cin.bias".into(), w(3.0)),
            ],
            metadata: Default::default(),
        };
        let p = std::path::Path::new("c.safetensors");
        let ema = checkpoint_weights(&loaded, p, true).unwrap();
        assert_eq!(
            (ema[0].0.as_str(), ema[0].1.to_vec_f64()),
            ("cin.bias", vec![2.0])
        );
        let raw = checkpoint_weights(&loaded, p, false).unwrap();
        assert_eq!((raw.len(), raw[0].1.to_vec_f64()), (1, vec![1.0]));
    }
    let loaded = io::Loaded {
        tensors: vec![("cin.bias".into(), w(1.0))],
        metadata: Default::default(),
    };
    let err = checkpoint_weights(&loaded, std::path::Path::new("c.st"), true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no EMA weights") && err.contains("--no-ema"),
        "{err}"
    );
    // A state_dict that is not the model's is refused by name.
    let err = strict_model(&UNetConfig::tiny(), &[("cin.bias".into(), w(1.0))])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cin.weight"), "{err}");
}
