//! 2-D convolution (NCHW) with an optional bias, differentiable in the
//! input, the weight and the bias. The arithmetic lives in
//! `noisegrad_kernels::conv::cpu` (Winograd for 3×3 stride 1, packed GEMM
//! otherwise) and `noisegrad_kernels::conv::cuda` (im2col + cuBLAS); this
//! file validates shapes, dispatches on device and dtype, and records the
//! backward. It reads top-down: the `Tensor` method, then the `Storage`
//! dispatch it calls, then each device's side.

use super::typed::{Placed, placed};
use super::{check_same, with_storages};
use crate::Tensor;
use crate::autograd::record;
use crate::cpu_backend::{CpuData, CpuStorage, contiguous_slice, zeroed};
use crate::cuda_backend::CudaStorage;
use crate::error::{Error, Result, bad_arg, shape_err};
use crate::storage::Storage;
use crate::{DType, Layout};
use noisegrad_kernels::conv::cpu::{
    Conv2dGeometry, ConvFloat, conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight,
    conv2d_forward,
};
use noisegrad_kernels::conv::cuda as cuda_conv;

impl Tensor {
    /// 2-D cross-correlation over NCHW input, as in PyTorch's `conv2d`:
    /// `y[n,o,i,j] = bias[o] + Σ_{c,a,b} w[o,c,a,b] · x[n, c, i·s + a − p, j·s + b − p]`
    /// with zero padding `p` on all sides and stride `s` on both axes.
    /// Shapes: input `[N, C, H, W]`, weight `[O, C, kh, kw]`, bias `[O]`,
    /// output `[N, O, (H + 2p − kh)/s + 1, (W + 2p − kw)/s + 1]`.
    ///
    /// Backward: ∂x is the transposed convolution of ∂y with w, ∂w the
    /// correlation of x with ∂y summed over the batch, ∂bias the sum of ∂y
    /// over batch and pixels.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        check_same("conv2d", self, weight)?;
        if let Some(b) = bias {
            check_same("conv2d", self, b)?;
        }
        let g = geometry(self, weight, bias, stride, padding)?;
        let st = with_storages(self, weight, |xs, ws| match bias {
            None => xs.conv2d(self.layout(), ws, weight.layout(), None, &g),
            Some(b) if b.shares_storage(self) => xs.conv2d(
                self.layout(),
                ws,
                weight.layout(),
                Some((xs, b.layout())),
                &g,
            ),
            Some(b) if b.shares_storage(weight) => xs.conv2d(
                self.layout(),
                ws,
                weight.layout(),
                Some((ws, b.layout())),
                &g,
            ),
            Some(b) => {
                let bs = b.storage();
                xs.conv2d(
                    self.layout(),
                    ws,
                    weight.layout(),
                    Some((&bs, b.layout())),
                    &g,
                )
            }
        })?;
        let out = Tensor::from_contiguous(st, &[g.batch, g.out_channels, g.out_h(), g.out_w()]);
        let (x, w) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(record(out, "conv2d", &inputs, move || {
            Box::new(move |dy, needs| {
                let dx = if needs[0] {
                    let st = with_storages(dy, &w, |d, ws| {
                        d.conv2d_backward_input(dy.layout(), ws, w.layout(), &g)
                    })?;
                    Some(Tensor::from_contiguous(st, x.shape()))
                } else {
                    None
                };
                let dw = if needs[1] {
                    let st = with_storages(&x, dy, |xs, d| {
                        xs.conv2d_backward_weight(x.layout(), d, dy.layout(), &g)
                    })?;
                    Some(Tensor::from_contiguous(st, w.shape()))
                } else {
                    None
                };
                let mut grads = vec![dx, dw];
                if needs.len() == 3 {
                    grads.push(if needs[2] {
                        let st = dy.storage().conv2d_backward_bias(dy.layout(), &g)?;
                        Some(Tensor::from_contiguous(st, &[g.out_channels]))
                    } else {
                        None
                    });
                }
                Ok(grads)
            })
        }))
    }
}

/// The convolution's sizes, or an error naming the offending shapes.
fn geometry(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Conv2dGeometry> {
    if stride == 0 {
        return Err(bad_arg("conv2d", "stride must be ≥ 1"));
    }
    if x.rank() != 4 {
        return Err(bad_arg(
            "conv2d",
            format!("input must be [N, C, H, W], got shape {:?}", x.shape()),
        ));
    }
    if w.rank() != 4 {
        return Err(bad_arg(
            "conv2d",
            format!("weight must be [O, C, kh, kw], got shape {:?}", w.shape()),
        ));
    }
    let (xs, ws) = (x.shape(), w.shape());
    if ws[1] != xs[1] {
        return Err(shape_err(
            "conv2d",
            xs,
            ws,
            format!(
                "the input has {} channels but the weight expects {}",
                xs[1], ws[1]
            ),
        ));
    }
    if let Some(b) = bias
        && b.shape() != [ws[0]]
    {
        return Err(shape_err(
            "conv2d",
            ws,
            b.shape(),
            format!(
                "the bias must be [{}] (one value per output channel)",
                ws[0]
            ),
        ));
    }
    let g = Conv2dGeometry {
        batch: xs[0],
        in_channels: xs[1],
        in_h: xs[2],
        in_w: xs[3],
        out_channels: ws[0],
        kernel_h: ws[2],
        kernel_w: ws[3],
        stride,
        padding,
    };
    g.check().map_err(|why| shape_err("conv2d", xs, ws, why))?;
    Ok(g)
}

impl Storage {
    /// `y = conv(x, w) + bias` (x = self); the result is contiguous `[N,O,Ho,Wo]`.
    pub fn conv2d(
        &self,
        xl: &Layout,
        w: &Storage,
        wl: &Layout,
        bias: Option<(&Storage, &Layout)>,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        let op = "conv2d";
        let (x, w) = ((self, xl), (w, wl));
        match bias {
            None => match placed(op, [x, w])? {
                Placed::Cpu([x, w]) => Ok(Storage::Cpu(x.0.conv2d(x.1, w.0, w.1, None, g)?)),
                Placed::Cuda([x, w]) => Ok(Storage::Cuda(x.0.conv2d(x.1, w.0, w.1, None, g)?)),
            },
            Some(b) => match placed(op, [x, w, b])? {
                Placed::Cpu([x, w, b]) => {
                    Ok(Storage::Cpu(x.0.conv2d(x.1, w.0, w.1, Some(b), g)?))
                }
                Placed::Cuda([x, w, b]) => {
                    Ok(Storage::Cuda(x.0.conv2d(x.1, w.0, w.1, Some(b), g)?))
                }
            },
        }
    }

    /// ∂L/∂x from dy = self and the weight.
    pub fn conv2d_backward_input(
        &self,
        dyl: &Layout,
        w: &Storage,
        wl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        Ok(match placed("conv2d_backward", [(self, dyl), (w, wl)])? {
            Placed::Cpu([dy, w]) => Storage::Cpu(dy.0.conv2d_backward_input(dy.1, w.0, w.1, g)?),
            Placed::Cuda([dy, w]) => Storage::Cuda(dy.0.conv2d_backward_input(dy.1, w.0, w.1, g)?),
        })
    }

    /// ∂L/∂w from x = self and dy.
    pub fn conv2d_backward_weight(
        &self,
        xl: &Layout,
        dy: &Storage,
        dyl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<Storage> {
        Ok(match placed("conv2d_backward", [(self, xl), (dy, dyl)])? {
            Placed::Cpu([x, dy]) => Storage::Cpu(x.0.conv2d_backward_weight(x.1, dy.0, dy.1, g)?),
            Placed::Cuda([x, dy]) => Storage::Cuda(x.0.conv2d_backward_weight(x.1, dy.0, dy.1, g)?),
        })
    }

    /// ∂L/∂bias from dy = self: the sum over batch and pixels.
    pub fn conv2d_backward_bias(&self, dyl: &Layout, g: &Conv2dGeometry) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.conv2d_backward_bias(dyl, g))),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.conv2d_backward_bias(dyl, g)?)),
        }
    }
}

impl CpuStorage {
    pub fn conv2d(
        &self,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        bias: Option<(&CpuStorage, &Layout)>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        fn run<T: ConvFloat>(
            g: &Conv2dGeometry,
            (x, xl): (&[T], &Layout),
            (w, wl): (&[T], &Layout),
            bias: Option<(&[T], &Layout)>,
        ) -> Vec<T> {
            let (x, w) = (contiguous_slice(x, xl), contiguous_slice(w, wl));
            let b = bias.map(|(b, bl)| contiguous_slice(b, bl));
            let mut y = zeroed(g.output_len());
            conv2d_forward(g, &x, &w, b.as_deref(), &mut y);
            y
        }
        let data = match (&self.data, &w.data, bias.map(|(b, bl)| (&b.data, bl))) {
            (CpuData::F32(x), CpuData::F32(w), None) => {
                CpuData::F32(run(g, (x, xl), (w, wl), None))
            }
            (CpuData::F32(x), CpuData::F32(w), Some((CpuData::F32(b), bl))) => {
                CpuData::F32(run(g, (x, xl), (w, wl), Some((b, bl))))
            }
            (CpuData::F64(x), CpuData::F64(w), None) => {
                CpuData::F64(run(g, (x, xl), (w, wl), None))
            }
            (CpuData::F64(x), CpuData::F64(w), Some((CpuData::F64(b), bl))) => {
                CpuData::F64(run(g, (x, xl), (w, wl), Some((b, bl))))
            }
            _ => {
                let other = match bias {
                    Some((b, _)) if w.dtype() == self.dtype() => b.dtype(),
                    _ => w.dtype(),
                };
                return Err(dtype_err(self.dtype(), other));
            }
        };
        Ok(Self::new(data))
    }

    pub fn conv2d_backward_input(
        &self,
        dyl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        fn run<T: ConvFloat>(
            g: &Conv2dGeometry,
            dy: &[T],
            dyl: &Layout,
            w: &[T],
            wl: &Layout,
        ) -> Vec<T> {
            let (dy, w) = (contiguous_slice(dy, dyl), contiguous_slice(w, wl));
            let mut dx = zeroed(g.input_len());
            conv2d_backward_input(g, &dy, &w, &mut dx);
            dx
        }
        let data = match (&self.data, &w.data) {
            (CpuData::F32(dy), CpuData::F32(w)) => CpuData::F32(run(g, dy, dyl, w, wl)),
            (CpuData::F64(dy), CpuData::F64(w)) => CpuData::F64(run(g, dy, dyl, w, wl)),
            _ => return Err(dtype_err(self.dtype(), w.dtype())),
        };
        Ok(Self::new(data))
    }

    pub fn conv2d_backward_weight(
        &self,
        xl: &Layout,
        dy: &CpuStorage,
        dyl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        fn run<T: ConvFloat>(
            g: &Conv2dGeometry,
            x: &[T],
            xl: &Layout,
            dy: &[T],
            dyl: &Layout,
        ) -> Vec<T> {
            let (x, dy) = (contiguous_slice(x, xl), contiguous_slice(dy, dyl));
            let mut dw = zeroed(g.weight_len());
            conv2d_backward_weight(g, &x, &dy, &mut dw);
            dw
        }
        let data = match (&self.data, &dy.data) {
            (CpuData::F32(x), CpuData::F32(dy)) => CpuData::F32(run(g, x, xl, dy, dyl)),
            (CpuData::F64(x), CpuData::F64(dy)) => CpuData::F64(run(g, x, xl, dy, dyl)),
            _ => return Err(dtype_err(self.dtype(), dy.dtype())),
        };
        Ok(Self::new(data))
    }

    pub fn conv2d_backward_bias(&self, dyl: &Layout, g: &Conv2dGeometry) -> Self {
        Self::new(crate::cpu_backend::map_data!(&self.data, dy => {
            let dy = contiguous_slice(dy, dyl);
            let mut db = zeroed(g.out_channels);
            conv2d_backward_bias(g, &dy, &mut db);
            db
        }))
    }
}

/// The CUDA convolution: im2col + cuBLAS (see `noisegrad_kernels::conv::cuda`).
/// Every result is a new contiguous buffer; operands may be any views.
impl CudaStorage {
    pub fn conv2d(
        &self,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        bias: Option<(&CudaStorage, &Layout)>,
        g: &Conv2dGeometry,
    ) -> Result<CudaStorage> {
        let bias = match bias {
            Some((b, bl)) => Some(b.view(bl)?),
            None => None,
        };
        let y = cuda_conv::forward(&self.dev, g, self.view(xl)?, w.view(wl)?, bias)?;
        Ok(self.wrap(y))
    }

    pub fn conv2d_backward_input(
        &self,
        dyl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<CudaStorage> {
        let dx = cuda_conv::backward_input(&self.dev, g, self.view(dyl)?, w.view(wl)?)?;
        Ok(self.wrap(dx))
    }

    pub fn conv2d_backward_weight(
        &self,
        xl: &Layout,
        dy: &CudaStorage,
        dyl: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<CudaStorage> {
        let dw = cuda_conv::backward_weight(&self.dev, g, self.view(xl)?, dy.view(dyl)?)?;
        Ok(self.wrap(dw))
    }

    pub fn conv2d_backward_bias(&self, dyl: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> {
        let db = cuda_conv::backward_bias(&self.dev, g, self.view(dyl)?)?;
        Ok(self.wrap(db))
    }
}

fn dtype_err(lhs: DType, rhs: DType) -> Error {
    Error::DTypeMismatch {
        op: "conv2d",
        lhs,
        rhs,
    }
}
