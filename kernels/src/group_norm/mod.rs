//! Group normalisation (with the fused affine and SiLU variants the U-Net uses), forward and backward.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `group_norm.cu` (the kernel source beside it);
//! - [`reference`]: the formulas as plain f64 loops, forward and backward,
//!   the oracle of the CPU kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;

use crate::cpu::PAR_CHUNK;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// The sizes of a group-norm problem: x is `[n, channels, spatial]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupNormDims {
    pub n: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
}

impl GroupNormDims {
    fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    /// Elements in one (n, g) group.
    fn group_len(&self) -> usize {
        self.channels_per_group() * self.spatial
    }
    fn numel(&self) -> usize {
        self.n * self.channels * self.spatial
    }
    fn check(&self, op: &str) {
        assert!(
            self.groups > 0 && self.channels.is_multiple_of(self.groups),
            "{op}: {} channels do not split into {} groups",
            self.channels,
            self.groups
        );
    }
    /// Groups handed to one rayon job, so a job is at least PAR_CHUNK
    /// elements: a split costs a cross-thread hand-off (µs), worth it only
    /// for a job that long (tiny 4×4 maps run on the calling thread).
    fn groups_per_job(&self) -> usize {
        (PAR_CHUNK / self.group_len().max(1)).max(1)
    }
}
