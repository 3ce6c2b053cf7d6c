//! Differentiable ops, grouped by family. Each op computes its result
//! through [`crate::storage::Storage`] (so any device) and records its
//! backward with [`crate::autograd::record`]; backward formulas are written
//! with other tensor ops, so they run on whatever device the forward did.

mod attention;
mod conv;
mod elementwise;
mod group_norm;
mod index;
mod loss;
mod matmul;
mod nn;
mod noise;
mod optim_step;
mod reduce;
mod softmax;
mod typed;
mod upsample;
mod view;

use crate::Tensor;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// Checks that two tensors can meet in one op (same dtype, same device).
pub(crate) fn check_same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dtype() != b.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            lhs: a.dtype(),
            rhs: b.dtype(),
        });
    }
    if a.device() != b.device() {
        return Err(Error::DeviceMismatch {
            op,
            lhs: a.device(),
            rhs: b.device(),
        });
    }
    Ok(())
}

/// Runs `f` on the storages of `a` and `b`, locking a shared buffer once
/// (so `x * x` never takes the same lock twice).
pub(crate) fn with_storages<R>(
    a: &Tensor,
    b: &Tensor,
    f: impl FnOnce(&Storage, &Storage) -> R,
) -> R {
    let sa = a.storage();
    if a.shares_storage(b) {
        f(&sa, &sa)
    } else {
        let sb = b.storage();
        f(&sa, &sb)
    }
}

/// Runs `f` on the storages of `tensors` (in order), read-locking each
/// distinct buffer once. Taking a read lock twice on one thread can
/// deadlock behind a waiting writer, and views make shared buffers common.
pub(crate) fn with_storage_list<R>(tensors: &[&Tensor], f: impl FnOnce(&[&Storage]) -> R) -> R {
    let mut guards = Vec::with_capacity(tensors.len());
    let mut slot = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        match tensors[..i].iter().position(|u| u.shares_storage(t)) {
            Some(j) => slot.push(slot[j]),
            None => {
                slot.push(guards.len());
                guards.push(t.storage());
            }
        }
    }
    let storages: Vec<&Storage> = slot.iter().map(|&k| &*guards[k]).collect();
    f(&storages)
}
