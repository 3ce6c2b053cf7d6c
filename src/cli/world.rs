//! The data-parallel world of `train`: one process, or the MPI job that
//! `mpirun -np N noisegrad train ...` started (binary built with
//! `--features mpi`), its gradients reduced over MPI (CPU) or NCCL (one GPU
//! per rank, `--features nccl`). See README "Training on several processes
//! or GPUs".

use clap::ValueEnum;
use noisegrad::engine::comm::{Communicator, Launch, Single};
use noisegrad::engine::{Device, Error, Result};
use std::sync::Arc;

/// `--dist-backend`: the library that carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DistBackend {
    /// On several processes, NCCL for CUDA runs when compiled in, else MPI
    /// (PyTorch's default choice); one process needs neither.
    Auto,
    /// Open MPI (host buffers; CUDA gradients are copied to the host and back).
    Mpi,
    /// NCCL, in place on the GPU; with one process it still runs every
    /// collective (a smoke test of the library).
    Nccl,
}

/// This process's communicator, from the launcher's environment, and the
/// device this rank trains on: `--device cuda:N` under a launcher of
/// several processes means cuda:(N + local rank), one GPU per rank.
pub fn open(backend: DistBackend, device: Device) -> Result<(Arc<dyn Communicator>, Device)> {
    let launch = Launch::from_env()?.filter(|l| l.world_size > 1);
    let device = match (launch, device) {
        (Some(l), Device::Cuda(n)) => Device::Cuda(n + l.local_rank),
        _ => device,
    };
    let nccl = match backend {
        DistBackend::Nccl => true,
        DistBackend::Mpi => false,
        DistBackend::Auto => {
            launch.is_some() && cfg!(feature = "nccl") && matches!(device, Device::Cuda(_))
        }
    };
    let comm = match launch {
        None if nccl => open_nccl(Box::new(Single), device)?,
        None => Arc::new(Single),
        Some(l) if l.by_mpi && nccl => open_nccl(open_mpi(l)?, device)?,
        Some(l) if l.by_mpi => Arc::from(open_mpi(l)?),
        Some(l) => {
            return Err(Error::Distributed(format!(
                "RANK/WORLD_SIZE say this is rank {} of {} (torchrun-style), but noisegrad runs \
                 several processes only under mpirun, which also hands NCCL its id: \
                 `mpirun -np {} noisegrad train ...` (unset WORLD_SIZE for a one-process run)",
                l.rank, l.world_size, l.world_size
            )));
        }
    };
    Ok((comm, device))
}

/// MPI is initialised single-threaded and only the main thread uses it.
#[cfg(feature = "mpi")]
fn open_mpi(_: Launch) -> Result<Box<dyn Communicator>> {
    Ok(Box::new(noisegrad::engine::comm::mpi::Mpi::init()?))
}

/// Without MPI compiled in, every rank would train alone into one run
/// folder: refuse on every rank instead.
#[cfg(not(feature = "mpi"))]
fn open_mpi(l: Launch) -> Result<Box<dyn Communicator>> {
    Err(Error::Distributed(format!(
        "started by mpirun as rank {} of {}, but this noisegrad was built without MPI: \
         rebuild it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev)",
        l.rank, l.world_size
    )))
}

/// An `Arc` of a non-`Send` communicator: it is only ever shared within
/// the main thread.
#[cfg(feature = "nccl")]
#[allow(clippy::arc_with_non_send_sync)]
fn open_nccl(bootstrap: Box<dyn Communicator>, device: Device) -> Result<Arc<dyn Communicator>> {
    Ok(Arc::new(noisegrad::engine::comm::nccl::Nccl::over(
        bootstrap, device,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn open_nccl(_: Box<dyn Communicator>, _: Device) -> Result<Arc<dyn Communicator>> {
    Err(Error::Distributed(
        "--dist-backend nccl: this noisegrad was built without NCCL: rebuild it with \
         `cargo build --release --features nccl` (add `mpi` for several processes)"
            .into(),
    ))
}

/// Runs `f` in `world`; on a failure of a run on several processes, prints
/// the error with this rank and stops the whole job (the other ranks may be
/// waiting in a collective and would never see it otherwise).
pub fn run_or_abort(world: &dyn Communicator, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let r = f();
    if let Err(e) = &r
        && world.world_size() > 1
    {
        eprintln!(
            "error (rank {} of {}): {e}",
            world.rank(),
            world.world_size()
        );
        world.abort(1);
    }
    r
}
