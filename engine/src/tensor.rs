//! The `Tensor` type: a shared handle to storage, a layout over it, and (when
//! it takes part in autodiff) a link into the tape.

use crate::autograd::{self, Edge, GradSlot, Node};
use crate::error::{Error, Result, bad_arg};
use crate::layout::checked_numel;
use crate::storage::{RandKind, Storage};
use crate::{DType, Device, Layout};
use noisegrad_kernels::rng::Philox;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Names the tensor's shape in an allocation failure that the storage
/// reported by element count.
fn with_shape(shape: &[usize]) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::OutOfMemory {
            op,
            dtype,
            bytes,
            device,
            ..
        } => Error::OutOfMemory {
            op,
            shape: shape.to_vec(),
            dtype,
            bytes,
            device,
        },
        e => e,
    }
}

/// An n-dimensional array on some device. Cloning is cheap (an `Arc`);
/// views share storage with the tensor they came from.
#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    id: u64,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    /// The op that produced this tensor, when an input required grad.
    node: Option<Arc<Node>>,
    /// Present on leaves that require grad (parameters).
    grad: Option<Arc<GradSlot>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, dtype={}, device={}",
            self.shape(),
            self.dtype(),
            self.device()
        )?;
        if self.numel() <= 16 {
            write!(f, ", data={:?}", self.to_vec_f64())?;
        }
        if let Some(n) = &self.0.node {
            write!(f, ", grad_fn={n:?}")?;
        }
        write!(f, ")")
    }
}

impl Tensor {
    // ---- construction ------------------------------------------------

    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        let (dtype, device) = (storage.dtype(), storage.device());
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: Arc::new(RwLock::new(storage)),
            layout,
            dtype,
            device,
            node: None,
            grad: None,
        }))
    }

    /// A new contiguous tensor of `shape` over `storage`.
    pub(crate) fn from_contiguous(storage: Storage, shape: &[usize]) -> Tensor {
        Tensor::from_storage(storage, Layout::contiguous(shape))
    }

    /// A view: same storage, new layout, no tape link (ops add one).
    pub(crate) fn view_with(&self, layout: Layout) -> Tensor {
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage: self.0.storage.clone(),
            layout,
            dtype: self.0.dtype,
            device: self.0.device,
            node: None,
            grad: None,
        }))
    }

    pub(crate) fn with_node(self, node: Arc<Node>) -> Tensor {
        let mut t = self.view_with(self.0.layout.clone());
        Arc::get_mut(&mut t.0).expect("fresh tensor").node = Some(node);
        t
    }

    pub fn zeros(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        let n = checked_numel("zeros", shape)?;
        Ok(Tensor::from_contiguous(
            Storage::zeros(device, dtype, n).map_err(with_shape(shape))?,
            shape,
        ))
    }

    pub fn ones(shape: &[usize], dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(shape, 1.0, dtype, device)
    }

    pub fn full(shape: &[usize], value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        let n = checked_numel("full", shape)?;
        Ok(Tensor::from_contiguous(
            Storage::full(device, dtype, n, value).map_err(with_shape(shape))?,
            shape,
        ))
    }

    /// A 0-dimensional tensor holding `value`.
    pub fn scalar(value: f64, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(&[], value, dtype, device)
    }

    /// A tensor of `shape` from row-major `data` (converted to `dtype`).
    pub fn from_vec<T: Into<f64> + Copy>(
        data: &[T],
        shape: &[usize],
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let n = checked_numel("from_vec", shape)?;
        if n != data.len() {
            return Err(bad_arg(
                "from_vec",
                format!(
                    "{} values cannot fill shape {shape:?} ({n} elements)",
                    data.len()
                ),
            ));
        }
        let v: Vec<f64> = data.iter().map(|&x| x.into()).collect();
        Ok(Tensor::from_contiguous(
            Storage::from_f64(device, dtype, &v).map_err(with_shape(shape))?,
            shape,
        ))
    }

    /// Convenience: an f32 CPU tensor from data.
    pub fn from_f32(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data, shape, DType::F32, Device::Cpu)
    }

    /// 0, 1, ..., n−1.
    pub fn arange(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        Ok(Tensor::from_contiguous(
            Storage::arange(device, dtype, n)?,
            &[n],
        ))
    }

    /// Samples from N(0, 1), drawing from `rng`.
    pub fn randn(
        shape: &[usize],
        dtype: DType,
        device: Device,
        rng: &mut Philox,
    ) -> Result<Tensor> {
        let n = checked_numel("randn", shape)?;
        Ok(Tensor::from_contiguous(
            Storage::rand(device, dtype, n, RandKind::Normal, rng).map_err(with_shape(shape))?,
            shape,
        ))
    }

    /// Samples from U(0, 1), drawing from `rng`.
    pub fn rand(shape: &[usize], dtype: DType, device: Device, rng: &mut Philox) -> Result<Tensor> {
        let n = checked_numel("rand", shape)?;
        Ok(Tensor::from_contiguous(
            Storage::rand(device, dtype, n, RandKind::Uniform, rng).map_err(with_shape(shape))?,
            shape,
        ))
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }

    pub fn full_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(self.shape(), value, self.dtype(), self.device())
    }

    // ---- metadata -------------------------------------------------------

    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// A process-unique id (for debugging and graph tools).
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// Size of axis `d`, or an error naming the shape.
    pub fn dim(&self, d: usize) -> Result<usize> {
        self.0.layout.check_axis("dim", d)?;
        Ok(self.shape()[d])
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("storage lock poisoned")
    }

    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().expect("storage lock poisoned")
    }

    /// True when both tensors view the same storage buffer.
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- autodiff -------------------------------------------------------

    /// Whether gradients flow into or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.node.is_some() || self.0.grad.is_some()
    }

    /// A leaf sharing this storage that does (or does not) collect a gradient.
    pub fn set_requires_grad(&self, on: bool) -> Tensor {
        let mut t = self.view_with(self.0.layout.clone());
        if on {
            Arc::get_mut(&mut t.0).expect("fresh tensor").grad =
                Some(Arc::new(GradSlot::default()));
        }
        t
    }

    /// The same values, cut from the tape (no gradient flows through).
    pub fn detach(&self) -> Tensor {
        self.view_with(self.0.layout.clone())
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.as_ref().and_then(|s| s.get())
    }

    /// Clears a leaf's accumulated gradient.
    pub fn zero_grad(&self) {
        if let Some(s) = &self.0.grad {
            s.clear();
        }
    }

    /// Replaces a leaf's gradient (used by gradient clipping and tests).
    pub fn set_grad(&self, g: Option<Tensor>) {
        if let Some(s) = &self.0.grad {
            s.set(g);
        }
    }

    pub(crate) fn edge(&self) -> Option<Edge> {
        if let Some(n) = &self.0.node {
            return Some(Edge::Node(n.clone()));
        }
        self.0.grad.as_ref().map(|s| Edge::Leaf(s.clone()))
    }

    /// Back-propagates from this scalar: every leaf that requires grad and
    /// reaches it gets ∂self/∂leaf added to its gradient.
    pub fn backward(&self) -> Result<()> {
        self.backward_notifying(&mut |_| Ok(()))
    }

    /// [`Tensor::backward`], calling `leaf_done` with each leaf's
    /// [`Tensor::leaf_id`] as soon as its gradient is complete, while the
    /// rest of the pass runs (see [`autograd::backward_notifying`]).
    pub fn backward_notifying(
        &self,
        leaf_done: &mut dyn FnMut(autograd::LeafId) -> Result<()>,
    ) -> Result<()> {
        if self.numel() != 1 {
            return Err(bad_arg(
                "backward",
                format!(
                    "needs a scalar output, got shape {:?}; use backward_with",
                    self.shape()
                ),
            ));
        }
        autograd::backward_notifying(self, self.ones_like()?, leaf_done)
    }

    /// The identity of this leaf's gradient slot (None when it collects no
    /// gradient), as [`Tensor::backward_notifying`] reports it.
    pub fn leaf_id(&self) -> Option<autograd::LeafId> {
        self.0.grad.as_ref().map(autograd::LeafId::of)
    }

    /// Back-propagates with an explicit upstream gradient.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        autograd::backward_with(self, grad.detach())
    }

    // ---- reading back -------------------------------------------------

    /// All elements, row-major, as f64 on the host.
    ///
    /// # Panics
    /// If the tensor lives on a GPU that fails while copying it back (a
    /// driver error); [`Tensor::to_host_f64`] returns that error instead.
    pub fn to_vec_f64(&self) -> Vec<f64> {
        self.to_host_f64()
            .unwrap_or_else(|e| panic!("reading a tensor back from {}: {e}", self.device()))
    }

    /// All elements, row-major, as f64 on the host, or the device's error.
    pub fn to_host_f64(&self) -> Result<Vec<f64>> {
        self.storage().to_f64_vec(self.layout())
    }

    /// All elements, row-major, as f32 on the host.
    pub fn to_vec_f32(&self) -> Vec<f32> {
        self.to_vec_f64().into_iter().map(|v| v as f32).collect()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        if self.numel() != 1 {
            return Err(bad_arg(
                "item",
                format!("needs exactly one element, shape is {:?}", self.shape()),
            ));
        }
        Ok(self.to_host_f64()?[0])
    }
}
