//! Fused noise-schedule ops for diffusion: forward noising `q_sample`, the
//! `l_simple_loss` objective, and the DDPM/DDIM reverse step
//! `denoise_step`. Each is one pass over memory with per-sample scalars
//! (every sample of a batch has its own timestep).

use super::typed::{
    CpuElem, CpuView, CudaView, Placed, StorageView, by_dtype, cpu_storage, cuda_contiguous,
    placed, typed,
};
use super::{check_same, with_storage_list};
use crate::autograd::{needs_tape, record, refuse_tracked};
use crate::cpu_backend::{CpuStorage, zeroed};
use crate::cuda_backend::CudaStorage;
use crate::error::{Result, bad_arg, shape_err};
use crate::storage::Storage;
use crate::{Device, Layout, Tensor};
use noisegrad_kernels::noise::cpu::{self as kernel, QSampleCoef, StepCoef};
use noisegrad_kernels::noise::cuda as cuda_kernel;

impl Tensor {
    /// Forward noising q(x_t | x_0), sample n using `coefs[n]`:
    ///
    ///   x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε        (self = x_0, `[N, ...]`).
    ///
    /// Training only needs it on data, but it is differentiable anyway
    /// (∂/∂x_0 = √ᾱ_t·g, ∂/∂ε = √(1 − ᾱ_t)·g), so a tracked input is never
    /// silently cut from the graph.
    pub fn q_sample(&self, eps: &Tensor, coefs: &[QSampleCoef]) -> Result<Tensor> {
        let op = "q_sample";
        check_batch(op, self, &[("eps", eps)], coefs.len())?;
        let finite = |c: &QSampleCoef| {
            c.sqrt_alpha_bar.is_finite() && c.sqrt_one_minus_alpha_bar.is_finite()
        };
        if let Some(bad) = coefs.iter().find(|c| !finite(c)) {
            return Err(bad_arg(op, format!("non-finite coefficients {bad:?}")));
        }
        let st = with_storage_list(&[self, eps], |s| {
            s[0].q_sample(self.layout(), (s[1], eps.layout()), coefs)
        })?;
        let out = Tensor::from_contiguous(st, self.shape());
        let coefs = coefs.to_vec();
        Ok(record(out, op, &[self, eps], move || {
            Box::new(move |g, needs| {
                let scaled = |pick: fn(&QSampleCoef) -> f64| -> Result<Tensor> {
                    let mut shape = vec![1; g.rank()];
                    shape[0] = coefs.len();
                    let per: Vec<f64> = coefs.iter().map(pick).collect();
                    g.mul(&Tensor::from_vec(&per, &shape, g.dtype(), g.device())?)
                };
                Ok(vec![
                    needs[0].then(|| scaled(|c| c.sqrt_alpha_bar)).transpose()?,
                    needs[1]
                        .then(|| scaled(|c| c.sqrt_one_minus_alpha_bar))
                        .transpose()?,
                ])
            })
        }))
    }

    /// The DDPM training loss L_simple = mean((ε_θ − ε)²) over all elements
    /// (self = ε_θ, the prediction), a 0-d tensor. When a tape is recorded
    /// the gradient 2(ε_θ − ε)/numel is computed in the same pass and saved;
    /// backward only scales it by the upstream scalar (no work when that is
    /// 1, as for `loss.backward()`) and negates it for ε.
    pub fn l_simple_loss(&self, eps: &Tensor) -> Result<Tensor> {
        let op = "l_simple_loss";
        check_same(op, self, eps)?;
        if self.shape() != eps.shape() {
            return Err(shape_err(
                op,
                self.shape(),
                eps.shape(),
                "prediction and target must have the same shape",
            ));
        }
        if self.numel() == 0 {
            return Err(bad_arg(
                op,
                format!(
                    "the mean over an empty tensor (shape {:?}) is undefined",
                    self.shape()
                ),
            ));
        }
        let with_grad = needs_tape(&[self, eps]);
        let (loss, grad) = with_storage_list(&[self, eps], |s| {
            s[0].l_simple(self.layout(), (s[1], eps.layout()), with_grad)
        })?;
        let out = Tensor::from_contiguous(loss, &[]);
        let Some(grad) = grad else { return Ok(out) };
        let grad = Tensor::from_contiguous(grad, self.shape());
        Ok(record(out, op, &[self, eps], move || {
            Box::new(move |g, needs| {
                // The upstream gradient is one number (usually 1: the loss is
                // the root). On the CPU it is read and the scaling skipped
                // when it is 1; on a GPU reading it would make the host wait
                // for the forward, so it is multiplied in on the device.
                let d_pred = match g.device() {
                    Device::Cpu => {
                        let upstream = g.item()?;
                        if upstream == 1.0 {
                            grad
                        } else {
                            grad.mul_scalar(upstream)?
                        }
                    }
                    Device::Cuda(_) => grad.mul(g)?,
                };
                let d_eps = needs[1].then(|| d_pred.neg()).transpose()?;
                Ok(vec![needs[0].then_some(d_pred), d_eps])
            })
        }))
    }

    /// One reverse diffusion step for every sample (self = x_t, `[N, ...]`,
    /// sample n using `coefs[n]`):
    ///
    ///   x̂_0    = clamp(x0_from_xt·x_t − x0_from_eps·ε_θ, −x0_clip, x0_clip)
    ///   x_prev = x0_weight·x̂_0 + xt_weight·x_t + eps_weight·ε_θ + σ·z
    ///
    /// which is the DDPM step (ε form or through the clipped x̂_0) or the
    /// DDIM step depending on how `coefs` were built ([`StepCoef::ddpm`],
    /// [`StepCoef::ddpm_clipped`], [`StepCoef::ddim`]). `noise` is z ~ N(0, I)
    /// (`None` = 0: the final step, or deterministic DDIM).
    ///
    /// Sampling runs under `no_grad`; there is no backward, so tracked inputs
    /// are refused rather than silently cut from the graph.
    pub fn denoise_step(
        &self,
        eps_pred: &Tensor,
        noise: Option<&Tensor>,
        coefs: &[StepCoef],
    ) -> Result<Tensor> {
        let op = "denoise_step";
        let mut inputs = vec![self, eps_pred];
        inputs.extend(noise);
        refuse_tracked(op, &inputs)?;
        let mut others = vec![("eps_pred", eps_pred)];
        others.extend(noise.map(|z| ("noise", z)));
        check_batch(op, self, &others, coefs.len())?;
        if let Some(bad) = coefs.iter().find(|c| !c.is_finite()) {
            return Err(bad_arg(op, format!("non-finite coefficients {bad:?}")));
        }
        let st = with_storage_list(&inputs, |s| {
            let z = noise.map(|z| (s[2], z.layout()));
            s[0].denoise_step(self.layout(), (s[1], eps_pred.layout()), z, coefs)
        })?;
        Ok(Tensor::from_contiguous(st, self.shape()))
    }
}

/// Checks that `other` matches `x` (dtype, device, shape) and that `x` is
/// `[N, ...]` with one coefficient set per sample.
fn check_batch(
    op: &'static str,
    x: &Tensor,
    others: &[(&str, &Tensor)],
    samples: usize,
) -> Result<()> {
    for &(name, t) in others {
        check_same(op, x, t)?;
        if t.shape() != x.shape() {
            return Err(shape_err(
                op,
                x.shape(),
                t.shape(),
                format!("{name} must have the input's shape"),
            ));
        }
    }
    if x.rank() == 0 || x.shape()[0] != samples {
        return Err(bad_arg(
            op,
            format!(
                "input shape {:?} must be [N, ...] with N = {samples}, the number of per-sample coefficients",
                x.shape()
            ),
        ));
    }
    Ok(())
}

impl Storage {
    /// x_t = √ᾱ·x_0 + √(1−ᾱ)·ε per sample (self = x_0).
    pub fn q_sample(&self, l: &Layout, eps: StorageView, coefs: &[QSampleCoef]) -> Result<Storage> {
        match placed("q_sample", [(self, l), eps])? {
            Placed::Cpu([x, e]) => Ok(Storage::Cpu(x.0.q_sample(l, e, coefs)?)),
            Placed::Cuda([x, e]) => Ok(Storage::Cuda(x.0.q_sample(l, e, coefs)?)),
        }
    }

    /// mean((self − ε)²) as a one-element storage on self's device (so a
    /// GPU loss stays on the GPU until someone reads it), and its gradient
    /// w.r.t. self when `with_grad`.
    pub fn l_simple(
        &self,
        l: &Layout,
        eps: StorageView,
        with_grad: bool,
    ) -> Result<(Storage, Option<Storage>)> {
        match placed("l_simple_loss", [(self, l), eps])? {
            Placed::Cpu([p, e]) => {
                let (loss, grad) = p.0.l_simple(l, e, with_grad)?;
                let loss = Storage::full(Device::Cpu, self.dtype(), 1, loss)?;
                Ok((loss, grad.map(Storage::Cpu)))
            }
            Placed::Cuda([p, e]) => {
                let (loss, grad) = p.0.l_simple(l, e, with_grad)?;
                Ok((Storage::Cuda(loss), grad.map(Storage::Cuda)))
            }
        }
    }

    /// One reverse step per sample (self = x_t); see [`StepCoef`].
    pub fn denoise_step(
        &self,
        l: &Layout,
        eps: StorageView,
        z: Option<StorageView>,
        coefs: &[StepCoef],
    ) -> Result<Storage> {
        let op = "denoise_step";
        // z is checked against x's device too (when given).
        let z_check = z.unwrap_or(eps);
        match placed(op, [(self, l), eps, z_check])? {
            Placed::Cpu([x, e, zc]) => {
                let z = z.map(|_| zc);
                Ok(Storage::Cpu(x.0.denoise_step(l, e, z, coefs)?))
            }
            Placed::Cuda([x, e, zc]) => {
                let z = z.map(|_| zc);
                Ok(Storage::Cuda(x.0.denoise_step(l, e, z, coefs)?))
            }
        }
    }
}

impl CpuStorage {
    pub fn q_sample(&self, l: &Layout, eps: CpuView, coefs: &[QSampleCoef]) -> Result<CpuStorage> {
        by_dtype!(self.dtype(), T => {
            let x0 = typed::<T>("q_sample", self, l)?;
            let e = typed::<T>("q_sample", eps.0, eps.1)?;
            let mut out = zeroed(x0.len());
            kernel::q_sample(&x0, &e, coefs, &mut out);
            Ok(cpu_storage(out))
        })
    }

    pub fn l_simple(
        &self,
        l: &Layout,
        eps: CpuView,
        with_grad: bool,
    ) -> Result<(f64, Option<CpuStorage>)> {
        by_dtype!(self.dtype(), T => {
            let p = typed::<T>("l_simple_loss", self, l)?;
            let e = typed::<T>("l_simple_loss", eps.0, eps.1)?;
            let mut grad: Option<Vec<T>> = with_grad.then(|| zeroed(p.len()));
            let loss = kernel::l_simple(&p, &e, grad.as_deref_mut());
            Ok((loss, grad.map(cpu_storage)))
        })
    }

    pub fn denoise_step(
        &self,
        l: &Layout,
        eps: CpuView,
        z: Option<CpuView>,
        coefs: &[StepCoef],
    ) -> Result<CpuStorage> {
        by_dtype!(self.dtype(), T => denoise_step_typed::<T>((self, l), eps, z, coefs))
    }
}

fn denoise_step_typed<T: CpuElem>(
    x: CpuView,
    eps: CpuView,
    z: Option<CpuView>,
    coefs: &[StepCoef],
) -> Result<CpuStorage> {
    let op = "denoise_step";
    let x = typed::<T>(op, x.0, x.1)?;
    let e = typed::<T>(op, eps.0, eps.1)?;
    let z = z.map(|(s, zl)| typed::<T>(op, s, zl)).transpose()?;
    let mut out = zeroed(x.len());
    kernel::denoise_step(&x, &e, z.as_deref(), coefs, &mut out);
    Ok(cpu_storage(out))
}

impl CudaStorage {
    pub fn q_sample(
        &self,
        l: &Layout,
        eps: CudaView,
        coefs: &[QSampleCoef],
    ) -> Result<CudaStorage> {
        let n = l.numel();
        check_len("q_sample", eps, n)?;
        let op = "q_sample";
        let (x0, e) = (cuda_contiguous(op, (self, l))?, cuda_contiguous(op, eps)?);
        let out = cuda_kernel::q_sample(&self.dev, x0.ptr(), e.ptr(), coefs, n)?;
        Ok(self.wrap(out))
    }

    /// The loss as a one-element buffer, reduced on the device (no host read).
    pub fn l_simple(
        &self,
        l: &Layout,
        eps: CudaView,
        with_grad: bool,
    ) -> Result<(CudaStorage, Option<CudaStorage>)> {
        let n = l.numel();
        check_len("l_simple_loss", eps, n)?;
        let op = "l_simple_loss";
        let (p, e) = (cuda_contiguous(op, (self, l))?, cuda_contiguous(op, eps)?);
        let (loss, grad) = cuda_kernel::l_simple(&self.dev, p.ptr(), e.ptr(), n, with_grad)?;
        Ok((self.wrap(loss), grad.map(|g| self.wrap(g))))
    }

    pub fn denoise_step(
        &self,
        l: &Layout,
        eps: CudaView,
        z: Option<CudaView>,
        coefs: &[StepCoef],
    ) -> Result<CudaStorage> {
        let op = "denoise_step";
        let n = l.numel();
        check_len(op, eps, n)?;
        if let Some(z) = z {
            check_len(op, z, n)?;
        }
        let (x, e) = (cuda_contiguous(op, (self, l))?, cuda_contiguous(op, eps)?);
        let z = z.map(|z| cuda_contiguous(op, z)).transpose()?;
        let z_ptr = z.as_ref().map(|z| z.ptr());
        let out = cuda_kernel::denoise_step(&self.dev, x.ptr(), e.ptr(), z_ptr, coefs, n)?;
        Ok(self.wrap(out))
    }
}

/// Checks that a CUDA operand has `n` elements (the kernels read `n`).
fn check_len(op: &'static str, (_, l): CudaView, n: usize) -> Result<()> {
    if l.numel() != n {
        return Err(bad_arg(
            op,
            format!("operand has {} elements, expected {n}", l.numel()),
        ));
    }
    Ok(())
}
