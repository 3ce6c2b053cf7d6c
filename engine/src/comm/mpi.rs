//! The MPI communicator: CPU processes on one or several machines, through
//! rsmpi over the system's MPI library (Open MPI on Debian). Launched with
//! `mpirun -np N noisegrad train ...`.
//!
//! MPI's default error handler (errors are fatal) stays in place: a failed
//! collective, or a rank that died, makes `mpirun` stop every rank with its
//! own report, rather than leaving the others blocked.

use super::{BucketPlan, Communicator, ReadyBuckets, pack_host, unpack_host};
use crate::error::{Error, Result};
use crate::{DType, Tensor};
use mpi::collective::SystemOperation;
use mpi::request::{LocalScope, Request};
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
        let universe = mpi::initialize().ok_or_else(|| {
            Error::Distributed("MPI was already initialized in this process".to_string())
        })?;
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

    /// Overlapped with backward: as soon as backward has completed a
    /// bucket's gradients they are packed and an MPI_Iallreduce is started;
    /// the pass goes on, and each time another gradient completes the
    /// requests in flight are tested (Open MPI progresses a non-blocking
    /// collective only inside MPI calls). After the pass the rest are
    /// started and all are waited for. Whatever backward did, every bucket
    /// is started and completed, so the ranks' collective sequences match
    /// and no request outlives its buffers; an error is returned after.
    fn backward_and_reduce(
        &self,
        loss: &Tensor,
        params: &[Tensor],
        plan: &BucketPlan,
    ) -> Result<f64> {
        let mut sends: Vec<Vec<f32>> = (0..plan.len()).map(|b| vec![0.0; plan.numel(b)]).collect();
        let mut recvs = sends.clone();
        let mut exposed = std::time::Duration::ZERO;
        let outcome = mpi::request::scope(|scope| {
            let mut flight = InFlight {
                world: &self.world,
                scope,
                buffers: sends.iter_mut().zip(recvs.iter_mut()).map(Some).collect(),
                requests: Vec::new(),
                pack_error: None,
            };
            let mut ready = ReadyBuckets::new(plan, params);
            let pass = loss.backward_notifying(&mut |id| {
                let t = std::time::Instant::now();
                if let Some(b) = plan.bucket_of(id) {
                    ready.mark(b);
                }
                while let Some(b) = ready.next_ready() {
                    flight.start(b, &plan.bucket(b, params));
                }
                flight.progress();
                exposed += t.elapsed();
                Ok(())
            });
            let t = std::time::Instant::now();
            for b in ready.rest() {
                flight.start(b, &plan.bucket(b, params));
            }
            flight.wait_all();
            exposed += t.elapsed();
            pass.and(flight.pack_error.map_or(Ok(()), Err))
        });
        outcome?;
        let t = std::time::Instant::now();
        let scale = 1.0 / self.world_size() as f64;
        for (b, summed) in recvs.iter().enumerate() {
            let grads: Vec<Tensor> = plan
                .bucket(b, params)
                .iter()
                .map(|p| {
                    // A fresh tensor per gradient: unpack_host assigns into it.
                    let g = Tensor::zeros(p.shape(), DType::F32, p.device())?;
                    p.set_grad(Some(g.clone()));
                    Ok(g)
                })
                .collect::<Result<_>>()?;
            unpack_host(&grads, summed, scale)?;
        }
        Ok((exposed + t.elapsed()).as_secs_f64())
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

/// The buckets of one overlapped backward pass: their host buffers (taken
/// when the bucket starts) and the MPI requests in flight.
struct InFlight<'a, 's> {
    world: &'a SimpleCommunicator,
    scope: &'s LocalScope<'a>,
    buffers: Vec<Option<(&'a mut Vec<f32>, &'a mut Vec<f32>)>>,
    requests: Vec<Option<Request<'a, [f32], &'s LocalScope<'a>>>>,
    /// The first gradient that could not be read; its bucket still goes out
    /// (zeros) so the other ranks are not left waiting.
    pack_error: Option<Error>,
}

impl<'a, 's> InFlight<'a, 's> {
    /// Packs bucket `b`'s gradients (zeros where a parameter has none) and
    /// starts its all-reduce.
    fn start(&mut self, b: usize, params: &[Tensor]) {
        let (send, recv) = self.buffers[b].take().expect("each bucket starts once");
        let grads: Vec<Tensor> = params.iter().filter_map(Tensor::grad).collect();
        if grads.len() == params.len() {
            match pack_host(&grads) {
                Ok(packed) => send.copy_from_slice(&packed),
                Err(e) => {
                    self.pack_error.get_or_insert(e);
                }
            }
        } else {
            // Some parameter was not reached: pack one by one, zeros for it.
            let mut at = 0;
            for p in params {
                let n = p.numel();
                if let Some(g) = p.grad() {
                    match pack_host(std::slice::from_ref(&g)) {
                        Ok(v) => send[at..at + n].copy_from_slice(&v),
                        Err(e) => {
                            self.pack_error.get_or_insert(e);
                        }
                    }
                }
                at += n;
            }
        }
        let send: &'a [f32] = send;
        let request = self.world.immediate_all_reduce_into(
            self.scope,
            send,
            &mut recv[..],
            SystemOperation::sum(),
        );
        self.requests.push(Some(request));
    }

    /// Lets the requests in flight progress (MPI_Test each).
    fn progress(&mut self) {
        for slot in &mut self.requests {
            if let Some(r) = slot.take() {
                *slot = r.test().err();
            }
        }
    }

    fn wait_all(&mut self) {
        for r in self.requests.drain(..).flatten() {
            r.wait_without_status();
        }
    }
}
