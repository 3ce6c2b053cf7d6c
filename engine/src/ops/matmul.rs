//! Matrix products: `[.., m, k] @ [.., k, n]` with NumPy broadcasting of the
//! batch axes. Transposed operands (from `transpose`) are read in place.

use super::elementwise::when;
use super::{check_same, with_storages};
use crate::Tensor;
use crate::autograd::record;
use crate::error::{Error, Result, bad_arg, shape_err};
use crate::layout::broadcast_shapes;
use crate::storage::MatmulDims;

impl Tensor {
    /// Product without tape.
    fn matmul_raw(&self, rhs: &Tensor) -> Result<Tensor> {
        check_same("matmul", self, rhs)?;
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(bad_arg(
                "matmul",
                format!(
                    "needs operands of rank ≥ 2, got {:?} and {:?}",
                    self.shape(),
                    rhs.shape()
                ),
            ));
        }
        let (m, k) = (self.shape()[ra - 2], self.shape()[ra - 1]);
        let (k2, n) = (rhs.shape()[rb - 2], rhs.shape()[rb - 1]);
        if k != k2 {
            return Err(shape_err(
                "matmul",
                self.shape(),
                rhs.shape(),
                format!("inner sizes {k} and {k2} differ"),
            ));
        }
        let batch = broadcast_shapes("matmul", &self.shape()[..ra - 2], &rhs.shape()[..rb - 2])?;
        let with = |mut b: Vec<usize>, x: usize, y: usize| {
            b.extend([x, y]);
            b
        };
        let l = self
            .layout()
            .broadcast_to("matmul", &with(batch.clone(), m, k))?;
        let r = rhs
            .layout()
            .broadcast_to("matmul", &with(batch.clone(), k, n))?;
        let dims = MatmulDims {
            batch: batch.clone(),
            m,
            k,
            n,
        };
        let st = with_storages(self, rhs, |a, b| a.matmul(&l, b, &r, &dims))?;
        Ok(Tensor::from_contiguous(st, &with(batch, m, n)))
    }

    /// Matrix product. ∂/∂A = G·Bᵀ, ∂/∂B = Aᵀ·G, each summed over broadcast
    /// batch axes. A is saved only if B needs a gradient and vice versa
    /// (x · W with untracked x keeps x, never W's copy).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        let out = self.matmul_raw(rhs)?;
        let a = rhs.requires_grad().then(|| self.detach());
        let b = self.requires_grad().then(|| rhs.detach());
        let (a_shape, b_shape) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(record(out, "matmul", &[self, rhs], move || {
            Box::new(move |g, needs| {
                let t = |x: &Tensor| x.transpose(x.rank() - 2, x.rank() - 1);
                let saved = |x: &Option<Tensor>| {
                    x.clone()
                        .ok_or_else(|| Error::Backward("'matmul' did not save an operand".into()))
                };
                let ga = when(needs[0], || {
                    g.matmul_raw(&t(&saved(&b)?)?)?.sum_to(&a_shape)
                })?;
                let gb = when(needs[1], || t(&saved(&a)?)?.matmul_raw(g)?.sum_to(&b_shape))?;
                Ok(vec![ga, gb])
            })
        }))
    }
}
