//! The optimizer primitives of the storage dispatch: Σx² for gradient
//! clipping and the fused in-place Adam and EMA updates.

use crate::Layout;
use crate::error::Result;
use crate::storage::{Storage, cuda_pending, same_device};

impl Storage {
    /// Σ x² over the elements of `layout`, in f64.
    pub fn sum_squares(&self, layout: &Layout) -> Result<f64> {
        match self {
            Storage::Cpu(s) => Ok(s.sum_squares(layout)),
            Storage::Cuda(_) => Err(cuda_pending("sum_squares")),
        }
    }

    /// In-place Adam/AdamW step on contiguous same-device buffers.
    pub fn adam_step(
        &mut self,
        grad: &Storage,
        m: &mut Storage,
        v: &mut Storage,
        step: noisegrad_kernels::cpu::optim::AdamStep,
        grad_scale: f64,
    ) -> Result<()> {
        match (self, grad, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
                p.adam_step(g, m, v, step, grad_scale)
            }
            _ => Err(cuda_pending("adam_step")),
        }
    }

    /// In-place ema ← decay·ema + (1 − decay)·param.
    pub fn ema_update(&mut self, param: &Storage, decay: f64) -> Result<()> {
        let (e, p) = same_device!("ema", self, param);
        e.ema_update(p, decay)
    }
}
