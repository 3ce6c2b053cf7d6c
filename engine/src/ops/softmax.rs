//! Softmax and log-softmax along an axis.

use super::with_storages;
use crate::Tensor;
use crate::autograd::record;
use crate::error::Result;

impl Tensor {
    fn softmax_impl(&self, axis: usize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        self.layout().check_axis(name, axis)?;
        let st = self.storage().softmax(self.layout(), axis, log)?;
        let out = Tensor::from_contiguous(st, self.shape());
        let y = out.detach();
        Ok(record(out, name, &[self], move || {
            Box::new(move |g, _| {
                // Only the output is saved: both derivatives are functions of y.
                let st = with_storages(&y, g, |ys, gs| {
                    ys.softmax_backward(y.layout(), gs, g.layout(), axis, log)
                })?;
                Ok(vec![Some(Tensor::from_contiguous(st, y.shape()))])
            })
        }))
    }

    /// softmax(x)_j = e^{x_j} / Σ_k e^{x_k} along `axis` (max-subtracted).
    pub fn softmax(&self, axis: usize) -> Result<Tensor> {
        self.softmax_impl(axis, false)
    }

    /// log-softmax along `axis`, computed directly (stable for large logits).
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor> {
        self.softmax_impl(axis, true)
    }
}
