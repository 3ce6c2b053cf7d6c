//! The CUDA device: storage as a pooled device buffer of f32, and each
//! primitive as a launch of a kernel in `noisegrad_kernels::cuda`.
//!
//! Mirrors `cpu_backend.rs`: kernel families with their own file (conv,
//! norms, attention, ...) add `impl CudaStorage` blocks next to their CPU
//! counterparts in `ops/`. CUDA tensors are f32 only (f64 is the CPU's
//! gradient-check type); asking for f64 on the GPU is an `Unsupported` error.

use crate::error::{Error, Result, shape_err};
use crate::memory::MemTicket;
use crate::storage::{BinaryOp, UnaryOp};
use crate::{DType, Device, Layout};
use noisegrad_kernels::cpu::collapse_dims;
use noisegrad_kernels::cuda::device::{MAX_RANK, Strided};
use noisegrad_kernels::cuda::elementwise::{self as ew, View};
use noisegrad_kernels::cuda::{CudaDevice, CudaError, DeviceBuffer};
use std::sync::Arc;

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Error {
        Error::Cuda(e)
    }
}

/// The [`CudaDevice`] behind `Device::Cuda(ordinal)`.
pub fn cuda_device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    Ok(CudaDevice::get(ordinal)?)
}

#[derive(Debug)]
pub struct CudaStorage {
    pub(crate) buf: DeviceBuffer,
    pub(crate) dev: Arc<CudaDevice>,
    _mem: MemTicket,
}

/// The error for f64 (or another non-f32 dtype) on the GPU.
pub(crate) fn f32_only(op: &'static str, dtype: DType) -> Error {
    Error::Unsupported {
        op,
        msg: format!(
            "CUDA tensors are f32, got {dtype:?}; f64 is for CPU gradient checks \
             (convert with to_dtype(DType::F32) first)"
        ),
    }
}

impl CudaStorage {
    pub(crate) fn new(dev: Arc<CudaDevice>, buf: DeviceBuffer) -> Self {
        let _mem = MemTicket::new(Device::Cuda(dev.ordinal()), buf.len() * 4);
        Self { buf, dev, _mem }
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.dev.ordinal())
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The same device, a new buffer.
    pub(crate) fn wrap(&self, buf: DeviceBuffer) -> CudaStorage {
        CudaStorage::new(self.dev.clone(), buf)
    }

    /// This buffer seen through `layout`, for a kernel argument. Dims are
    /// collapsed first, so only views that cannot be flattened to
    /// [`MAX_RANK`] dims are refused.
    pub(crate) fn view(&self, layout: &Layout) -> Result<View<'_>> {
        Ok(View {
            buf: &self.buf,
            strided: strided(layout)?,
            contiguous: layout.is_contiguous(),
        })
    }

    pub fn zeros(ordinal: usize, dtype: DType, n: usize) -> Result<Self> {
        Self::full(ordinal, dtype, n, 0.0)
    }

    pub fn full(ordinal: usize, dtype: DType, n: usize, value: f64) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("full", dtype));
        }
        let dev = cuda_device(ordinal)?;
        let buf = if value == 0.0 {
            dev.zeros(n)?
        } else {
            ew::fill(&dev, n, value as f32)?
        };
        Ok(Self::new(dev, buf))
    }

    pub fn from_f64(ordinal: usize, dtype: DType, data: &[f64]) -> Result<Self> {
        let host: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        Self::from_f32(ordinal, dtype, &host)
    }

    pub fn from_f32(ordinal: usize, dtype: DType, data: &[f32]) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("to_device", dtype));
        }
        let dev = cuda_device(ordinal)?;
        let buf = dev.upload(data)?;
        Ok(Self::new(dev, buf))
    }

    /// The elements of `layout`, row-major, on the host.
    pub fn to_f32_vec(&self, layout: &Layout) -> Result<Vec<f32>> {
        let n = layout.numel();
        if layout.is_contiguous() {
            return Ok(self.dev.download(&self.buf, layout.offset(), n)?);
        }
        let packed = self.contiguous(layout)?;
        Ok(self.dev.download(&packed.buf, 0, n)?)
    }

    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        if dtype != DType::F32 {
            return Err(f32_only("to_dtype", dtype));
        }
        self.contiguous(layout)
    }

    pub fn contiguous(&self, layout: &Layout) -> Result<Self> {
        let y = ew::contiguous(&self.dev, self.view(layout)?, layout.numel())?;
        Ok(self.wrap(y))
    }

    pub fn copy_from(
        &mut self,
        dst: &Layout,
        src: &CudaStorage,
        src_layout: &Layout,
    ) -> Result<()> {
        if dst.shape() != src_layout.shape() {
            return Err(shape_err(
                "copy",
                dst.shape(),
                src_layout.shape(),
                "shapes differ",
            ));
        }
        let (d, s) = (strided(dst)?, src.view(src_layout)?);
        ew::copy_into(&self.dev, s, &self.buf, d, dst.numel())?;
        Ok(())
    }

    pub fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        let y = ew::unary(&self.dev, op, self.view(layout)?, layout.numel())?;
        Ok(self.wrap(y))
    }

    pub fn binary(&self, l: &Layout, rhs: &CudaStorage, r: &Layout, op: BinaryOp) -> Result<Self> {
        let (a, b) = collapsed_pair(l, r)?;
        let va = View {
            buf: &self.buf,
            strided: a,
            contiguous: l.is_contiguous(),
        };
        let vb = View {
            buf: &rhs.buf,
            strided: b,
            contiguous: r.is_contiguous(),
        };
        Ok(self.wrap(ew::binary(&self.dev, op, va, vb, l.numel())?))
    }

    pub fn where_cond(
        &self,
        c: &Layout,
        a: &CudaStorage,
        al: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<Self> {
        let y = ew::where_cond(
            &self.dev,
            self.view(c)?,
            a.view(al)?,
            b.view(bl)?,
            c.numel(),
        )?;
        Ok(self.wrap(y))
    }
}

/// A layout as a kernel's [`Strided`] argument, dims collapsed.
pub(crate) fn strided(layout: &Layout) -> Result<Strided> {
    let (shape, strides) = collapse_dims(layout.shape(), &[layout.strides()]);
    Strided::new(&shape, &strides[0], layout.offset()).ok_or_else(|| too_many_dims(layout.shape()))
}

/// Two same-shape layouts collapsed together (their dims merge only where
/// both can), for broadcast binary ops.
fn collapsed_pair(l: &Layout, r: &Layout) -> Result<(Strided, Strided)> {
    let (shape, strides) = collapse_dims(l.shape(), &[l.strides(), r.strides()]);
    let a = Strided::new(&shape, &strides[0], l.offset());
    let b = Strided::new(&shape, &strides[1], r.offset());
    a.zip(b).ok_or_else(|| too_many_dims(l.shape()))
}

fn too_many_dims(shape: &[usize]) -> Error {
    Error::Unsupported {
        op: "cuda view",
        msg: format!(
            "a view of shape {shape:?} does not collapse to {MAX_RANK} dims; call contiguous() first"
        ),
    }
}
