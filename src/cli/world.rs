//! The data-parallel world of `train`: one process, or the MPI job that
//! `mpirun -np N noisegrad train ...` started (binary built with
//! `--features mpi`). See README "Training on several processes or GPUs".

use noisegrad::engine::comm::{Communicator, Launch, Single};
use noisegrad::engine::{Error, Result};
use std::sync::Arc;

/// This process's communicator, from the launcher's environment.
pub fn open() -> Result<Arc<dyn Communicator>> {
    match Launch::from_env()? {
        None => Ok(Arc::new(Single)),
        Some(l) if l.world_size == 1 => Ok(Arc::new(Single)),
        Some(l) if l.by_mpi => open_mpi(l),
        Some(l) => Err(Error::Msg(format!(
            "RANK/WORLD_SIZE say this is rank {} of {} (torchrun-style), but CPU training \
             runs on several processes only under mpirun: `mpirun -np {} noisegrad train ...` \
             (unset WORLD_SIZE for a one-process run)",
            l.rank, l.world_size, l.world_size
        ))),
    }
}

/// MPI is initialised single-threaded and only the main thread uses it,
/// so an `Arc` of a non-`Send` communicator is only ever shared in-thread.
#[cfg(feature = "mpi")]
#[allow(clippy::arc_with_non_send_sync)]
fn open_mpi(_: Launch) -> Result<Arc<dyn Communicator>> {
    Ok(Arc::new(noisegrad::engine::comm::mpi::Mpi::init()?))
}

/// Without MPI compiled in, every rank would train alone into one run
/// folder: refuse on every rank instead.
#[cfg(not(feature = "mpi"))]
fn open_mpi(l: Launch) -> Result<Arc<dyn Communicator>> {
    Err(Error::Msg(format!(
        "started by mpirun as rank {} of {}, but this noisegrad was built without MPI: \
         rebuild it with `cargo build --release --features mpi` (needs libopenmpi-dev and libclang-dev)",
        l.rank, l.world_size
    )))
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
