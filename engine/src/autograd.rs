//! Reverse-mode automatic differentiation over a tape of nodes.
//!
//! Every op whose inputs require grad records a [`Node`]: the op's name,
//! one [`Edge`] per input (to the node that produced it, or to a leaf's
//! gradient slot) and a `backward` closure holding only what the op's
//! derivative needs. Result tensors point to their node; nodes never point
//! to tensors, so activations are owned by the tensors and the closures
//! that saved them, and nothing else.
//!
//! [`backward`] walks the graph without recursion (a U-Net graph is
//! thousands of nodes deep): one iterative pass counts how many consumers
//! each node has, then nodes run in reverse topological order as soon as
//! all their consumers have delivered a gradient. Each node's closure is
//! taken and dropped right after it runs, which frees its saved tensors
//! during the pass; the first gradient reaching a node or leaf is stored,
//! not added to zeros; inputs that need no gradient are not computed.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The derivative of one op: given ∂L/∂out and which inputs need a
/// gradient, returns ∂L/∂input for each input (`None` where not needed).
pub type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

pub struct Node {
    id: u64,
    name: &'static str,
    inputs: Vec<Option<Edge>>,
    /// Shapes of the inputs, to check each returned gradient.
    input_shapes: Vec<Vec<usize>>,
    backward: Mutex<Option<BackwardFn>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({} #{})", self.name, self.id)
    }
}

/// Dropping the last handle to a graph frees a chain of nodes. The default
/// drop would recurse once per node (node → edge → node → ...) and overflow
/// the stack on deep graphs, so the edges are unlinked here into a work
/// list instead: each node whose last reference we hold is emptied of its
/// edges before it is dropped, so no drop ever recurses.
impl Drop for Node {
    fn drop(&mut self) {
        let mut work: Vec<Arc<Node>> = take_node_edges(&mut self.inputs);
        while let Some(node) = work.pop() {
            if let Some(mut owned) = Arc::into_inner(node) {
                work.extend(take_node_edges(&mut owned.inputs));
            }
        }
    }
}

/// Removes and returns the node edges of `inputs` (leaf edges just drop).
fn take_node_edges(inputs: &mut Vec<Option<Edge>>) -> Vec<Arc<Node>> {
    std::mem::take(inputs)
        .into_iter()
        .filter_map(|e| match e {
            Some(Edge::Node(n)) => Some(n),
            _ => None,
        })
        .collect()
}

/// Where a gradient flows to.
#[derive(Clone, Debug)]
pub enum Edge {
    /// Into the backward of the op that produced the input.
    Node(Arc<Node>),
    /// Into a leaf tensor's gradient slot (a parameter).
    Leaf(Arc<GradSlot>),
}

/// The accumulated gradient of a leaf tensor. Gradients add up across
/// `backward` calls until [`GradSlot::clear`] (zero_grad).
#[derive(Debug, Default)]
pub struct GradSlot {
    grad: Mutex<Option<Tensor>>,
}

impl GradSlot {
    pub fn get(&self) -> Option<Tensor> {
        self.grad.lock().expect("grad slot poisoned").clone()
    }

    pub fn clear(&self) {
        *self.grad.lock().expect("grad slot poisoned") = None;
    }

    pub fn set(&self, g: Option<Tensor>) {
        *self.grad.lock().expect("grad slot poisoned") = g;
    }

    fn accumulate(&self, g: Tensor) -> Result<()> {
        let mut slot = self.grad.lock().expect("grad slot poisoned");
        *slot = Some(match slot.take() {
            None => g,
            Some(prev) => prev.add(&g)?,
        });
        Ok(())
    }
}

static NEXT_NODE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record the tape on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores the previous grad mode when dropped.
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        Self {
            prev: GRAD_ENABLED.with(|g| g.replace(false)),
        }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Runs `f` without recording anything: no nodes, no saved activations.
/// Sampling and evaluation run in this mode.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Runs `f` with the tape on, even inside [`no_grad`]: for input
/// gradients taken during sampling (classifier guidance's ∇ₓ log p(y|x)).
pub fn enable_grad<R>(f: impl FnOnce() -> R) -> R {
    let prev = GRAD_ENABLED.with(|g| g.replace(true));
    let out = f();
    GRAD_ENABLED.with(|g| g.set(prev));
    out
}

/// True when an op over `inputs` must record a node.
pub fn needs_tape(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

/// Attaches a node to `out` if any input requires grad. `make_backward` is
/// only called in that case, so untracked ops save nothing.
pub fn record<F>(out: Tensor, name: &'static str, inputs: &[&Tensor], make_backward: F) -> Tensor
where
    F: FnOnce() -> BackwardFn,
{
    if !needs_tape(inputs) {
        return out;
    }
    let node = Node {
        id: NEXT_NODE.fetch_add(1, Ordering::Relaxed),
        name,
        inputs: inputs.iter().map(|t| t.edge()).collect(),
        input_shapes: inputs.iter().map(|t| t.shape().to_vec()).collect(),
        backward: Mutex::new(Some(make_backward())),
    };
    out.with_node(Arc::new(node))
}

/// For ops that have no derivative: an error if any input is tracked, so a
/// gradient is never dropped silently.
pub fn refuse_tracked(name: &'static str, inputs: &[&Tensor]) -> Result<()> {
    if needs_tape(inputs) {
        Err(Error::NoBackward { op: name })
    } else {
        Ok(())
    }
}

/// Adds `g` to the gradient waiting for `id` (storing it if it is the first).
fn deliver(pending: &mut HashMap<u64, Tensor>, id: u64, g: Tensor) -> Result<()> {
    match pending.remove(&id) {
        None => pending.insert(id, g),
        Some(prev) => pending.insert(id, prev.add(&g)?),
    };
    Ok(())
}

/// Back-propagates from `root` with seed gradient `seed` (shape of `root`).
pub fn backward_with(root: &Tensor, seed: Tensor) -> Result<()> {
    backward_notifying(root, seed, &mut |_| Ok(()))
}

/// Which leaf a gradient slot belongs to, for [`backward_notifying`]'s
/// callback ([`Tensor::leaf_id`] of a parameter gives the same value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeafId(usize);

impl LeafId {
    pub(crate) fn of(slot: &Arc<GradSlot>) -> LeafId {
        LeafId(Arc::as_ptr(slot) as usize)
    }
}

/// [`backward_with`], calling `leaf_done` for each leaf as soon as its
/// gradient for this pass is complete (its last consumer has delivered),
/// while the rest of the graph is still being differentiated. Data-parallel
/// training starts all-reducing a bucket of gradients from here, so the
/// communication overlaps the remaining backward pass (PyTorch DDP's
/// autograd hooks). Leaves the graph does not reach are never reported.
pub fn backward_notifying(
    root: &Tensor,
    seed: Tensor,
    leaf_done: &mut dyn FnMut(LeafId) -> Result<()>,
) -> Result<()> {
    if seed.shape() != root.shape() {
        return Err(Error::Backward(format!(
            "seed gradient shape {:?} differs from output {:?}",
            seed.shape(),
            root.shape()
        )));
    }
    if (seed.dtype(), seed.device()) != (root.dtype(), root.device()) {
        return Err(Error::Backward(format!(
            "seed gradient is {:?} on {}, the output is {:?} on {}",
            seed.dtype(),
            seed.device(),
            root.dtype(),
            root.device()
        )));
    }
    let _no_grad = NoGradGuard::new();
    let root_node = match root.edge() {
        None => {
            return Err(Error::Backward(
                "the tensor does not require grad (no tracked input reaches it)".into(),
            ));
        }
        Some(Edge::Leaf(slot)) => {
            slot.accumulate(seed)?;
            return leaf_done(LeafId::of(&slot));
        }
        Some(Edge::Node(n)) => n,
    };

    // Pass 1: count, for every node and leaf, how many edges point at it.
    let mut consumers: HashMap<u64, usize> = HashMap::new();
    let mut leaf_consumers: HashMap<LeafId, usize> = HashMap::new();
    let mut stack = vec![root_node.clone()];
    let mut seen = std::collections::HashSet::from([root_node.id]);
    while let Some(node) = stack.pop() {
        for edge in node.inputs.iter().flatten() {
            match edge {
                Edge::Node(n) => {
                    *consumers.entry(n.id).or_default() += 1;
                    if seen.insert(n.id) {
                        stack.push(n.clone());
                    }
                }
                Edge::Leaf(slot) => *leaf_consumers.entry(LeafId::of(slot)).or_default() += 1,
            }
        }
    }

    // Pass 2: run each node once all its consumers have delivered.
    let mut pending: HashMap<u64, Tensor> = HashMap::from([(root_node.id, seed)]);
    let mut ready = vec![root_node];
    while let Some(node) = ready.pop() {
        let grad = pending
            .remove(&node.id)
            .expect("a ready node has its gradient");
        let f = node.backward.lock().expect("node poisoned").take().ok_or_else(|| {
            Error::Backward(format!(
                "the graph through '{}' was already back-propagated and its saved tensors freed; run the forward pass again",
                node.name
            ))
        })?;
        let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
        let grads = f(&grad, &needs)?;
        drop(grad);
        if grads.len() != node.inputs.len() {
            return Err(Error::Backward(format!(
                "'{}' returned {} gradients for {} inputs",
                node.name,
                grads.len(),
                node.inputs.len()
            )));
        }
        for (i, (edge, g)) in node.inputs.iter().zip(grads).enumerate() {
            let Some(edge) = edge else { continue };
            let g = g.ok_or_else(|| {
                Error::Backward(format!(
                    "'{}' gave no gradient for its input {i}",
                    node.name
                ))
            })?;
            if g.shape() != node.input_shapes[i].as_slice() {
                return Err(Error::Backward(format!(
                    "'{}' gave a gradient of shape {:?} for input {i} of shape {:?}",
                    node.name,
                    g.shape(),
                    node.input_shapes[i]
                )));
            }
            match edge {
                Edge::Leaf(slot) => {
                    slot.accumulate(g)?;
                    let id = LeafId::of(slot);
                    let left = leaf_consumers.get_mut(&id).expect("counted in pass 1");
                    *left -= 1;
                    if *left == 0 {
                        leaf_done(id)?;
                    }
                }
                Edge::Node(n) => {
                    deliver(&mut pending, n.id, g)?;
                    let left = consumers.get_mut(&n.id).expect("counted in pass 1");
                    *left -= 1;
                    if *left == 0 {
                        ready.push(n.clone());
                    }
                }
            }
        }
    }
    Ok(())
}
