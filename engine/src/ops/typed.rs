//! Helpers for ops whose kernels take several operands (group norm, the
//! noise-schedule steps, attention): typed access to CPU buffers, one dtype
//! dispatch, sorting operands onto their one device, contiguous device
//! addresses for CUDA kernels, and locking several tensors' storages
//! without locking one buffer twice.

use crate::cpu_backend::{CpuData, CpuStorage, contiguous_slice};
use crate::cuda_backend::CudaStorage;
use crate::error::{Error, Result};
use crate::storage::{Storage, device_mismatch};
use crate::{DType, Layout};
use noisegrad_kernels::Float;
use noisegrad_kernels::elementwise::cuda::Dense;
use std::borrow::Cow;

/// A storage viewed through a layout (one operand of a multi-operand primitive).
pub type StorageView<'a> = (&'a Storage, &'a Layout);

/// An element type a CPU buffer can hold, with its way in and out of [`CpuData`].
pub(crate) trait CpuElem: Float {
    const DTYPE: DType;
    fn slice(data: &CpuData) -> Option<&[Self]>;
    fn wrap(v: Vec<Self>) -> CpuData;
}

impl CpuElem for f32 {
    const DTYPE: DType = DType::F32;
    fn slice(data: &CpuData) -> Option<&[f32]> {
        match data {
            CpuData::F32(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f32>) -> CpuData {
        CpuData::F32(v)
    }
}

impl CpuElem for f64 {
    const DTYPE: DType = DType::F64;
    fn slice(data: &CpuData) -> Option<&[f64]> {
        match data {
            CpuData::F64(v) => Some(v),
            _ => None,
        }
    }
    fn wrap(v: Vec<f64>) -> CpuData {
        CpuData::F64(v)
    }
}

/// Runs `$body` with the type alias `$T` set to the element type of `$dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;

/// The elements of `s` under `layout` as a contiguous `&[T]` (borrowed when
/// already contiguous), or a dtype error naming `op`.
pub(crate) fn typed<'a, T: CpuElem>(
    op: &'static str,
    s: &'a CpuStorage,
    layout: &Layout,
) -> Result<Cow<'a, [T]>> {
    let v = T::slice(s.data()).ok_or(Error::DTypeMismatch {
        op,
        lhs: T::DTYPE,
        rhs: s.dtype(),
    })?;
    Ok(contiguous_slice(v, layout))
}

/// A new CPU storage holding `v`.
pub(crate) fn cpu_storage<T: CpuElem>(v: Vec<T>) -> CpuStorage {
    CpuStorage::new(T::wrap(v))
}

/// A CPU storage viewed through a layout.
pub(crate) type CpuView<'a> = (&'a CpuStorage, &'a Layout);

/// A CUDA storage viewed through a layout.
pub(crate) type CudaView<'a> = (&'a CudaStorage, &'a Layout);

/// The operands of a multi-operand primitive, all on the CPU or all on
/// one GPU.
pub(crate) enum Placed<'a, const N: usize> {
    Cpu([CpuView<'a>; N]),
    Cuda([CudaView<'a>; N]),
}

/// Sorts `xs` onto their device, or a device error naming `op` when they
/// are not all on the same one (never a silent copy).
pub(crate) fn placed<'a, const N: usize>(
    op: &'static str,
    xs: [StorageView<'a>; N],
) -> Result<Placed<'a, N>> {
    let first = xs[0].0;
    if let Some((other, _)) = xs.iter().find(|(s, _)| s.device() != first.device()) {
        return Err(device_mismatch(op, first, other));
    }
    Ok(match first {
        Storage::Cpu(_) => Placed::Cpu(xs.map(|(s, l)| match s {
            Storage::Cpu(c) => (c, l),
            Storage::Cuda(_) => unreachable!("devices checked above"),
        })),
        Storage::Cuda(_) => Placed::Cuda(xs.map(|(s, l)| match s {
            Storage::Cuda(c) => (c, l),
            Storage::Cpu(_) => unreachable!("devices checked above"),
        })),
    })
}

/// The elements of a CUDA view as one contiguous run (see
/// [`CudaStorage::dense`]); `op` names the caller in errors.
pub(crate) fn cuda_contiguous<'a>(op: &'static str, (s, l): CudaView<'a>) -> Result<Dense<'a>> {
    s.dense(l, op)
}
