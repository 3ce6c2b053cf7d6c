//! Tensor storage and the device dispatch.
//!
//! [`Storage`] is an enum with one variant per device. Each primitive the
//! ops need (unary, broadcast binary, reduce, matmul, copy, ...) is one
//! method here that matches on the device and calls that device's kernels.
//! Ops (and so autodiff and models) only ever call these methods: a new
//! device is a new variant plus these methods, nothing else.

use crate::cpu_backend::CpuStorage;
use crate::error::{Error, Result};
use crate::{DType, Device, Layout};
pub use noisegrad_kernels::cpu::elementwise::{BinaryOp, UnaryOp};
pub use noisegrad_kernels::cpu::reduce::ReduceOp;
use noisegrad_kernels::rng::Philox;

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
}

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

macro_rules! same_device {
    ($op:expr, $a:expr, $b:expr) => {
        match ($a, $b) {
            (Storage::Cpu(a), Storage::Cpu(b)) => (a, b),
            #[allow(unreachable_patterns)]
            (a, b) => {
                return Err(Error::DeviceMismatch {
                    op: $op,
                    lhs: a.device(),
                    rhs: b.device(),
                })
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use same_device;

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(device: Device, dtype: DType, n: usize) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(dtype, n))),
            Device::Cuda(_) => Err(no_cuda("zeros")),
        }
    }

    pub fn full(device: Device, dtype: DType, n: usize, value: f64) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::full(dtype, n, value))),
            Device::Cuda(_) => Err(no_cuda("full")),
        }
    }

    pub fn from_f64(device: Device, dtype: DType, data: &[f64]) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::from_f64(dtype, data))),
            Device::Cuda(_) => Err(no_cuda("from_vec")),
        }
    }

    pub fn rand(
        device: Device,
        dtype: DType,
        n: usize,
        kind: RandKind,
        rng: &mut Philox,
    ) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::rand(dtype, n, kind, rng))),
            Device::Cuda(_) => Err(no_cuda("rand")),
        }
    }

    pub fn arange(device: Device, dtype: DType, n: usize) -> Result<Storage> {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Storage::from_f64(device, dtype, &v)
    }

    /// The elements of `layout`, in row-major order, as f64 on the host.
    pub fn to_f64_vec(&self, layout: &Layout) -> Vec<f64> {
        match self {
            Storage::Cpu(s) => s.to_f64_vec(layout),
        }
    }

    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.to_dtype(layout, dtype))),
        }
    }

    /// A contiguous copy of the elements of `layout`.
    pub fn contiguous(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.contiguous(layout))),
        }
    }

    /// Copies the elements of `src` (viewed through `src_layout`) into the
    /// elements of `self` viewed through `dst_layout` (same shape).
    pub fn copy_from(
        &mut self,
        dst_layout: &Layout,
        src: &Storage,
        src_layout: &Layout,
    ) -> Result<()> {
        let (d, s) = same_device!("copy", self, src);
        d.copy_from(dst_layout, s, src_layout)
    }

    pub fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.unary(layout, op))),
        }
    }

    /// `op(a, b)` where both layouts are already broadcast to one shape.
    pub fn binary(&self, l: &Layout, rhs: &Storage, r: &Layout, op: BinaryOp) -> Result<Storage> {
        let (a, b) = same_device!("binary", self, rhs);
        Ok(Storage::Cpu(a.binary(l, b, r, op)?))
    }

    pub fn where_cond(
        &self,
        c: &Layout,
        a: &Storage,
        al: &Layout,
        b: &Storage,
        bl: &Layout,
    ) -> Result<Storage> {
        let (cs, as_) = same_device!("where", self, a);
        let (_, bs) = same_device!("where", self, b);
        Ok(Storage::Cpu(cs.where_cond(c, as_, al, bs, bl)?))
    }

    /// Reduces over `axes` (sorted, unique); the result keeps size-1 axes.
    pub fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.reduce(layout, op, axes))),
        }
    }

    pub fn matmul(
        &self,
        l: &Layout,
        rhs: &Storage,
        r: &Layout,
        dims: &MatmulDims,
    ) -> Result<Storage> {
        let (a, b) = same_device!("matmul", self, rhs);
        Ok(Storage::Cpu(a.matmul(l, b, r, dims)?))
    }

    pub fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.softmax(layout, axis, log))),
        }
    }

    pub fn softmax_backward(
        &self,
        y: &Layout,
        g: &Storage,
        gl: &Layout,
        axis: usize,
        log: bool,
    ) -> Result<Storage> {
        let (ys, gs) = same_device!("softmax_backward", self, g);
        Ok(Storage::Cpu(ys.softmax_backward(y, gs, gl, axis, log)))
    }

    pub fn index_select(&self, layout: &Layout, axis: usize, ids: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.index_select(layout, axis, ids))),
        }
    }

    /// A zero tensor of `shape` with `src` rows added at `ids` along `axis`.
    pub fn index_add_zeros(
        &self,
        src_layout: &Layout,
        shape: &[usize],
        axis: usize,
        ids: &[usize],
    ) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(
                s.index_add_zeros(src_layout, shape, axis, ids),
            )),
        }
    }

    /// Σ x² over the elements of `layout`, in f64.
    pub fn sum_squares(&self, layout: &Layout) -> Result<f64> {
        match self {
            Storage::Cpu(s) => Ok(s.sum_squares(layout)),
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
        }
    }

    /// In-place ema ← decay·ema + (1 − decay)·param.
    pub fn ema_update(&mut self, param: &Storage, decay: f64) -> Result<()> {
        let (e, p) = same_device!("ema", self, param);
        e.ema_update(p, decay)
    }
}

fn no_cuda(op: &'static str) -> Error {
    Error::Unsupported {
        op,
        msg: "CUDA storage is not available in this build yet; use Device::Cpu".into(),
    }
}
