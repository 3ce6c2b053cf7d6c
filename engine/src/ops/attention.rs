//! Single-head scaled dot-product attention over token sequences,
//! O = softmax(s·Q Kᵀ) V, as one differentiable op (the U-Net's attention
//! blocks reshape NCHW feature maps to `[B, H·W, C]` around it).
//!
//! The kernel (`noisegrad_kernels::attention::cpu`) never keeps the
//! `[T, T]` attention matrix: the forward returns O and the per-row
//! log-sum-exp L, and the backward rebuilds the probabilities from q, k and
//! L. So the tape saves q, k, v, O and L, all of token × channel size.
//! The CUDA path (`noisegrad_kernels::attention::cuda`) saves the same and
//! runs the products on cuBLAS, reading the U-Net's transposed token views
//! in place.

use super::typed::{CpuElem, CudaView, Placed, placed};
use super::{check_same, with_storage_list};
use crate::Tensor;
use crate::autograd::record;
use crate::cpu_backend::{CpuStorage, contiguous_slice, zeroed};
use crate::cuda_backend::CudaStorage;
use crate::error::{Error, Result, bad_arg, shape_err};
use crate::layout::{Layout, contiguous_strides};
use crate::storage::Storage;
use noisegrad_kernels::attention::cpu::{self as kernel, AttnConfig, AttnPath, Qkv, QkvGrads};
use noisegrad_kernels::attention::cuda::{self as cuda_kernel, gemm_view};
use noisegrad_kernels::elementwise::cuda::Dense;
use noisegrad_kernels::gemm::cpu::Gemm;
use noisegrad_kernels::gemm::cuda::MatOperand;
use noisegrad_kernels::gemm::packed::GemmFloat;
use std::borrow::Cow;

impl Tensor {
    /// Scaled dot-product attention, one head:
    /// O = softmax(s·Q Kᵀ) V along the key axis, for q (`self`) `[B, M, C]`,
    /// k `[B, N, C]`, v `[B, N, E]` → `[B, M, E]`; `scale` s defaults to
    /// 1/√C. In the U-Net, M = N = H·W tokens and E = C.
    ///
    /// Gradients (D_r = Σ_e dO_re·O_re, P = softmax(s·Q Kᵀ)):
    /// dV = Pᵀ dO, dS = P ⊙ (dO Vᵀ − D), dQ = s·dS K, dK = s·dSᵀ Q.
    pub fn attention(&self, k: &Tensor, v: &Tensor, scale: Option<f64>) -> Result<Tensor> {
        let cfg = attention_config(self, k, v, scale)?;
        let [out, lse] = with_operands([self, k, v], |ops| Storage::attention(ops, &cfg))?;
        let (b, m) = (cfg.batch, cfg.q_len);
        let out = Tensor::from_contiguous(out, &[b, m, cfg.v_dim]);
        let lse = Tensor::from_contiguous(lse, &[b, m]);
        let saved = [self, k, v, &out].map(Tensor::detach);
        Ok(record(out, "attention", &[self, k, v], move || {
            Box::new(move |g, _needs| {
                let [q, k, v, out] = &saved;
                let [dq, dk, dv] = with_operands([q, k, v, out, &lse, g], |ops| {
                    Storage::attention_backward(ops, &cfg)
                })?;
                // One pass yields all three; each comes for the price of a
                // GEMM, so the unneeded ones are not worth a special case.
                Ok(vec![
                    Some(Tensor::from_contiguous(dq, q.shape())),
                    Some(Tensor::from_contiguous(dk, k.shape())),
                    Some(Tensor::from_contiguous(dv, v.shape())),
                ])
            })
        }))
    }
}

/// Checks q `[B, M, C]`, k `[B, N, C]`, v `[B, N, E]` and builds the
/// kernel's configuration (scale defaults to 1/√C).
fn attention_config(q: &Tensor, k: &Tensor, v: &Tensor, scale: Option<f64>) -> Result<AttnConfig> {
    const OP: &str = "attention";
    check_same(OP, q, k)?;
    check_same(OP, q, v)?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs.len() != 3 || ks.len() != 3 || vs.len() != 3 {
        return Err(bad_arg(
            OP,
            format!("q, k, v must be [batch, tokens, channels]; got q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if qs[0] != ks[0] || qs[0] != vs[0] {
        return Err(bad_arg(
            OP,
            format!("batch sizes differ: q {qs:?}, k {ks:?}, v {vs:?}"),
        ));
    }
    if qs[2] != ks[2] {
        return Err(shape_err(
            OP,
            qs,
            ks,
            "q and k must have the same number of channels",
        ));
    }
    if ks[1] != vs[1] {
        return Err(shape_err(
            OP,
            ks,
            vs,
            "k and v must have the same number of tokens",
        ));
    }
    if qs[2] == 0 || vs[2] == 0 {
        return Err(bad_arg(
            OP,
            format!("channel sizes must be at least 1: q {qs:?}, v {vs:?}"),
        ));
    }
    if ks[1] == 0 && qs[1] > 0 {
        return Err(bad_arg(
            OP,
            format!("softmax over zero keys is undefined: q {qs:?}, k {ks:?}"),
        ));
    }
    let scale = scale.unwrap_or(1.0 / (qs[2] as f64).sqrt());
    if !scale.is_finite() {
        return Err(bad_arg(OP, format!("scale must be finite, got {scale}")));
    }
    Ok(AttnConfig {
        batch: qs[0],
        q_len: qs[1],
        kv_len: ks[1],
        qk_dim: qs[2],
        v_dim: vs[2],
        scale,
    })
}

/// Runs the storage primitive `f` on `ts` with their layouts.
fn with_operands<R, const N: usize>(ts: [&Tensor; N], f: impl FnOnce([Operand<'_>; N]) -> R) -> R {
    with_storage_list(&ts, |s| f(std::array::from_fn(|i| (s[i], ts[i].layout()))))
}

/// A storage with the layout to read it through.
pub type Operand<'a> = (&'a Storage, &'a Layout);

impl Storage {
    /// Attention forward over q `[B, M, C]`, k `[B, N, C]`, v `[B, N, E]`
    /// (any layouts): returns `[out [B, M, E], lse [B, M]]`, both contiguous.
    pub fn attention(qkv: [Operand<'_>; 3], cfg: &AttnConfig) -> Result<[Storage; 2]> {
        match placed("attention", qkv)? {
            Placed::Cpu(x) => Ok(CpuStorage::attention(x, cfg)?.map(Storage::Cpu)),
            Placed::Cuda(x) => Ok(CudaStorage::attention(x, cfg)?.map(Storage::Cuda)),
        }
    }

    /// Attention backward from `[q, k, v, out, lse, d_out]` (any layouts):
    /// returns `[dq, dk, dv]`, contiguous, shaped like q, k, v.
    pub fn attention_backward(
        operands: [Operand<'_>; 6],
        cfg: &AttnConfig,
    ) -> Result<[Storage; 3]> {
        match placed("attention_backward", operands)? {
            Placed::Cpu(x) => Ok(CpuStorage::attention_backward(x, cfg)?.map(Storage::Cpu)),
            Placed::Cuda(x) => Ok(CudaStorage::attention_backward(x, cfg)?.map(Storage::Cuda)),
        }
    }
}

impl CpuStorage {
    pub fn attention(
        qkv: [(&CpuStorage, &Layout); 3],
        cfg: &AttnConfig,
    ) -> Result<[CpuStorage; 2]> {
        match qkv[0].0.dtype() {
            crate::DType::F32 => forward_typed::<f32>(qkv, cfg),
            crate::DType::F64 => forward_typed::<f64>(qkv, cfg),
        }
    }

    pub fn attention_backward(
        operands: [(&CpuStorage, &Layout); 6],
        cfg: &AttnConfig,
    ) -> Result<[CpuStorage; 3]> {
        match operands[0].0.dtype() {
            crate::DType::F32 => backward_typed::<f32>(operands, cfg),
            crate::DType::F64 => backward_typed::<f64>(operands, cfg),
        }
    }
}

fn typed<'a, T: CpuElem + Gemm + GemmFloat, const N: usize>(
    op: &'static str,
    xs: [(&'a CpuStorage, &'a Layout); N],
) -> Result<[Cow<'a, [T]>; N]> {
    let first = xs[0].0.dtype();
    let mut out = Vec::with_capacity(N);
    for (s, l) in xs {
        let v = T::slice(s.data()).ok_or(Error::DTypeMismatch {
            op,
            lhs: first,
            rhs: s.dtype(),
        })?;
        out.push(contiguous_slice(v, l));
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("N operands in, N out")))
}

fn forward_typed<T: CpuElem + Gemm + GemmFloat>(
    qkv: [(&CpuStorage, &Layout); 3],
    cfg: &AttnConfig,
) -> Result<[CpuStorage; 2]> {
    let [q, k, v] = typed::<T, 3>("attention", qkv)?;
    let mut out = zeroed(cfg.batch * cfg.q_len * cfg.v_dim);
    let mut lse = zeroed(cfg.batch * cfg.q_len);
    kernel::attention_forward(
        cfg,
        AttnPath::Auto,
        Qkv {
            q: &q,
            k: &k,
            v: &v,
        },
        &mut out,
        &mut lse,
    );
    Ok([out, lse].map(|d| CpuStorage::new(T::wrap(d))))
}

fn backward_typed<T: CpuElem + Gemm + GemmFloat>(
    operands: [(&CpuStorage, &Layout); 6],
    cfg: &AttnConfig,
) -> Result<[CpuStorage; 3]> {
    let [q, k, v, out, lse, d_out] = typed::<T, 6>("attention_backward", operands)?;
    let mut dq = zeroed(q.len());
    let mut dk = zeroed(k.len());
    let mut dv = zeroed(v.len());
    kernel::attention_backward(
        cfg,
        AttnPath::Auto,
        Qkv {
            q: &q,
            k: &k,
            v: &v,
        },
        &out,
        &lse,
        &d_out,
        QkvGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        },
    );
    Ok([dq, dk, dv].map(|d| CpuStorage::new(T::wrap(d))))
}

impl CudaStorage {
    /// See [`Storage::attention`] and `noisegrad_kernels::attention::cuda`.
    pub fn attention(qkv: [CudaView<'_>; 3], cfg: &AttnConfig) -> Result<[CudaStorage; 2]> {
        const OP: &str = "attention";
        let (b, m, n, c, e) = (cfg.batch, cfg.q_len, cfg.kv_len, cfg.qk_dim, cfg.v_dim);
        let q = GemmOperand::new(OP, qkv[0], [b, m, c])?;
        let k = GemmOperand::new(OP, qkv[1], [b, n, c])?;
        let v = GemmOperand::new(OP, qkv[2], [b, n, e])?;
        let s = qkv[0].0;
        let (out, lse) = cuda_kernel::forward(&s.dev, cfg, q.op, k.op, v.op)?;
        Ok([s.wrap(out), s.wrap(lse)])
    }

    /// See [`Storage::attention_backward`].
    pub fn attention_backward(
        operands: [CudaView<'_>; 6],
        cfg: &AttnConfig,
    ) -> Result<[CudaStorage; 3]> {
        const OP: &str = "attention_backward";
        let (b, m, n, c, e) = (cfg.batch, cfg.q_len, cfg.kv_len, cfg.qk_dim, cfg.v_dim);
        let [q, k, v, out, lse, d_out] = operands;
        let q = GemmOperand::new(OP, q, [b, m, c])?;
        let k = GemmOperand::new(OP, k, [b, n, c])?;
        let v = GemmOperand::new(OP, v, [b, n, e])?;
        let d_out = GemmOperand::new(OP, d_out, [b, m, e])?;
        let out = contiguous_operand(OP, out, b * m * e)?;
        let lse = contiguous_operand(OP, lse, b * m)?;
        let s = operands[0].0;
        let grads = cuda_kernel::backward(
            &s.dev,
            cfg,
            [q.op, k.op, v.op],
            out.ptr(),
            lse.ptr(),
            d_out.op,
        )?;
        Ok(grads.map(|g| s.wrap(g)))
    }
}

/// A `[B, rows, cols]` CUDA view as a batched GEMM operand: read in place
/// when [`gemm_view`] allows (row-major rows, or a transposed matrix such
/// as the U-Net's token views), else from a packed copy held here until
/// the launches reading it are queued.
struct GemmOperand {
    op: MatOperand,
    _packed: Option<CudaStorage>,
}

impl GemmOperand {
    fn new(op: &'static str, (s, l): CudaView<'_>, shape: [usize; 3]) -> Result<GemmOperand> {
        if l.shape() != shape {
            return Err(shape_err(
                op,
                l.shape(),
                &shape,
                "operand does not match the attention sizes",
            ));
        }
        let strides: [usize; 3] = l.strides().try_into().expect("rank checked above");
        let at = |ptr, (ld, trans, batch_stride)| MatOperand {
            ptr,
            ld,
            trans,
            batch_stride,
        };
        if let Some(view) = gemm_view(shape, strides) {
            return Ok(GemmOperand {
                op: at(s.buf.ptr_at(l.offset()), view),
                _packed: None,
            });
        }
        let packed = s.contiguous(l)?;
        let dense: [usize; 3] = contiguous_strides(&shape).try_into().expect("rank 3");
        let view = gemm_view(shape, dense).expect("a contiguous view is row-major");
        Ok(GemmOperand {
            op: at(packed.buf.ptr(), view),
            _packed: Some(packed),
        })
    }
}

/// A CUDA view that must hold `n` elements, as one contiguous run.
fn contiguous_operand<'a>(op: &'static str, (s, l): CudaView<'a>, n: usize) -> Result<Dense<'a>> {
    Ok(Dense::new(&s.dev, s.view(l)?, n, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{gpu_or_skip, scaled_error};
    use crate::{DType, Device, Philox};

    /// The saved lse means the same on both devices (the backward rebuilds
    /// P from it): L_r = ln Σ_j e^{s·(Q Kᵀ)_rj}, natural log, scale included.
    #[test]
    fn cuda_lse_matches_cpu() {
        let Some(gpu) = gpu_or_skip("cuda_lse_matches_cpu") else {
            return;
        };
        let mut rng = Philox::new(5);
        let mut randn =
            |shape: &[usize]| Tensor::randn(shape, DType::F32, Device::Cpu, &mut rng).unwrap();
        let (q, k, v) = (
            randn(&[3, 71, 32]),
            randn(&[3, 50, 32]),
            randn(&[3, 50, 24]),
        );
        let q = q.mul_scalar(3.0).unwrap(); // peaked rows: lse far from ln N
        let cfg = attention_config(&q, &k, &v, Some(0.3)).unwrap();
        let lse_of = |q: &Tensor, k: &Tensor, v: &Tensor| -> Vec<f64> {
            let [_, lse] = with_operands([q, k, v], |ops| Storage::attention(ops, &cfg)).unwrap();
            Tensor::from_contiguous(lse, &[3, 71]).to_vec_f64()
        };
        let want = lse_of(&q, &k, &v);
        let on = |t: &Tensor| t.to_device(gpu).unwrap();
        let got = lse_of(&on(&q), &on(&k), &on(&v));
        let err = scaled_error(&got, &want);
        assert!(err <= 1e-5, "lse differs between CUDA and CPU by {err:.3e}");
    }
}
