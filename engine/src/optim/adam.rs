//! Adam and AdamW with a fused one-pass update.
//!
//! Each step reads θ, g, m, v and writes θ, m, v exactly once per element
//! ([`noisegrad_kernels::optim::cpu::adam`]); gradient clipping is folded in
//! as a scale on g, so clipping costs one extra read of g (for the norm).
//! On a GPU the clip scale stays on the device (see [`super::clip`]), so
//! a clipped step is queued without the host waiting for the norm.

use super::clip::{GradNorm, GradScale, check_max_norm, global_norm};
use crate::error::{Result, bad_arg};
use crate::nn::params::check_names_and_shapes;
use crate::{DType, Device, Tensor};
use noisegrad_kernels::optim::cpu::AdamStep;
use std::collections::HashMap;

/// How weight decay λ enters the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightDecay {
    None,
    /// Adam's L2 penalty: g ← g + λ·θ before the moments (`torch.optim.Adam`).
    L2(f64),
    /// AdamW's decoupled decay: θ ← θ·(1 − lr·λ) beside the Adam update
    /// (Loshchilov & Hutter; `torch.optim.AdamW`).
    Decoupled(f64),
}

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: WeightDecay,
}

impl AdamConfig {
    /// Adam with β = (0.9, 0.999), ε = 1e-8, no weight decay.
    pub fn adam(lr: f64) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: WeightDecay::None,
        }
    }

    /// AdamW: Adam with decoupled weight decay λ (torch's default is 0.01).
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            weight_decay: WeightDecay::Decoupled(weight_decay),
            ..Self::adam(lr)
        }
    }

    fn check(&self) -> Result<()> {
        let decay = match self.weight_decay {
            WeightDecay::None => 0.0,
            WeightDecay::L2(l) | WeightDecay::Decoupled(l) => l,
        };
        let ok = self.lr >= 0.0
            && self.lr.is_finite()
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && decay >= 0.0
            && decay.is_finite();
        if ok {
            Ok(())
        } else {
            Err(bad_arg(
                "Adam",
                format!(
                    "invalid hyper-parameters {self:?} (need lr ≥ 0, β in [0, 1), ε > 0, λ ≥ 0)"
                ),
            ))
        }
    }

    /// The kernel's parameters for update number `t` (1-based).
    fn kernel_step(&self, t: u64) -> AdamStep {
        let (weight_decay, decoupled) = match self.weight_decay {
            WeightDecay::None => (0.0, false),
            WeightDecay::L2(l) => (l, false),
            WeightDecay::Decoupled(l) => (l, true),
        };
        AdamStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay,
            decoupled,
            bias1: 1.0 - self.beta1.powf(t as f64),
            bias2: 1.0 - self.beta2.powf(t as f64),
        }
    }
}

/// Per-parameter state: the moment estimates and how many updates this
/// parameter has had (its bias-correction t; a parameter skipped for lack
/// of a gradient does not advance, as in torch).
struct Moments {
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// The Adam optimizer (Kingma & Ba 2015), or AdamW with
/// [`AdamConfig::adamw`]. For update t of a parameter θ with gradient g:
///
/// m ← β1·m + (1−β1)·g,  v ← β2·v + (1−β2)·g²,
/// θ ← θ − lr·(m/(1−β1^t)) / (√(v/(1−β2^t)) + ε),
///
/// with weight decay applied as [`WeightDecay`] says.
pub struct Adam {
    params: Vec<(String, Tensor)>,
    state: Vec<Option<Moments>>,
    config: AdamConfig,
}

impl std::fmt::Debug for Adam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adam")
            .field("config", &self.config)
            .field("params", &self.params.len())
            .finish()
    }
}

const M: &str = "opt.m.";
const V: &str = "opt.v.";
const STEP: &str = "opt.step.";

impl Adam {
    /// An optimizer over named parameters (e.g. `ParamStore::params()`).
    /// Each parameter must own its whole buffer (not be a view), since the
    /// update writes it in place.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Result<Self> {
        config.check()?;
        let mut names = std::collections::HashSet::new();
        for (name, p) in &params {
            if !names.insert(name.as_str()) {
                return Err(bad_arg("Adam", format!("parameter '{name}' given twice")));
            }
            if !p.is_whole_buffer() {
                return Err(bad_arg(
                    "Adam",
                    format!(
                        "parameter '{name}' is a view; optimise the tensor that owns the buffer"
                    ),
                ));
            }
        }
        let state = params.iter().map(|_| None).collect();
        Ok(Self {
            params,
            state,
            config,
        })
    }

    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate for the next steps (e.g. from a
    /// [`super::WarmupSchedule`]).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Clears the gradient of every parameter.
    pub fn zero_grad(&self) {
        for (_, p) in &self.params {
            p.zero_grad();
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) -> Result<()> {
        self.step_scaled(1.0)
    }

    /// Clips the global gradient norm to `max_norm` and updates, in one
    /// pass over the parameters: same result as
    /// `clip_grad_norm(params, max_norm)` followed by [`Adam::step`], but
    /// the gradients are not rewritten. Returns ‖g‖ before clipping.
    ///
    /// On a GPU, returning the norm as a number means one wait: it is read
    /// back after every update has been queued
    /// ([`Adam::step_clipped_deferred`] leaves even that to the caller).
    pub fn step_clipped(&mut self, max_norm: f64) -> Result<f64> {
        self.step_clipped_deferred(max_norm)?.value()
    }

    /// [`Adam::step_clipped`] without reading the norm back: the norm and
    /// the clip coefficient are computed where the gradients live and, on a
    /// GPU, handed to the update kernels in device memory, so nothing waits.
    /// Read the norm (for logging) with [`GradNorm::value`] whenever it
    /// suits. Like the CPU path, a non-finite norm does not skip the step
    /// (see [`super::clip_coefficient`]).
    pub fn step_clipped_deferred(&mut self, max_norm: f64) -> Result<GradNorm> {
        check_max_norm(max_norm)?;
        let norm = global_norm(self.params.iter().map(|(_, p)| p), max_norm)?;
        self.update(norm.grad_scale())?;
        Ok(norm)
    }

    /// One update using `grad_scale`·g as the gradient.
    pub fn step_scaled(&mut self, grad_scale: f64) -> Result<()> {
        if !(grad_scale >= 0.0 && grad_scale.is_finite()) {
            return Err(bad_arg(
                "Adam::step",
                format!("grad_scale must be finite and ≥ 0, got {grad_scale}"),
            ));
        }
        self.update(GradScale::Host(grad_scale))
    }

    /// One update of every parameter that has a gradient, with `scale`·g
    /// as the gradient.
    fn update(&mut self, scale: GradScale<'_>) -> Result<()> {
        self.config.check()?;
        for ((name, p), state) in self.params.iter().zip(&mut self.state) {
            let Some(grad) = p.grad() else { continue };
            check_grad(name, p, &grad)?;
            let st = match state {
                Some(st) => st,
                None => state.insert(Moments {
                    m: p.zeros_like()?,
                    v: p.zeros_like()?,
                    step: 0,
                }),
            };
            st.step += 1;
            let hyper = self.config.kernel_step(st.step);
            let grad = grad.whole_buffer_apart_from(p)?;
            let g = grad.storage();
            let (mut m, mut v) = (st.m.storage_mut(), st.v.storage_mut());
            p.storage_mut()
                .adam_step(&g, &mut m, &mut v, hyper, scale)?;
        }
        Ok(())
    }

    /// The optimizer state as named tensors, for checkpoints:
    /// `opt.m.<param>`, `opt.v.<param>` (the moments, the parameter's dtype)
    /// and `opt.step.<param>` (the update count t, an f64 scalar) for each
    /// parameter updated at least once. m and v are views of the live
    /// buffers: save them before the next step.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((name, _), st) in self.params.iter().zip(&self.state) {
            let Some(st) = st else { continue };
            out.push((format!("{M}{name}"), st.m.detach()));
            out.push((format!("{V}{name}"), st.v.detach()));
            // The update count is bookkeeping, not data: an f64 on the host
            // whatever the parameter's device (CUDA tensors are f32).
            let t = Tensor::scalar(st.step as f64, DType::F64, Device::Cpu)?;
            out.push((format!("{STEP}{name}"), t));
        }
        Ok(out)
    }

    /// Restores state saved by [`Adam::state_dict`], so training resumes
    /// exactly. Entries may come among other tensors only if those don't
    /// start with `opt.`. Parameters with no saved state start fresh.
    /// On error nothing is changed.
    pub fn load_state_dict(&mut self, tensors: &[(String, Tensor)]) -> Result<()> {
        let mut by_param: HashMap<&str, [Option<&Tensor>; 3]> = HashMap::new();
        let mut unknown = Vec::new();
        for (key, t) in tensors.iter().filter(|(k, _)| k.starts_with("opt.")) {
            let slot = [M, V, STEP]
                .iter()
                .position(|pre| key.starts_with(pre))
                .map(|i| (i, &key[[M, V, STEP][i].len()..]));
            match slot {
                Some((i, name)) => by_param.entry(name).or_default()[i] = Some(t),
                None => unknown.push(key.as_str()),
            }
        }
        let known: std::collections::HashSet<&str> =
            self.params.iter().map(|(n, _)| n.as_str()).collect();
        unknown.extend(
            tensors
                .iter()
                .filter(|(k, _)| k.starts_with(STEP) && !known.contains(&k[STEP.len()..]))
                .map(|(k, _)| k.as_str()),
        );
        if !unknown.is_empty() {
            return Err(bad_arg(
                "Adam::load_state_dict",
                format!("unknown optimizer entries {unknown:?}"),
            ));
        }
        // Check moments like a state dict over the parameters that have state.
        let expected: Vec<(String, Tensor)> = self
            .params
            .iter()
            .filter(|(n, _)| by_param.contains_key(n.as_str()))
            .flat_map(|(n, p)| {
                [
                    (format!("{M}{n}"), p.clone()),
                    (format!("{V}{n}"), p.clone()),
                ]
            })
            .collect();
        let given: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(k, _)| k.starts_with(M) || k.starts_with(V))
            .cloned()
            .collect();
        check_names_and_shapes("Adam::load_state_dict", &expected, &given)?;
        let mut steps = HashMap::new();
        for (name, [_, _, step]) in &by_param {
            let step = step.ok_or_else(|| {
                bad_arg("Adam::load_state_dict", format!("no '{STEP}{name}' entry"))
            })?;
            steps.insert(*name, step_count(name, step)?);
        }
        let mut state = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            state.push(match by_param.get(name.as_str()) {
                Some([Some(m), Some(v), _]) => Some(Moments {
                    m: copy_as(p, m)?,
                    v: copy_as(p, v)?,
                    step: steps[name.as_str()],
                }),
                _ => None,
            });
        }
        self.state = state;
        Ok(())
    }
}

/// A new whole buffer shaped and typed like `like`, holding `src`'s values.
fn copy_as(like: &Tensor, src: &Tensor) -> Result<Tensor> {
    let t = like.zeros_like()?;
    t.assign(src)?;
    Ok(t)
}

/// The update count stored in a one-element tensor: a non-negative integer.
fn step_count(name: &str, t: &Tensor) -> Result<u64> {
    let v = t.item()?;
    if v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
        Ok(v as u64)
    } else {
        Err(bad_arg(
            "Adam::load_state_dict",
            format!("'{STEP}{name}' = {v} is not an update count"),
        ))
    }
}

fn check_grad(name: &str, p: &Tensor, g: &Tensor) -> Result<()> {
    if g.shape() != p.shape() || g.dtype() != p.dtype() || g.device() != p.device() {
        return Err(bad_arg(
            "Adam::step",
            format!(
                "gradient of '{name}' is {:?} {} on {} but the parameter is {:?} {} on {}",
                g.shape(),
                g.dtype(),
                g.device(),
                p.shape(),
                p.dtype(),
                p.device()
            ),
        ));
    }
    Ok(())
}
