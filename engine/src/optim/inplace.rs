//! In-place writes into a tensor's buffer, for parameters and optimizer
//! state. A `Tensor` is a handle onto a shared buffer, so a write through
//! one handle is seen by every clone and view of it — which is exactly how
//! the optimizer updates the parameters a model holds.
//!
//! None of this is recorded on the tape: these writes happen between
//! training steps, after `backward` has consumed the graph. Writing into a
//! parameter that a still-pending graph saved would change what its
//! backward computes, so callers update only after `backward`.

use crate::Tensor;
use crate::error::{Result, bad_arg, shape_err};
use crate::storage::Storage;

impl Tensor {
    /// True when this tensor is its whole buffer, densely: contiguous, offset
    /// 0, and the buffer holds exactly `numel` elements. Fused kernels
    /// (Adam, EMA) walk whole buffers, so they need this.
    pub(crate) fn is_whole_buffer(&self) -> bool {
        self.is_contiguous() && self.layout().offset() == 0 && self.storage().len() == self.numel()
    }

    /// A new tensor with its own dense buffer holding the same values
    /// (never shares storage with `self`; not on the tape).
    pub(crate) fn deep_copy(&self) -> Result<Tensor> {
        let st = self.storage().contiguous(self.layout())?;
        Ok(Tensor::from_contiguous(st, self.shape()))
    }

    /// `self`, or a dense private copy when `self` is not a whole buffer or
    /// shares its buffer with `other` (so that both can be locked at once).
    pub(crate) fn whole_buffer_apart_from(&self, other: &Tensor) -> Result<Tensor> {
        if self.is_whole_buffer() && !self.shares_storage(other) {
            Ok(self.clone())
        } else {
            self.deep_copy()
        }
    }

    /// self ← src, element by element, in place (same shape; `src` is
    /// converted to `self`'s dtype). Every handle on `self`'s buffer sees
    /// the new values.
    pub(crate) fn assign(&self, src: &Tensor) -> Result<()> {
        if self.shape() != src.shape() {
            return Err(shape_err(
                "assign",
                self.shape(),
                src.shape(),
                "in-place copy needs equal shapes",
            ));
        }
        // A tensor from another device (a checkpoint read on the host into a
        // GPU parameter) is moved first; dtype conversion happens on the host.
        let moved;
        let src = if src.device() != self.device() {
            moved = src.to_dtype(self.dtype())?.to_device(self.device())?;
            &moved
        } else {
            src
        };
        let src = if src.dtype() != self.dtype() || src.shares_storage(self) {
            // A private copy: converts the dtype, and avoids locking one
            // buffer for reading and writing at once.
            let st = src.storage().to_dtype(src.layout(), self.dtype())?;
            Tensor::from_contiguous(st, src.shape())
        } else {
            src.clone()
        };
        let s = src.storage();
        self.storage_mut()
            .copy_from(self.layout(), &s, src.layout())
    }

    /// Exchanges the buffers of two whole-buffer tensors of one shape,
    /// dtype and device: afterwards every handle on `self` sees `other`'s old values
    /// and vice versa. O(1): the buffers move, the values are not copied.
    pub(crate) fn swap_buffers(&self, other: &Tensor) -> Result<()> {
        let same = self.shape() == other.shape()
            && self.dtype() == other.dtype()
            && self.device() == other.device();
        if !same {
            return Err(bad_arg(
                "swap",
                format!(
                    "needs equal shapes, dtypes and devices, got {:?} {} {} and {:?} {} {}",
                    self.shape(),
                    self.dtype(),
                    self.device(),
                    other.shape(),
                    other.dtype(),
                    other.device()
                ),
            ));
        }
        if !self.is_whole_buffer() || !other.is_whole_buffer() {
            return Err(bad_arg(
                "swap",
                "both tensors must own their whole buffer (not views)",
            ));
        }
        if self.shares_storage(other) {
            return Ok(());
        }
        let (mut a, mut b) = (self.storage_mut(), other.storage_mut());
        std::mem::swap::<Storage>(&mut a, &mut b);
        Ok(())
    }
}
