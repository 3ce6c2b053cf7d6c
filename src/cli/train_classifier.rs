//! `noisegrad train-classifier`: the noise-aware classifier of classifier
//! guidance, or with `--clean` an ordinary classifier for `score`.

use super::{DeviceArgs, load_labelled_data, open_device};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use noisegrad::diffusion::classifier::{ClassifierTrainConfig, ClassifierTrainer};
use noisegrad::diffusion::schedule::BetaSchedule;
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::Result;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct TrainClassifierArgs {
    /// Labelled data (as for `train`). Default: the embedded Fashion-MNIST sample; its
    /// test split gives the accuracy printed at the end.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Encoder preset (the U-Net's downsampling half): tiny, small or cifar10.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long)]
    pub ch: Option<usize>,
    #[arg(long, default_value_t = 600)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Train on clean images only (t = 0): the classifier `score` uses.
    #[arg(long)]
    pub clean: bool,
    /// Diffusion steps T of the models this classifier will guide.
    #[arg(long, default_value_t = 1000)]
    pub diffusion_steps: usize,
    #[arg(long)]
    pub no_flip: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "runs/classifier.safetensors")]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn train_classifier(a: TrainClassifierArgs) -> Result<()> {
    super::catch_interrupts()?;
    let (data, names) = load_labelled_data(&a.data, true)?;
    let (test, _) = load_labelled_data(&a.data, false)?;
    let mut model = UNetConfig::preset(&a.preset)?;
    model.in_channels = data.channels;
    model.image_size = data.height;
    model.num_classes = Some(
        names
            .len()
            .max(1 + *data.labels.iter().max().unwrap_or(&0) as usize),
    );
    if let Some(ch) = a.ch {
        model.ch = ch;
    }
    if a.diffusion_steps == 0 || a.steps == 0 {
        return Err(noisegrad::engine::Error::Config(
            "--diffusion-steps and --steps must be positive".into(),
        ));
    }
    model.validate()?;
    super::guard::check_unet_batch_fits("--batch-size", a.batch_size, &model)?;
    let cfg = ClassifierTrainConfig {
        model,
        diffusion_steps: a.diffusion_steps,
        schedule: BetaSchedule::DDPM,
        clean: a.clean,
        batch_size: a.batch_size,
        lr: a.lr,
        random_flip: !a.no_flip,
        seed: a.seed,
        device: open_device(a.dev)?,
        class_names: names,
    };
    let mut trainer = ClassifierTrainer::new(cfg, Arc::new(data))?;
    println!(
        "training a {} classifier ({} parameters, {} classes) on {}, {} steps",
        if a.clean { "clean" } else { "noise-aware" },
        trainer.store.num_elements(),
        trainer.config.class_names.len(),
        trainer.config.class_names.join(", "),
        a.steps
    );
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    for _ in 0..a.steps {
        super::stop_if_interrupted()?;
        let loss = trainer.train_step()?;
        bar.inc(1);
        bar.set_message(format!("cross-entropy {loss:.3}"));
    }
    bar.finish();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| super::io_err(dir, e))?;
    }
    trainer.save(&a.out)?;
    println!(
        "held-out accuracy on {} ({} images):",
        test.source,
        test.len()
    );
    for ((lo, hi), acc) in trainer.accuracy_by_t(&test, 5)? {
        println!("  t in [{lo}, {hi}): {:.1}%", 100.0 * acc);
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
