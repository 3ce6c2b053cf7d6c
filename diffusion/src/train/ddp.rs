//! Data-parallel training with PyTorch DDP's semantics, on any
//! [`Communicator`] (one process, MPI, NCCL).
//!
//! - Rank 0's initial weights are broadcast ([`Trainer::join`]).
//! - `batch_size` is the global batch: rank r trains on items
//!   [r·B/W, (r+1)·B/W) of the very batch one process would draw. The
//!   shared random stream still draws t, ε and the label drops for all B
//!   items on every rank (cheap next to the network), and each rank keeps
//!   its slice, so the W shards together are the one-process batch, noise
//!   and all.
//! - The gradients are averaged over ranks in buckets
//!   ([`backward_and_average`]), after backward or, on MPI with `overlap`,
//!   while it still runs (each bucket starts once backward has finished
//!   its parameters), before
//!   clipping, so clipping, Adam and the EMA see the same global gradient
//!   everywhere and the weights stay equal.
//! - Dropout draws from a per-rank stream, counter-based on (seed, rank,
//!   step), so it needs no state of its own in the checkpoint beyond the
//!   step, and a resumed or resharded run continues it exactly.
//! - Only rank 0 writes (the CLI's job); a checkpoint records its world size.

use super::{TrainConfig, Trainer};
use crate::data::TrainData;
#[cfg(doc)]
use noisegrad_engine::comm::backward_and_average;
use noisegrad_engine::comm::{
    Communicator, DEFAULT_BUCKET_BYTES, broadcast_tensors, check_same_everywhere, stable_hash,
};
use noisegrad_engine::optim::Ema;
use noisegrad_engine::{Error, Philox, Result, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// How this process takes part in data-parallel training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DdpOptions {
    /// Whether a checkpoint of another world size may be resumed.
    pub reshard: bool,
    /// About how many bytes of gradient go into one all-reduce (PyTorch
    /// DDP's `bucket_cap_mb`, 25 MiB by default).
    pub bucket_bytes: usize,
    /// Whether a bucket's all-reduce starts while backward still runs
    /// (where the backend can), rather than after it. Off by default: with
    /// no core to spare it only costs (BENCHMARKS.md, data-parallel).
    pub overlap: bool,
}

impl Default for DdpOptions {
    fn default() -> DdpOptions {
        DdpOptions {
            reshard: false,
            bucket_bytes: DEFAULT_BUCKET_BYTES,
            overlap: false,
        }
    }
}

/// Which items of the global batch this rank trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The global batch size B.
    pub global: usize,
    pub start: usize,
    pub len: usize,
}

impl Shard {
    /// The whole batch (one process).
    pub fn full(batch: usize) -> Shard {
        Shard {
            global: batch,
            start: 0,
            len: batch,
        }
    }

    /// Rank `rank`'s equal share of a global batch of `batch` over `world`
    /// ranks; an uneven split is refused (DDP's global batch would change).
    pub fn of(batch: usize, rank: usize, world: usize) -> Result<Shard> {
        if world == 0 || !batch.is_multiple_of(world) {
            return Err(Error::Config(format!(
                "--batch-size {batch} is the global batch and must split evenly over the \
                 {world} processes (use a multiple of {world})"
            )));
        }
        let len = batch / world;
        Ok(Shard {
            global: batch,
            start: rank * len,
            len,
        })
    }

    pub fn is_full(&self) -> bool {
        self.len == self.global
    }

    /// This shard's entries of a per-item list of the global batch.
    pub fn items<T: Clone>(&self, all: &[T]) -> Vec<T> {
        all[self.start..self.start + self.len].to_vec()
    }

    /// This shard's rows of a tensor holding the global batch.
    pub fn rows(&self, all: Tensor) -> Result<Tensor> {
        if self.is_full() {
            Ok(all)
        } else {
            all.narrow(0, self.start, self.len)?.contiguous()
        }
    }
}

/// The dropout stream of `rank` at `step`: Philox keyed by the seed and the
/// rank, starting at block step·2³² (no step draws that many).
pub fn rank_stream(seed: u64, rank: usize, step: u64) -> Philox {
    let key = seed ^ 0x6472_6f70 ^ (rank as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Philox::from_state(key, step << 32)
}

/// What every rank must agree on: the training config (its device only by
/// kind, since each rank has its own GPU), the dataset's size and shape,
/// and `extra` (the CLI's run length and similar).
pub fn config_hash(cfg: &TrainConfig, data: &TrainData, extra: &str) -> u64 {
    let mut c = cfg.clone();
    let kind = if matches!(c.device, noisegrad_engine::Device::Cuda(_)) {
        "cuda"
    } else {
        "cpu"
    };
    c.device = noisegrad_engine::Device::Cpu;
    let text = format!(
        "{c:?}|{kind}|{} images of {:?}|{extra}",
        data.len(),
        data.shape()
    );
    stable_hash(text.as_bytes())
}

/// Refuses a checkpoint written by a run on another number of processes,
/// unless `reshard` (the data order and the shared stream do not depend on
/// the world size, so resharding continues the same run, except dropout).
pub fn check_world_size(
    meta: &HashMap<String, String>,
    path: &Path,
    world: usize,
    reshard: bool,
) -> Result<()> {
    let stored: usize = meta
        .get("world_size")
        .map_or(Ok(1), |v| v.parse())
        .map_err(|_| Error::Io {
            path: path.display().to_string(),
            msg: "checkpoint metadata 'world_size' is not a whole number".into(),
        })?;
    if stored == world || reshard {
        return Ok(());
    }
    Err(Error::Io {
        path: path.display().to_string(),
        msg: format!(
            "checkpoint was written by a run on {stored} process(es), this run has {world}: \
             pass --reshard to continue it on {world} (same global batch, re-split)"
        ),
    })
}

impl Trainer {
    /// Makes this trainer one rank of `comm`'s world: checks the global
    /// batch splits evenly and that every rank has the same config and data
    /// (`extra`: run settings outside the config), then takes rank 0's
    /// weights. Call before [`Trainer::load_checkpoint`].
    pub fn join(
        &mut self,
        comm: Arc<dyn Communicator>,
        extra: &str,
        options: DdpOptions,
    ) -> Result<()> {
        self.shard = Shard::of(self.config.batch_size, comm.rank(), comm.world_size())?;
        let hash = config_hash(&self.config, self.batcher.data(), extra);
        check_same_everywhere(
            &*comm,
            "the training config, dataset size or run length",
            hash,
        )?;
        broadcast_tensors(&*comm, &self.store.tensors(), 0)?;
        // The EMA starts equal to the (now common) weights.
        self.ema = Ema::new(self.store.params(), self.config.ema_decay)?;
        self.comm = comm;
        self.ddp = options;
        Ok(())
    }

    /// This process's communicator.
    pub fn comm(&self) -> &dyn Communicator {
        &*self.comm
    }

    /// Whether `flag` is set on any rank (one tiny all-reduce; false at once
    /// on one process). Stops, like Ctrl-C, must be agreed on, or the ranks
    /// that carry on block in the next all-reduce.
    pub fn any_rank(&self, flag: bool) -> Result<bool> {
        let mut v = [flag as u8 as f64];
        self.comm.all_reduce_sum_host(&mut v)?;
        Ok(v[0] > 0.0)
    }

    /// The mean over ranks of a per-rank value (each rank's loss is the mean
    /// over an equal shard, so this is the global batch's loss).
    pub(crate) fn mean_over_ranks(&self, value: f64) -> Result<f64> {
        let mut v = [value];
        self.comm.all_reduce_sum_host(&mut v)?;
        Ok(v[0] / self.comm.world_size() as f64)
    }

    /// The per-image values of the whole global batch, from each rank's
    /// shard (zeros elsewhere, summed): the importance sampler of `--loss
    /// vlb` must see the same history on every rank.
    pub(crate) fn gather_per_image(&self, mine: &[f64]) -> Result<Vec<f64>> {
        if self.shard.is_full() {
            return Ok(mine.to_vec());
        }
        let mut all = vec![0.0; self.shard.global];
        all[self.shard.start..self.shard.start + self.shard.len].copy_from_slice(mine);
        self.comm.all_reduce_sum_host(&mut all)?;
        Ok(all)
    }

    /// The stream dropout draws from this step: the shared one on one
    /// process (so one-process runs are unchanged), else this rank's own.
    pub(crate) fn dropout_stream(&self) -> Option<Philox> {
        (!self.shard.is_full())
            .then(|| rank_stream(self.config.seed, self.comm.rank(), self.step()))
    }

    /// The checkpoint metadata of the world: its size, and the keys of the
    /// per-rank dropout streams (their position is the step).
    pub(crate) fn world_metadata(&self) -> Vec<(String, String)> {
        let w = self.comm.world_size();
        let keys: Vec<String> = (0..w)
            .map(|r| format!("{:016x}", rank_stream(self.config.seed, r, 0).state().0))
            .collect();
        vec![
            ("world_size".to_string(), w.to_string()),
            (
                "rank_dropout_streams".to_string(),
                serde_json::to_string(&keys).expect("strings serialise"),
            ),
        ]
    }

    /// [`check_world_size`] for this trainer's world.
    pub(crate) fn check_checkpoint_world(
        &self,
        meta: &HashMap<String, String>,
        path: &Path,
    ) -> Result<()> {
        check_world_size(meta, path, self.comm.world_size(), self.ddp.reshard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_batch_evenly_or_refuse() {
        assert_eq!(
            Shard::of(16, 1, 2).unwrap(),
            Shard {
                global: 16,
                start: 8,
                len: 8
            }
        );
        assert!(Shard::of(16, 0, 1).unwrap().is_full());
        let e = Shard::of(10, 0, 4).unwrap_err().to_string();
        assert!(
            e.contains("--batch-size 10") && e.contains("4 processes"),
            "{e}"
        );
        let s = Shard::of(6, 2, 3).unwrap();
        assert_eq!(s.items(&[0, 1, 2, 3, 4, 5]), vec![4, 5]);
    }

    #[test]
    fn rank_streams_differ_by_rank_and_step() {
        use rand::Rng;
        let mut a = rank_stream(0, 0, 5);
        let mut b = rank_stream(0, 1, 5);
        let mut c = rank_stream(0, 0, 6);
        let (x, y, z) = (a.next_u64(), b.next_u64(), c.next_u64());
        assert!(x != y && x != z && y != z);
        assert_eq!(rank_stream(0, 0, 5).next_u64(), x);
    }

    #[test]
    fn world_size_mismatch_needs_reshard() {
        let p = Path::new("ck.safetensors");
        let meta = HashMap::from([("world_size".to_string(), "2".to_string())]);
        check_world_size(&meta, p, 2, false).unwrap();
        let e = check_world_size(&meta, p, 1, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2 process(es), this run has 1") && e.contains("--reshard"),
            "{e}"
        );
        check_world_size(&meta, p, 1, true).unwrap();
        // Checkpoints from before data parallelism are one-process ones.
        check_world_size(&HashMap::new(), p, 1, false).unwrap();
        assert!(check_world_size(&HashMap::new(), p, 2, false).is_err());
    }
}
