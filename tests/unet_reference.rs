//! The U-Net against the PyTorch replica of the DDPM model (fixture written
//! by scripts/fixtures_unet.py), and the presets' parameter counts.

use noisegrad::diffusion::unet::{DownsamplePad, UNet, UNetConfig};
use noisegrad::engine::nn::ParamStore;
use noisegrad::engine::{DType, Device, Philox, Tensor, io};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/unet_forward.safetensors"
);

/// The fixture script's weight formula (see `formula_weight` there).
fn formula_weight(index: usize, shape: &[usize], name: &str) -> Tensor {
    let numel: usize = shape.iter().product();
    let fan_in: usize = if shape.len() > 1 {
        shape[1..].iter().product()
    } else {
        1
    };
    let v: Vec<f64> = (0..numel)
        .map(|j| {
            let wave = (0.61 * j as f64 + 1.7 * index as f64).sin();
            if name.ends_with("bias") {
                0.05 * wave
            } else if shape.len() == 1 {
                1.0 + 0.1 * wave
            } else {
                wave * (1.5 / (fan_in as f64).sqrt())
            }
        })
        .collect();
    Tensor::from_vec(&v, shape, DType::F32, Device::Cpu).unwrap()
}

fn fixture_config() -> UNetConfig {
    UNetConfig {
        image_size: 16,
        in_channels: 3,
        ch: 32,
        ch_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![8],
        dropout: 0.1,
        groups: 32,
        norm_eps: 1e-6,
        num_classes: None,
        out_mult: 1,
        downsample_pad: DownsamplePad::Symmetric,
    }
}

#[test]
fn forward_matches_pytorch_replica() {
    let fx = io::load(FIXTURE, Device::Cpu).unwrap();
    let order: Vec<String> = fx.metadata["param_order"]
        .split(',')
        .map(String::from)
        .collect();
    let store = ParamStore::new(DType::F32, Device::Cpu, 0);
    let model = UNet::new(fixture_config(), &store).unwrap();
    let ours: Vec<String> = store.params().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        ours, order,
        "parameter names and order must match the PyTorch state_dict"
    );
    let weights: Vec<(String, Tensor)> = store
        .params()
        .into_iter()
        .enumerate()
        .map(|(i, (n, t))| {
            let w = formula_weight(i, t.shape(), &n);
            (n, w)
        })
        .collect();
    store.load_state_dict(&weights).unwrap();
    let x = fx.get("x").unwrap();
    let t: Vec<usize> = fx
        .get("t")
        .unwrap()
        .to_vec_f64()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let y = model.forward(x, &t, false, &mut Philox::new(0)).unwrap();
    let (got, want) = (y.to_vec_f64(), fx.get("y").unwrap().to_vec_f64());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    assert!(err <= 1e-4, "relative error {err:e} vs the PyTorch replica");
}

#[test]
fn preset_parameter_counts_match_the_reference() {
    for (cfg, want) in [
        (UNetConfig::cifar10(), 35_746_307),
        (UNetConfig::small(), 4_437_699),
    ] {
        let store = ParamStore::new(DType::F32, Device::Cpu, 0);
        UNet::new(cfg, &store).unwrap();
        assert_eq!(store.num_elements(), want);
    }
}
