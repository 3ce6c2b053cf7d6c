//! Scaled dot-product self-attention (the U-Net's attention block): softmax(Q·Kᵀ/√d)·V, forward and backward.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `attention.cu` (the kernel source beside it);
//! - [`reference`]: the definition as plain f64 loops, forward and backward,
//!   the oracle of the CPU kernel's tests;
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;
pub mod reference;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// Sizes and scale of one attention call (see the module docs for layouts).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnConfig {
    pub batch: usize,
    /// M: query rows per batch item.
    pub q_len: usize,
    /// N: key/value rows per batch item.
    pub kv_len: usize,
    /// C: channels of q and k.
    pub qk_dim: usize,
    /// E: channels of v and of the output.
    pub v_dim: usize,
    /// s in softmax(s·Q Kᵀ), usually 1/√C.
    pub scale: f64,
}

impl AttnConfig {
    fn q_size(&self) -> usize {
        self.batch * self.q_len * self.qk_dim
    }
    fn k_size(&self) -> usize {
        self.batch * self.kv_len * self.qk_dim
    }
    fn v_size(&self) -> usize {
        self.batch * self.kv_len * self.v_dim
    }
    fn out_size(&self) -> usize {
        self.batch * self.q_len * self.v_dim
    }
    fn rows(&self) -> usize {
        self.batch * self.q_len
    }
    fn is_empty(&self) -> bool {
        self.batch == 0 || self.q_len == 0
    }
}
