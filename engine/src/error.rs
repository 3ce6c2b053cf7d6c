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

    /// A CPU allocation the system refused (the CUDA pool reports its own
    /// in [`Error::Cuda`]).
    #[error(
        "{op}: cannot allocate {bytes} bytes ({}) for a {dtype:?} tensor of shape {shape:?} on {device}: out of memory",
        human_bytes(*bytes)
    )]
    OutOfMemory {
        op: &'static str,
        shape: Vec<usize>,
        dtype: DType,
        bytes: u128,
        device: Device,
    },

    /// A setting that cannot be used: a command-line flag, or a model,
    /// objective or run config, out of range or inconsistent with another.
    /// The message names the setting and what it accepts.
    #[error("{0}")]
    Config(String),

    /// A dataset that cannot be used as asked: empty, images of another
    /// size than the model's, missing or out-of-range labels.
    #[error("{0}")]
    Data(String),

    /// An input of the wrong shape or content for a model, a sampler or an
    /// image writer (the message names which).
    #[error("{0}")]
    Input(String),

    /// A checkpoint (or its metadata) that is readable but does not fit
    /// what is asked of it: missing tensors, another config, corrupt values.
    #[error("{0}")]
    Checkpoint(String),

    /// Weights whose names or shapes do not map between noisegrad's layout
    /// and another library's (diffusers).
    #[error("{0}")]
    Interop(String),

    /// Training diverged: the loss is no longer finite.
    #[error("{0}")]
    Diverged(String),

    /// A result that came out NaN or infinite where a number was promised.
    #[error("{0}")]
    NonFinite(String),

    /// Data-parallel training: a world of processes that cannot work
    /// together (launcher variables, mismatched ranks, backends).
    #[error("{0}")]
    Distributed(String),

    /// The run was stopped by Ctrl-C, SIGTERM or SIGHUP.
    #[error("{0}")]
    Interrupted(String),

    /// A numerical check failed: a gradient check, or CUDA against the CPU.
    #[error("{0}")]
    CheckFailed(String),
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

/// `bytes` in the largest binary unit that keeps it ≥ 1 (e.g. "1.1 TiB").
pub fn human_bytes(bytes: u128) -> String {
    let mut v = bytes as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} PiB")
}
