//! Tensor storage and the device dispatch.
//!
//! [`Storage`] is an enum with one variant per device. Each primitive the
//! ops need (unary, broadcast binary, reduce, matmul, copy, ...) is one
//! method here that matches on the device and calls that device's kernels.
//! Ops (and so autodiff and models) only ever call these methods: a new
//! device is a new variant plus these methods, nothing else.

use crate::cpu_backend::CpuStorage;
use crate::cuda_backend::CudaStorage;
use crate::error::{Error, Result};
pub use crate::primitive::{BinaryOp, MatmulDims, RandKind, ReduceOp, UnaryOp};
use crate::{DType, Device, Layout};
use noisegrad_kernels::rng::Philox;

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// The error for two operands on different devices.
pub(crate) fn device_mismatch(op: &'static str, a: &Storage, b: &Storage) -> Error {
    Error::DeviceMismatch {
        op,
        lhs: a.device(),
        rhs: b.device(),
    }
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(s) => s.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn zeros(device: Device, dtype: DType, n: usize) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::zeros(dtype, n)?)),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::zeros(i, dtype, n)?)),
        }
    }

    pub fn full(device: Device, dtype: DType, n: usize, value: f64) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::full(dtype, n, value)?)),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::full(i, dtype, n, value)?)),
        }
    }

    pub fn from_f64(device: Device, dtype: DType, data: &[f64]) -> Result<Storage> {
        match device {
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::from_f64(dtype, data)?)),
            Device::Cuda(i) => Ok(Storage::Cuda(CudaStorage::from_f64(i, dtype, data)?)),
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
            Device::Cpu => Ok(Storage::Cpu(CpuStorage::rand(dtype, n, kind, rng)?)),
            Device::Cuda(i) => {
                if dtype != DType::F32 {
                    return Err(crate::cuda_backend::f32_only("rand", dtype));
                }
                Ok(Storage::Cuda(CudaStorage::rand(i, n, kind, rng)?))
            }
        }
    }

    pub fn arange(device: Device, dtype: DType, n: usize) -> Result<Storage> {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Storage::from_f64(device, dtype, &v)
    }

    /// The elements of `layout`, in row-major order, as f64 on the host.
    pub fn to_f64_vec(&self, layout: &Layout) -> Result<Vec<f64>> {
        match self {
            Storage::Cpu(s) => Ok(s.to_f64_vec(layout)),
            Storage::Cuda(s) => Ok(s.to_f32_vec(layout)?.into_iter().map(f64::from).collect()),
        }
    }

    /// A copy of the elements of `layout` on `device` (contiguous).
    pub fn to_device(&self, layout: &Layout, device: Device) -> Result<Storage> {
        if device == self.device() {
            return self.contiguous(layout);
        }
        match (self, device) {
            (Storage::Cpu(s), Device::Cuda(i)) => match s.contiguous(layout).data {
                crate::cpu_backend::CpuData::F32(v) => {
                    Ok(Storage::Cuda(CudaStorage::from_f32(i, DType::F32, &v)?))
                }
                _ => Err(crate::cuda_backend::f32_only("to_device", s.dtype())),
            },
            (Storage::Cuda(s), Device::Cpu) => {
                let v = s.to_f32_vec(layout)?;
                Ok(Storage::Cpu(CpuStorage::new(
                    crate::cpu_backend::CpuData::F32(v),
                )))
            }
            (Storage::Cuda(s), Device::Cuda(_)) => {
                // Between GPUs through the host: rare, and simple.
                let v = s.to_f32_vec(layout)?;
                Storage::Cpu(CpuStorage::new(crate::cpu_backend::CpuData::F32(v)))
                    .to_device(&Layout::contiguous(&[layout.numel()]), device)
            }
            (Storage::Cpu(_), Device::Cpu) => unreachable!("same device handled above"),
        }
    }

    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.to_dtype(layout, dtype)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.to_dtype(layout, dtype)?)),
        }
    }

    /// A contiguous copy of the elements of `layout`.
    pub fn contiguous(&self, layout: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.contiguous(layout))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.contiguous(layout)?)),
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
        match (self, src) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_from(dst_layout, s, src_layout),
            (Storage::Cuda(d), Storage::Cuda(s)) if d.device() == s.device() => {
                d.copy_from(dst_layout, s, src_layout)
            }
            (d, s) => Err(device_mismatch("copy", d, s)),
        }
    }

    pub fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.unary(layout, op))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.unary(layout, op)?)),
        }
    }

    /// `op(a, b)` where both layouts are already broadcast to one shape.
    pub fn binary(&self, l: &Layout, rhs: &Storage, r: &Layout, op: BinaryOp) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.binary(l, b, r, op)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) if a.device() == b.device() => {
                Ok(Storage::Cuda(a.binary(l, b, r, op)?))
            }
            (a, b) => Err(device_mismatch("binary", a, b)),
        }
    }

    pub fn where_cond(
        &self,
        c: &Layout,
        a: &Storage,
        al: &Layout,
        b: &Storage,
        bl: &Layout,
    ) -> Result<Storage> {
        match (self, a, b) {
            (Storage::Cpu(cs), Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(cs.where_cond(c, a, al, b, bl)?))
            }
            (Storage::Cuda(cs), Storage::Cuda(a), Storage::Cuda(b))
                if cs.device() == a.device() && cs.device() == b.device() =>
            {
                Ok(Storage::Cuda(cs.where_cond(c, a, al, b, bl)?))
            }
            (cs, a, _) if cs.device() != a.device() => Err(device_mismatch("where", cs, a)),
            (cs, _, b) => Err(device_mismatch("where", cs, b)),
        }
    }

    /// Reduces over `axes` (sorted, unique); the result keeps size-1 axes.
    pub fn reduce(&self, layout: &Layout, op: ReduceOp, axes: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.reduce(layout, op, axes))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.reduce(layout, op, axes)?)),
        }
    }

    pub fn matmul(
        &self,
        l: &Layout,
        rhs: &Storage,
        r: &Layout,
        dims: &MatmulDims,
    ) -> Result<Storage> {
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.matmul(l, b, r, dims)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) if a.device() == b.device() => {
                Ok(Storage::Cuda(a.matmul(l, b, r, dims)?))
            }
            (a, b) => Err(device_mismatch("matmul", a, b)),
        }
    }

    pub fn softmax(&self, layout: &Layout, axis: usize, log: bool) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.softmax(layout, axis, log))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.softmax(layout, axis, log)?)),
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
        match (self, g) {
            (Storage::Cpu(ys), Storage::Cpu(gs)) => {
                Ok(Storage::Cpu(ys.softmax_backward(y, gs, gl, axis, log)))
            }
            (Storage::Cuda(ys), Storage::Cuda(gs)) if ys.device() == gs.device() => {
                Ok(Storage::Cuda(ys.softmax_backward(y, gs, gl, axis, log)?))
            }
            (a, b) => Err(device_mismatch("softmax_backward", a, b)),
        }
    }

    pub fn index_select(&self, layout: &Layout, axis: usize, ids: &[usize]) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.index_select(layout, axis, ids))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.index_select(layout, axis, ids)?)),
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
            Storage::Cuda(s) => Ok(Storage::Cuda(
                s.index_add_zeros(src_layout, shape, axis, ids)?,
            )),
        }
    }
}
