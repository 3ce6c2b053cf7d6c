//! Group normalisation with affine γ/β and an optional fused SiLU, on the
//! CPU (`noisegrad_kernels::group_norm::cpu`) and on CUDA
//! (`noisegrad_kernels::group_norm::cuda`).

use super::typed::{
    CpuElem, CpuView, CudaView, Placed, StorageView, by_dtype, cpu_storage, placed, typed,
};
use super::{check_same, with_storage_list};
use crate::autograd::record;
use crate::cpu_backend::{CpuStorage, zeroed};
use crate::cuda_backend::CudaStorage;
use crate::error::{Result, bad_arg, shape_err};
use crate::storage::Storage;
use crate::{Layout, Tensor};
use noisegrad_kernels::group_norm::cpu::{self as kernel, GroupNormDims};
use noisegrad_kernels::group_norm::cuda as cuda_kernel;

impl Tensor {
    /// Group normalisation of x = `[N, C, *spatial]` with `groups` groups of
    /// C/groups channels, per-channel scale γ and shift β (each `[C]`):
    ///
    ///   y = γ_c·(x − μ_{n,g})/√(σ²_{n,g} + ε) + β_c,
    ///
    /// μ, σ² being the mean and (biased) variance over group g of sample n.
    /// With `silu`, y = silu(that) = h·σ(h), fused in the same pass (the
    /// U-Net follows almost every GroupNorm by SiLU). Backward is one fused
    /// kernel for x, γ and β; only μ and 1/σ per (n, g) are saved.
    pub fn group_norm(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let args = self.group_norm_args(groups, gamma, beta, eps, silu)?;
        let (y, mean, rstd) = with_storage_list(&[self, gamma, beta], |s| {
            s[0].group_norm(
                self.layout(),
                (s[1], gamma.layout()),
                (s[2], beta.layout()),
                args,
            )
        })?;
        let out = Tensor::from_contiguous(y, self.shape());
        let stats_shape = [args.dims.n * args.dims.groups];
        let mean = Tensor::from_contiguous(mean, &stats_shape);
        let rstd = Tensor::from_contiguous(rstd, &stats_shape);
        let (x, gamma_d, beta_d) = (self.detach(), gamma.detach(), beta.detach());
        Ok(record(out, "group_norm", &[self, gamma, beta], move || {
            Box::new(move |g, needs| {
                let tensors = [&x, g, &gamma_d, &beta_d, &mean, &rstd];
                let (dx, dg, db) = with_storage_list(&tensors, |s| {
                    s[0].group_norm_backward(
                        x.layout(),
                        (s[1], g.layout()),
                        (s[2], gamma_d.layout()),
                        (s[3], beta_d.layout()),
                        (s[4], s[5]),
                        args,
                    )
                })?;
                let c = [args.dims.channels];
                Ok(vec![
                    needs[0].then(|| Tensor::from_contiguous(dx, x.shape())),
                    needs[1].then(|| Tensor::from_contiguous(dg, &c)),
                    needs[2].then(|| Tensor::from_contiguous(db, &c)),
                ])
            })
        }))
    }

    /// Checks the shapes and arguments of [`Tensor::group_norm`].
    fn group_norm_args(
        &self,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f64,
        silu: bool,
    ) -> Result<GroupNormArgs> {
        let op = "group_norm";
        check_same(op, self, gamma)?;
        check_same(op, self, beta)?;
        if self.rank() < 2 {
            return Err(bad_arg(
                op,
                format!(
                    "input must be [N, C, *spatial], got shape {:?}",
                    self.shape()
                ),
            ));
        }
        let channels = self.shape()[1];
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(bad_arg(
                op,
                format!(
                    "{channels} channels (input shape {:?}) do not split into {groups} groups",
                    self.shape()
                ),
            ));
        }
        for (name, p) in [("gamma", gamma), ("beta", beta)] {
            if p.shape() != [channels] {
                return Err(shape_err(
                    op,
                    self.shape(),
                    p.shape(),
                    format!("{name} must have shape [C] = [{channels}]"),
                ));
            }
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(bad_arg(
                op,
                format!("eps must be finite and ≥ 0, got {eps}"),
            ));
        }
        let dims = GroupNormDims {
            n: self.shape()[0],
            channels,
            spatial: self.shape()[2..].iter().product(),
            groups,
        };
        Ok(GroupNormArgs { dims, eps, silu })
    }
}

/// What a group-norm call computes besides the data: the sizes, ε and
/// whether SiLU follows.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormArgs {
    pub dims: GroupNormDims,
    pub eps: f64,
    pub silu: bool,
}

impl Storage {
    /// Forward group norm; returns (y, mean, rstd), the last two `[N·G]`.
    pub fn group_norm(
        &self,
        xl: &Layout,
        gamma: StorageView,
        beta: StorageView,
        args: GroupNormArgs,
    ) -> Result<(Storage, Storage, Storage)> {
        Ok(match placed("group_norm", [(self, xl), gamma, beta])? {
            Placed::Cpu([x, g, b]) => {
                let (y, m, r) = x.0.group_norm(x.1, g, b, args)?;
                (Storage::Cpu(y), Storage::Cpu(m), Storage::Cpu(r))
            }
            Placed::Cuda([x, g, b]) => {
                let (y, m, r) = x.0.group_norm(x.1, g, b, args)?;
                (Storage::Cuda(y), Storage::Cuda(m), Storage::Cuda(r))
            }
        })
    }

    /// Backward group norm from x (self), ∂L/∂y, γ, β and the saved
    /// (mean, rstd); returns (dx, dγ, dβ).
    pub fn group_norm_backward(
        &self,
        xl: &Layout,
        dy: StorageView,
        gamma: StorageView,
        beta: StorageView,
        (mean, rstd): (&Storage, &Storage),
        args: GroupNormArgs,
    ) -> Result<(Storage, Storage, Storage)> {
        let op = "group_norm_backward";
        // The statistics are whole buffers; their layout is not read.
        let stats_layout = Layout::contiguous(&[mean.len()]);
        let operands = [
            (self, xl),
            dy,
            gamma,
            beta,
            (mean, &stats_layout),
            (rstd, &stats_layout),
        ];
        Ok(match placed(op, operands)? {
            Placed::Cpu([x, dy, g, b, m, r]) => {
                let (dx, dg, db) = x.0.group_norm_backward(x.1, dy, g, b, (m.0, r.0), args)?;
                (Storage::Cpu(dx), Storage::Cpu(dg), Storage::Cpu(db))
            }
            Placed::Cuda([x, dy, g, b, m, r]) => {
                let (dx, dg, db) = x.0.group_norm_backward(x.1, dy, g, b, (m.0, r.0), args)?;
                (Storage::Cuda(dx), Storage::Cuda(dg), Storage::Cuda(db))
            }
        })
    }
}

impl CpuStorage {
    pub fn group_norm(
        &self,
        xl: &Layout,
        gamma: CpuView,
        beta: CpuView,
        args: GroupNormArgs,
    ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
        by_dtype!(self.dtype(), T => group_norm_typed::<T>((self, xl), gamma, beta, args))
    }

    pub fn group_norm_backward(
        &self,
        xl: &Layout,
        dy: CpuView,
        gamma: CpuView,
        beta: CpuView,
        stats: (&CpuStorage, &CpuStorage),
        args: GroupNormArgs,
    ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
        let views = [(self, xl), dy, gamma, beta];
        by_dtype!(self.dtype(), T => group_norm_backward_typed::<T>(views, stats, args))
    }
}

fn group_norm_typed<T: CpuElem>(
    x: CpuView,
    gamma: CpuView,
    beta: CpuView,
    args: GroupNormArgs,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    let op = "group_norm";
    let x = typed::<T>(op, x.0, x.1)?;
    let gamma = typed::<T>(op, gamma.0, gamma.1)?;
    let beta = typed::<T>(op, beta.0, beta.1)?;
    let stats_len = args.dims.n * args.dims.groups;
    let (mut y, mut mean, mut rstd) = (zeroed(x.len()), zeroed(stats_len), zeroed(stats_len));
    let outputs = (&mut y[..], &mut mean[..], &mut rstd[..]);
    kernel::group_norm(&x, args.dims, (&gamma, &beta), args.eps, args.silu, outputs);
    Ok((cpu_storage(y), cpu_storage(mean), cpu_storage(rstd)))
}

fn group_norm_backward_typed<T: CpuElem>(
    [x, dy, gamma, beta]: [CpuView; 4],
    stats: (&CpuStorage, &CpuStorage),
    args: GroupNormArgs,
) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
    let op = "group_norm_backward";
    let x = typed::<T>(op, x.0, x.1)?;
    let dy = typed::<T>(op, dy.0, dy.1)?;
    let gamma = typed::<T>(op, gamma.0, gamma.1)?;
    let beta = typed::<T>(op, beta.0, beta.1)?;
    let stats_layout = Layout::contiguous(&[args.dims.n * args.dims.groups]);
    let mean = typed::<T>(op, stats.0, &stats_layout)?;
    let rstd = typed::<T>(op, stats.1, &stats_layout)?;
    let c = args.dims.channels;
    let (mut dx, mut dg, mut db) = (zeroed(x.len()), zeroed(c), zeroed(c));
    kernel::group_norm_backward(
        (&x, &dy),
        args.dims,
        (&gamma, &beta),
        (&mean, &rstd),
        args.silu,
        (&mut dx, &mut dg, &mut db),
    );
    Ok((cpu_storage(dx), cpu_storage(dg), cpu_storage(db)))
}

/// The CUDA group norm (see `noisegrad_kernels::group_norm::cuda`): same
/// formulas and saved statistics as the CPU kernel; x, dy, γ, β may be any
/// views, the outputs are contiguous.
impl CudaStorage {
    pub fn group_norm(
        &self,
        xl: &Layout,
        (gamma, gl): CudaView,
        (beta, bl): CudaView,
        args: GroupNormArgs,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (y, mean, rstd) = cuda_kernel::forward(
            &self.dev,
            args.dims,
            self.view(xl)?,
            gamma.view(gl)?,
            beta.view(bl)?,
            args.eps as f32,
            args.silu,
        )?;
        Ok((self.wrap(y), self.wrap(mean), self.wrap(rstd)))
    }

    pub fn group_norm_backward(
        &self,
        xl: &Layout,
        (dy, dyl): CudaView,
        (gamma, gl): CudaView,
        (beta, bl): CudaView,
        (mean, rstd): (&CudaStorage, &CudaStorage),
        args: GroupNormArgs,
    ) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
        let (dx, dg, db) = cuda_kernel::backward(
            &self.dev,
            args.dims,
            (self.view(xl)?, dy.view(dyl)?),
            (gamma.view(gl)?, beta.view(bl)?),
            (&mean.buf, &rstd.buf),
            args.silu,
        )?;
        Ok((self.wrap(dx), self.wrap(dg), self.wrap(db)))
    }
}
