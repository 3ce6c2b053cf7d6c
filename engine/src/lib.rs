//! # noisegrad-engine
//!
//! Tensors and reverse-mode autodiff. Read in this order:
//! [`layout`] (shape/strides views) → [`storage`] (device dispatch) →
//! [`tensor`] (the handle) → [`autograd`] (the tape) → `ops/` (each op and
//! its backward) → [`gradcheck`] (how every op is verified).

pub mod autograd;
pub mod comm;
pub(crate) mod cpu_backend;
pub(crate) mod cuda_backend;
pub mod device;
pub mod dtype;
pub mod error;
pub mod gradcheck;
pub mod io;
pub mod layout;
pub mod memory;
pub mod nn;
mod ops;
pub mod optim;
mod primitive;
pub mod storage;
pub mod tensor;
#[cfg(feature = "test-support")]
pub mod testing;

pub use autograd::{LeafId, NoGradGuard, enable_grad, is_grad_enabled, no_grad};
pub use device::Device;
pub use dtype::DType;
pub use error::{Error, Result};
pub use layout::Layout;
pub use noisegrad_kernels::noise::cpu::{QSampleCoef, StepCoef};
pub use noisegrad_kernels::rng::Philox;
pub use tensor::Tensor;
