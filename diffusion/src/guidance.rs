//! Steering a sampler towards a class: classifier-free guidance (Ho &
//! Salimans 2022) and classifier guidance (Dhariwal & Nichol 2021).
//!
//! Both are wrappers around the samplers' ε-model interface
//! ([`crate::vlb::EpsModel`]): they turn a conditional network or an
//! unconditional one plus a classifier gradient into a guided ε̃, so DDPM
//! and DDIM sampling need no change.

use crate::process::{ReverseVariance, extract};
use crate::schedule::Schedule;
use noisegrad_engine::{Result, Tensor, enable_grad};

/// Classifier-free guidance, Ho & Salimans 2022 eq. 6:
/// ε̃ = (1 + w) ε(x_t, t, y) − w ε(x_t, t, ∅). w = 0 is plain conditional
/// sampling; diffusers' `guidance_scale` is 1 + w.
pub fn cfg_combine(eps_cond: &Tensor, eps_uncond: &Tensor, w: f64) -> Result<Tensor> {
    eps_cond
        .mul_scalar(1.0 + w)?
        .sub(&eps_uncond.mul_scalar(w)?)
}

/// The ε-model of classifier-free guidance for per-image `labels`, from a
/// conditional network `net(x, t, y)` whose label `null` is ∅. The
/// conditional and unconditional predictions come from one forward pass
/// of the 2N images [x; x] with labels [y; ∅] (w = 0 needs only the first).
pub fn cfg_eps<'a>(
    mut net: impl FnMut(&Tensor, &[usize], &[usize]) -> Result<Tensor> + 'a,
    labels: Vec<usize>,
    null: usize,
    w: f64,
) -> impl FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a {
    move |x: &Tensor, t: &[usize]| {
        if w == 0.0 {
            return net(x, t, &labels);
        }
        let n = x.dim(0)?;
        let both = Tensor::concat(&[x, x], 0)?;
        let t2: Vec<usize> = t.iter().chain(t).copied().collect();
        let y2: Vec<usize> = labels
            .iter()
            .copied()
            .chain(std::iter::repeat_n(null, n))
            .collect();
        let eps = net(&both, &t2, &y2)?;
        cfg_combine(&eps.narrow(0, 0, n)?, &eps.narrow(0, n, n)?, w)
    }
}

/// ∇_x Σ_i log p(y_i | x_i, t_i), the input gradient of a classifier's
/// log-likelihood `log_p(x, t) -> [N]`, by the engine's autodiff on a
/// copy of x that requires grad (also inside `no_grad`, as sampling runs).
pub fn input_gradient(log_p: impl FnOnce(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Tensor> {
    enable_grad(|| {
        let leaf = x.detach().set_requires_grad(true);
        log_p(&leaf)?.sum_all()?.backward()?;
        leaf.grad().map(|g| g.detach()).ok_or_else(|| {
            noisegrad_engine::Error::Input("the classifier does not depend on x".into())
        })
    })
}

/// Classifier guidance for DDIM, Dhariwal & Nichol 2021 Alg. 2:
/// ε̂ = ε − √(1 − ᾱ_t) s ∇_x log p(y | x_t).
pub fn ddim_guided_eps(
    sched: &Schedule,
    eps: &Tensor,
    grad: &Tensor,
    t: &[usize],
    scale: f64,
) -> Result<Tensor> {
    let table: Vec<f64> = sched
        .alphas_cumprod
        .iter()
        .map(|a| (1.0 - a).sqrt())
        .collect();
    eps.sub(&grad.mul(&extract(&table, t, eps)?)?.mul_scalar(scale)?)
}

/// Classifier guidance for DDPM, Dhariwal & Nichol 2021 Alg. 1: the mean
/// becomes μ + sΣ∇_x log p(y | x_t) with Σ = σ_t². Since
/// μ = (x_t − β_t/√(1 − ᾱ_t) ε)/√α_t, the same shift is the ε of
/// ε − (√α_t √(1 − ᾱ_t) σ_t² / β_t) s ∇ log p, exactly when x̂_0 is not
/// clipped (with clipping the shift passes through the clip).
pub fn ddpm_guided_eps(
    sched: &Schedule,
    var: ReverseVariance,
    eps: &Tensor,
    grad: &Tensor,
    t: &[usize],
    scale: f64,
) -> Result<Tensor> {
    let (sigma2, _) = var.tables(sched);
    let table: Vec<f64> = (0..sched.steps())
        .map(|i| {
            let shift = sched.alphas[i].sqrt() * (1.0 - sched.alphas_cumprod[i]).sqrt();
            // No noise, hence no shift, at the last step (σ_0 = 0 there).
            if i == 0 {
                0.0
            } else {
                shift * sigma2[i] / sched.betas[i]
            }
        })
        .collect();
    eps.sub(&grad.mul(&extract(&table, t, eps)?)?.mul_scalar(scale)?)
}

/// Which sampler a classifier-guided ε is for (their shifts differ).
#[derive(Clone, Copy, Debug)]
pub enum GuidedSampler {
    Ddpm(ReverseVariance),
    Ddim,
}

/// Wraps an ε-model with classifier guidance of scale `scale`:
/// `grad(x, t)` is ∇_x log p(y | x, t) for the wanted labels.
pub fn classifier_guided_eps<'a>(
    mut eps_model: impl FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a,
    mut grad: impl FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a,
    sched: &'a Schedule,
    sampler: GuidedSampler,
    scale: f64,
) -> impl FnMut(&Tensor, &[usize]) -> Result<Tensor> + 'a {
    move |x: &Tensor, t: &[usize]| {
        let eps = eps_model(x, t)?;
        if scale == 0.0 {
            return Ok(eps);
        }
        let g = grad(x, t)?;
        match sampler {
            GuidedSampler::Ddpm(var) => ddpm_guided_eps(sched, var, &eps, &g, t, scale),
            GuidedSampler::Ddim => ddim_guided_eps(sched, &eps, &g, t, scale),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ddpm_step;
    use noisegrad_engine::{DType, Device};

    fn t(v: &[f64], shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape, DType::F64, Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        a.to_vec_f64()
            .iter()
            .zip(b.to_vec_f64())
            .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    /// Linear-Gaussian toy: ε(x, y) = c(x − m_y) with m_∅ = 0 (the exact ε
    /// of Gaussian classes at one t). CFG must give c(x − (1 + w) m_y): the
    /// class mean pushed out by 1 + w, from one batched call of 2N images.
    #[test]
    fn cfg_matches_the_gaussian_closed_form_in_one_batched_pass() {
        let means = [[1.0, -2.0], [0.5, 3.0]];
        let c = 0.7;
        let mut calls = Vec::new();
        let net = |x: &Tensor, _t: &[usize], y: &[usize]| {
            calls.push(x.dim(0)?);
            let m: Vec<f64> = y
                .iter()
                .flat_map(|&k| if k == 2 { [0.0, 0.0] } else { means[k] })
                .collect();
            x.sub(&t(&m, x.shape()))?.mul_scalar(c)
        };
        let w = 3.0;
        let mut guided = cfg_eps(net, vec![1, 0], 2, w);
        let x = t(&[0.2, 0.4, -1.0, 2.0], &[2, 2]);
        let got = guided(&x, &[5, 5]).unwrap();
        let want: Vec<f64> = [(0.2, 0.5), (0.4, 3.0), (-1.0, 1.0), (2.0, -2.0)]
            .iter()
            .map(|&(xv, m)| c * (xv - (1.0 + w) * m))
            .collect();
        assert!(max_diff(&got, &t(&want, &[2, 2])) < 1e-12);
        drop(guided);
        assert_eq!(calls, vec![4]);
    }

    /// With x_0 ~ N(0, I) the exact ε is √(1−ᾱ_t) x_t; an exponential tilt
    /// p(y | x) ∝ exp(aᵀx) (∇ log p = a) makes p(x_t | y) = N(a, I), whose
    /// exact ε is √(1−ᾱ_t)(x_t − a). DDIM's guided ε̂ with s = 1 must equal it.
    #[test]
    fn ddim_classifier_guidance_gives_the_exact_conditional_eps() {
        let s = Schedule::ddpm();
        let a = t(&[0.3, -1.2, 2.0], &[1, 3]);
        let x = t(&[0.5, 0.1, -0.4], &[1, 3]);
        for step in [1, 300, 999] {
            let k = (1.0 - s.alphas_cumprod[step]).sqrt();
            let eps = x.mul_scalar(k).unwrap();
            let guided = ddim_guided_eps(&s, &eps, &a, &[step], 1.0).unwrap();
            let want = x.sub(&a).unwrap().mul_scalar(k).unwrap();
            assert!(max_diff(&guided, &want) < 1e-12);
        }
    }

    /// DDPM (Alg. 1): stepping with the guided ε (no clipping) is the
    /// unguided step plus s σ_t² ∇ log p, for both reverse variances.
    #[test]
    fn ddpm_classifier_guidance_shifts_the_mean_by_s_sigma_grad() {
        let s = Schedule::ddpm();
        let x = t(&[0.5, 0.1, -0.4, 0.9], &[1, 4]);
        let eps = t(&[0.2, -0.3, 0.8, 0.0], &[1, 4]);
        let g = t(&[1.0, -2.0, 0.5, 0.25], &[1, 4]);
        let z = t(&[0.1, 0.2, -0.3, 0.4], &[1, 4]);
        for var in [ReverseVariance::FixedLarge, ReverseVariance::FixedSmall] {
            let (sigma2, _) = var.tables(&s);
            for step in [1, 500, 999] {
                let scale = 2.5;
                let eg = ddpm_guided_eps(&s, var, &eps, &g, &[step], scale).unwrap();
                let guided = ddpm_step(&s, var, &x, &[step], &eg, &z, false).unwrap();
                let plain = ddpm_step(&s, var, &x, &[step], &eps, &z, false).unwrap();
                let want = plain
                    .add(&g.mul_scalar(scale * sigma2[step]).unwrap())
                    .unwrap();
                assert!(max_diff(&guided, &want) < 1e-9, "{var:?} t={step}");
            }
        }
    }

    /// The input gradient of log p = Σ aᵀx² / 2 is a ⊙ x, also inside no_grad.
    #[test]
    fn input_gradient_is_taken_inside_no_grad() {
        let x = t(&[1.0, -2.0, 3.0], &[1, 3]);
        let a = t(&[0.5, 1.0, 2.0], &[1, 3]);
        let g = noisegrad_engine::no_grad(|| {
            input_gradient(
                |x| x.square()?.mul(&a)?.mul_scalar(0.5)?.sum(&[1], false),
                &x,
            )
        })
        .unwrap();
        assert_eq!(g.to_vec_f64(), vec![0.5, -2.0, 6.0]);
    }
}
