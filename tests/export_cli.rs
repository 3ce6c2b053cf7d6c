//! `noisegrad export` end to end: a tiny trained checkpoint exported in both
//! formats, read back, and the bad-input errors.

use noisegrad::diffusion::data::ImageDataset;
use noisegrad::diffusion::diffusers_names::{config_from_diffusers, from_diffusers};
use noisegrad::diffusion::train::{TrainConfig, Trainer};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Device, io};
use std::process::Command;
use std::sync::Arc;

fn export(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_noisegrad"))
        .arg("export")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn export_writes_the_ema_state_dict_and_the_diffusers_layout() {
    let dir = std::env::temp_dir().join(format!("noisegrad-export-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("unet")).unwrap();
    let data = ImageDataset {
        pixels: (0..4 * 3 * 32 * 32).map(|i| (i * 7 % 256) as u8).collect(),
        labels: vec![0; 4],
        channels: 3,
        height: 32,
        width: 32,
        source: "test".into(),
    };
    let mut cfg = TrainConfig::ddpm(UNetConfig::tiny());
    cfg.batch_size = 2;
    cfg.ema_decay = 0.5;
    let mut trainer = Trainer::new(cfg, Arc::new(data)).unwrap();
    trainer.train_step().unwrap();
    let ckpt = dir.join("checkpoint.safetensors");
    trainer.save_checkpoint(&ckpt).unwrap();
    let ck = ckpt.to_str().unwrap();

    let pt = dir.join("model.safetensors");
    let out = export(&["--checkpoint", ck, "--out", pt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = io::load(&pt, Device::Cpu).unwrap();
    let params = trainer.store.params();
    assert_eq!(got.tensors.len(), params.len());
    // The EMA after one step at decay 0.5 differs from the raw weights.
    trainer.use_ema_weights().unwrap();
    for (name, p) in trainer.store.params() {
        assert_eq!(
            got.get(&name).unwrap().to_vec_f64(),
            p.to_vec_f64(),
            "{name}"
        );
    }

    let df = dir.join("unet/diffusion_pytorch_model.safetensors");
    let out = export(&[
        "--checkpoint",
        ck,
        "--out",
        df.to_str().unwrap(),
        "--format",
        "diffusers",
        "--no-ema",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_to_string(dir.join("unet/config.json")).unwrap();
    let dcfg = config_from_diffusers(&json, "config.json").unwrap();
    assert_eq!(dcfg.ch_mult, UNetConfig::tiny().ch_mult);
    let theirs = io::load(&df, Device::Cpu).unwrap();
    assert!(theirs.get("mid_block.attentions.0.to_q.weight").is_ok());
    let back = from_diffusers(&dcfg, &theirs.tensors, &params).unwrap();
    let raw = io::load(&ckpt, Device::Cpu).unwrap();
    for (name, t) in &back {
        assert_eq!(
            t.to_vec_f64(),
            raw.get(name).unwrap().to_vec_f64(),
            "{name}"
        );
    }

    // `sample --from-diffusers` on the export draws the very grid the
    // checkpoint's raw weights draw (same process, seed and sampler).
    let sample = |args: &[&str], png: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_noisegrad"))
            .arg("sample")
            .args(args)
            .args(["--n", "2", "--steps", "2", "--seed", "3", "--out"])
            .arg(png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(png).unwrap()
    };
    let from_checkpoint = sample(&["--checkpoint", ck, "--no-ema"], &dir.join("a.png"));
    let df_path = df.to_str().unwrap();
    let from_diffusers = sample(
        &["--checkpoint", df_path, "--from-diffusers"],
        &dir.join("b.png"),
    );
    assert!(from_checkpoint == from_diffusers, "the two grids differ");

    let out = export(&[
        "--checkpoint",
        pt.to_str().unwrap(),
        "--out",
        "x.safetensors",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a noisegrad training checkpoint (no model_config metadata)"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
