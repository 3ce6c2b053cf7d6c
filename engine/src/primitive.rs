//! The small argument types of the device primitives, shared by
//! [`crate::storage`] and both backends: a leaf, so that neither backend
//! imports the other or the dispatch that calls it.

pub use noisegrad_kernels::elementwise::cpu::{BinaryOp, UnaryOp};
pub use noisegrad_kernels::reduce::cpu::ReduceOp;

/// The shapes of a (batched) matrix product, after broadcasting batch dims.
#[derive(Clone, Debug)]
pub struct MatmulDims {
    pub batch: Vec<usize>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Distribution for random fills.
#[derive(Clone, Copy, Debug)]
pub enum RandKind {
    /// U(0, 1), open interval.
    Uniform,
    /// N(0, 1) by Box–Muller.
    Normal,
}

/// `[outer, dim, inner]` sizes around `axis`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}
