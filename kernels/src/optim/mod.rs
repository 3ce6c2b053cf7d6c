//! Fused optimizer updates: one Adam/AdamW step and the EMA of the weights.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `optim.cu` (the kernel source beside it);
//! - [`reference`]: the textbook formulas in f64, the oracle of the CPU
//!   kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// Hyper-parameters of one Adam/AdamW step, bias corrections precomputed.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// L2 penalty added to the gradient (Adam) ...
    pub weight_decay: f64,
    /// ... or, when true, decoupled decay θ ← θ·(1 − lr·λ) (AdamW).
    pub decoupled: bool,
    /// 1 − β1^t
    pub bias1: f64,
    /// 1 − β2^t
    pub bias2: f64,
}
