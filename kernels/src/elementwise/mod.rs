//! Elementwise maps and broadcasting binary ops on strided views, and their backward helpers.
//!
//! The whole family in this folder:
//! - [`cpu`]: the CPU kernel (SIMD where it pays, rayon across rows);
//! - [`cuda`]: the CUDA launcher for `elementwise.cu` (the kernel source beside it);
//! - tests: unit tests inside each file; the PyTorch fixture tests are in the root `tests/` folder.

pub mod cpu;
pub mod cuda;

// ---- the problem descriptor, shared by the CPU kernel and the CUDA launcher ----

/// A one-input elementwise function. Parameters are carried as f64 and
/// converted to the element type once per call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Sqr,
    Abs,
    Recip,
    Sigmoid,
    Silu,
    Tanh,
    Relu,
    /// sign(x) ∈ {−1, 0, 1}
    Sign,
    /// `x * mul + add`
    Affine {
        mul: f64,
        add: f64,
    },
    /// `x ^ e`
    Powf(f64),
    /// `max(x, c)`
    MaxScalar(f64),
    /// `min(x, c)`
    MinScalar(f64),
    /// `1[x >= c]`, as 0/1 (dropout masks)
    GeScalar(f64),
}

/// A two-input elementwise function f(a, b).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// a^b
    Pow,
    /// 0/1 comparisons
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// b · σ(a)(1 + a(1 − σ(a))): SiLU's backward with a = x, b = upstream grad.
    SiluBackward,
    /// b · σ(a)(1 − σ(a)) with a = x.
    SigmoidBackward,
    /// b · (1 − tanh²(a)) with a = x.
    TanhBackward,
    /// b · 1[a > 0] with a = x.
    ReluBackward,
}
