//! One error type for the engine. Every message names the operation and the
//! shapes/values involved, so a user can find the faulty call.

use crate::{DType, Device};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs:?} and {rhs:?} are not compatible ({why})")]
    ShapeMismatch {
        op: &'static str,
        lhs: Vec<usize>,
        rhs: Vec<usize>,
        why: String,
    },

    #[error("{op}: dtypes differ ({lhs:?} vs {rhs:?})")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },

    #[error("{op}: tensors live on different devices ({lhs} vs {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },

    #[error("{op}: {msg}")]
    BadArgument { op: &'static str, msg: String },

    #[error(
        "{op}: no backward is defined, but an input requires grad (detach it or run under no_grad)"
    )]
    NoBackward { op: &'static str },

    #[error("backward: {0}")]
    Backward(String),

    #[error("{op}: {msg}")]
    Unsupported { op: &'static str, msg: String },

    #[error("{path}: {msg}")]
    Io { path: String, msg: String },

    /// A GPU failure (out of memory, driver or compiler error), as reported
    /// by the kernels crate with the operation it came from.
    #[error(transparent)]
    Cuda(noisegrad_kernels::cuda::CudaError),

    #[error("{0}")]
    Msg(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a [`Error::BadArgument`].
pub(crate) fn bad_arg(op: &'static str, msg: impl Into<String>) -> Error {
    Error::BadArgument {
        op,
        msg: msg.into(),
    }
}

/// Shorthand for a [`Error::ShapeMismatch`].
pub(crate) fn shape_err(
    op: &'static str,
    lhs: &[usize],
    rhs: &[usize],
    why: impl Into<String>,
) -> Error {
    Error::ShapeMismatch {
        op,
        lhs: lhs.to_vec(),
        rhs: rhs.to_vec(),
        why: why.into(),
    }
}
