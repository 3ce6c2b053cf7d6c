//! Global gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_`.
//!
//! The norm is one number over all parameters, ‖g‖ = √(Σ_p Σ_i g_pi²),
//! accumulated in f64. Clipping multiplies every gradient by
//! c = max_norm / (‖g‖ + 1e-6) when c < 1. [`Adam::step_clipped`] folds c
//! into its fused update instead of rewriting the gradients first, which
//! saves a read and a write of every gradient.
//!
//! # On a GPU
//!
//! When every gradient lives on one GPU, the norm and c are computed there
//! ([`GradNorm`]): per-tensor partial sums, one reduction, and c written to
//! device memory, where the Adam kernel reads it. The host only learns the
//! norm when it asks ([`GradNorm::value`], one 8-byte read that waits for
//! the work queued so far). A non-finite norm behaves as on the CPU, with
//! no host decision: the device computes the same c (1 for NaN, 0 for ∞,
//! see [`clip_coefficient`]) and the step runs with it; neither device
//! skips the step, so callers check the norm (or the loss) themselves.
//!
//! Gradients spread over several devices are summed on the host, each GPU
//! tensor's Σg² read back separately (one wait each).
//!
//! [`Adam::step_clipped`]: super::Adam::step_clipped

use crate::error::{Result, bad_arg};
use crate::ops::with_storage_list;
use crate::storage::Storage;
use crate::{Device, Tensor, no_grad};
use noisegrad_kernels::cuda::{CudaDevice, DeviceBuffer};
use noisegrad_kernels::optim::cuda::{self as cuda_kernel, NormState, read_norm};
use std::sync::Arc;

/// The ε of torch's clip coefficient max_norm / (‖g‖ + ε).
pub const CLIP_EPS: f64 = 1e-6;

/// ‖g‖ = √(Σ_p Σ_i g_pi²) over the gradients of `params` (params without a
/// gradient count as 0), summed in f64. On a GPU this waits for the norm;
/// [`Adam::step_clipped_deferred`](super::Adam::step_clipped_deferred)
/// does not.
pub fn grad_norm<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<f64> {
    global_norm(params, f64::INFINITY)?.value()
}

/// The factor an Adam update multiplies the gradients by.
#[derive(Clone, Copy, Debug)]
pub enum GradScale<'a> {
    /// A number known on the host (plain steps, and everything on the CPU).
    Host(f64),
    /// The f32 at element `index` of a device buffer, written by an earlier
    /// kernel on the device's stream (the clip coefficient of a
    /// [`GradNorm`]). The Adam kernel reads it itself, so the host never
    /// waits for the norm.
    Device { buf: &'a DeviceBuffer, index: usize },
}

/// The global gradient norm of one step, and the clip coefficient for the
/// `max_norm` it was computed with, where the gradients live.
pub struct GradNorm(Repr);

enum Repr {
    Host {
        norm: f64,
        max_norm: f64,
    },
    /// A `NormState` buffer on `dev`, filled by kernels queued on its stream.
    Cuda {
        dev: Arc<CudaDevice>,
        state: DeviceBuffer,
    },
}

impl std::fmt::Debug for GradNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Host { norm, .. } => write!(f, "GradNorm({norm})"),
            Repr::Cuda { dev, .. } => {
                write!(f, "GradNorm(on cuda:{}, not read yet)", dev.ordinal())
            }
        }
    }
}

impl GradNorm {
    /// ‖g‖ on the host. For a norm computed on a GPU this copies 8 bytes
    /// back, waiting for everything queued on that GPU so far (read it after
    /// queuing the step's updates, so the wait overlaps nothing useful).
    pub fn value(&self) -> Result<f64> {
        match &self.0 {
            Repr::Host { norm, .. } => Ok(*norm),
            Repr::Cuda { dev, state } => Ok(read_norm(dev, state)?),
        }
    }

    /// The device that computed the norm.
    pub fn device(&self) -> Device {
        match &self.0 {
            Repr::Host { .. } => Device::Cpu,
            Repr::Cuda { dev, .. } => Device::Cuda(dev.ordinal()),
        }
    }

    /// The scale an update applies: c = [`clip_coefficient`] on the host,
    /// or the device's copy of it.
    pub(crate) fn grad_scale(&self) -> GradScale<'_> {
        match &self.0 {
            Repr::Host { norm, max_norm } => GradScale::Host(clip_coefficient(*norm, *max_norm)),
            Repr::Cuda { state, .. } => GradScale::Device {
                buf: state,
                index: NormState::COEF,
            },
        }
    }
}

/// The gradients' norm and clip coefficient for `max_norm`: on the device
/// when every gradient lives on one GPU (queued, nothing waits), otherwise
/// on the host (the CPU path, unchanged).
pub(crate) fn global_norm<'a>(
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f64,
) -> Result<GradNorm> {
    let grads: Vec<Tensor> = params.into_iter().filter_map(Tensor::grad).collect();
    if let Some(Device::Cuda(ordinal)) = grads.first().map(Tensor::device)
        && grads.iter().all(|g| g.device() == Device::Cuda(ordinal))
    {
        let refs: Vec<&Tensor> = grads.iter().collect();
        return with_storage_list(&refs, |storages| {
            // Each gradient as one contiguous run (packed when it is not).
            let mut packed = Vec::new();
            let mut tensors = Vec::with_capacity(grads.len());
            let mut dev = None;
            for (s, g) in storages.iter().zip(&grads) {
                let Storage::Cuda(c) = s else {
                    unreachable!("all gradients are on cuda:{ordinal}")
                };
                dev.get_or_insert_with(|| c.dev.clone());
                let l = g.layout();
                if l.is_contiguous() {
                    tensors.push((c.buf.ptr_at(l.offset()), l.numel()));
                } else {
                    let p = c.contiguous(l)?;
                    tensors.push((p.buf.ptr(), l.numel()));
                    packed.push(p);
                }
            }
            let dev = dev.expect("at least one gradient");
            let state = cuda_kernel::global_norm(&dev, &tensors, max_norm)?;
            // `packed` drops here, after the kernels reading it are queued.
            Ok(GradNorm(Repr::Cuda { dev, state }))
        });
    }
    let mut sum = 0.0;
    for g in &grads {
        sum += g.storage().sum_squares(g.layout())?;
    }
    Ok(GradNorm(Repr::Host {
        norm: sum.sqrt(),
        max_norm,
    }))
}

/// The factor clipping multiplies gradients by: min(1, max_norm / (‖g‖ + 1e-6)).
/// A NaN norm gives 1 and an infinite one 0 (nothing to rescale
/// meaningfully; the caller should check the returned norm and skip the
/// step). The CUDA kernel `clip_finalize` computes the same expression.
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    let c = max_norm / (total_norm + CLIP_EPS);
    if c < 1.0 { c } else { 1.0 }
}

/// Scales the gradients of `params` so their global norm is at most
/// `max_norm` (g ← g·c with c = [`clip_coefficient`]); returns the norm
/// before clipping. Same result as `torch.nn.utils.clip_grad_norm_`.
/// (On a GPU the norm is read back to decide; `Adam::step_clipped` is the
/// path without that wait.)
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<f64> {
    check_max_norm(max_norm)?;
    let norm = grad_norm(params)?;
    let c = clip_coefficient(norm, max_norm);
    if c < 1.0 {
        no_grad(|| -> Result<()> {
            for p in params {
                if let Some(g) = p.grad() {
                    p.set_grad(Some(g.mul_scalar(c)?));
                }
            }
            Ok(())
        })?;
    }
    Ok(norm)
}

pub(crate) fn check_max_norm(max_norm: f64) -> Result<()> {
    if max_norm > 0.0 && max_norm.is_finite() {
        Ok(())
    } else {
        Err(bad_arg(
            "clip_grad_norm",
            format!("max_norm must be positive and finite, got {max_norm}"),
        ))
    }
}
