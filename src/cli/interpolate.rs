//! `noisegrad interpolate`: interpolation between two images through the
//! diffusion (Ho et al. 2020, §4.3, Fig. 8), one row per path: linear and
//! spherical mixing of q-noised x_t decoded by DDPM, and slerp of DDIM
//! inversions decoded by DDIM.

use super::{DeviceArgs, EMBEDDED_TEST, model_from_checkpoint, open_device, reverse_model};
use clap::Args;
use indicatif::ProgressBar;
use noisegrad::diffusion::data::{
    ImageDataset, batch_from, decode_png, load_dataset, parse_cifar10,
};
use noisegrad::diffusion::image::save_grid;
use noisegrad::diffusion::interpolate::{Mix, interpolate_ddim, interpolate_through_q};
use noisegrad::diffusion::unet::UNetConfig;
use noisegrad::engine::{Error, Philox, Result, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct InterpolateArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// First image: an index into the test data, or a PNG file of the model's size.
    #[arg(long)]
    pub a: String,
    /// Second image (same forms as --a).
    #[arg(long)]
    pub b: String,
    /// Test data for indices (default: the embedded CIFAR-10 test sample).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Diffusion step to encode to (Ho et al. use 500 of 1000).
    #[arg(long, default_value_t = 500)]
    pub t: usize,
    /// Interpolants per path, λ = 0 … 1.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// DDIM steps for the inversion path (encode and decode).
    #[arg(long, default_value_t = 50)]
    pub ddim_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub no_ema: bool,
    #[arg(long, default_value = "interpolation.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn interpolate(a: InterpolateArgs) -> Result<()> {
    super::catch_interrupts()?;
    let device = open_device(a.dev)?;
    let trained = model_from_checkpoint(&a.checkpoint, !a.no_ema, device)?;
    if a.n == 0 || a.n > 64 {
        return Err(Error::Config(format!("--n must be in 1..=64, got {}", a.n)));
    }
    let cfg = &trained.model.config;
    let test = match &a.data {
        Some(p) => load_dataset(p, false)?,
        None => parse_cifar10(EMBEDDED_TEST, "embedded CIFAR-10 test sample (256 images)")?,
    };
    let xa = endpoint(&a.a, &test, cfg)?.to_device(device)?;
    let xb = endpoint(&a.b, &test, cfg)?.to_device(device)?;
    let schedule = &trained.schedule;
    let objective = trained.config.objective;
    let mut net = reverse_model(&trained.model, schedule, objective.predict);
    let mut rng = Philox::new(a.seed);
    let bar = ProgressBar::new(3);
    let started = Instant::now();
    let mut rows = Vec::new();
    for how in [Mix::Linear, Mix::Spherical] {
        let mixed = interpolate_through_q(
            schedule,
            objective.sigma(),
            &mut net,
            (&xa, &xb),
            a.t,
            (a.n, how),
            &mut rng,
        )?;
        rows.push(mixed);
        bar.inc(1);
    }
    rows.push(interpolate_ddim(
        schedule,
        &mut net,
        &xa,
        &xb,
        a.t,
        a.ddim_steps,
        a.n,
    )?);
    bar.finish();
    // Each row: a, the n decoded interpolants, b.
    let mut cells = Vec::new();
    for r in &rows {
        cells.push(xa.clone());
        cells.push(r.clone());
        cells.push(xb.clone());
    }
    let grid = Tensor::concat(&cells.iter().collect::<Vec<_>>(), 0)?;
    save_grid(&a.out, &grid, a.n + 2)?;
    println!(
        "wrote {} (rows: q + linear, q + slerp, DDIM inversion + slerp; t = {}, {:.1}s)",
        a.out.display(),
        a.t,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An endpoint image as [1, C, H, W] in [−1, 1]: a test-set index or a PNG.
fn endpoint(arg: &str, test: &ImageDataset, cfg: &UNetConfig) -> Result<Tensor> {
    let want = (cfg.in_channels, cfg.image_size, cfg.image_size);
    if let Ok(i) = arg.parse::<usize>() {
        if (test.channels, test.height, test.width) != want {
            return Err(Error::Data(format!(
                "test data {} has {}×{}×{} images but the model expects {}×{}×{}",
                test.source, test.channels, test.height, test.width, want.0, want.1, want.2
            )));
        }
        return batch_from(test, i, 1);
    }
    let path = Path::new(arg);
    let (c, h, w, pixels) = decode_png(path)?;
    if (c, h, w) != want {
        return Err(Error::Io {
            path: arg.to_string(),
            msg: format!(
                "is {c}×{h}×{w} but the model expects {}×{}×{} images",
                want.0, want.1, want.2
            ),
        });
    }
    let one = ImageDataset {
        pixels,
        labels: vec![0],
        channels: c,
        height: h,
        width: w,
        source: arg.to_string(),
    };
    batch_from(&one, 0, 1)
}
