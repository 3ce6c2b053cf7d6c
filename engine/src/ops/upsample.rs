//! Nearest-neighbour ×2 upsampling of NCHW maps (the U-Net decoder).

use crate::autograd::record;
use crate::cpu_backend::{CpuData, CpuStorage, contiguous_slice, map_data, zeroed};
use crate::cuda_backend::CudaStorage;
use crate::error::{Result, bad_arg};
use crate::storage::Storage;
use crate::{Layout, Tensor};
use noisegrad_kernels::upsample::cpu as kernel;
use noisegrad_kernels::upsample::cuda as cuda_kernel;

impl Tensor {
    /// Nearest-neighbour ×2 upsampling of `[N, C, H, W]` to `[N, C, 2H, 2W]`:
    /// y[n, c, 2i + a, 2j + b] = x[n, c, i, j] (a, b ∈ {0, 1}), as PyTorch's
    /// `interpolate(scale_factor=2, mode="nearest")`. The gradient of
    /// x[n, c, i, j] is the sum of the 2×2 output block it was copied to.
    pub fn upsample_nearest2x(&self) -> Result<Tensor> {
        if self.rank() != 4 {
            return Err(bad_arg(
                "upsample_nearest2x",
                format!("input must be NCHW (rank 4), got shape {:?}", self.shape()),
            ));
        }
        let st = self.storage().upsample_nearest2x(self.layout())?;
        let s = self.shape();
        let out = Tensor::from_contiguous(st, &[s[0], s[1], 2 * s[2], 2 * s[3]]);
        let in_shape = s.to_vec();
        Ok(record(out, "upsample_nearest2x", &[self], move || {
            Box::new(move |g, _| {
                let st = g.storage().upsample_nearest2x_backward(g.layout())?;
                Ok(vec![Some(Tensor::from_contiguous(st, &in_shape))])
            })
        }))
    }
}

/// `[planes, h, w]` of an NCHW layout (planes = N·C).
fn planes_h_w(shape: &[usize]) -> (usize, usize, usize) {
    (shape[0] * shape[1], shape[2], shape[3])
}

impl Storage {
    /// y = x repeated over 2×2 blocks; `xl` is an NCHW layout.
    pub fn upsample_nearest2x(&self, xl: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.upsample_nearest2x(xl))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.upsample_nearest2x(xl)?)),
        }
    }

    /// Sums each 2×2 block of `dy` (layout `dyl`, NCHW with even H, W).
    pub fn upsample_nearest2x_backward(&self, dyl: &Layout) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.upsample_nearest2x_backward(dyl))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.upsample_nearest2x_backward(dyl)?)),
        }
    }
}

impl CpuStorage {
    pub fn upsample_nearest2x(&self, xl: &Layout) -> CpuStorage {
        let (planes, h, w) = planes_h_w(xl.shape());
        CpuStorage::new(map_data!(&self.data, v => {
            let x = contiguous_slice(v, xl);
            let mut y = zeroed(4 * x.len());
            kernel::upsample_nearest2x(&x, planes, h, w, &mut y);
            y
        }))
    }

    pub fn upsample_nearest2x_backward(&self, dyl: &Layout) -> CpuStorage {
        let (planes, h2, w2) = planes_h_w(dyl.shape());
        CpuStorage::new(map_data!(&self.data, v => {
            let dy = contiguous_slice(v, dyl);
            let mut dx = zeroed(dy.len() / 4);
            kernel::upsample_nearest2x_backward(&dy, planes, h2 / 2, w2 / 2, &mut dx);
            dx
        }))
    }
}

/// The CUDA upsample (see `noisegrad_kernels::upsample::cuda`); inputs may
/// be any views, outputs are contiguous.
impl CudaStorage {
    pub fn upsample_nearest2x(&self, xl: &Layout) -> Result<CudaStorage> {
        let (planes, h, w) = planes_h_w(xl.shape());
        let y = cuda_kernel::forward(&self.dev, self.view(xl)?, planes, h, w)?;
        Ok(self.wrap(y))
    }

    pub fn upsample_nearest2x_backward(&self, dyl: &Layout) -> Result<CudaStorage> {
        let (planes, h2, w2) = planes_h_w(dyl.shape());
        let dx = cuda_kernel::backward(&self.dev, self.view(dyl)?, planes, h2 / 2, w2 / 2)?;
        Ok(self.wrap(dx))
    }
}
