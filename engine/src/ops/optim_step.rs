//! The optimizer primitives of the storage dispatch: Σx² for gradient
//! clipping and the fused in-place Adam and EMA updates (the global norm of
//! many gradients on one GPU is in `optim/clip.rs`).

use crate::Layout;
use crate::cuda_backend::CudaStorage;
use crate::error::{Error, Result};
use crate::optim::clip::GradScale;
use crate::storage::{Storage, device_mismatch};
use noisegrad_kernels::optim::cpu::AdamStep;
use noisegrad_kernels::optim::cuda::{self as cuda_kernel, AdamScale};

impl Storage {
    /// Σ x² over the elements of `layout`, in f64 (on a GPU: reduced there,
    /// then read back, which waits for the stream).
    pub fn sum_squares(&self, layout: &Layout) -> Result<f64> {
        match self {
            Storage::Cpu(s) => Ok(s.sum_squares(layout)),
            Storage::Cuda(s) => s.sum_squares(layout),
        }
    }

    /// In-place Adam/AdamW step on contiguous same-device buffers, with
    /// `scale`·grad as the gradient.
    pub fn adam_step(
        &mut self,
        grad: &Storage,
        m: &mut Storage,
        v: &mut Storage,
        step: AdamStep,
        scale: GradScale<'_>,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        for other in [grad, &*m, &*v] {
            if other.device() != self.device() {
                return Err(device_mismatch(OP, self, other));
            }
        }
        match (self, grad, m, v) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => match scale {
                GradScale::Host(x) => p.adam_step(g, m, v, step, x),
                GradScale::Device { .. } => Err(Error::Unsupported {
                    op: OP,
                    msg: "a gradient scale on a GPU cannot scale CPU parameters".into(),
                }),
            },
            (Storage::Cuda(p), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => {
                p.adam_step(g, m, v, step, scale)
            }
            _ => unreachable!("devices checked above"),
        }
    }

    /// In-place ema ← decay·ema + (1 − decay)·param.
    pub fn ema_update(&mut self, param: &Storage, decay: f64) -> Result<()> {
        if self.device() != param.device() {
            return Err(device_mismatch("ema", self, param));
        }
        match (self, param) {
            (Storage::Cpu(e), Storage::Cpu(p)) => e.ema_update(p, decay),
            (Storage::Cuda(e), Storage::Cuda(p)) => e.ema_update(p, decay),
            _ => unreachable!("devices checked above"),
        }
    }
}

/// The error for buffers an in-place update cannot pair up.
fn lengths_differ(op: &'static str, lens: &[usize]) -> Error {
    Error::BadArgument {
        op,
        msg: format!("buffer lengths differ ({lens:?})"),
    }
}

impl CudaStorage {
    pub fn sum_squares(&self, layout: &Layout) -> Result<f64> {
        let x = self.dense(layout, "sum_squares")?;
        Ok(cuda_kernel::sum_squares(
            &self.dev,
            x.ptr(),
            layout.numel(),
        )?)
    }

    /// One fused Adam step over the whole buffers (as the CPU's
    /// `adam_step`, which also walks whole buffers).
    pub fn adam_step(
        &mut self,
        g: &CudaStorage,
        m: &mut CudaStorage,
        v: &mut CudaStorage,
        step: AdamStep,
        scale: GradScale<'_>,
    ) -> Result<()> {
        let n = self.len();
        if g.len() != n || m.len() != n || v.len() != n {
            return Err(lengths_differ("adam", &[n, g.len(), m.len(), v.len()]));
        }
        let scale = match scale {
            GradScale::Host(x) => AdamScale::Value(x as f32),
            GradScale::Device { buf, index } => {
                if buf.ordinal() != self.dev.ordinal() {
                    return Err(Error::Unsupported {
                        op: "adam_step",
                        msg: format!(
                            "the gradient scale lives on cuda:{}, the parameter on cuda:{}",
                            buf.ordinal(),
                            self.dev.ordinal()
                        ),
                    });
                }
                assert!(index < buf.len(), "gradient scale index out of range");
                AdamScale::Device(buf.ptr_at(index))
            }
        };
        let bufs = [self.buf.ptr(), g.buf.ptr(), m.buf.ptr(), v.buf.ptr()];
        Ok(cuda_kernel::adam(&self.dev, bufs, n, &step, scale)?)
    }

    pub fn ema_update(&mut self, p: &CudaStorage, decay: f64) -> Result<()> {
        let n = self.len();
        if p.len() != n {
            return Err(lengths_differ("ema", &[n, p.len()]));
        }
        Ok(cuda_kernel::ema(
            &self.dev,
            self.buf.ptr(),
            p.buf.ptr(),
            n,
            decay,
        )?)
    }
}
