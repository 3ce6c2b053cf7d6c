//! Communication between the processes of a data-parallel run (one per
//! CPU node, core group or GPU), as PyTorch's `ProcessGroup`: a rank, a
//! world size, and the collectives DDP needs — all-reduce of gradients,
//! broadcast of the initial weights, a barrier.
//!
//! [`Single`] is the one-process world (no dependency, every collective a
//! no-op). `mpi` (feature `mpi`, Open MPI through rsmpi) connects CPU
//! processes on one or several machines, behind a cargo feature, so the
//! default build needs no MPI. `nccl` (feature `nccl`, cudarc's
//! dynamically loaded NCCL) connects one process per GPU and reduces the
//! gradients in place on the device; its id is exchanged over MPI (or made
//! locally for one process).
//!
//! The helpers below ([`average_gradients`], [`broadcast_tensors`],
//! [`check_same_everywhere`]) are written once against the trait, so every
//! backend gets the same bucketing and the same checks.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use crate::error::{Error, Result};
use crate::{DType, LeafId, Tensor};
use std::collections::HashMap;

/// A group of processes that train one model together.
pub trait Communicator {
    /// This process's index, 0..world_size.
    fn rank(&self) -> usize;
    /// How many processes train together.
    fn world_size(&self) -> usize;
    /// The library behind it ("single", "mpi", "nccl"), for messages.
    fn backend(&self) -> &'static str;
    /// Every tensor becomes `scale` × (its sum over all ranks), on every
    /// rank. The tensors of one call form one bucket (one fused
    /// operation where the library has it); every rank passes the same
    /// shapes in the same order.
    fn all_reduce_sum(&self, tensors: &[Tensor], scale: f64) -> Result<()>;
    /// Every rank's tensors get `root`'s values (in place, so the model's
    /// handles see them).
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()>;
    /// Sums host values over ranks (loss values, flags, config hashes).
    fn all_reduce_sum_host(&self, values: &mut [f64]) -> Result<()>;
    /// Waits until every rank has arrived.
    fn barrier(&self) -> Result<()>;
    /// Stops every rank of the job with exit status `code` (after this
    /// rank printed why): a rank that fails alone must not leave the
    /// others blocked in a collective.
    fn abort(&self, code: i32) -> !;
    /// Back-propagates `loss` and averages each parameter's gradient over
    /// the ranks, bucket by bucket as `plan` groups them; returns the
    /// seconds the step spent in communication it could not hide (see
    /// [`backward_and_average`]). The default reduces after the whole
    /// backward pass; a backend with non-blocking collectives (MPI) starts
    /// each bucket as soon as backward has completed it.
    fn backward_and_reduce(
        &self,
        loss: &Tensor,
        params: &[Tensor],
        plan: &BucketPlan,
    ) -> Result<f64> {
        loss.backward()?;
        reduce_after_backward(self, params, plan)
    }
    /// Whether every collective is a no-op by construction ([`Single`]),
    /// so the helpers below may skip their copies. A one-rank NCCL world
    /// is not: its collectives run, which is what its smoke test checks.
    fn is_single(&self) -> bool {
        false
    }
}

/// The one-process world: today's single-process training.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, tensors: &[Tensor], scale: f64) -> Result<()> {
        if scale != 1.0 {
            for t in tensors {
                t.assign(&t.mul_scalar(scale)?)?;
            }
        }
        Ok(())
    }
    fn broadcast(&self, _: &[Tensor], _: usize) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_host(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn is_single(&self) -> bool {
        true
    }
}

/// PyTorch DDP's default bucket size: large enough that per-call latency
/// does not matter, small enough that the first buckets can be reduced
/// while later ones are still being filled.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// How a list of tensors is cut into buckets of about `bucket_bytes` (f32)
/// for the collectives, as PyTorch DDP's `Reducer` cuts them: in reverse
/// order of the list, because backward completes the gradients of a model's
/// last layers first, so the first bucket is ready while the rest of the
/// pass still runs. Every rank builds the same plan from the same model.
#[derive(Clone, Debug)]
pub struct BucketPlan {
    /// Tensor indices of each bucket, in the order buckets are reduced.
    buckets: Vec<Vec<usize>>,
    /// Elements of each bucket.
    numel: Vec<usize>,
    /// The bucket of each tensor that collects a gradient.
    bucket_of: HashMap<LeafId, usize>,
}

impl BucketPlan {
    pub fn new(tensors: &[Tensor], bucket_bytes: usize) -> BucketPlan {
        let mut plan = BucketPlan {
            buckets: Vec::new(),
            numel: Vec::new(),
            bucket_of: HashMap::new(),
        };
        let mut bytes = 0;
        for i in (0..tensors.len()).rev() {
            if plan.buckets.is_empty() || bytes >= bucket_bytes {
                plan.buckets.push(Vec::new());
                plan.numel.push(0);
                bytes = 0;
            }
            let b = plan.buckets.len() - 1;
            plan.buckets[b].push(i);
            plan.numel[b] += tensors[i].numel();
            bytes += tensors[i].numel() * 4;
            if let Some(id) = tensors[i].leaf_id() {
                plan.bucket_of.insert(id, b);
            }
        }
        plan
    }

    /// How many buckets.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// The tensors of bucket `b` (handles to the same storage).
    pub fn bucket(&self, b: usize, tensors: &[Tensor]) -> Vec<Tensor> {
        self.buckets[b]
            .iter()
            .map(|&i| tensors[i].clone())
            .collect()
    }

    /// Elements of bucket `b`.
    pub fn numel(&self, b: usize) -> usize {
        self.numel[b]
    }

    /// The bucket holding the leaf `id`, if it is one of the plan's.
    pub fn bucket_of(&self, id: LeafId) -> Option<usize> {
        self.bucket_of.get(&id).copied()
    }

    /// How many gradients each bucket waits for.
    fn members(&self, tensors: &[Tensor]) -> Vec<usize> {
        self.buckets
            .iter()
            .map(|b| {
                b.iter()
                    .filter(|&&i| tensors[i].leaf_id().is_some())
                    .count()
            })
            .collect()
    }
}

/// The buckets whose gradients backward has completed, handed out strictly
/// in bucket order: every rank then starts the same collectives in the same
/// sequence, as MPI requires, whatever order its own pass finished them in.
pub struct ReadyBuckets {
    missing: Vec<usize>,
    next: usize,
}

impl ReadyBuckets {
    pub fn new(plan: &BucketPlan, params: &[Tensor]) -> ReadyBuckets {
        ReadyBuckets {
            missing: plan.members(params),
            next: 0,
        }
    }

    /// Records that one gradient of bucket `b` is complete.
    pub fn mark(&mut self, b: usize) {
        self.missing[b] = self.missing[b].saturating_sub(1);
    }

    /// The next bucket to start, if it is complete.
    pub fn next_ready(&mut self) -> Option<usize> {
        let b = self.next;
        (b < self.missing.len() && self.missing[b] == 0).then(|| {
            self.next += 1;
            b
        })
    }

    /// Every bucket not started yet, in order (after backward: a parameter
    /// the graph did not reach contributes zeros).
    pub fn rest(&mut self) -> std::ops::Range<usize> {
        let r = self.next..self.missing.len();
        self.next = self.missing.len();
        r
    }
}

/// Back-propagates `loss`, then replaces each parameter's gradient by the
/// mean of that gradient over all ranks, in the buckets of `bucket_bytes`
/// that [`BucketPlan`] makes. With `overlap`, a backend that can
/// ([`Communicator::backward_and_reduce`]) starts reducing a bucket as
/// soon as backward has completed it, hiding the communication behind the
/// rest of the pass (PyTorch DDP's default); without, every bucket is
/// reduced after backward. A parameter without a gradient (unused this
/// step) contributes zeros, so every rank reduces the same list. Called
/// before clipping, so clipping, Adam and the EMA see the same global
/// gradient on every rank.
///
/// Returns the wall-clock seconds the step spent in communication it did
/// not hide (packing, starting the collectives, waiting for them,
/// unpacking; 0 on one process), which the training log reports as
/// `allreduce_ms`. For a backend that only queues work on a device stream
/// (NCCL) it is the time to queue, not to run: the stream is not waited
/// for, so as not to break the pipelining of the step.
pub fn backward_and_average(
    comm: &dyn Communicator,
    loss: &Tensor,
    params: &[Tensor],
    bucket_bytes: usize,
    overlap: bool,
) -> Result<f64> {
    if comm.is_single() {
        loss.backward()?;
        return Ok(0.0);
    }
    let plan = BucketPlan::new(params, bucket_bytes);
    if overlap {
        comm.backward_and_reduce(loss, params, &plan)
    } else {
        loss.backward()?;
        reduce_after_backward(comm, params, &plan)
    }
}

/// The averaging of [`backward_and_average`] on its own, for gradients
/// backward has already produced.
pub fn average_gradients(
    comm: &dyn Communicator,
    params: &[Tensor],
    bucket_bytes: usize,
) -> Result<f64> {
    if comm.is_single() {
        return Ok(0.0);
    }
    reduce_after_backward(comm, params, &BucketPlan::new(params, bucket_bytes))
}

/// One blocking all-reduce per bucket of `plan`, after backward.
pub fn reduce_after_backward<C: Communicator + ?Sized>(
    comm: &C,
    params: &[Tensor],
    plan: &BucketPlan,
) -> Result<f64> {
    let scale = 1.0 / comm.world_size() as f64;
    let started = std::time::Instant::now();
    for b in 0..plan.len() {
        let grads: Vec<Tensor> = plan
            .bucket(b, params)
            .iter()
            .map(|p| {
                // A private dense copy: the reduced values are written into
                // it, never into a buffer some other tensor might share.
                let g = match p.grad() {
                    Some(g) => g.deep_copy()?,
                    None => p.zeros_like()?,
                };
                p.set_grad(Some(g.clone()));
                Ok(g)
            })
            .collect::<Result<_>>()?;
        comm.all_reduce_sum(&grads, scale)?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Gives every rank `root`'s values of `tensors`, in buckets.
pub fn broadcast_tensors(comm: &dyn Communicator, tensors: &[Tensor], root: usize) -> Result<()> {
    if comm.is_single() {
        return Ok(());
    }
    let plan = BucketPlan::new(tensors, DEFAULT_BUCKET_BYTES);
    for b in 0..plan.len() {
        comm.broadcast(&plan.bucket(b, tensors), root)?;
    }
    Ok(())
}

/// Checks every rank computed the same `hash` of `what` (its config, its
/// dataset), with one all-reduce: over 16-bit pieces h, Σh² · W = (Σh)²
/// exactly when all ranks agree (Cauchy–Schwarz), and the sums are exact
/// in f64. Every rank gets the same answer, so all fail together.
pub fn check_same_everywhere(comm: &dyn Communicator, what: &str, hash: u64) -> Result<()> {
    let w = comm.world_size();
    if w == 1 {
        return Ok(());
    }
    let pieces: Vec<f64> = (0..4)
        .map(|i| ((hash >> (16 * i)) & 0xffff) as f64)
        .collect();
    let mut sums: Vec<f64> = pieces.iter().chain(pieces.iter()).copied().collect();
    for s in &mut sums[4..] {
        *s *= *s;
    }
    comm.all_reduce_sum_host(&mut sums)?;
    let agree = (0..4).all(|i| sums[i] * sums[i] == sums[4 + i] * w as f64);
    if agree {
        Ok(())
    } else {
        Err(Error::Distributed(format!(
            "the {w} ranks of this {} run disagree on {what} (rank {} has hash {hash:016x}): \
             start every rank with the same flags and the same data",
            comm.backend(),
            comm.rank()
        )))
    }
}

/// A 64-bit FNV-1a hash: stable across processes, builds and machines
/// (unlike a keyed hasher), for [`check_same_everywhere`].
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The f32 values of a bucket packed end to end on the host (the MPI
/// backend's send buffer).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn pack_host(tensors: &[Tensor]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(tensors.iter().map(Tensor::numel).sum());
    for t in tensors {
        check_f32(t)?;
        out.extend(t.to_host_f64()?.into_iter().map(|v| v as f32));
    }
    Ok(out)
}

/// Writes `values` (packed as [`pack_host`] packs) back into the tensors,
/// multiplied by `scale`, in place.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn unpack_host(tensors: &[Tensor], values: &[f32], scale: f64) -> Result<()> {
    let mut at = 0;
    for t in tensors {
        let n = t.numel();
        let part = &values[at..at + n];
        let scaled: Vec<f32>;
        let part = if scale == 1.0 {
            part
        } else {
            scaled = part.iter().map(|&v| (v as f64 * scale) as f32).collect();
            &scaled
        };
        t.assign(&Tensor::from_vec(part, t.shape(), DType::F32, t.device())?)?;
        at += n;
    }
    Ok(())
}

#[cfg_attr(not(any(feature = "mpi", feature = "nccl")), allow(dead_code))]
fn check_f32(t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(Error::Distributed(format!(
            "data-parallel collectives carry f32 tensors, got {:?}",
            t.dtype()
        )))
    }
}

/// The world this process was launched into, read from the launcher's
/// environment: `mpirun` (Open MPI's OMPI_COMM_WORLD_*, or PMI_*/PMIX_*),
/// or torchrun-style RANK / WORLD_SIZE / LOCAL_RANK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// The rank among the processes on this machine (picks the GPU).
    pub local_rank: usize,
    /// Whether an MPI launcher started it (else torchrun-style variables).
    pub by_mpi: bool,
}

impl Launch {
    /// None when no launcher variables are set (a plain single process).
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Launch::from_env`], reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str| -> Result<Option<usize>> {
            get(k)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Distributed(format!(
                            "environment variable {k}='{v}' is not a whole number"
                        ))
                    })
                })
                .transpose()
        };
        let pick = |names: &[&str]| -> Result<Option<usize>> {
            for n in names {
                if let Some(v) = num(n)? {
                    return Ok(Some(v));
                }
            }
            Ok(None)
        };
        let mpi_size = pick(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"])?;
        let (rank, size, local, by_mpi) = match mpi_size {
            Some(size) => (
                pick(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"])?.unwrap_or(0),
                size,
                pick(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"])?,
                true,
            ),
            None => match num("WORLD_SIZE")? {
                Some(size) => (num("RANK")?.unwrap_or(0), size, num("LOCAL_RANK")?, false),
                None => return Ok(None),
            },
        };
        if size == 0 || rank >= size {
            return Err(Error::Distributed(format!(
                "the launcher set rank {rank} of world size {size}: the rank must be below the world size"
            )));
        }
        Ok(Some(Launch {
            rank,
            world_size: size,
            local_rank: local.unwrap_or(rank),
            by_mpi,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(v, &[v.len()], DType::F32, Device::Cpu).unwrap()
    }

    #[test]
    fn buckets_cover_every_tensor_once_in_reverse_order() {
        let ts: Vec<Tensor> = [3, 1, 4, 1, 5].iter().map(|&n| t(&vec![0.0; n])).collect();
        // 8 bytes: a bucket closes once it holds ≥ 2 floats.
        let plan = BucketPlan::new(&ts, 8);
        let sizes: Vec<Vec<usize>> = (0..plan.len())
            .map(|b| plan.bucket(b, &ts).iter().map(Tensor::numel).collect())
            .collect();
        assert_eq!(sizes, vec![vec![5], vec![1, 4], vec![1, 3]]);
        assert_eq!(plan.numel(1), 5);
        assert_eq!(BucketPlan::new(&ts, 1 << 20).len(), 1);
    }

    #[test]
    fn ready_buckets_start_in_order_once_complete() {
        let ps: Vec<Tensor> = [2, 2, 2]
            .iter()
            .map(|&n| t(&vec![0.0; n]).set_requires_grad(true))
            .collect();
        // 8 bytes: one parameter per bucket; bucket 0 holds the last one.
        let plan = BucketPlan::new(&ps, 8);
        assert_eq!(plan.bucket_of(ps[2].leaf_id().unwrap()), Some(0));
        let mut ready = ReadyBuckets::new(&plan, &ps);
        // Bucket 1 completes first: it must wait for bucket 0.
        ready.mark(1);
        assert_eq!(ready.next_ready(), None);
        ready.mark(0);
        assert_eq!(ready.next_ready(), Some(0));
        assert_eq!(ready.next_ready(), Some(1));
        assert_eq!(ready.next_ready(), None);
        assert_eq!(ready.rest(), 2..3);
    }

    #[test]
    fn backward_reports_each_leaf_once_when_complete() {
        // y = (a·b) + a: a has two consumers, so it is complete only after
        // both have delivered.
        let a = t(&[1.0, 2.0]).set_requires_grad(true);
        let b = t(&[3.0, 4.0]).set_requires_grad(true);
        let y = a.mul(&b).unwrap().add(&a).unwrap().sum_all().unwrap();
        let mut seen = Vec::new();
        y.backward_notifying(&mut |id| {
            let who = if Some(id) == a.leaf_id() { "a" } else { "b" };
            let g = if who == "a" { a.grad() } else { b.grad() };
            seen.push((who, g.unwrap().to_vec_f32()));
            Ok(())
        })
        .unwrap();
        seen.sort_by_key(|(w, _)| *w);
        assert_eq!(seen, vec![("a", vec![4.0, 5.0]), ("b", vec![1.0, 2.0])]);
    }

    #[test]
    fn single_world_changes_nothing_but_scales() {
        let p = t(&[1.0, 2.0]).set_requires_grad(true);
        p.set_grad(Some(t(&[0.5, -1.0])));
        let secs = average_gradients(&Single, std::slice::from_ref(&p), 8).unwrap();
        assert_eq!(secs, 0.0);
        assert_eq!(p.grad().unwrap().to_vec_f32(), vec![0.5, -1.0]);
        let x = t(&[2.0, -4.0]);
        Single
            .all_reduce_sum(std::slice::from_ref(&x), 0.25)
            .unwrap();
        assert_eq!(x.to_vec_f32(), vec![0.5, -1.0]);
        check_same_everywhere(&Single, "the config", 42).unwrap();
    }

    #[test]
    fn pack_and_unpack_round_trip_with_scale() {
        let a = t(&[1.0, 2.0]);
        let b =
            Tensor::from_vec(&[3.0f32, 4.0, 5.0, 6.0], &[2, 2], DType::F32, Device::Cpu).unwrap();
        let packed = pack_host(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(packed, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        unpack_host(&[a.clone(), b.clone()], &packed, 0.5).unwrap();
        assert_eq!(a.to_vec_f32(), vec![0.5, 1.0]);
        assert_eq!(b.to_vec_f32(), vec![1.5, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        // The FNV-1a reference values.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn launch_reads_mpirun_and_torchrun_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Launch::from_vars(env(&[])).unwrap(), None);
        let mpi = env(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ]);
        assert_eq!(
            Launch::from_vars(mpi).unwrap(),
            Some(Launch {
                rank: 1,
                world_size: 2,
                local_rank: 1,
                by_mpi: true
            })
        );
        let torchrun = env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("LOCAL_RANK", "1")]);
        assert_eq!(
            Launch::from_vars(torchrun).unwrap(),
            Some(Launch {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                by_mpi: false
            })
        );
        let bad = Launch::from_vars(env(&[("WORLD_SIZE", "2"), ("RANK", "2")])).unwrap_err();
        assert!(bad.to_string().contains("rank 2 of world size 2"), "{bad}");
        let junk = Launch::from_vars(env(&[("WORLD_SIZE", "two")])).unwrap_err();
        assert!(junk.to_string().contains("WORLD_SIZE='two'"), "{junk}");
    }
}
