//! The NCCL communicator (feature `nccl`): one process per GPU, gradients
//! all-reduced in place on the device, as PyTorch's NCCL backend.
//!
//! NCCL needs every rank to hold the same unique id, made by rank 0. It is
//! handed over through a *bootstrap* communicator: MPI when `mpirun`
//! started the job, [`Single`](super::Single) for a one-process run. (A
//! torchrun-style launch without MPI has no channel for it; the CLI refuses
//! that with a message naming `mpirun`.) The bootstrap is kept, to stop the
//! whole job on an error.
//!
//! Collectives are queued on the device's stream and return without
//! waiting; only the host-value all-reduce (loss, flags) waits.

use super::{Communicator, check_f32};
use crate::cuda_backend::cuda_device;
use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::{Device, Tensor};
use noisegrad_kernels::cuda::nccl::{ID_BYTES, NcclComm, Range, Reduce, check_device, unique_id};

/// This process's member of an NCCL communicator.
pub struct Nccl {
    comm: NcclComm,
    bootstrap: Box<dyn Communicator>,
}

impl Nccl {
    /// Joins the NCCL communicator of `bootstrap`'s ranks (same rank, same
    /// world size) on `device`, which must be this rank's GPU.
    pub fn over(bootstrap: Box<dyn Communicator>, device: Device) -> Result<Nccl> {
        let Device::Cuda(ordinal) = device else {
            return Err(Error::Distributed(
                "the NCCL backend all-reduces CUDA tensors: train with --device cuda \
                 (CPU runs use MPI)"
                    .into(),
            ));
        };
        let dev = cuda_device(ordinal)?;
        check_device(&dev)?;
        let id = share_id(&*bootstrap)?;
        let comm = NcclComm::init(dev, bootstrap.rank(), bootstrap.world_size(), id)?;
        Ok(Nccl { comm, bootstrap })
    }

    /// The device ranges of `tensors` (f32, dense, on this communicator's
    /// GPU), read while `f` queues the collective on them.
    fn with_ranges(
        &self,
        tensors: &[Tensor],
        f: impl FnOnce(&[Range]) -> Result<()>,
    ) -> Result<()> {
        let ordinal = self.comm.device().ordinal();
        let guards: Vec<_> = tensors.iter().map(Tensor::storage).collect();
        let mut ranges = Vec::with_capacity(tensors.len());
        for (t, s) in tensors.iter().zip(&guards) {
            check_f32(t)?;
            let Storage::Cuda(c) = &**s else {
                return Err(Error::Distributed(format!(
                    "the NCCL backend got a tensor on {}: every tensor it reduces lives on cuda:{ordinal}",
                    t.device()
                )));
            };
            if c.dev.ordinal() != ordinal || !t.is_contiguous() {
                return Err(Error::Distributed(format!(
                    "the NCCL backend reduces dense tensors on cuda:{ordinal}, got a {} one on {}",
                    if t.is_contiguous() {
                        "dense"
                    } else {
                        "strided"
                    },
                    t.device()
                )));
            }
            ranges.push(Range {
                ptr: c.buf.ptr_at(t.layout().offset()),
                len: t.numel(),
            });
        }
        // The guards keep every buffer alive while the collective is
        // queued; a buffer freed later is reused only in stream order,
        // after the collective has run.
        f(&ranges)
    }
}

/// Rank 0's fresh NCCL id, on every rank, through `bootstrap`'s host
/// all-reduce (rank 0 contributes the bytes, the others zeros; the sums of
/// small whole numbers are exact). A last slot says whether rank 0 could
/// make one, so that all ranks fail together rather than wait for it.
fn share_id(bootstrap: &dyn Communicator) -> Result<[u8; ID_BYTES]> {
    let mut v = [0f64; ID_BYTES + 1];
    let mut failure = None;
    if bootstrap.rank() == 0 {
        match unique_id() {
            Ok(id) => {
                for (d, b) in v.iter_mut().zip(id) {
                    *d = b as f64;
                }
                v[ID_BYTES] = 1.0;
            }
            Err(e) => failure = Some(e),
        }
    }
    bootstrap.all_reduce_sum_host(&mut v)?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    if v[ID_BYTES] != 1.0 {
        return Err(Error::Distributed(
            "rank 0 could not create the NCCL id (see its error)".into(),
        ));
    }
    let mut id = [0u8; ID_BYTES];
    for (d, s) in id.iter_mut().zip(v) {
        *d = s as u8;
    }
    Ok(id)
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn backend(&self) -> &'static str {
        "nccl"
    }

    /// One NCCL group per bucket, in place; a scale of 1/W is NCCL's own
    /// average, any other a multiply afterwards.
    fn all_reduce_sum(&self, tensors: &[Tensor], scale: f64) -> Result<()> {
        let w = self.world_size() as f64;
        let average = (scale * w - 1.0).abs() < 1e-12;
        let op = if average { Reduce::Avg } else { Reduce::Sum };
        // SAFETY: the ranges are the tensors' own live buffers (see with_ranges).
        self.with_ranges(tensors, |r| {
            Ok(unsafe { self.comm.all_reduce_in_place(r, op) }?)
        })?;
        if !average && scale != 1.0 {
            for t in tensors {
                t.assign(&t.mul_scalar(scale)?)?;
            }
        }
        Ok(())
    }

    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        // SAFETY: as in all_reduce_sum.
        self.with_ranges(tensors, |r| {
            Ok(unsafe { self.comm.broadcast_in_place(r, root) }?)
        })
    }

    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()> {
        Ok(self.comm.all_reduce_host_f64(values)?)
    }

    fn barrier(&self) -> Result<()> {
        self.all_reduce_sum_host(&mut [0.0])
    }

    /// Aborts the NCCL communicator (so no rank waits in a collective),
    /// then stops the job through the bootstrap (MPI_Abort under mpirun).
    fn abort(&self, code: i32) -> ! {
        self.comm.abort();
        self.bootstrap.abort(code)
    }
}
