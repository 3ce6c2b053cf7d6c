//! The `noisegrad` command line; each command lives in `cli/<command>.rs`.
//!
//! `noisegrad train` with no arguments is the embedded default: a
//! class-conditional `tiny` U-Net on the 3,000-image Fashion-MNIST sample
//! compiled into this binary, a few minutes on 2 cores, leaving
//! `samples.png`, `loss.png` and a checkpoint in `runs/default/`.

mod cli;

use clap::{Parser, Subcommand};
use cli::bench::{BenchTrainArgs, bench_train};
use cli::eval::{EvalArgs, eval};
use cli::export::{ExportArgs, export};
use cli::info::{InfoArgs, info};
use cli::interpolate::{InterpolateArgs, interpolate};
use cli::sample::{SampleArgs, sample};
use cli::score::{ScoreArgs, score};
use cli::train::{TrainArgs, train};
use cli::train_autoencoder::{TrainAutoencoderArgs, train_autoencoder};
use cli::train_classifier::{TrainClassifierArgs, train_classifier};

/// `--version`, naming the optional features built in (tests/ddp_mpi.rs asks
/// it whether a binary can join an MPI job).
const VERSION: &str = match (cfg!(feature = "mpi"), cfg!(feature = "nccl")) {
    (true, true) => concat!(env!("CARGO_PKG_VERSION"), " (features: mpi, nccl)"),
    (true, false) => concat!(env!("CARGO_PKG_VERSION"), " (features: mpi)"),
    (false, true) => concat!(env!("CARGO_PKG_VERSION"), " (features: nccl)"),
    (false, false) => env!("CARGO_PKG_VERSION"),
};

#[derive(Parser)]
#[command(
    name = "noisegrad",
    version = VERSION,
    about = "DDPM diffusion models on a from-scratch autodiff engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a DDPM (no arguments: the embedded default run).
    Train(TrainArgs),
    /// Draw samples from a checkpoint with DDPM or DDIM.
    Sample(SampleArgs),
    /// The variational bound in bits/dim on a test set.
    Eval(EvalArgs),
    /// Training throughput: timed steps of a preset at a batch size (img/s,
    /// ms/step, peak memory). The numbers BENCHMARKS.md quotes for whole steps.
    BenchTrain(BenchTrainArgs),
    /// Train a classifier p(y | x_t, t) for classifier guidance (--clean: on clean images, for `score`).
    TrainClassifier(TrainClassifierArgs),
    /// Class consistency: how often a clean classifier agrees with the class samples were asked for.
    Score(ScoreArgs),
    /// Print a checkpoint's model and training config and its class names.
    Info(InfoArgs),
    /// Interpolate between two images through the diffusion (Ho et al. Fig. 8):
    /// q-noised linear/spherical mixes decoded by DDPM, and DDIM-inversion slerp.
    Interpolate(InterpolateArgs),
    /// Train the KL autoencoder of latent diffusion (then `train --latent`).
    TrainAutoencoder(TrainAutoencoderArgs),
    /// Export a checkpoint's weights for PyTorch (state_dict names) or diffusers (UNet2DModel).
    Export(ExportArgs),
}

fn main() {
    cli::guard::default_sigpipe();
    let cli = Cli::parse();
    let result = cli::on_compute_pool(move || match cli.command {
        Command::Train(a) => train(a),
        Command::Sample(a) => sample(a),
        Command::Eval(a) => eval(a),
        Command::BenchTrain(a) => bench_train(a),
        Command::TrainClassifier(a) => train_classifier(a),
        Command::Score(a) => score(a),
        Command::Info(a) => info(a),
        Command::Interpolate(a) => interpolate(a),
        Command::TrainAutoencoder(a) => train_autoencoder(a),
        Command::Export(a) => export(a),
    });
    if let Err(e) = result {
        eprintln!("error: {e}");
        // 130 (128 + SIGINT) for a run that was stopped, as a shell reports it.
        let stopped = cli::interrupted() || matches!(e, noisegrad::engine::Error::Interrupted(_));
        std::process::exit(if stopped { 130 } else { 1 });
    }
}
