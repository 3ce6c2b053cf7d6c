//! Views (no copy): reshape, permute, transpose, narrow, broadcast_to,
//! unsqueeze, squeeze; and the copying ops contiguous, concat, to_dtype.

use crate::autograd::record;
use crate::error::{Result, bad_arg, shape_err};
use crate::storage::Storage;
use crate::{DType, Device, Layout, Tensor};

impl Tensor {
    fn view_op(
        &self,
        layout: Layout,
        name: &'static str,
        back: impl FnOnce(&Tensor) -> Result<Tensor> + Send + 'static,
    ) -> Tensor {
        record(self.view_with(layout), name, &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(back(g)?)]))
        })
    }

    /// A copy with contiguous row-major layout (returns `self` if it already is).
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let st = self.storage().contiguous(self.layout())?;
        let out = Tensor::from_contiguous(st, self.shape());
        Ok(record(out, "contiguous", &[self], || {
            Box::new(|g, _| Ok(vec![Some(g.clone())]))
        }))
    }

    /// Same elements, new shape. A view when the data is contiguous, a
    /// copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        self.layout().check_same_count("reshape", shape)?;
        self.reshape_to(shape)
    }

    /// [`Tensor::reshape`] with one axis given as `-1` (inferred).
    pub fn reshape_infer(&self, shape: &[isize]) -> Result<Tensor> {
        let target = self.layout().resolve_shape("reshape", shape)?;
        self.reshape_to(&target)
    }

    /// Reshape to a `target` already checked to hold `numel` elements.
    fn reshape_to(&self, target: &[usize]) -> Result<Tensor> {
        if target == self.shape() {
            return Ok(self.clone());
        }
        let src = self.contiguous()?;
        let layout = src
            .layout()
            .reshaped(target)
            .expect("contiguous after copy");
        let orig = self.shape().to_vec();
        Ok(src.view_op(layout, "reshape", move |g| g.reshape(&orig)))
    }

    /// Reorders axes: output axis i is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let layout = self.layout().permuted("permute", perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(self.view_op(layout, "permute", move |g| g.permute(&inverse)))
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        if a >= self.rank() || b >= self.rank() {
            return Err(bad_arg(
                "transpose",
                format!("axes ({a}, {b}) out of range for shape {:?}", self.shape()),
            ));
        }
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Elements `start..start+len` of `axis`. Backward scatters the gradient
    /// into zeros of the input shape.
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Result<Tensor> {
        let layout = self.layout().narrowed("narrow", axis, start, len)?;
        let mut pads = vec![(0, 0); self.rank()];
        pads[axis] = (start, self.shape()[axis] - start - len);
        Ok(self.view_op(layout, "narrow", move |g| g.pad_zeros(&pads)))
    }

    /// `self` surrounded by zeros: `pads[d] = (before, after)` extra
    /// elements along axis `d` (one pair per axis). It is the adjoint of
    /// [`Tensor::narrow`], so its backward narrows the gradient back. The
    /// U-Net uses it for TF's asymmetric 'SAME' padding of a stride-2 conv
    /// (0 top/left, 1 bottom/right), which a symmetric conv pad cannot express.
    /// Works on every device (one zero fill and one strided copy).
    pub fn pad_zeros(&self, pads: &[(usize, usize)]) -> Result<Tensor> {
        if pads.len() != self.rank() {
            return Err(bad_arg(
                "pad_zeros",
                format!(
                    "{} (before, after) pairs for a rank-{} tensor of shape {:?}",
                    pads.len(),
                    self.rank(),
                    self.shape()
                ),
            ));
        }
        let mut full = Vec::with_capacity(pads.len());
        for (&n, &(lo, hi)) in self.shape().iter().zip(pads) {
            full.push(
                n.checked_add(lo)
                    .and_then(|v| v.checked_add(hi))
                    .ok_or_else(|| {
                        bad_arg(
                            "pad_zeros",
                            format!("padding {pads:?} overflows {:?}", self.shape()),
                        )
                    })?,
            );
        }
        let out = Tensor::zeros(&full, self.dtype(), self.device())?;
        let mut region = out.layout().clone();
        for (axis, (&n, &(lo, _))) in self.shape().iter().zip(pads).enumerate() {
            region = region.narrowed("pad_zeros", axis, lo, n)?;
        }
        out.storage_mut()
            .copy_from(&region, &self.storage(), self.layout())?;
        let (pads, shape) = (pads.to_vec(), self.shape().to_vec());
        Ok(record(out, "pad_zeros", &[self], move || {
            Box::new(move |g, _| {
                let mut g = g.clone();
                for (axis, (&n, &(lo, _))) in shape.iter().zip(&pads).enumerate() {
                    g = g.narrow(axis, lo, n)?;
                }
                Ok(vec![Some(g)])
            })
        }))
    }

    /// Repeats size-1 (or missing leading) axes up to `shape`, without a copy.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let layout = self.layout().broadcast_to("broadcast_to", shape)?;
        let orig = self.shape().to_vec();
        Ok(self.view_op(layout, "broadcast_to", move |g| g.sum_to(&orig)))
    }

    /// Inserts a size-1 axis at `axis`.
    pub fn unsqueeze(&self, axis: usize) -> Result<Tensor> {
        let layout = self.layout().unsqueezed("unsqueeze", axis)?;
        let orig = self.shape().to_vec();
        Ok(self.view_op(layout, "unsqueeze", move |g| g.reshape(&orig)))
    }

    /// Removes a size-1 axis.
    pub fn squeeze(&self, axis: usize) -> Result<Tensor> {
        self.layout().check_axis("squeeze", axis)?;
        if self.shape()[axis] != 1 {
            return Err(bad_arg(
                "squeeze",
                format!(
                    "axis {axis} has size {} in {:?}, not 1",
                    self.shape()[axis],
                    self.shape()
                ),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape.remove(axis);
        let mut strides = self.layout().strides().to_vec();
        strides.remove(axis);
        let orig = self.shape().to_vec();
        Ok(self.view_op(
            Layout::new(shape, strides, self.layout().offset()),
            "squeeze",
            move |g| g.reshape(&orig),
        ))
    }

    /// Joins tensors along `axis`; all other axes must match. Backward hands
    /// each input its slice of the gradient.
    pub fn concat(tensors: &[&Tensor], axis: usize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| bad_arg("concat", "needs at least one tensor"))?;
        first.layout().check_axis("concat", axis)?;
        let mut shape = first.shape().to_vec();
        shape[axis] = 0;
        for t in tensors {
            super::check_same("concat", first, t)?;
            let ok = t.rank() == first.rank()
                && t.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .all(|(d, (a, b))| d == axis || a == b);
            if !ok {
                return Err(shape_err(
                    "concat",
                    first.shape(),
                    t.shape(),
                    format!("all axes but {axis} must match"),
                ));
            }
            shape[axis] += t.shape()[axis];
        }
        let out = Tensor::zeros(&shape, first.dtype(), first.device())?;
        let mut sizes = Vec::with_capacity(tensors.len());
        {
            let mut dst: std::sync::RwLockWriteGuard<'_, Storage> = out.storage_mut();
            let mut start = 0;
            for t in tensors {
                let n = t.shape()[axis];
                let region = out.layout().narrowed("concat", axis, start, n)?;
                dst.copy_from(&region, &t.storage(), t.layout())?;
                sizes.push(n);
                start += n;
            }
        }
        Ok(record(out, "concat", tensors, move || {
            Box::new(move |g, needs| {
                let mut start = 0;
                let mut grads = Vec::with_capacity(sizes.len());
                for (&n, &need) in sizes.iter().zip(needs) {
                    grads.push(if need {
                        Some(g.narrow(axis, start, n)?)
                    } else {
                        None
                    });
                    start += n;
                }
                Ok(grads)
            })
        }))
    }

    /// Splits `axis` into pieces of the given sizes (views; they must add up).
    pub fn split(&self, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        self.layout().check_axis("split", axis)?;
        let total = sizes.iter().try_fold(0usize, |acc, &n| acc.checked_add(n));
        if total != Some(self.shape()[axis]) {
            return Err(bad_arg(
                "split",
                format!(
                    "sizes {sizes:?} do not add up to axis {axis} of {:?}",
                    self.shape()
                ),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&n| {
                let t = self.narrow(axis, start, n);
                start += n;
                t
            })
            .collect()
    }

    /// Splits `axis` into `n` equal pieces.
    pub fn chunk(&self, n: usize, axis: usize) -> Result<Vec<Tensor>> {
        self.layout().check_axis("chunk", axis)?;
        let size = self.shape()[axis];
        if n == 0 || !size.is_multiple_of(n) {
            return Err(bad_arg(
                "chunk",
                format!(
                    "axis {axis} of {:?} does not split into {n} equal pieces",
                    self.shape()
                ),
            ));
        }
        self.split(axis, &vec![size / n; n])
    }

    /// A copy on `device` (contiguous); the gradient moves back. The same
    /// device returns `self` unchanged, as PyTorch's `.to()` does.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let st = self.storage().to_device(self.layout(), device)?;
        let out = Tensor::from_contiguous(st, self.shape());
        let from = self.device();
        Ok(record(out, "to_device", &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(g.to_device(from)?)]))
        }))
    }

    /// Converts the element type (a copy); the gradient converts back.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let st = self.storage().to_dtype(self.layout(), dtype)?;
        let out = Tensor::from_contiguous(st, self.shape());
        let from = self.dtype();
        Ok(record(out, "to_dtype", &[self], move || {
            Box::new(move |g, _| Ok(vec![Some(g.to_dtype(from)?)]))
        }))
    }
}
