//! Index-select along an axis (embedding tables, per-sample schedule lookups).

use crate::Tensor;
use crate::autograd::record;
use crate::error::{Result, bad_arg};

impl Tensor {
    /// Rows `ids` of `axis`: out.shape[axis] = ids.len(). Ids may repeat;
    /// backward adds each output row's gradient back to its source row.
    pub fn index_select(&self, axis: usize, ids: &[usize]) -> Result<Tensor> {
        self.layout().check_axis("index_select", axis)?;
        let size = self.shape()[axis];
        if let Some(&bad) = ids.iter().find(|&&i| i >= size) {
            return Err(bad_arg(
                "index_select",
                format!(
                    "index {bad} out of range for axis {axis} of size {size} (shape {:?})",
                    self.shape()
                ),
            ));
        }
        let st = self.storage().index_select(self.layout(), axis, ids)?;
        let mut shape = self.shape().to_vec();
        shape[axis] = ids.len();
        let out = Tensor::from_contiguous(st, &shape);
        let (ids, in_shape) = (ids.to_vec(), self.shape().to_vec());
        Ok(record(out, "index_select", &[self], move || {
            Box::new(move |g, _| {
                let st = g
                    .storage()
                    .index_add_zeros(g.layout(), &in_shape, axis, &ids)?;
                Ok(vec![Some(Tensor::from_contiguous(st, &in_shape))])
            })
        }))
    }

    /// Index-select with indices held in a tensor (whole numbers, any float dtype).
    pub fn gather_rows(&self, axis: usize, ids: &Tensor) -> Result<Tensor> {
        let raw = ids.to_vec_f64();
        let mut out = Vec::with_capacity(raw.len());
        for v in raw {
            if v < 0.0 || v.fract() != 0.0 || !v.is_finite() {
                return Err(bad_arg(
                    "gather_rows",
                    format!("index {v} is not a non-negative whole number"),
                ));
            }
            out.push(v as usize);
        }
        self.index_select(axis, &out)
    }
}
