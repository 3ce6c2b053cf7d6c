//! Named parameters: [`ParamStore`] owns every trainable tensor of a model
//! under a hierarchical name such as `down.0.res.conv1.weight`, and
//! [`ParamScope`] is the builder layers use to create theirs.
//!
//! ```
//! # use noisegrad_engine::nn::{ParamStore, Init};
//! # use noisegrad_engine::{DType, Device};
//! let store = ParamStore::new(DType::F32, Device::Cpu, 0);
//! let conv = store.sub("down").sub(0).sub("res").sub("conv1");
//! let w = conv.param("weight", &[8, 4, 3, 3], Init::FanAvgUniform { scale: 1.0 })?;
//! assert_eq!(store.get("down.0.res.conv1.weight")?.shape(), w.shape());
//! # Ok::<(), noisegrad_engine::Error>(())
//! ```
//!
//! Order: parameters are listed in creation order, which is deterministic
//! for a deterministic model constructor (and reads like the model code).
//! Random initial values are drawn in that order from one Philox stream
//! seeded at construction, so a (seed, constructor) pair fixes the model.

use super::init::Init;
use crate::error::{Result, bad_arg};
use crate::{DType, Device, Philox, Tensor};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::sync::Mutex;

/// Owns a model's parameters by name. Parameters are leaf tensors that
/// require grad; every handle returned shares the stored buffer, so an
/// optimizer writing into it updates the model that holds the handle.
pub struct ParamStore {
    dtype: DType,
    device: Device,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParamStore")
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("tensors", &self.len())
            .field("elements", &self.num_elements())
            .finish()
    }
}

struct Inner {
    params: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    rng: Philox,
}

/// A name prefix inside a [`ParamStore`]: `sub` goes one level down,
/// `param` creates `<prefix>.<name>`.
#[derive(Clone)]
pub struct ParamScope<'a> {
    store: &'a ParamStore,
    /// The name components above this scope (kept apart, so an empty
    /// component is caught when a parameter is named, even at the root).
    path: Vec<String>,
}

impl ParamStore {
    /// An empty store whose parameters will have `dtype` and live on
    /// `device`; random initializers draw from Philox(`seed`).
    pub fn new(dtype: DType, device: Device, seed: u64) -> Self {
        Self {
            dtype,
            device,
            inner: Mutex::new(Inner {
                params: Vec::new(),
                index: HashMap::new(),
                rng: Philox::new(seed),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("parameter store poisoned")
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The scope of top-level names (no prefix).
    pub fn root(&self) -> ParamScope<'_> {
        ParamScope {
            store: self,
            path: Vec::new(),
        }
    }

    /// The scope `name` (same as `root().sub(name)`).
    pub fn sub(&self, name: impl Display) -> ParamScope<'_> {
        self.root().sub(name)
    }

    /// `(name, parameter)` pairs in creation order.
    pub fn params(&self) -> Vec<(String, Tensor)> {
        self.lock().params.clone()
    }

    /// The parameters alone, in creation order.
    pub fn tensors(&self) -> Vec<Tensor> {
        self.lock().params.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.lock().params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of scalar parameters, Σ numel.
    pub fn num_elements(&self) -> usize {
        self.lock().params.iter().map(|(_, t)| t.numel()).sum()
    }

    /// The parameter called `name`, or an error listing similar names.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let inner = self.lock();
        match inner.index.get(name) {
            Some(&i) => Ok(inner.params[i].1.clone()),
            None => Err(bad_arg(
                "ParamStore::get",
                format!(
                    "no parameter '{name}'{}",
                    suggest(name, inner.params.iter().map(|(n, _)| n.as_str()))
                ),
            )),
        }
    }

    /// The parameters as named tensors to save (creation order). These are
    /// detached views of the live buffers, not copies: save them before the
    /// next optimizer step.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .params
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect()
    }

    /// Copies `tensors` into the parameters of the same names, in place
    /// (every handle on a parameter sees the loaded values; values are
    /// converted to the store's dtype). Strict: the names must match the
    /// store's exactly and every shape must agree; otherwise nothing is
    /// loaded and the error lists every missing name, unexpected name and
    /// shape mismatch.
    pub fn load_state_dict(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let params = self.params();
        check_names_and_shapes("load_state_dict", &params, tensors)?;
        let by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (name, p) in &params {
            p.assign(by_name[name.as_str()])?;
        }
        Ok(())
    }

    /// Registers a new parameter `name` drawn from `init`.
    fn create(&self, name: String, shape: &[usize], init: Init) -> Result<Tensor> {
        if name.split('.').any(str::is_empty) {
            return Err(bad_arg(
                "param",
                format!("'{name}' is not a valid name: empty component"),
            ));
        }
        let mut inner = self.lock();
        if inner.index.contains_key(&name) {
            return Err(bad_arg(
                "param",
                format!("a parameter named '{name}' already exists"),
            ));
        }
        let value = init.sample(shape, self.dtype, self.device, &mut inner.rng)?;
        let p = value.set_requires_grad(true);
        let i = inner.params.len();
        inner.index.insert(name.clone(), i);
        inner.params.push((name, p.clone()));
        Ok(p)
    }
}

impl<'a> ParamScope<'a> {
    /// The scope one level down: `<prefix>.<name>`. `name` may be any
    /// `Display`, so block indices read `scope.sub(i)`.
    pub fn sub(&self, name: impl Display) -> ParamScope<'a> {
        let mut path = self.path.clone();
        path.push(name.to_string());
        ParamScope {
            store: self.store,
            path,
        }
    }

    /// This scope's prefix, e.g. `down.0.res` (empty at the root).
    pub fn path(&self) -> String {
        self.path.join(".")
    }

    /// The full name `name` would get in this scope: `<prefix>.<name>`.
    pub fn full_name(&self, name: &str) -> String {
        let mut parts: Vec<&str> = self.path.iter().map(String::as_str).collect();
        parts.push(name);
        parts.join(".")
    }

    /// Creates the parameter `<prefix>.<name>` of `shape` drawn from `init`:
    /// a leaf tensor that requires grad. Errors if the name exists already
    /// or has an empty component.
    pub fn param(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        self.store.create(self.full_name(name), shape, init)
    }

    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    pub fn device(&self) -> Device {
        self.store.device
    }
}

/// Checks that `given` has exactly the names of `expected`, each with the
/// expected shape; the error lists every problem at once.
pub(crate) fn check_names_and_shapes(
    op: &'static str,
    expected: &[(String, Tensor)],
    given: &[(String, Tensor)],
) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    let want: HashMap<&str, &Tensor> = expected.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut unexpected = Vec::new();
    for (name, t) in given {
        if !seen.insert(name.as_str()) {
            problems.push(format!("'{name}' appears twice"));
            continue;
        }
        match want.get(name.as_str()) {
            None => unexpected.push(name.as_str()),
            Some(p) if p.shape() != t.shape() => problems.push(format!(
                "'{name}' has shape {:?} in the input but {:?} in the model",
                t.shape(),
                p.shape()
            )),
            Some(_) => {}
        }
    }
    let missing: Vec<&str> = expected
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !seen.contains(n))
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing {}: {}", missing.len(), list(&missing)));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "unexpected {}: {}",
            unexpected.len(),
            list(&unexpected)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(bad_arg(op, problems.join("; ")))
    }
}

/// Up to 20 names, quoted and comma separated.
fn list(names: &[&str]) -> String {
    let shown: Vec<String> = names.iter().take(20).map(|n| format!("'{n}'")).collect();
    let more = names.len().saturating_sub(20);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// " (did you mean ...?)" with names sharing the longest dotted prefix.
fn suggest<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> String {
    let common = |n: &str| {
        n.split('.')
            .zip(name.split('.'))
            .take_while(|(a, b)| a == b)
            .count()
    };
    let names: Vec<&str> = names.collect();
    let best = names.iter().map(|n| common(n)).max().unwrap_or(0);
    if best == 0 {
        return format!(" (the store has {} parameters)", names.len());
    }
    let close: Vec<&str> = names
        .into_iter()
        .filter(|n| common(n) == best)
        .take(5)
        .collect();
    format!(" (did you mean one of {}?)", list(&close))
}
