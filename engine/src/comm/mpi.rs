//! The MPI communicator: CPU processes on one or several machines, through
//! rsmpi over the system's MPI library (Open MPI on Debian). Launched with
//! `mpirun -np N noisegrad train ...`.
//!
//! MPI's default error handler (errors are fatal) stays in place: a failed
//! collective, or a rank that died, makes `mpirun` stop every rank with its
//! own report, rather than leaving the others blocked.

use super::{Communicator, pack_host, unpack_host};
use crate::Tensor;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::topology::Communicator as _;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// MPI_COMM_WORLD of this process. Dropping it finalizes MPI.
pub struct Mpi {
    world: SimpleCommunicator,
    // Declared last: finalizes MPI after the communicator is gone.
    _universe: mpi::environment::Universe,
}

impl Mpi {
    /// Initializes MPI (once per process) and joins MPI_COMM_WORLD.
    pub fn init() -> Result<Mpi> {
        let universe = mpi::initialize()
            .ok_or_else(|| Error::Msg("MPI was already initialized in this process".to_string()))?;
        Ok(Mpi {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// The raw communicator, for libraries that bootstrap over MPI (NCCL's id).
    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world_size(&self) -> usize {
        self.world.size() as usize
    }

    fn backend(&self) -> &'static str {
        "mpi"
    }

    /// One MPI_Allreduce per bucket, on a host buffer holding the bucket's
    /// tensors end to end.
    fn all_reduce_sum(&self, tensors: &[Tensor], scale: f64) -> Result<()> {
        let send = pack_host(tensors)?;
        let mut recv = vec![0f32; send.len()];
        self.world
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        unpack_host(tensors, &recv, scale)
    }

    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        let mut buf = pack_host(tensors)?;
        self.world
            .process_at_rank(root as i32)
            .broadcast_into(&mut buf[..]);
        unpack_host(tensors, &buf, 1.0)
    }

    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    /// MPI_Abort, after a short pause so that ranks which found the same
    /// error at the same point can print it too.
    fn abort(&self, code: i32) -> ! {
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.world.abort(code)
    }
}
