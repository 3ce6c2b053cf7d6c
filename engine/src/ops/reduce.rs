//! Reductions over axes (sum, mean, max, min) and `sum_to`, the adjoint of broadcasting.

use crate::Tensor;
use crate::autograd::record;
use crate::error::{Result, bad_arg};
use crate::storage::ReduceOp;

/// Sorted, de-duplicated axes, each checked against the rank.
fn normalize_axes(op: &'static str, t: &Tensor, axes: &[usize]) -> Result<Vec<usize>> {
    let mut ax = axes.to_vec();
    ax.sort_unstable();
    ax.dedup();
    if let Some(&bad) = ax.iter().find(|&&a| a >= t.rank()) {
        return Err(bad_arg(
            op,
            format!("axis {bad} out of range for shape {:?}", t.shape()),
        ));
    }
    Ok(ax)
}

/// The shape after reducing `axes` (kept as size 1, or removed).
fn reduced_shape(shape: &[usize], axes: &[usize], keepdim: bool) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter_map(|(d, &n)| match (axes.contains(&d), keepdim) {
            (true, true) => Some(1),
            (true, false) => None,
            (false, _) => Some(n),
        })
        .collect()
}

impl Tensor {
    /// Reduction kernel without tape; the result keeps size-1 axes.
    fn reduce_keep(&self, op: ReduceOp, axes: &[usize]) -> Result<Tensor> {
        let st = self.storage().reduce(self.layout(), op, axes)?;
        Ok(Tensor::from_contiguous(
            st,
            &reduced_shape(self.shape(), axes, true),
        ))
    }

    /// Σ over `axes`. The gradient broadcasts back: ∂/∂x = g expanded.
    pub fn sum(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axes("sum", self, axes)?;
        let kept = self.reduce_keep(ReduceOp::Sum, &ax)?;
        let keep_shape = kept.shape().to_vec();
        let out = if keepdim {
            kept
        } else {
            kept.reshape(&reduced_shape(self.shape(), &ax, false))?
        };
        let in_shape = self.shape().to_vec();
        Ok(record(out, "sum", &[self], move || {
            Box::new(move |g, _| {
                Ok(vec![Some(
                    g.reshape(&keep_shape)?
                        .broadcast_to(&in_shape)?
                        .contiguous()?,
                )])
            })
        }))
    }

    /// Σ of all elements, as a 0-dimensional tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        let ax = normalize_axes("mean", self, axes)?;
        let count: usize = ax.iter().map(|&a| self.shape()[a]).product();
        self.sum(&ax, keepdim)?
            .mul_scalar(1.0 / count.max(1) as f64)
    }

    /// Mean of all elements.
    pub fn mean_all(&self) -> Result<Tensor> {
        let axes: Vec<usize> = (0..self.rank()).collect();
        self.mean(&axes, false)
    }

    fn extremum(
        &self,
        op: ReduceOp,
        name: &'static str,
        axes: &[usize],
        keepdim: bool,
    ) -> Result<Tensor> {
        let ax = normalize_axes(name, self, axes)?;
        if ax.iter().any(|&a| self.shape()[a] == 0) {
            return Err(bad_arg(
                name,
                format!("cannot reduce an empty axis of shape {:?}", self.shape()),
            ));
        }
        let kept = self.reduce_keep(op, &ax)?;
        let out = if keepdim {
            kept.clone()
        } else {
            kept.reshape(&reduced_shape(self.shape(), &ax, false))?
        };
        let (x, keep_shape) = (self.detach(), kept.shape().to_vec());
        Ok(record(out, name, &[self], move || {
            Box::new(move |g, _| {
                // The gradient goes to the elements equal to the extremum,
                // split evenly among ties (as PyTorch's amax/amin).
                let hit = x.eq(&kept)?;
                let ties = hit.reduce_keep(ReduceOp::Sum, &ax)?;
                Ok(vec![Some(hit.mul(&g.reshape(&keep_shape)?.div(&ties)?)?)])
            })
        }))
    }

    /// Maximum over `axes`.
    pub fn max(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.extremum(ReduceOp::Max, "max", axes, keepdim)
    }

    /// Minimum over `axes`.
    pub fn min(&self, axes: &[usize], keepdim: bool) -> Result<Tensor> {
        self.extremum(ReduceOp::Min, "min", axes, keepdim)
    }

    /// Sums this tensor down to `shape`, undoing a NumPy broadcast: leading
    /// axes are summed away, axes where `shape` has 1 are summed with keepdim.
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if shape.len() > self.rank() {
            return Err(crate::error::shape_err(
                "sum_to",
                self.shape(),
                shape,
                "target has more dimensions",
            ));
        }
        let lead = self.rank() - shape.len();
        let mut axes: Vec<usize> = (0..lead).collect();
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 && self.shape()[lead + d] != 1 {
                axes.push(lead + d);
            } else if n != self.shape()[lead + d] {
                return Err(crate::error::shape_err(
                    "sum_to",
                    self.shape(),
                    shape,
                    format!("axis {d} is neither equal nor 1"),
                ));
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }
}
