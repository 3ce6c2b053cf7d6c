//! Reductions (sum, mean, max, norms) along axes of strided tensors.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `reduce.cu` (the kernel source beside it);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;

use crate::Float;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// What a reduction computes over each run of elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    #[inline(always)]
    fn init<T: Float>(self) -> T {
        match self {
            ReduceOp::Sum => T::ZERO,
            ReduceOp::Max => T::NEG_INFINITY,
            ReduceOp::Min => -T::NEG_INFINITY,
        }
    }

    /// Combines two partial results. NaN propagates through max/min, as in
    /// PyTorch, so a NaN in the data is never hidden by a reduction.
    #[inline(always)]
    fn combine<T: Float>(self, a: T, b: T) -> T {
        match self {
            ReduceOp::Sum => a + b,
            // When `a` is NaN both comparisons are false and `a` stays.
            ReduceOp::Max => {
                if b.is_nan() || b > a {
                    b
                } else {
                    a
                }
            }
            ReduceOp::Min => {
                if b.is_nan() || b < a {
                    b
                } else {
                    a
                }
            }
        }
    }
}
